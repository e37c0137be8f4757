"""``knn``: the Memorizing Transformer's external memory (Wu et al., ICLR 2022).

An external memory of raw (key, value) pairs of past blocks, up to a capacity ``M`` per
key/value head, evicting the oldest first (FIFO). Each query retrieves its ``topk`` best
matching stored keys (exact top-k by inner product) and attends over them. The stored pairs are
detached: the paper does not back-propagate into the memory; gradients reach the queries (and
this memory's own parameters) only.

Facts carried over from the paper and its reference code (google-research/meliad,
lucidrains/memorizing-transformers-pytorch):

- Keys and queries are L2-normalised (``normalize=True``, the default): the paper normalises
  them to limit the staleness of stored keys; meliad then scales logits by a learned per-head
  temperature, the port by ``exp`` of a learned per-head log-scale. Here: a learned per-head
  log-scale initialised at ``log(sqrt(D))``, so a normalised logit starts at the magnitude of
  a raw ``q . k / sqrt(D)`` logit for vectors of norm ``sqrt(D)``. Stored keys are kept
  normalised; values are raw.
- The memory is position-free: stored keys carry no positional encoding (``key_positions``
  unused), as in both references.
- ``combine="gate"`` (the paper, meliad's TRAINABLE_WEIGHTED_MEAN): a separate softmax over the
  retrieved slots, mixed with the local attention output by a learned per-head gate
  ``sigmoid(g) * memory + (1 - sigmoid(g)) * local``, ``g`` initialised at 0 (meliad's zero
  init). The memory output is ``MemoryRead.output`` with ``MemoryRead.gate``.
- ``combine="joint"`` (the PyTorch port): the retrieved slots join the local keys in one softmax;
  the memory returns its partial attention and log-sum-exp (``MemoryRead.output`` + ``lse``) and
  the layer merges the two exactly by log-sum-exp.

Search: exact top-k in torch (the scores are a (L, M) matmul per block, as cheap as attention
over M slots). With ``search="faiss"`` (or ``"auto"`` when faiss is installed and ``M >=
faiss_min``) the step form searches an exact ``IndexFlatIP`` per (batch, head) instead and the
chosen slots' logits are recomputed in torch (gradients reach the queries); same results up to
float rounding. faiss is optional (``pip install faiss-cpu``).

Chunk invariant: the store changes only when a block completes, and the block-parallel form
reads each block's FIFO state as a window over ``[stored | new]``. The only possible
difference is a near-tie at the k-th score flipping under float rounding (never in float64).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

import memplug
from memplug.core.contracts import Memory, MemoryRead
from memplug.ops.memory_banks import faiss_topk, fifo_append, fifo_valid, fifo_windows, topk_attention

_COMBINES = ("gate", "joint")
_SEARCHES = ("auto", "torch", "faiss")


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class KNNMemory(Memory):
    """FIFO store of raw (key, value) pairs read by exact top-k attention.

    State: ``keys`` (normalised when ``normalize``), ``values`` (B, Hkv, M, D), newest last, and
    ``count`` (1,) int64, how many of the M slots are filled. Parameters: ``log_scale`` (H,)
    when ``normalize``, ``gate`` (H,) when ``combine="gate"``.

    Args:
        capacity: M, stored (key, value) pairs per key/value head; the oldest are evicted first.
        topk: keys each query retrieves (exact top-k by inner product).
        combine: ``"gate"`` (the paper: a separate softmax over the retrieved keys, mixed with
            local attention by a learned per-head gate) or ``"joint"`` (the retrieved keys join
            the local ones in one softmax, merged by log-sum-exp).
        normalize: L2-normalise keys and queries, with a learned per-head temperature (the paper).
        search: ``"torch"`` (exact top-k by matmul), ``"faiss"`` (an exact ``IndexFlatIP``; needs
            faiss installed) or ``"auto"`` (faiss when installed and ``capacity >= faiss_min``).
        faiss_min: the capacity from which ``search="auto"`` uses faiss.
    """

    name = "knn"

    def __init__(
        self,
        capacity: int = 1024,
        topk: int = 32,
        combine: Literal["gate", "joint"] = "gate",
        normalize: bool = True,
        search: Literal["auto", "torch", "faiss"] = "auto",
        faiss_min: int = 65536,
    ) -> None:
        super().__init__()
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity!r}")
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk!r}")
        if combine not in _COMBINES:
            raise ValueError(f"combine must be one of {_COMBINES}, got {combine!r}")
        if search not in _SEARCHES:
            raise ValueError(f"search must be one of {_SEARCHES}, got {search!r}")
        if search == "faiss" and not _faiss_available():
            raise ValueError("search='faiss' needs faiss installed (pip install faiss-cpu); use 'torch' or 'auto'")
        self.capacity, self.topk, self.combine, self.normalize = capacity, topk, combine, normalize
        self.use_faiss = search == "faiss" or (search == "auto" and capacity >= faiss_min and _faiss_available())

    @classmethod
    def budget(cls, slots: int) -> dict[str, Any]:
        return {"capacity": slots}

    def setup(self, heads: int, kv_heads: int, head_dim: int, block: int | None = None) -> None:
        super().setup(heads, kv_heads, head_dim, block)
        if self.normalize:
            self.log_scale = nn.Parameter(torch.full((heads,), 0.5 * math.log(head_dim)))
        if self.combine == "gate":
            self.gate = nn.Parameter(torch.zeros(heads))

    def init_state(self, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        shape = (batch, self.kv_heads, self.capacity, self.head_dim)
        return {
            "keys": torch.zeros(shape, dtype=dtype, device=device),
            "values": torch.zeros(shape, dtype=dtype, device=device),
            "count": torch.zeros(1, dtype=torch.long, device=device),
        }

    def _scale(self, ndim: int) -> Tensor | float:
        """The logit temperature, per query head, shaped to broadcast over (B, Hkv, G, ...)."""
        if not self.normalize:
            return 1.0 / math.sqrt(self.head_dim)
        scale = rearrange(self.log_scale.exp(), "(h g) -> h g", h=self.kv_heads)  # (Hkv, G)
        return scale.reshape(1, *scale.shape, *([1] * (ndim - 3)))

    def _prepare_keys(self, k: Tensor) -> Tensor:
        return F.normalize(k, dim=-1) if self.normalize else k

    def _attend(
        self, q: Tensor, keys: Tensor, values: Tensor, valid: Tensor, index: Tensor | None = None
    ) -> MemoryRead:
        """``q`` (B, H, nb, L, D) over per-block stores ``keys``/``values`` (B, Hkv, nb, M, D)."""
        qg = rearrange(self._prepare_keys(q), "b (h g) n l d -> b h g n l d", h=self.kv_heads)
        scale = self._scale(qg.dim())
        out, lse = topk_attention(qg, keys.unsqueeze(2), values.unsqueeze(2), valid, self.topk, scale, index)
        out = rearrange(out, "b h g n l d -> b (h g) n l d")  # (B, H, nb, L, D)
        lse = rearrange(lse, "b h g n l -> b (h g) n l")
        if self.combine == "gate":
            return MemoryRead(output=out, gate=self.gate)
        return MemoryRead(output=out, lse=lse)

    def read(self, state: dict[str, Tensor], q: Tensor, t: int) -> MemoryRead:
        valid = fifo_valid(self.capacity, 0, 1, state["count"], device=q.device)  # (1, M)
        index = None
        if self.use_faiss:
            count = int(state["count"])
            qg = rearrange(self._prepare_keys(q), "b (h g) l d -> (b h) g l d", h=self.kv_heads)
            keys = rearrange(state["keys"], "b h m d -> (b h) m d")
            index = faiss_topk(qg, keys, count, self.topk)  # (B*Hkv, G, L, k)
            index = rearrange(index, "(b h) g l k -> b h g 1 l k", h=self.kv_heads)
        return self._attend(q.unsqueeze(2), state["keys"].unsqueeze(2), state["values"].unsqueeze(2), valid, index)

    def write(self, state: dict[str, Tensor], k: Tensor, v: Tensor, t0: int) -> dict[str, Tensor]:
        keys = fifo_append(state["keys"], self._prepare_keys(k).detach(), self.capacity)
        values = fifo_append(state["values"], v.detach(), self.capacity)
        count = (state["count"] + k.shape[-2]).clamp_max(self.capacity)
        return {"keys": keys, "values": values, "count": count}

    def forward_blocks(
        self, state: dict[str, Tensor], q: Tensor, k: Tensor, v: Tensor, t0: int, complete: int
    ) -> tuple[MemoryRead, dict[str, Tensor]]:
        if self.use_faiss:  # the faiss search runs block by block on the step form
            return super().forward_blocks(state, q, k, v, t0, complete)
        b, hkv, nb, length, d = k.shape
        new_k = self._prepare_keys(k).detach().reshape(b, hkv, nb * length, d)  # (B, Hkv, nb*L, D)
        new_v = v.detach().reshape(b, hkv, nb * length, d)
        bank_k = torch.cat([state["keys"], new_k], dim=-2)  # (B, Hkv, M + nb*L, D)
        bank_v = torch.cat([state["values"], new_v], dim=-2)
        keys = fifo_windows(bank_k, self.capacity, length, nb)  # (B, Hkv, nb, M, D)
        values = fifo_windows(bank_v, self.capacity, length, nb)
        valid = fifo_valid(self.capacity, length, nb, state["count"], device=q.device)  # (nb, M)
        end = self.capacity + complete * length
        new_state = {
            "keys": bank_k[:, :, end - self.capacity : end],
            "values": bank_v[:, :, end - self.capacity : end],
            "count": (state["count"] + complete * length).clamp_max(self.capacity),
        }
        return self._attend(q, keys, values, valid), new_state

    def footprint(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> dict[str, int]:
        """2 M vectors (keys and values) per key/value head, plus the slot counter."""
        numel = 2 * batch * self.kv_heads * self.capacity * self.head_dim
        size = torch.empty((), dtype=dtype).element_size()
        return {
            "vectors": 2 * self.capacity,
            "bytes": numel * size + 8,
            "parameters": sum(p.numel() for p in self.parameters()),
        }


@memplug.hookimpl
def memplug_add_memories(registry) -> None:
    registry.add(KNNMemory)
