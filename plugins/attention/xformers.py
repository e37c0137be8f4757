"""``xformers``: ``xformers.ops.memory_efficient_attention`` with the additive mask as a bias.

CUDA only: xformers installs on CPU machines but its attention raises there, so
:meth:`XFormersAttention.supports` is False unless xformers imports and the device is CUDA.
Not exercised on the CPU-only development machine; its test skips when unsupported.
"""

from __future__ import annotations

import functools

import torch
from einops import rearrange
from torch import Tensor

import memplug
from memplug.core.contracts import AttentionBackend
from memplug.ops.attention import repeat_kv


@functools.cache
def _xformers_ops():
    try:
        import xformers.ops as xops
    except ImportError:
        return None
    return xops


class XFormersAttention(AttentionBackend):
    """``softmax(q k^T * scale + mask) v`` by xformers' memory-efficient kernel (CUDA)."""

    name = "xformers"
    priority = 5

    @classmethod
    def supports(cls, device: torch.device, dtype: torch.dtype, masked: bool) -> bool:
        return torch.device(device).type == "cuda" and _xformers_ops() is not None and dtype.is_floating_point

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
        # q (N, H, Lq, D), k/v (N, Hkv, Lk, D), mask broadcastable to (N, H, Lq, Lk)
        n, heads, lq, _ = q.shape
        lk = k.shape[-2]
        k, v = repeat_kv(k, heads), repeat_kv(v, heads)  # (N, H, Lk, D)
        bias = None
        if mask is not None:
            # xformers wants a dense bias whose rows start 8-element aligned: slice a padded tensor.
            padded = torch.empty(n, heads, lq, -(-lk // 8) * 8, dtype=q.dtype, device=q.device)
            bias = padded[..., :lk]
            bias.copy_(mask.to(q.dtype).expand(n, heads, lq, lk))  # (N, H, Lq, Lk)
        q, k, v = (rearrange(x, "n h l d -> n l h d") for x in (q, k, v))
        out = _xformers_ops().memory_efficient_attention(q, k, v, attn_bias=bias, scale=scale)
        return rearrange(out, "n l h d -> n h l d")


@memplug.hookimpl
def memplug_add_attention_backends(registry) -> None:
    registry.add(XFormersAttention)
