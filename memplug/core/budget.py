"""The memory budget: what "1x memory" means, defined once, for every memory.

Memories are compared at equal state size. The unit is **key/value-vector slots per key/value
head per layer**: a memory at 1x keeps ``unit(block)`` slots, each a key and a value vector
(so ``footprint()["vectors"] == 2 * unit`` for the slot memories). ``unit(block) = block // 4``
(at least 1): 64 slots for the default block of 256. A sweep over 1x, 2x, 4x, 8x, 16x
multiplies it.

Each memory says what its size knob is (:meth:`memplug.Memory.budget`): Elastic's encoder order
N and retriever samples P, kNN's capacity, Melodi's long-term slots. Memories without a knob
(``none``, ``xl``, ``full``, and ``infini``, whose D x D matrix is about 1x for D = 64 at block
256) return no options.
"""

from __future__ import annotations

from typing import Any

from ..util.checks import positive_int
from .manager import registry

__all__ = ["SCALES", "memory_options", "unit"]

#: The budget multiples a sweep uses.
SCALES = (1, 2, 4, 8, 16)


def unit(block: int) -> int:
    """Slots per key/value head per layer at 1x memory: ``max(1, block // 4)``."""
    return max(1, positive_int("block", block) // 4)


def memory_options(name: str, scale: int, block: int) -> dict[str, Any]:
    """Options for ``make_memory(name, **options)`` at ``scale`` x the memory budget for
    blocks of ``block`` tokens; an unknown name lists the registered memories."""
    slots = positive_int("scale", scale) * unit(block)
    return registry("memory").get(name).budget(slots)
