"""The plugin manager: built-ins, then third-party entry points, then ``check_pending()``.

Built-in plugins are registered through the ``memplug`` entry-point group like any third-party
package. ``MEMPLUG_DISABLE_PLUGIN_AUTOLOAD=1`` skips third-party entry points (built-ins still
load). A third-party plugin that fails to import is recorded in ``failures`` with its name and
error, reported as a warning, and the others still load.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import contracts, hookspecs
from ..data.base import Dataset
from .registry import Registry

BUILTIN_DIST = "memplug"
DISABLE_ENV = "MEMPLUG_DISABLE_PLUGIN_AUTOLOAD"

#: kind -> (hook name, base class)
KINDS: dict[str, tuple[str, type | None]] = {
    "encoder": ("memplug_add_encoders", contracts.Encoder),
    "retriever": ("memplug_add_retrievers", contracts.Retriever),
    "memory": ("memplug_add_memories", contracts.Memory),
    "attention": ("memplug_add_attention_backends", contracts.AttentionBackend),
    "backbone": ("memplug_add_backbones", contracts.Backbone),
    "dataset": ("memplug_add_datasets", Dataset),
}


@dataclass
class Plugins:
    """The loaded plugin manager, its registries and the plugins that failed to load."""

    pm: pluggy.PluginManager
    registries: dict[str, Registry]
    failures: dict[str, str] = field(default_factory=dict)


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group="memplug"), key=lambda ep: ep.name)


def _provider(ep: metadata.EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else f"entry point {ep.name}"


def build_plugins(autoload: bool | None = None) -> Plugins:
    """Build a fresh plugin manager and fill the registries (one hook call per plugin)."""
    if autoload is None:
        autoload = os.environ.get(DISABLE_ENV, "") in ("", "0", "false", "False")
    pm = pluggy.PluginManager("memplug")
    pm.add_hookspecs(hookspecs)
    failures: dict[str, str] = {}
    providers: dict[str, str] = {}
    builtins_found = False
    for ep in _entry_points():
        builtin = ep.dist is not None and ep.dist.metadata["Name"] == BUILTIN_DIST
        builtins_found = builtins_found or builtin
        if not builtin and not autoload:
            continue
        if pm.has_plugin(ep.name):
            failures[ep.name] = f"entry point name {ep.name!r} is used twice ({_provider(ep)})"
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break the rest
            if builtin:
                raise
            failures[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"memplug plugin {ep.name!r} ({_provider(ep)}) failed to load: {exc}", stacklevel=2)
            continue
        pm.register(plugin, name=ep.name)
        providers[ep.name] = _provider(ep)
    pm.check_pending()
    if not builtins_found:
        warnings.warn(
            "memplug's built-in plugins register through its package metadata (the 'memplug' entry-point "
            "group) and none was found: memplug is imported from a source tree that is not installed in "
            "this interpreter (check which python runs). Install it with `pip install -e .`; until then "
            "every registry holds only what is registered in code.",
            stacklevel=2,
        )

    registries = {kind: Registry(kind, base) for kind, (_, base) in KINDS.items()}
    plugins = pm.get_plugins()
    for kind, (hook_name, _) in KINDS.items():
        registry = registries[kind]
        for plugin in plugins:
            name = pm.get_name(plugin)
            registry.provider = providers.get(name, name)
            others = [p for p in plugins if p is not plugin]
            pm.subset_hook_caller(hook_name, remove_plugins=others)(registry=registry)
        registry.provider = "code"
    return Plugins(pm, registries, failures)


_PLUGINS: Plugins | None = None


def get_plugin_manager() -> Plugins:
    """The process-wide plugins, built on first use."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = build_plugins()
    return _PLUGINS


def reset_plugin_manager() -> None:
    """Forget the loaded plugins (tests; after installing a package at run time)."""
    global _PLUGINS
    _PLUGINS = None


def registry(kind: str) -> Registry:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    return get_plugin_manager().registries[kind]


def available(kind: str) -> list[str]:
    """Registered names of one kind: ``available("encoder") -> ["fout", "jacobi", ...]``."""
    return registry(kind).names()


def register(cls: type | None = None, *, name: str | None = None) -> Any:
    """Register a component class from code, without packaging. Also a decorator.

    The kind is read from the base class (``Encoder``, ``Retriever``, ...)::

        @memplug.register
        class MyMeasure(memplug.Encoder): name = "mine"; ...
    """

    def add(c: type) -> type:
        kind = getattr(c, "kind", "")
        if kind not in KINDS:
            raise TypeError(f"{c!r} is not a memplug component: subclass Encoder, Retriever, Memory, "
                            "AttentionBackend or Backbone")
        return registry(kind).add(c, name)

    return add if cls is None else add(cls)


def build(kind: str, name_or_obj: Any, **cfg: Any) -> Any:
    """Instantiate ``name_or_obj`` from the ``kind`` registry, or pass an instance through."""
    base = KINDS[kind][1] if kind in KINDS else None
    if base is not None and isinstance(name_or_obj, base):
        if cfg:
            raise ValueError(f"options {sorted(cfg)} given together with a ready {kind} object")
        return name_or_obj
    if isinstance(name_or_obj, type):
        return name_or_obj(**cfg)
    if not isinstance(name_or_obj, str):
        raise TypeError(f"{kind} must be a registered name or a {kind} object, got {type(name_or_obj).__name__}")
    return registry(kind).get(name_or_obj)(**cfg)


def make_encoder(name: str | contracts.Encoder, **cfg: Any) -> contracts.Encoder:
    """An encoder by name (``make_encoder("legs", order=64)``) or an Encoder passed through."""
    return build("encoder", name, **cfg)


def make_retriever(name: str | contracts.Retriever, **cfg: Any) -> contracts.Retriever:
    """A retriever by name (``make_retriever("uniform", samples=64)``)."""
    return build("retriever", name, **cfg)


def make_memory(name: str | contracts.Memory, **cfg: Any) -> contracts.Memory:
    """A memory by name; component arguments may be names or objects:
    ``make_memory("elastic", encoder=make_encoder("legs", order=64), retriever="uniform")``."""
    return build("memory", name, **cfg)


def make_backbone(name: str | contracts.Backbone, **cfg: Any) -> contracts.Backbone:
    """A backbone by name (``make_backbone("tiny", d_model=256, layers=4)``)."""
    return build("backbone", name, **cfg)


def make_attention(name: str | contracts.AttentionBackend, **cfg: Any) -> contracts.AttentionBackend:
    """An attention backend by name (``"sdpa"``, ``"flex"``, ...)."""
    return build("attention", name, **cfg)
