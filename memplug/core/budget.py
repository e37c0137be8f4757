"""The memory budget: what "1x memory" means, defined once, for every memory.

Memories are compared at equal state size. The unit is **key/value-vector slots per key/value
head per layer**: a memory at 1x keeps ``unit(block)`` slots, each a key and a value vector
(so ``footprint()["vectors"] == 2 * unit`` for the slot memories). ``unit(block) = block // 4``
(at least 1): 64 slots for the default block of 256, the prototype's N = P = 64 (DESIGN §6).
A sweep over 1x, 2x, 4x, 8x, 16x multiplies it.

What the knob is, per memory (``memory_options`` returns it):

- ``elastic``: N = P = scale x unit (encoder order and retriever samples): N coefficients of
  keys and of values per head, read back as P samples.
- ``knn``: capacity M = scale x unit raw (key, value) pairs (FIFO).
- ``melodi``: long-term slots = scale x unit (its short-term memory, block / 8 slots per layer,
  is part of the architecture and fixed; ``footprint()`` counts both).
- ``infini``: no knob: a D x D matrix and a D normaliser per head, i.e. D + 1 vector
  equivalents whatever the scale (for D = 64 and block 256 that is about 1x).
- ``xl`` (one block, L slots), ``full`` (every past token), ``none`` (nothing): no knob.

``block`` itself is not among the options: the model passes its block length to the memories
whose constructor takes one (``melodi`` needs it for its token-mixing matrices, ``xl`` checks
it and sizes its footprint with it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SCALES", "unit", "memory_options"]

#: The budget multiples a sweep uses.
SCALES = (1, 2, 4, 8, 16)

_FIXED = ("none", "xl", "full", "infini")


def unit(block: int) -> int:
    """Slots per key/value head per layer at 1x memory: ``max(1, block // 4)``."""
    if not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    return max(1, block // 4)


def memory_options(name: str, scale: int, block: int, head_dim: int) -> dict[str, Any]:
    """Options for ``make_memory(name, **options)`` at ``scale`` x memory.

    ``scale`` is one of :data:`SCALES` (any positive int works); ``head_dim`` is accepted so
    every memory is sized from the same arguments (none of the knobs needs it today: infini's
    fixed size is D x D by construction). Unknown names raise ``ValueError``.
    """
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be a positive int (one of {SCALES}), got {scale!r}")
    if not isinstance(head_dim, int) or head_dim < 1:
        raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
    slots = scale * unit(block)
    if name == "elastic":
        return {"order": slots, "samples": slots}
    if name == "knn":
        return {"capacity": slots}
    if name == "melodi":
        return {"long_slots": slots}
    if name in _FIXED:
        return {}
    raise ValueError(f"name must be one of elastic, knn, melodi, {', '.join(_FIXED)}; got {name!r}")
