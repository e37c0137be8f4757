"""``infini``: Infini-attention's compressive memory (Munkhdalai et al., 2024, arXiv 2404.07143).

Per key/value head a matrix memory ``M`` (D, D) and normaliser ``z`` (D,), updated once per
complete block from the layer's raw keys and values with the ``elu + 1`` feature map and the
delta rule (``delta=False``: the plain linear update), and read by linear attention
``sigma(q) M / (sigma(q) z)`` (see :mod:`memplug.ops.linear_memory`). The retrieved values are
mixed with the local attention output by a learned per-head gate (paper eq. 6):
``sigmoid(beta) * A_mem + (1 - sigmoid(beta)) * A_dot``, ``beta`` initialised at 0 (the paper
gives no initial value; 0 lets the gate learn in both directions).

Keys and queries are the layer's own, raw (before RoPE), as in the paper; the memory carries
no positional information. Query head ``h`` reads the memory of its key/value head (grouped
query attention). Gradients flow through the memory within a call (the paper trains with
back-propagation through the segments); across calls the caller decides (detach the state).

Size: fixed, D x D + D numbers per key/value head whatever the length of the stream, so it
has no size knob; in key/value-vector equivalents that is D + 1 vectors.

Chunk invariant: the memory changes only when a block completes.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

import memplug
from memplug.core.contracts import Memory, MemoryRead
from memplug.ops.linear_memory import feature_map, linear_retrieve, linear_update


class InfiniMemory(Memory):
    """Compressive linear-attention memory with a learned per-head gate.

    State: ``memory`` (B, Hkv, D, D) and ``norm`` (B, Hkv, D). Parameters: ``gate`` (H,).

    Args:
        delta: the delta-rule update (default, the paper's best); ``False``: the plain linear update.
        eps: lower bound of the retrieval's denominator ``σ(q) z`` (> 0), so the empty memory
            retrieves zeros.
    """

    name = "infini"

    def __init__(self, delta: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.delta, self.eps = delta, eps

    def setup(self, heads: int, kv_heads: int, head_dim: int, block: int | None = None) -> None:
        super().setup(heads, kv_heads, head_dim, block)
        self.gate = nn.Parameter(torch.zeros(heads))

    def init_state(self, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        d = self.head_dim
        return {
            "memory": torch.zeros(batch, self.kv_heads, d, d, dtype=dtype, device=device),
            "norm": torch.zeros(batch, self.kv_heads, d, dtype=dtype, device=device),
        }

    def _retrieve(self, q: Tensor, memory: Tensor, norm: Tensor) -> Tensor:
        """``q`` (B, H, nb, L, D) against per-block states (B, Hkv, nb, D, D) and (B, Hkv, nb, D)."""
        phi_q = rearrange(feature_map(q), "b (h g) n l d -> b h g n l d", h=self.kv_heads)
        out = linear_retrieve(phi_q, memory.unsqueeze(2), norm.unsqueeze(2), self.eps)  # (B, Hkv, G, nb, L, D)
        return rearrange(out, "b h g n l d -> b (h g) n l d")

    def read(self, state: dict[str, Tensor], q: Tensor, t: int) -> MemoryRead:
        out = self._retrieve(q.unsqueeze(2), state["memory"].unsqueeze(2), state["norm"].unsqueeze(2))
        return MemoryRead(output=out, gate=self.gate)

    def write(self, state: dict[str, Tensor], k: Tensor, v: Tensor, t0: int) -> dict[str, Tensor]:
        memory, norm = linear_update(state["memory"], state["norm"], feature_map(k), v, self.delta, self.eps)
        return {"memory": memory, "norm": norm}

    def forward_blocks(
        self, state: dict[str, Tensor], q: Tensor, k: Tensor, v: Tensor, t0: int, complete: int
    ) -> tuple[MemoryRead, dict[str, Tensor]]:
        nb = q.shape[2]
        # The delta rule makes the update non-linear in the state: a short loop over blocks
        # (each step is two (D, L) x (L, D) products), then one batched retrieval. Entry i of
        # the lists is the state before block i; blocks from `complete` on are not written.
        memories, norms = [state["memory"]], [state["norm"]]
        phi_k = feature_map(k)  # (B, Hkv, nb, L, D)
        for i in range(nb):
            m, z = memories[-1], norms[-1]
            if i < complete:
                m, z = linear_update(m, z, phi_k[:, :, i], v[:, :, i], self.delta, self.eps)
            memories.append(m)
            norms.append(z)
        # states before each block: (B, Hkv, nb, D, D), (B, Hkv, nb, D)
        out = self._retrieve(q, torch.stack(memories[:nb], dim=2), torch.stack(norms[:nb], dim=2))
        return MemoryRead(output=out, gate=self.gate), {"memory": memories[nb], "norm": norms[nb]}

    def footprint(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> dict[str, int]:
        """D x D + D numbers per key/value head: D + 1 vector equivalents, fixed."""
        numel = batch * self.kv_heads * (self.head_dim + 1) * self.head_dim
        return {
            "vectors": self.head_dim + 1,
            "bytes": numel * torch.empty((), dtype=dtype).element_size(),
            "parameters": sum(p.numel() for p in self.parameters()),
        }


@memplug.hookimpl
def memplug_add_memories(registry) -> None:
    registry.add(InfiniMemory)
