"""``flex``: compiled ``torch.nn.attention.flex_attention`` with the additive mask as a score_mod.

The mask enters as ``score + mask[b, h, q, k]`` (a captured tensor, broadcast by an ``expand``
view, never copied). CUDA only: on the CPU, compiled flex attention is inference-only in torch
2.13 (no backward, no log-sum-exp output), and in torch 2.14.1 on an AVX2 CPU its forward gave
wrong outputs (16 of 3072 elements off, relative difference 1.0, against the float64 definition).
A backend that is not verified must not be used, so :meth:`supports` declines the CPU and
:meth:`forward` refuses it even when the backend is named explicitly. The first call for each
shape compiles (seconds to tens of seconds), so ``sdpa`` stays the default on CUDA too.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

import memplug
from memplug.core.contracts import AttentionBackend


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


class FlexAttention(AttentionBackend):
    """``softmax(q k^T * scale + mask) v`` by compiled ``flex_attention``."""

    name = "flex"
    priority = 0

    @classmethod
    def supports(cls, device: torch.device, dtype: torch.dtype, masked: bool) -> bool:
        return (torch.device(device).type == "cuda" and _available()
                and dtype in (torch.float32, torch.float16, torch.bfloat16))

    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
        # q (N, H, Lq, D), k/v (N, Hkv, Lk, D), mask broadcastable to (N, H, Lq, Lk)
        n, heads, lq, _ = q.shape
        if q.device.type != "cuda":
            raise RuntimeError(f"attention='flex' runs on CUDA only (on {q.device.type} it is not verified: torch 2.14 "
                               "gave wrong outputs on the CPU); use attention='sdpa'")
        score_mod = None
        if mask is not None:
            full = mask.to(q.dtype).expand(n, heads, lq, k.shape[-2])  # (N, H, Lq, Lk), a view

            def score_mod(score, b, h, q_idx, kv_idx):
                return score + full[b, h, q_idx, kv_idx]

        return _compiled_flex()(q, k, v, score_mod=score_mod, scale=scale, enable_gqa=heads != k.shape[-3])


@memplug.hookimpl
def memplug_add_attention_backends(registry) -> None:
    registry.add(FlexAttention)
