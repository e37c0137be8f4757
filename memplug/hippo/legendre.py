"""Legendre and Jacobi polynomials, evaluated by their three-term recurrences.

The scale-invariant HiPPO measures project onto orthonormal polynomial families on [0, 1]:

- shifted Legendre, weight 1:      g_n(u) = sqrt(2n + 1) P_n(2u - 1)
- shifted Jacobi, weight u^β:      q_n(u) = sqrt(2n + β + 1) P_n^(0,β)(2u - 1)   (β > -1)

(``∫_0^1 u^β P_n^(0,β)(2u-1)^2 du = 1 / (2n + β + 1)``, so β = 0 gives back g_n.)

Every function returns all degrees ``0 .. n-1`` at once, stacked on a new last axis: an input
``x`` of shape (...) gives (..., n). They are built from elementwise torch ops on ``x``, so they
run in the dtype and on the device of ``x`` and are differentiable in ``x``
(``torch.special.legendre_polynomial_p`` has no gradient in ``x``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..util.checks import positive_int

__all__ = [
    "jacobi",
    "legendre",
    "legendre_antiderivative",
    "legendre_derivative",
    "shifted_jacobi",
    "shifted_jacobi_antiderivative",
    "shifted_jacobi_derivative",
    "shifted_legendre",
    "shifted_legendre_antiderivative",
    "shifted_legendre_derivative",
]


def _check(n: int, beta: float | None = None) -> None:
    positive_int("n (the number of degrees)", n)
    if beta is not None and not (math.isfinite(beta) and beta > -1):
        raise ValueError(f"beta must be a finite number > -1, got {beta!r}")


def _scales(values: list[float], like: Tensor) -> Tensor:
    """Per-degree constants as a (n,) tensor in the dtype and on the device of ``like``."""
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def legendre(n: int, x: Tensor) -> Tensor:
    """P_0 .. P_{n-1} at ``x``: (...) -> (..., n).

    (k + 1) P_{k+1} = (2k + 1) x P_k - k P_{k-1}.
    """
    _check(n)
    p = [torch.ones_like(x)]
    if n > 1:
        p.append(x * 1)  # a fresh tensor, so the stacked output never aliases the input
    for k in range(1, n - 1):
        p.append(torch.addcmul(p[k - 1] * (-k / (k + 1)), x, p[k], value=(2 * k + 1) / (k + 1)))
    return torch.stack(p, dim=-1)


def legendre_derivative(n: int, x: Tensor) -> Tensor:
    """P'_0 .. P'_{n-1} at ``x``: (...) -> (..., n), from P'_{k+1} = P'_{k-1} + (2k + 1) P_k."""
    _check(n)
    p = legendre(n, x)
    d = [torch.zeros_like(x)]
    if n > 1:
        d.append(torch.ones_like(x))
    for k in range(1, n - 1):
        d.append(d[k - 1] + (2 * k + 1) * p[..., k])
    return torch.stack(d, dim=-1)


def legendre_antiderivative(n: int, x: Tensor) -> Tensor:
    """∫_{-1}^x P_k for k = 0 .. n-1: (...) -> (..., n).

    ∫_{-1}^x P_k = (P_{k+1}(x) - P_{k-1}(x)) / (2k + 1) for k >= 1 (both sides vanish at -1),
    and x + 1 for k = 0.
    """
    _check(n)
    p = legendre(n + 1, x)  # (..., n+1)
    first = (x + 1).unsqueeze(-1)  # (..., 1)
    if n == 1:
        return first
    k = _scales([2 * k + 1 for k in range(1, n)], x)
    return torch.cat([first, (p[..., 2:] - p[..., : n - 1]) / k], dim=-1)


def shifted_legendre(n: int, u: Tensor) -> Tensor:
    """Orthonormal g_k(u) = sqrt(2k + 1) P_k(2u - 1) on [0, 1], k < n: (...) -> (..., n)."""
    _check(n)
    return legendre(n, 2 * u - 1) * _scales([math.sqrt(2 * k + 1) for k in range(n)], u)


def shifted_legendre_derivative(n: int, u: Tensor) -> Tensor:
    """d/du g_k(u) = 2 sqrt(2k + 1) P'_k(2u - 1): (...) -> (..., n)."""
    _check(n)
    return legendre_derivative(n, 2 * u - 1) * _scales([2 * math.sqrt(2 * k + 1) for k in range(n)], u)


def shifted_legendre_antiderivative(n: int, u: Tensor) -> Tensor:
    """G_k(u) = ∫_0^u g_k(v) dv = sqrt(2k + 1) / 2 · ∫_{-1}^{2u-1} P_k: (...) -> (..., n).

    ``G(b) - G(a)`` is the exact integral of g over a token cell [a, b].
    """
    _check(n)
    return legendre_antiderivative(n, 2 * u - 1) * _scales([math.sqrt(2 * k + 1) / 2 for k in range(n)], u)


def jacobi(n: int, x: Tensor, alpha: float, beta: float) -> Tensor:
    """Standard Jacobi P_0^(α,β) .. P_{n-1}^(α,β) at ``x`` (orthogonal on [-1, 1] for the weight
    (1 - x)^α (1 + x)^β, with P_k(1) = binom(k + α, k)): (...) -> (..., n).

    P_1 = (α + 1) + (α + β + 2)(x - 1)/2 and, for k >= 1 (DLMF 18.9.2),
    2(k+1)(k+s+1)(2k+s) P_{k+1} = (2k+s+1)[(2k+s+2)(2k+s) x + α² - β²] P_k
                                  - 2(k+α)(k+β)(2k+s+2) P_{k-1},   s = α + β.
    """
    _check(n)
    for arg, v in (("alpha", alpha), ("beta", beta)):
        if not (math.isfinite(v) and v > -1):
            raise ValueError(f"{arg} must be a finite number > -1, got {v!r}")
    s = alpha + beta
    p = [torch.ones_like(x)]
    if n > 1:
        p.append((alpha + 1) + (s + 2) / 2 * (x - 1))
    for k in range(1, n - 1):
        d = 2 * (k + 1) * (k + s + 1) * (2 * k + s)
        a = (2 * k + s + 1) * (2 * k + s + 2) * (2 * k + s) / d
        b = (2 * k + s + 1) * (alpha**2 - beta**2) / d
        c = 2 * (k + alpha) * (k + beta) * (2 * k + s + 2) / d
        p.append(torch.addcmul(p[k] * b - p[k - 1] * c, x, p[k], value=a))
    return torch.stack(p, dim=-1)


def shifted_jacobi(n: int, u: Tensor, beta: float) -> Tensor:
    """Orthonormal q_k(u) = sqrt(2k + β + 1) P_k^(0,β)(2u - 1) on [0, 1] for the weight u^β,
    k < n: (...) -> (..., n)."""
    _check(n, beta)
    return jacobi(n, 2 * u - 1, 0.0, beta) * _scales([math.sqrt(2 * k + beta + 1) for k in range(n)], u)


def shifted_jacobi_derivative(n: int, u: Tensor, beta: float) -> Tensor:
    """d/du q_k(u) = sqrt(2k + β + 1) (k + β + 1) P_{k-1}^(1,β+1)(2u - 1): (...) -> (..., n).

    From d/dx P_k^(α,β) = (k + α + β + 1)/2 · P_{k-1}^(α+1,β+1) and du = dx / 2.
    """
    _check(n, beta)
    zero = torch.zeros_like(u).unsqueeze(-1)  # (..., 1): degree 0 is constant
    if n == 1:
        return zero
    lower = jacobi(n - 1, 2 * u - 1, 1.0, beta + 1)  # (..., n-1): P_{k-1}^(1,β+1), k = 1..n-1
    scale = _scales([math.sqrt(2 * k + beta + 1) * (k + beta + 1) for k in range(1, n)], u)
    return torch.cat([zero, lower * scale], dim=-1)


def shifted_jacobi_antiderivative(n: int, u: Tensor, beta: float) -> Tensor:
    """W_k(u) = ∫_0^u q_k(v) v^β dv for k < n: (...) -> (..., n), ``u`` in [0, 1].

    From Rodrigues' formula, d/dx[(1-x)(1+x)^(β+1) P_{k-1}^(1,β+1)] = -2k (1+x)^β P_k^(0,β), so
    W_k(u) = -sqrt(2k + β + 1)/k · (1 - u) u^(β+1) P_{k-1}^(1,β+1)(2u - 1)   (k >= 1),
    W_0(u) = u^(β+1) / sqrt(β + 1).
    ``W(b) - W(a)`` is the exact weighted integral over a token cell [a, b], also the first one
    [0, b] where u^β may be singular.
    """
    _check(n, beta)
    power = u.clamp(min=0) ** (beta + 1)  # u^(β+1), 0 at u = 0
    first = (power / math.sqrt(beta + 1)).unsqueeze(-1)  # (..., 1)
    if n == 1:
        return first
    lower = jacobi(n - 1, 2 * u - 1, 1.0, beta + 1)  # (..., n-1)
    scale = _scales([-math.sqrt(2 * k + beta + 1) / k for k in range(1, n)], u)
    return torch.cat([first, ((1 - u) * power).unsqueeze(-1) * lower * scale], dim=-1)
