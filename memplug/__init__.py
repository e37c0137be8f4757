"""memplug: composable long-term memory plugins for transformer backbones.

Quick tour::

    import memplug
    enc = memplug.make_encoder("legs", order=64)
    ret = memplug.make_retriever("warped", samples=32, warp="exponential", rate=4.0)
    mem = memplug.make_memory("elastic", encoder=enc, retriever=ret)

    model = memplug.attach(hf_model, memory="elastic", block=1024)   # a Hugging Face causal LM
    model.save_pretrained("out")                                     # options + changed tensors
    model = memplug.from_pretrained("out")

``memplug.attach`` (:func:`memplug.backbones.hf.attach`) is imported on first use, so
``import memplug`` loads neither ``transformers`` nor any backbone.
"""

from importlib import import_module
from typing import Any

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
    "attach",
    "available",
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
    """``memplug.attach``, imported when first asked for (PEP 562)."""
    if name == "attach":
        return import_module("memplug.backbones.hf").attach
    raise AttributeError(f"module 'memplug' has no attribute {name!r}")
