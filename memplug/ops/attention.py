"""Attention as pure functions: the reference definition, the trapezoid mask and output merges.

These are the definitions every attention backend and :class:`memplug.core.layer.MemoryAttention`
are tested against. Nothing here holds state.

The trapezoid. The queries of a block of ``L`` tokens attend, in one softmax, to
``[memory slots | local keys]``. Every query sees every memory slot (the memory only describes
the past of the block); local keys are causal and aligned bottom-right, so when the local keys
are the previous block plus the current one (``2L`` keys), query ``i`` sees local keys
``0 .. L + i``. Drawn as a (queries x keys) picture the visible region is a trapezoid.
"""

from __future__ import annotations

import math

import torch
from einops import repeat
from torch import Tensor

__all__ = [
    "reference_attention",
    "trapezoid_mask",
    "merge_lse",
    "merge_gated",
    "open_by_gate",
    "repeat_kv",
]


def repeat_kv(x: Tensor, heads: int) -> Tensor:
    """Grouped query attention: repeat each of the Hkv key/value heads ``heads // Hkv`` times.

    ``x`` (N, Hkv, S, D) -> (N, heads, S, D); query head ``h`` uses key head ``h // group``.
    """
    kv_heads = x.shape[-3]
    if heads % kv_heads:
        raise ValueError(f"heads={heads} must be a multiple of the key/value heads ({kv_heads})")
    if heads == kv_heads:
        return x
    return repeat(x, "... h s d -> ... (h g) s d", g=heads // kv_heads)


def reference_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float | None = None
) -> tuple[Tensor, Tensor]:
    """Masked softmax attention written out, returning the output and its log-sum-exp.

    ``q`` (..., H, Lq, D), ``k`` and ``v`` (..., Hkv, Lk, D) with H a multiple of Hkv, ``mask``
    an additive float mask broadcastable to (..., H, Lq, Lk) (``-inf`` hides a key). Returns
    ``out`` (..., H, Lq, D) and ``lse`` (..., H, Lq), the log of the softmax denominator, which
    is what :func:`merge_lse` needs. Runs in the dtype of the inputs (float64 for checks).
    A query row with every key hidden gives ``lse = -inf`` and a zero output.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    k, v = repeat_kv(k, q.shape[-3]), repeat_kv(v, q.shape[-3])
    scores = (q @ k.transpose(-1, -2)) * scale  # (..., H, Lq, Lk)
    if mask is not None:
        scores = scores + mask.to(scores.dtype)
    lse = torch.logsumexp(scores, dim=-1)  # (..., H, Lq)
    # exp(s - lse) is the softmax; a fully hidden row has lse = -inf, made a zero row here.
    weights = torch.exp(scores - lse.unsqueeze(-1)).nan_to_num(0.0)
    return weights @ v, lse


def trapezoid_mask(
    queries: int,
    local_keys: int,
    memory: int = 0,
    key_valid: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Additive mask for ``[memory | local keys]``: memory visible, local keys causal bottom-right.

    Query ``i`` (of ``queries``) sees every one of the ``memory`` columns, and local key ``j``
    (of ``local_keys >= queries``) iff ``j <= i + local_keys - queries``: the queries are the
    last ``queries`` positions of the local window. ``key_valid`` (..., local_keys) bool hides
    local columns that hold no key (padding, a previous block that does not exist yet); it
    adds leading dimensions to the result.

    Returns (..., queries, memory + local_keys) with 0 where visible and ``-inf`` elsewhere.
    Memory-specific logit offsets or hidden slots are added on top by the caller.
    """
    if local_keys < queries:
        raise ValueError(f"local_keys={local_keys} must be >= queries={queries} (queries are the last local positions)")
    i = torch.arange(queries, device=device).unsqueeze(-1)  # (Lq, 1)
    j = torch.arange(local_keys, device=device)  # (Lk,)
    visible = j <= i + (local_keys - queries)  # (Lq, Lk)
    if key_valid is not None:
        if key_valid.shape[-1] != local_keys:
            raise ValueError(f"key_valid has {key_valid.shape[-1]} columns, expected local_keys={local_keys}")
        visible = visible & key_valid.to(device=visible.device, dtype=torch.bool).unsqueeze(-2)
    local = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, float("-inf"))
    if memory == 0:
        return local
    mem = torch.zeros(*local.shape[:-1], memory, dtype=dtype, device=device)  # (..., Lq, P)
    return torch.cat([mem, local], dim=-1)  # (..., Lq, P + Lk)


def merge_lse(out_a: Tensor, lse_a: Tensor, out_b: Tensor, lse_b: Tensor) -> tuple[Tensor, Tensor]:
    """Merge two partial attentions over disjoint key sets into the attention over their union.

    ``out_*`` (..., L, D) normalised outputs, ``lse_*`` (..., L) their log-sum-exps. With
    ``lse = logaddexp(lse_a, lse_b)`` the union's softmax weights split as
    ``exp(lse_a - lse)`` and ``exp(lse_b - lse)``, so the result equals one softmax over both
    key sets. A side with ``lse = -inf`` (no visible key) contributes nothing.
    """
    lse = torch.logaddexp(lse_a, lse_b)
    # Both -inf: the union is empty too; keep the weights finite (zero) instead of nan.
    wa = torch.exp(lse_a - lse).nan_to_num(0.0).unsqueeze(-1)
    wb = torch.exp(lse_b - lse).nan_to_num(0.0).unsqueeze(-1)
    return wa * out_a + wb * out_b, lse


def merge_gated(memory_out: Tensor, local_out: Tensor, gate: Tensor) -> Tensor:
    """``sigmoid(gate) * memory_out + (1 - sigmoid(gate)) * local_out``.

    ``memory_out`` and ``local_out`` (B, H, ..., D); ``gate`` (H,) logits, one per head (the
    Memorizing Transformer's and Infini-attention's learned mix).
    """
    g = torch.sigmoid(gate).to(local_out.dtype)
    g = g.reshape(g.shape[0], *([1] * (local_out.dim() - 2)))  # (H, 1, ..., 1)
    return g * memory_out + (1 - g) * local_out


def open_by_gate(local_out: Tensor, joint_out: Tensor, gate: Tensor) -> Tensor:
    """``local_out + gate * (joint_out - local_out)``: a memory let in by a per-head gate.

    ``local_out`` is the attention without the memory, ``joint_out`` with it, both (B, H, ..., D);
    ``gate`` (H,), one weight per head. A gate of 0 gives the model without memory exactly and
    1 the model with it. The gate is not clamped: at 0 its gradient ``<dL/dout, joint - local>``
    is whole (a clamp would pass none at its bound), and a gate pushed below 0 can come back.
    """
    g = gate.to(local_out.dtype)
    g = g.reshape(g.shape[0], *([1] * (local_out.dim() - 2)))  # (H, 1, ..., 1)
    return local_out + g * (joint_out - local_out)
