"""The core: the contracts every component implements, the plugin registry and manager, the one
memory attention layer every backbone runs through, and the MemoryModel that drives them."""
