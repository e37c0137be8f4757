"""``sdpa``: PyTorch's ``scaled_dot_product_attention`` with an additive float mask.

The default backend on every device. A float additive mask (rather than a boolean one) is what
the trapezoid needs anyway (memories add logit offsets), and on the CPU it measured about 3%
faster than a boolean mask when this backend was chosen. The memory layer's unmasked calls
(:meth:`forward_causal`) pass no mask at all: SDPA's causal flag when queries and keys are equal
in number, torch's bottom-right causal bias on a GPU otherwise, so they can run the flash kernel.
Grouped query attention uses ``enable_gqa`` when this torch has it and repeats the key/value heads
otherwise.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.bias import causal_lower_right

import memplug
from memplug.core.contracts import AttentionBackend
from memplug.ops.attention import repeat_kv

# A builtin without an inspectable signature: its documented arguments tell (added in torch 2.5).
_HAS_GQA = "enable_gqa" in (F.scaled_dot_product_attention.__doc__ or "")


class SDPAAttention(AttentionBackend):
    """``softmax(q k^T * scale + mask) v`` by ``torch.nn.functional.scaled_dot_product_attention``."""

    name = "sdpa"
    priority = 10

    @classmethod
    def supports(cls, device: torch.device, dtype: torch.dtype, masked: bool) -> bool:
        return dtype.is_floating_point

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
        # q (N, H, Lq, D), k/v (N, Hkv, Lk, D), mask broadcastable to (N, H, Lq, Lk)
        if mask is not None:
            mask = mask.to(q.dtype)  # SDPA wants a float mask in the query dtype
        return _sdpa(q, k, v, scale, attn_mask=mask)

    def forward_causal(self, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        # q (N, H, Lq, D), k/v (N, Hkv, Lk, D) with Lk >= Lq; query i sees keys j <= i + Lk - Lq
        lq, lk = q.shape[-2], k.shape[-2]
        if lq == lk:  # square: SDPA's causal flag (top-left aligned) is the same mask
            return _sdpa(q, k, v, scale, is_causal=True)
        if q.is_cuda and not torch.compiler.is_compiling():
            # torch's bottom-right causal bias runs the flash kernel when the call allows it (else
            # memory-efficient attention); dynamo cannot trace its construction, so a compiled
            # graph takes the explicit mask, which inductor handles itself.
            return _sdpa(q, k, v, scale, attn_mask=causal_lower_right(lq, lk))
        # the CPU has no bottom-right causal kernel (the bias would be materialized, with a warning)
        return super().forward_causal(q, k, v, scale)

    def has_causal_kernel(self, device: torch.device) -> bool:
        return device.type == "cuda" and not torch.compiler.is_compiling()


def _sdpa(q: Tensor, k: Tensor, v: Tensor, scale: float, **options: Any) -> Tensor:
    """SDPA with grouped query attention: natively (``enable_gqa``) or by repeating key/value heads."""
    if q.shape[-3] == k.shape[-3]:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, **options)
    if _HAS_GQA:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True, **options)
    heads = q.shape[-3]
    return F.scaled_dot_product_attention(q, repeat_kv(k, heads), repeat_kv(v, heads), scale=scale, **options)


@memplug.hookimpl
def memplug_add_attention_backends(registry) -> None:
    registry.add(SDPAAttention)
