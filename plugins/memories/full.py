"""``full``: attention over every past raw key and value (the upper bound; O(T) memory).

With this memory a block-local model becomes a full-context causal transformer: block ``i``
attends, in one softmax, to all tokens before it (through this memory) and causally to its own
block (through the layer). It is the reference the compressive memories approximate, and its
state grows without bound, so it is a yardstick, not a streaming memory.

Positions: the stored keys come back raw with ``key_positions = a - s`` (``a`` the key's
absolute position, ``s`` the start of the reading block), so the layer rotates them at their
true relative distance. ``max_distance`` (optional) clips those distances at ``-max_distance``:
every older key is rotated as if it were ``max_distance`` tokens back, which keeps a pretrained
rotary model inside the distances it was trained on (the keys themselves are still all seen).

Gradients flow into the stored keys within one call (as in a full-context transformer); across
calls the state is whatever the caller passes (detach it for truncated back-propagation).
"""

from __future__ import annotations

import torch
from torch import Tensor

import memplug
from memplug.core.contracts import Memory, MemoryRead


class FullMemory(Memory):
    """Every complete block's raw keys and values, appended.

    State: ``keys``, ``values`` (B, Hkv, T, D) for the T tokens of all complete blocks so far.
    Parameters: none. Chunk invariant: the store changes only when a block completes.

    Block-parallel form: block ``i`` of ``nb`` reads the first ``T + i L`` slots of
    ``[stored | new blocks]`` (a shared, expanded view; later slots hidden by the bias), so the
    read is one tensor of (nb, T + (nb-1) L) slots: O(nb T) keys for the layer's softmax.

    Args:
        max_distance: ``None`` (default): stored keys are rotated at their true distance; a
            positive int clips the distance there (older keys rotate as if ``max_distance``
            tokens back), keeping a pretrained rotary model inside its trained distances.
    """

    name = "full"

    def __init__(self, max_distance: int | None = None) -> None:
        super().__init__()
        if max_distance is not None and max_distance < 1:
            raise ValueError(f"max_distance must be a positive int or None, got {max_distance!r}")
        self.max_distance = max_distance

    def init_state(self, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        shape = (batch, self.kv_heads, 0, self.head_dim)
        return {
            "keys": torch.zeros(shape, dtype=dtype, device=device),
            "values": torch.zeros(shape, dtype=dtype, device=device),
        }

    def _positions(self, relative: Tensor) -> Tensor:
        if self.max_distance is not None:
            relative = relative.clamp_min(-self.max_distance)
        return relative.to(torch.float32)

    def read(self, state: dict[str, Tensor], q: Tensor, t: int) -> MemoryRead:
        keys = state["keys"]
        n = keys.shape[-2]
        if n == 0:
            return MemoryRead()
        positions = self._positions(torch.arange(-n, 0, device=keys.device)).unsqueeze(0)  # (1, T)
        return MemoryRead(keys=keys.unsqueeze(2), values=state["values"].unsqueeze(2), key_positions=positions)

    def write(self, state: dict[str, Tensor], k: Tensor, v: Tensor, t0: int) -> dict[str, Tensor]:
        return {"keys": torch.cat([state["keys"], k], dim=-2), "values": torch.cat([state["values"], v], dim=-2)}

    def forward_blocks(
        self, state: dict[str, Tensor], q: Tensor, k: Tensor, v: Tensor, t0: int, complete: int
    ) -> tuple[MemoryRead, dict[str, Tensor]]:
        b, hkv, nb, length, d = k.shape
        stored = state["keys"].shape[-2]
        new_k = k.reshape(b, hkv, nb * length, d)  # (B, Hkv, nb*L, D)
        new_v = v.reshape(b, hkv, nb * length, d)
        bank_k = torch.cat([state["keys"], new_k], dim=-2)  # (B, Hkv, T + nb*L, D)
        bank_v = torch.cat([state["values"], new_v], dim=-2)
        new_state = {
            "keys": bank_k[:, :, : stored + complete * length],
            "values": bank_v[:, :, : stored + complete * length],
        }
        slots = stored + (nb - 1) * length
        if slots == 0:
            return MemoryRead(), new_state
        j = torch.arange(slots, device=k.device)  # bank slot = absolute offset from the stored start
        start = stored + torch.arange(nb, device=k.device).unsqueeze(-1) * length  # (nb, 1) block starts
        relative = j - start  # (nb, P)
        bias = torch.zeros(1, 1, nb, 1, slots, dtype=q.dtype, device=q.device)
        bias.masked_fill_((relative >= 0).view(1, 1, nb, 1, slots), float("-inf"))
        keys = bank_k[:, :, None, :slots].expand(b, hkv, nb, slots, d)  # (B, Hkv, nb, P, D), a view
        values = bank_v[:, :, None, :slots].expand(b, hkv, nb, slots, d)
        positions = self._positions(relative.clamp_max(0))  # hidden slots get position 0
        return MemoryRead(keys=keys, values=values, key_positions=positions, bias=bias), new_state

    def footprint(self, batch: int = 1, dtype: torch.dtype = torch.float32, tokens: int = 0) -> dict[str, int]:
        """After ``tokens`` tokens: 2 T vectors (keys and values) per key/value head; grows with T."""
        numel = 2 * batch * self.kv_heads * tokens * self.head_dim
        return {"vectors": 2 * tokens, "bytes": numel * torch.empty((), dtype=dtype).element_size(), "parameters": 0}


@memplug.hookimpl
def memplug_add_memories(registry) -> None:
    registry.add(FullMemory)
