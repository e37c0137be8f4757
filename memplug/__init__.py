"""memplug: composable long-term memory plugins for transformer backbones.

Quick tour::

    import memplug
    enc = memplug.make_encoder("legs", order=64)
    ret = memplug.make_retriever("warped", samples=32, warp="exponential", rate=4.0)
    mem = memplug.make_memory("elastic", encoder=enc, retriever=ret)
"""

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
from .core.model import MemoryModel, build_model
from .core.state import ModelOutput, ModelState
from .core.registry import PluginError, UnknownComponentError

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
    "build_model",
    "get_plugin_manager",
    "hookimpl",
    "make_attention",
    "make_backbone",
    "make_encoder",
    "make_memory",
    "make_retriever",
    "register",
]
