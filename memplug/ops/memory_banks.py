"""Reading a bank of stored keys and values: FIFO windows, masked softmax, top-k attention.

Pure functions shared by the memories that keep raw (key, value) slots (the Memorizing
Transformer's kNN memory, Melodi's long-term memory). A *bank* is the concatenation
``[stored slots | new slots]`` along the slot axis, oldest first; the memory that block ``i``
reads is a window of ``capacity`` consecutive bank slots ending where block ``i`` starts, so
every block of a block-parallel call reads its own FIFO state without a Python loop.

Nothing here holds state or parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fifo_windows", "fifo_valid", "masked_softmax", "topk_attention", "faiss_topk", "fifo_append"]


def fifo_windows(bank: Tensor, capacity: int, step: int, blocks: int) -> Tensor:
    """The FIFO state seen by each of ``blocks`` consecutive blocks, as a view of ``bank``.

    ``bank`` (..., capacity + blocks * step, D) holds the ``capacity`` stored slots followed by
    the ``step`` slots every block appends. Window ``i`` is ``bank[..., i*step : i*step +
    capacity, :]``: the state before block ``i`` writes. Returns (..., blocks, capacity, D), a
    strided view (no copy).
    """
    if bank.shape[-2] < capacity + (blocks - 1) * step:
        raise ValueError(f"bank has {bank.shape[-2]} slots, need capacity={capacity} + (blocks-1)*step")
    # unfold over the slot axis: (..., n_windows, D, capacity) -> (..., n_windows, capacity, D)
    windows = bank.unfold(-2, capacity, step).transpose(-1, -2)
    return windows[..., :blocks, :, :]


def fifo_valid(
    capacity: int, step: int, blocks: int, count: int | Tensor, device: torch.device | None = None
) -> Tensor:
    """Which slots of each :func:`fifo_windows` window hold a stored entry: (blocks, capacity) bool.

    The bank's first ``capacity - count`` slots are empty (the store held ``count`` entries);
    every appended slot is filled. ``count`` may be a (1,) tensor (a memory's state): no host
    synchronisation, and nothing data-dependent for ``torch.compile``.
    """
    i = torch.arange(blocks, device=device).unsqueeze(-1)  # (blocks, 1)
    s = torch.arange(capacity, device=device)  # (capacity,)
    return i * step + s >= capacity - count  # (blocks, capacity)


def fifo_append(store: Tensor, new: Tensor, capacity: int) -> Tensor:
    """Append ``new`` (..., n, D) to ``store`` (..., capacity, D) and keep the newest ``capacity``."""
    return torch.cat([store, new], dim=-2)[..., -capacity:, :]


def masked_softmax(logits: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax over the last axis where ``-inf`` hides an entry, and its log-sum-exp.

    A row with every entry hidden gives zero weights and ``lse = -inf`` (an empty memory adds
    nothing to a log-sum-exp merge) with finite gradients, unlike ``torch.softmax`` (nan).
    Returns ``weights`` (same shape as ``logits``) and ``lse`` (logits.shape[:-1]).
    """
    m = logits.amax(dim=-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(logits - m)  # exp(-inf) = 0 for hidden entries
    s = e.sum(dim=-1, keepdim=True)
    tiny = torch.finfo(logits.dtype).tiny
    weights = e / s.clamp_min(tiny)
    lse = torch.where(s > 0, m + torch.log(s.clamp_min(tiny)), torch.full_like(s, float("-inf")))
    return weights, lse.squeeze(-1)


def topk_attention(
    q: Tensor,
    keys: Tensor,
    values: Tensor,
    valid: Tensor,
    k: int,
    scale: Tensor | float,
    index: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention of each query over its ``k`` best-matching valid slots (exact top-k).

    ``q`` (..., L, D); ``keys``/``values`` (..., M, D) broadcastable against ``q``'s leading
    axes; ``valid`` bool broadcastable to (..., 1, M); ``scale`` a float or a tensor
    broadcastable to (..., 1, 1) (a per-head temperature). Similarity and attention logit are
    the same inner product ``q . key``, so the logits of the chosen slots are the top-k scores
    themselves (times ``scale``). With ``index`` (..., L, k) given (an outside search such as
    faiss), those slots are used instead of the torch top-k; entries ``< 0`` mean "no slot".

    The output: for a small store (``M < 4 k``) a dense (..., L, M) weight matrix times
    ``values`` (one matmul, less memory than gathered values); for a large one the k chosen
    values are gathered, (..., L, k, D), so the value product costs k, not M, per query. The
    same numbers either way.
    Returns ``out`` (..., L, D) and ``lse`` (..., L) of the chosen logits (``-inf``: none).
    """
    scores = q @ keys.transpose(-1, -2)  # (..., L, M)
    scores = scores.masked_fill(~valid.unsqueeze(-2), float("-inf"))
    kk = min(k, scores.shape[-1])
    if index is None:
        top, idx = scores.topk(kk, dim=-1)  # (..., L, k)
    else:
        idx = index.clamp_min(0)
        top = scores.gather(-1, idx).masked_fill(index < 0, float("-inf"))
    # scale only the finite scores: -inf * a learned scale would send nan into its gradient
    chosen = torch.isfinite(top)
    logits = (top.masked_fill(~chosen, 0.0) * scale).masked_fill(~chosen, float("-inf"))
    weights, lse = masked_softmax(logits)
    if scores.shape[-1] < 4 * kk:
        # scatter_add: padded "no slot" entries (weight 0) may share an index with a real one
        dense = torch.zeros_like(scores, dtype=weights.dtype).scatter_add(-1, idx, weights)  # (..., L, M)
        return dense @ values, lse
    lead = scores.shape[:-2]
    length, d = idx.shape[-2], values.shape[-1]
    flat = idx.reshape(*lead, length * kk, 1).expand(*lead, length * kk, d)  # (..., L*k, D)
    chosen_v = values.expand(*lead, *values.shape[-2:]).gather(-2, flat).reshape(*lead, length, kk, d)
    return (weights.unsqueeze(-2).to(chosen_v.dtype) @ chosen_v).squeeze(-2), lse  # (..., L, D)


def faiss_topk(q: Tensor, keys: Tensor, count: int, k: int) -> Tensor:
    """Exact inner-product top-k with faiss (``IndexFlatIP``), one index per leading slice.

    ``q`` (N, G, L, D) queries, ``keys`` (N, M, D) of which the last ``count`` slots are filled.
    Returns slot indices (N, G, L, k) into the M slots, ``-1`` where fewer than k are filled.
    The scores are recomputed in torch by :func:`topk_attention`, so gradients reach ``q``.
    Raises ``ImportError`` when faiss is not installed.
    """
    import faiss  # optional dependency: pip install faiss-cpu

    n, g, length, d = q.shape
    m = keys.shape[-2]
    out = torch.full((n, g, length, k), -1, dtype=torch.long)
    qs = q.detach().to(torch.float32).cpu().reshape(n, g * length, d).numpy()  # (N, G*L, D)
    ks = keys.detach().to(torch.float32).cpu()[:, m - count :].contiguous().numpy()  # (N, count, D)
    for i in range(n):
        if count == 0:
            continue
        index = faiss.IndexFlatIP(d)
        index.add(ks[i])
        _, ids = index.search(qs[i], min(k, count))  # (G*L, k') positions among the filled slots
        ids_t = torch.from_numpy(ids).long()
        ids_t = torch.where(ids_t >= 0, ids_t + (m - count), ids_t)
        out[i, :, :, : ids_t.shape[-1]] = ids_t.reshape(g, length, -1)
    return out.to(q.device)
