"""The plugin manager: built-ins registered in code, then third-party entry points.

Built-in plugins are the modules named in :data:`BUILTIN_PLUGINS`, imported and registered here
(the tox pattern): a source checkout needs no reinstall when a built-in is added, and adding one
is one file plus one line in that tuple. Third-party packages register through the ``memplug``
entry-point group; ``MEMPLUG_DISABLE_PLUGIN_AUTOLOAD=1`` skips them (built-ins still load). A
third-party plugin that fails to import is recorded in ``failures`` with its name and error,
reported as a warning, and the others still load.

Each registration hook runs once per plugin, through a hook caller that holds that plugin alone,
while the registry's ``provider`` names it: so every registered class remembers which package
gave it, and a name clash names both.

Under ``python -m memplug`` (and ``torchrun -m memplug``) the working directory is on
``sys.path``, so a ``*.dist-info`` folder there is found by the entry-point machinery and its
plugins are imported like installed ones: run such commands from a folder you trust, or set
``MEMPLUG_DISABLE_PLUGIN_AUTOLOAD=1``.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field
from importlib import import_module, metadata
from typing import Any

import pluggy

from . import contracts, hookspecs
from .registry import Registry

BUILTIN_DIST = "memplug"


def _installed_version() -> str:
    try:
        return metadata.version(BUILTIN_DIST)
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+source"


#: memplug's version (``memplug.__version__``), from its package metadata.
VERSION = _installed_version()
#: The provider every built-in entry names.
BUILTIN_PROVIDER = f"{BUILTIN_DIST} {VERSION}"
DISABLE_ENV = "MEMPLUG_DISABLE_PLUGIN_AUTOLOAD"
#: ``MEMPLUG_TRACE=1`` prints every hook call and its result to stderr (pluggy's tracing).
TRACE_ENV = "MEMPLUG_TRACE"

#: The built-in plugins, registered in code in this order. A new built-in is one module here.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "memplug.plugins.encoders.legs",
    "memplug.plugins.encoders.jacobi",
    "memplug.plugins.encoders.legt",
    "memplug.plugins.encoders.fout",
    "memplug.plugins.retrievers.uniform",
    "memplug.plugins.retrievers.warped",
    "memplug.plugins.retrievers.learned",
    "memplug.plugins.retrievers.jittered",
    "memplug.plugins.memories.none",
    "memplug.plugins.memories.elastic",
    "memplug.plugins.memories.xl",
    "memplug.plugins.memories.knn",
    "memplug.plugins.memories.melodi",
    "memplug.plugins.memories.infini",
    "memplug.plugins.memories.full",
    "memplug.plugins.attention.sdpa",
    "memplug.plugins.attention.flex",
    "memplug.plugins.attention.xformers",
    "memplug.backbones.tiny",
    "memplug.backbones.hf",
    "memplug.data.literature",
    "memplug.data.python_code",
    "memplug.data.python_docs",
    "memplug.data.text_files",
)

#: kind -> (hook name, base class)
KINDS: dict[str, tuple[str, type | None]] = {
    "encoder": ("memplug_add_encoders", contracts.Encoder),
    "retriever": ("memplug_add_retrievers", contracts.Retriever),
    "memory": ("memplug_add_memories", contracts.Memory),
    "attention": ("memplug_add_attention_backends", contracts.AttentionBackend),
    "backbone": ("memplug_add_backbones", contracts.Backbone),
    "dataset": ("memplug_add_datasets", contracts.Dataset),
}


@dataclass
class Plugins:
    """The loaded plugin manager, its registries and the plugins that failed to load."""

    pm: pluggy.PluginManager
    registries: dict[str, Registry]
    failures: dict[str, str] = field(default_factory=dict)
    providers: dict[str, str] = field(default_factory=dict)  # plugin name -> "dist version"


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
    if os.environ.get(TRACE_ENV, "") not in ("", "0"):
        pm.trace.root.setwriter(lambda message: print(message, end="", file=sys.stderr))
        pm.enable_tracing()
    failures: dict[str, str] = {}
    providers: dict[str, str] = {}
    for module in BUILTIN_PLUGINS:
        pm.register(import_module(module), name=module)
        providers[module] = BUILTIN_PROVIDER
    for ep in _entry_points() if autoload else []:
        if ep.dist is not None and ep.dist.metadata["Name"] == BUILTIN_DIST:
            continue  # an older install's metadata: built-ins come from the tuple above
        if pm.has_plugin(ep.name):
            failures[ep.name] = f"entry point name {ep.name!r} is used twice ({_provider(ep)})"
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break the rest
            failures[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"memplug plugin {ep.name!r} ({_provider(ep)}) failed to load: {exc}", stacklevel=2)
            continue
        if pm.is_registered(plugin):  # two entry points naming one module
            continue
        pm.register(plugin, name=ep.name)
        providers[ep.name] = _provider(ep)
    pm.check_pending()

    registries = {kind: Registry(kind, base) for kind, (_, base) in KINDS.items()}
    for kind, (hook_name, _) in KINDS.items():
        call_each(pm, hook_name, registries[kind], providers)
    return Plugins(pm, registries, failures, providers)


def call_each(pm: pluggy.PluginManager, hook_name: str, registry: Any, providers: dict[str, str]) -> None:
    """Call ``hook_name(registry=registry)`` on each plugin alone, with ``registry.provider`` set
    to that plugin's provider while it runs (so each entry records who registered it).

    Why one call per plugin: a plain ``pm.hook.<name>(...)`` runs every plugin's implementation
    in one call, and a registry's ``add`` cannot tell which plugin is calling it. A subset hook
    caller that holds one plugin lets the registry be told beforehand (``registry.provider``),
    so a duplicate name is reported as "provided by A and by B" and ``memplug plugins`` lists
    the distribution of every entry. Afterwards ``provider`` goes back to ``"code"``: what
    registers later (``memplug.register`` from user code) is attributed to code. Registration
    runs once, when the manager is built, in one thread.
    """
    plugins = pm.get_plugins()
    for plugin in plugins:
        name = pm.get_name(plugin)
        registry.provider = providers.get(name, name)
        others = [p for p in plugins if p is not plugin]
        pm.subset_hook_caller(hook_name, remove_plugins=others)(registry=registry)
    registry.provider = "code"


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
