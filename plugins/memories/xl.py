"""``xl``: the Transformer-XL cache (Dai et al., 2019): the previous block's keys and values.

Each block's queries also attend to the raw keys and values of the block before it, in the same
softmax as the local keys. The cache is a stop-gradient copy ("SG" in the paper): no gradient
flows into it, neither across calls nor between the blocks of one block-parallel call. That is
what distinguishes it from the layer's ``span="previous"``, which attends to the previous block
with gradients.

Positions: the cached keys come back raw with ``key_positions = -L .. -1`` relative to the
start of the reading block, so the layer rotates them exactly like the previous block's keys:
relative distances are the true ones.
"""

from __future__ import annotations

import torch
from torch import Tensor

import memplug
from memplug.core.contracts import Memory, MemoryRead
from memplug.util.checks import positive_int


class XLMemory(Memory):
    """Cache of the last complete block's raw keys and values, detached.

    State: ``keys``, ``values`` (B, Hkv, L, D) (L = 0 before the first block is written).
    Parameters: none. Chunk invariant: the cache changes only when a block completes.

    Args:
        block: the block length, used to check the data and by :meth:`footprint`: given here,
            or set by the layer through :meth:`setup`; without either the cache takes the length
            of the blocks it sees.
    """

    name = "xl"

    def __init__(self, block: int | None = None) -> None:
        super().__init__()
        self.block = None if block is None else positive_int("block", block)

    def setup(self, heads: int, kv_heads: int, head_dim: int, block: int | None = None) -> None:
        if block is not None and self.block is not None and block != self.block:
            raise ValueError(f"xl memory built for block={self.block} is set up with block={block}")
        super().setup(heads, kv_heads, head_dim, block)

    def init_state(self, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return {
            "keys": torch.zeros(shape, dtype=dtype, device=device),
            "values": torch.zeros(shape, dtype=dtype, device=device),
        }

    def _check(self, length: int) -> None:
        if self.block is not None and length != self.block:
            raise ValueError(f"xl memory built for block={self.block} got blocks of {length} tokens")

    def read(self, state: dict[str, Tensor], q: Tensor, t: int) -> MemoryRead:
        self._check(q.shape[-2])
        keys = state["keys"]
        if keys.shape[-2] == 0:
            return MemoryRead()
        n = keys.shape[-2]
        positions = torch.arange(-n, 0, device=keys.device, dtype=torch.float32).unsqueeze(0)  # (1, L)
        return MemoryRead(keys=keys.unsqueeze(2), values=state["values"].unsqueeze(2), key_positions=positions)

    def write(self, state: dict[str, Tensor], k: Tensor, v: Tensor, t0: int) -> dict[str, Tensor]:
        self._check(k.shape[-2])
        return {"keys": k.detach().clone(), "values": v.detach().clone()}

    def forward_blocks(
        self, state: dict[str, Tensor], q: Tensor, k: Tensor, v: Tensor, t0: int, complete: int
    ) -> tuple[MemoryRead, dict[str, Tensor]]:
        nb, length = q.shape[2], q.shape[3]
        self._check(length)
        # A copy, not a view: the layer may keep the same block (span="previous") and a state
        # whose tensors share storage cannot be saved with safetensors.
        new_state = (
            state
            if complete == 0
            else {"keys": k[:, :, complete - 1].detach().clone(), "values": v[:, :, complete - 1].detach().clone()}
        )
        prev_k, prev_v = state["keys"], state["values"]
        empty = prev_k.shape[-2] == 0
        if empty and nb == 1:
            return MemoryRead(), new_state
        if empty:
            # block 0 has nothing before it: zero keys, hidden (first_hidden)
            prev_k = torch.zeros_like(k[:, :, 0])
            prev_v = torch.zeros_like(v[:, :, 0])
        elif prev_k.shape[-2] != length:
            raise ValueError(f"xl cache holds {prev_k.shape[-2]} tokens but blocks are {length} long")
        # block i reads block i-1: (B, Hkv, nb, L, D)
        keys = torch.cat([prev_k.unsqueeze(2), k[:, :, : nb - 1].detach()], dim=2)
        values = torch.cat([prev_v.unsqueeze(2), v[:, :, : nb - 1].detach()], dim=2)
        positions = torch.arange(-length, 0, device=k.device, dtype=torch.float32).expand(nb, length)  # (nb, L)
        return MemoryRead(keys=keys, values=values, key_positions=positions, first_hidden=empty), new_state

    def footprint(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> dict[str, int]:
        """A full cache: 2 L vectors (keys and values) per key/value head; needs ``block``."""
        if self.block is None:
            raise ValueError("xl footprint needs the block length: build it with block=<int>")
        numel = 2 * batch * self.kv_heads * self.block * self.head_dim
        return {
            "vectors": 2 * self.block,
            "bytes": numel * torch.empty((), dtype=dtype).element_size(),
            "parameters": 0,
        }


@memplug.hookimpl
def memplug_add_memories(registry) -> None:
    registry.add(XLMemory)
