"""Placing sample positions inside an encoder's support (the retrievers' shared arithmetic).

A retriever chooses P *fractions* of the support, 0 at its oldest end and 1 at ``t``;
:func:`place` turns them into absolute positions for one time ``t`` (a float or a 0-d tensor:
(P,)) or for a (nb,) tensor of block times (nb, P). Positions are float64 unless ``t`` is a
floating tensor, whose dtype they take (so a float64 stream at position 1e6 keeps sub-token
resolution); their device is that of ``t`` when it is a tensor, else that of ``fractions``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..util.checks import positive_int

__all__ = ["midpoints", "place", "check_samples"]


def check_samples(samples: object) -> int:
    """``samples`` as an int >= 1, else a ValueError naming it."""
    positive_int("samples", samples)
    return samples


def midpoints(samples: int, dtype: torch.dtype = torch.float64, device: torch.device | None = None) -> Tensor:
    """Centres of ``samples`` equal cells of [0, 1]: ``(i + 1/2) / P`` for i < P, shape (P,)."""
    return (torch.arange(samples, dtype=dtype, device=device) + 0.5) / samples


def place(fractions: Tensor, lo: float | Tensor, hi: float | Tensor) -> Tensor:
    """Absolute positions ``lo + (hi - lo) * fractions``.

    ``fractions`` (P,); ``lo`` and ``hi`` floats, 0-d tensors, or (nb,) tensors (the support of
    each block time). Returns (P,), or (nb, P) when either bound has a block axis.
    """
    ref = hi if isinstance(hi, Tensor) else lo if isinstance(lo, Tensor) else None
    if ref is None:
        return lo + (hi - lo) * fractions.to(torch.float64)
    dtype = ref.dtype if ref.is_floating_point() else torch.float64
    lo = torch.as_tensor(lo, dtype=dtype, device=ref.device)
    hi = torch.as_tensor(hi, dtype=dtype, device=ref.device)
    lo, hi = torch.broadcast_tensors(lo, hi)
    return lo.unsqueeze(-1) + (hi - lo).unsqueeze(-1) * fractions.to(dtype=dtype, device=ref.device)  # (..., P)
