"""memplug: composable long-term memory plugins for transformer backbones.

Quick tour::

    import memplug
    enc = memplug.make_encoder("legs", order=64)
    ret = memplug.make_retriever("warped", samples=32, warp="exponential", rate=4.0)
    mem = memplug.make_memory("elastic", encoder=enc, retriever=ret)

    model = memplug.attach(hf_model, memory="elastic", block=1024)   # a Hugging Face causal LM
    model.save_pretrained("out")                                     # options + changed tensors
    model = memplug.from_pretrained("out")

The public names are imported on first use (PEP 562): ``import memplug`` alone loads neither
torch nor anything else heavy, so importing a light submodule (the pytest plugin
:mod:`memplug.testing.pytest_plugin`, loaded in every pytest session of the environment) costs
nothing until a memplug name is used.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: Each public name -> (the module that defines it, its name there).
_PUBLIC = {
    "AttentionBackend": ("memplug.core.contracts", "AttentionBackend"),
    "Backbone": ("memplug.core.contracts", "Backbone"),
    "Encoder": ("memplug.core.contracts", "Encoder"),
    "Memory": ("memplug.core.contracts", "Memory"),
    "MemoryRead": ("memplug.core.contracts", "MemoryRead"),
    "Retriever": ("memplug.core.contracts", "Retriever"),
    "hookimpl": ("memplug.core.hookspecs", "hookimpl"),
    "__version__": ("memplug.core.manager", "VERSION"),
    "available": ("memplug.core.manager", "available"),
    "get_plugin_manager": ("memplug.core.manager", "get_plugin_manager"),
    "make_attention": ("memplug.core.manager", "make_attention"),
    "make_backbone": ("memplug.core.manager", "make_backbone"),
    "make_encoder": ("memplug.core.manager", "make_encoder"),
    "make_memory": ("memplug.core.manager", "make_memory"),
    "make_retriever": ("memplug.core.manager", "make_retriever"),
    "register": ("memplug.core.manager", "register"),
    "MemoryModel": ("memplug.core.model", "MemoryModel"),
    "build_model": ("memplug.core.model", "build_model"),
    "from_pretrained": ("memplug.core.model", "from_pretrained"),
    "attach": ("memplug.backbones.hf", "attach"),
    "ModelOutput": ("memplug.core.state", "ModelOutput"),
    "ModelState": ("memplug.core.state", "ModelState"),
    "PluginError": ("memplug.core.registry", "PluginError"),
    "UnknownComponentError": ("memplug.core.registry", "UnknownComponentError"),
}

if TYPE_CHECKING:
    from .core.contracts import AttentionBackend, Backbone, Encoder, Memory, MemoryRead, Retriever
    from .core.hookspecs import hookimpl
    from .core.manager import VERSION as __version__
    from .core.manager import (
        available,
        get_plugin_manager,
        make_attention,
        make_backbone,
        make_encoder,
        make_memory,
        make_retriever,
        register,
    )
    from .core.model import MemoryModel, build_model, from_pretrained
    from .core.registry import PluginError, UnknownComponentError
    from .core.state import ModelOutput, ModelState

__all__ = [
    "AttentionBackend",
    "Backbone",
    "Encoder",
    "Memory",
    "MemoryRead",
    "Retriever",
    "PluginError",
    "UnknownComponentError",
    "MemoryModel",
    "ModelOutput",
    "ModelState",
    "available",
    "attach",
    "build_model",
    "from_pretrained",
    "get_plugin_manager",
    "hookimpl",
    "make_attention",
    "make_backbone",
    "make_encoder",
    "make_memory",
    "make_retriever",
    "register",
]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'memplug' has no attribute {name!r}")
    module, attribute = _PUBLIC[name]
    value = getattr(import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
