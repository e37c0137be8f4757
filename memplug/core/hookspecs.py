"""Hook specifications: one registration hook per component kind.

A plugin is a module (or object) with functions marked ``@memplug.hookimpl`` whose names match
these specs. Each receives a :class:`memplug.core.registry.Registry` and adds classes to it::

    import memplug

    @memplug.hookimpl
    def memplug_add_encoders(registry):
        registry.add(MyMeasure)

Hooks run when the plugin manager is built, never inside ``forward``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .registry import Registry

hookspec = pluggy.HookspecMarker("memplug")
hookimpl = pluggy.HookimplMarker("memplug")


@hookspec
def memplug_add_encoders(registry: Registry) -> None:
    """Add :class:`memplug.core.contracts.Encoder` subclasses (HiPPO measures)."""


@hookspec
def memplug_add_retrievers(registry: Registry) -> None:
    """Add :class:`memplug.core.contracts.Retriever` subclasses (polynomial samplers)."""


@hookspec
def memplug_add_memories(registry: Registry) -> None:
    """Add :class:`memplug.core.contracts.Memory` subclasses."""


@hookspec
def memplug_add_attention_backends(registry: Registry) -> None:
    """Add :class:`memplug.core.contracts.AttentionBackend` subclasses."""


@hookspec
def memplug_add_backbones(registry: Registry) -> None:
    """Add :class:`memplug.core.contracts.Backbone` subclasses."""


@hookspec
def memplug_add_datasets(registry: Registry) -> None:
    """Add dataset classes (see :mod:`memplug.data`)."""


@hookspec
def memplug_add_commands(registry: Any) -> None:
    """Add ``memplug`` sub-commands: ``registry.add(name, help, add_arguments, run)``.

    ``add_arguments(parser)`` fills the sub-command's ``argparse`` parser; ``run(args)`` does the
    work and returns the exit status. Called only by the command line, never by library code.
    """
