"""``flash``: ``flash_attn.flash_attn_func`` (FlashAttention 2), for unmasked calls on CUDA.

FlashAttention takes no arbitrary additive mask, so this backend only accepts ``mask=None``
(:meth:`FlashAttention.supports` is False for masked calls, and for anything but CUDA with
float16 / bfloat16 and an importable ``flash_attn``). The memory layer always passes a
trapezoid mask, so auto-selection picks it only for maskless attention. Grouped query attention
is native. Not exercised on the CPU-only development machine; its test skips when unsupported.
"""

from __future__ import annotations

import functools

import torch
from einops import rearrange
from torch import Tensor

import memplug
from memplug.core.contracts import AttentionBackend


@functools.cache
def _flash_attn_func():
    try:
        from flash_attn import flash_attn_func
    except ImportError:
        return None
    return flash_attn_func


class FlashAttention(AttentionBackend):
    """``softmax(q k^T * scale) v`` by FlashAttention 2 (CUDA, half precision, no mask)."""

    name = "flash"
    priority = 20

    @classmethod
    def supports(cls, device: torch.device, dtype: torch.dtype, masked: bool) -> bool:
        return (
            not masked
            and torch.device(device).type == "cuda"
            and dtype in (torch.float16, torch.bfloat16)
            and _flash_attn_func() is not None
        )

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
        # q (N, H, Lq, D), k/v (N, Hkv, Lk, D)
        if mask is not None:
            raise ValueError("the flash backend takes no mask (mask must be None); use attention='sdpa'")
        q, k, v = (rearrange(x, "n h l d -> n l h d") for x in (q, k, v))
        out = _flash_attn_func()(q, k, v, softmax_scale=scale)
        return rearrange(out, "n l h d -> n h l d")


@memplug.hookimpl
def memplug_add_attention_backends(registry) -> None:
    registry.add(FlashAttention)
