"""The built-in plugins pass the kit users get (memplug.testing), run exactly as a user runs it.

Every built-in encoder, retriever and memory registered through the memplug distribution's
entry points is checked; a new built-in is picked up automatically (with the small options
below, or its defaults).
"""

from __future__ import annotations

import pytest

import memplug
from memplug.core import manager
from memplug.testing import check_encoder, check_memory, check_retriever
from memplug.testing.memories import tiny_backbone

#: Small sizes so the whole kit runs in seconds; a built-in missing here runs with its defaults.
ENCODER_OPTIONS = {
    "legs": dict(order=8),
    "jacobi": dict(order=8, beta=-0.5),  # a singular weight at s = 0: the hard case of the reference
    "legt": dict(order=8, window=24.0),
    "fout": dict(order=8, window=24.0),
}
RETRIEVER_OPTIONS = {"uniform": dict(samples=4), "warped": dict(samples=4), "learned": dict(samples=4)}
BLOCK = 4
MEMORY_OPTIONS = {
    "elastic": dict(encoder="legs", retriever="uniform", order=8, samples=4),
    "xl": dict(block=BLOCK),
    "knn": dict(capacity=8, topk=3),
    "melodi": dict(block=BLOCK),
}


def builtins(kind: str) -> list[str]:
    """Names registered by the memplug distribution itself (not by other installed packages)."""
    entries = manager.registry(kind).entries()
    return [name for name, entry in entries.items() if entry.provider.startswith(f"{manager.BUILTIN_DIST} ")]


def test_every_kind_has_builtins():
    assert {"legs", "jacobi", "legt", "fout"} <= set(builtins("encoder"))
    assert {"uniform", "warped", "learned"} <= set(builtins("retriever"))
    assert {"elastic", "none", "xl", "knn", "melodi", "infini", "full"} <= set(builtins("memory"))


@pytest.mark.parametrize("name", builtins("encoder"))
def test_builtin_encoder(name):
    check_encoder(lambda: memplug.make_encoder(name, **ENCODER_OPTIONS.get(name, {})))


@pytest.mark.parametrize("name", builtins("retriever"))
def test_builtin_retriever(name):
    check_retriever(lambda: memplug.make_retriever(name, **RETRIEVER_OPTIONS.get(name, {})))


@pytest.mark.parametrize("span", ["block", "previous"])
@pytest.mark.parametrize("name", builtins("memory"))
def test_builtin_memory(name, span):
    options = MEMORY_OPTIONS.get(name, {})
    if name == "melodi":
        # the paper's placement: short-term memory in every layer, long-term in the middle one
        from memplug.plugins.memories.melodi import melodi_layers

        factory = melodi_layers(tiny_backbone().num_layers, **options)
    else:
        def factory(layer: int) -> memplug.Memory:
            return memplug.make_memory(name, **options)

    check_memory(factory, block=BLOCK, span=span)
