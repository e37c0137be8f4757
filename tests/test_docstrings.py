"""The API reference is generated from the docstrings, so every option of every component must
be named in its class docstring (the entry a reader finds under ``Args``)."""

from __future__ import annotations

import inspect
import re

import pytest

from memplug.core.layer import MemoryAttention
from memplug.core.manager import get_plugin_manager
from memplug.core.model import MemoryModel


def components() -> list[type]:
    plugins = get_plugin_manager()
    kinds = ("encoder", "retriever", "memory", "attention", "backbone")
    return [plugins.registries[k].get(n) for k in kinds for n in plugins.registries[k].names()] + [
        MemoryAttention, MemoryModel]


def options(cls: type) -> list[str]:
    """The options of the class's own constructor (none when it inherits torch's ``nn.Module``'s)."""
    if not cls.__init__.__module__.startswith("memplug"):
        return []
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]


@pytest.mark.parametrize("cls", components(), ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_option_is_documented(cls):
    doc = inspect.getdoc(cls) or ""
    undocumented = [name for name in options(cls) if not re.search(rf"``{name}``|\b{name}:|\*\*{name}\b", doc)]
    assert not undocumented, f"{cls.__qualname__}'s docstring does not describe {undocumented}"
