"""``none``: no memory; the layer attends locally only.

The baseline every memory is measured against. Whether "local" means the block alone or the
block plus the previous one is the layer's ``span`` option, not this memory's.
"""

from __future__ import annotations

import torch
from torch import Tensor

import memplug
from memplug.core.contracts import Memory, MemoryRead


class NoMemory(Memory):
    """A memory that stores nothing and gives the queries nothing to attend to.

    State: an empty dict. Parameters: none. Chunk invariant trivially. It takes no options.
    """

    name = "none"
    empty = True

    def init_state(self, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        return {}

    def read(self, state: dict[str, Tensor], q: Tensor, t: int) -> MemoryRead:
        return MemoryRead()

    def write(self, state: dict[str, Tensor], k: Tensor, v: Tensor, t0: int) -> dict[str, Tensor]:
        return state

    def forward_blocks(
        self, state: dict[str, Tensor], q: Tensor, k: Tensor, v: Tensor, t0: int, complete: int
    ) -> tuple[MemoryRead, dict[str, Tensor]]:
        return MemoryRead(), state

    def footprint(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> dict[str, int]:
        return {"vectors": 0, "bytes": 0, "parameters": 0}


@memplug.hookimpl
def memplug_add_memories(registry) -> None:
    registry.add(NoMemory)
