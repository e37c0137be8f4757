"""The kit's own float64 reference: a projection computed from its definition by quadrature.

For a measure with weight ``w(s, t)`` on ``support(t)`` and orthonormal basis functions
``q_n(s, t)`` (the ones ``encoder.basis`` evaluates), the state after ``t`` tokens is

    c_n(t) = ∫_{support(t)} f(s) w(s, t) q_n(s, t) ds,

where ``f`` is the token signal, constant ``x_j`` on each cell ``[j, j + 1)``. So
``c_n(t) = Σ_j x_j ∫_{cell j ∩ support} w q_n ds``, and every cell integral is a smooth
integrand on an interval, which quadrature handles to float64 precision:

- cells inside the support: Gauss-Legendre with ``N // 2 + 16`` nodes (exact for the
  polynomial part, and the weight is analytic away from the support's ends);
- the cells touching an end of the support: tanh-sinh (double-exponential) quadrature, whose
  nodes crowd doubly exponentially towards both ends, so algebraic end-point singularities such
  as the Jacobi weight ``(s/t)^β`` with ``-1 < β < 0`` are integrated accurately too (to ~1e-9
  for β down to about -0.95).

This uses nothing of the encoder but ``basis`` and ``support`` in float64, so it checks
``update`` and ``scan`` against the definition of the projection, not against themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from memplug.core.contracts import Encoder

__all__ = ["Weight", "projection_reference"]

#: ``weight(s, t)``: the measure's density at absolute positions ``s`` (float64 tensor) at time t.
Weight = Callable[[Tensor, float], Tensor]

_TANH_SINH_STEP = 1.0 / 32
_TANH_SINH_RANGE = 6.0  # nodes reach ~1e-275 of an end point: enough for (s/t)^β, β > -0.95


@lru_cache(maxsize=None)
def _gauss_legendre(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1]."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    return (x + 1.0) / 2.0, w / 2.0


@lru_cache(maxsize=None)
def _tanh_sinh() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tanh-sinh rule on [0, 1] as (distance to 0, distance to 1, weight).

    Both distances are computed directly (never as ``1 - x``), so nodes at 1e-200 of an end
    point keep their precision when the end is at 0.
    """
    k = np.arange(-_TANH_SINH_RANGE, _TANH_SINH_RANGE + _TANH_SINH_STEP / 2, _TANH_SINH_STEP)
    y = 0.5 * math.pi * np.sinh(k)
    with np.errstate(over="ignore"):
        from_lo = 1.0 / (1.0 + np.exp(-2.0 * y))  # (1 + tanh y) / 2
        from_hi = 1.0 / (1.0 + np.exp(2.0 * y))  # (1 - tanh y) / 2
        weight = _TANH_SINH_STEP * 0.5 * math.pi * np.cosh(k) / (2.0 * np.cosh(y) ** 2)
    keep = weight > 0
    return from_lo[keep], from_hi[keep], weight[keep]


def _cell_rule(a: float, b: float, end: bool, gl_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and weights of the quadrature rule on [a, b]."""
    h = b - a
    if not end:
        x, w = _gauss_legendre(gl_nodes)
        return a + h * x, h * w
    from_lo, from_hi, w = _tanh_sinh()
    # the half of the nodes near each end is placed from that end
    s = np.where(from_lo <= 0.5, a + h * from_lo, b - h * from_hi)
    return s, h * w


def projection_reference(
    encoder: Encoder, x: Tensor, t0: int, times: Sequence[int], weight: Weight
) -> Tensor:
    """Float64 projection states of a token stream, from the definition.

    ``x`` is (*batch, L, C), the tokens at positions ``t0 .. t0+L-1``; the signal is zero before
    ``t0``. ``times`` are the times (``t0 < t <= t0 + L``) at which to evaluate. Returns
    (*batch, len(times), N, C) in float64.
    """
    x = x.to(torch.float64)
    length = x.shape[-2]
    gl_nodes = encoder.order // 2 + 16
    out = []
    for t in times:
        if not t0 < t <= t0 + length:
            raise ValueError(f"times must lie in ({t0}, {t0 + length}], got {t}")
        lo, hi = (float(v) for v in encoder.support(float(t)))
        cells, points, weights = [], [], []
        for j in range(max(t0, math.floor(lo)), min(t, math.ceil(hi))):
            a, b = max(float(j), lo), min(float(j + 1), hi)
            if b <= a:
                continue
            s, w = _cell_rule(a, b, end=(a == lo or b == hi), gl_nodes=gl_nodes)
            cells.append(np.full(s.shape, j - t0))
            points.append(s)
            weights.append(w)
        if not cells:
            out.append(torch.zeros(*x.shape[:-2], encoder.order, x.shape[-1], dtype=torch.float64))
            continue
        cell = torch.from_numpy(np.concatenate(cells))  # (Q,) cell index of each node
        s = torch.from_numpy(np.concatenate(points))  # (Q,)
        qw = torch.from_numpy(np.concatenate(weights)) * weight(s, float(t)).to(torch.float64)  # (Q,)
        phi = encoder.basis(s, t)  # (Q, N)
        if phi.dtype != torch.float64:
            raise TypeError(f"encoder.basis must evaluate float64 positions in float64, got {phi.dtype}")
        integrals = torch.zeros(length, encoder.order, dtype=torch.float64)  # (L, N)
        integrals.index_add_(0, cell, phi * qw[:, None])
        out.append(torch.einsum("ln,...lc->...nc", integrals, x))  # (*batch, N, C)
    return torch.stack(out, dim=-3)  # (*batch, len(times), N, C)
