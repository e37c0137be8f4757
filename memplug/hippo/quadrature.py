"""Gauss-Jacobi and Gauss-Legendre quadrature, built in torch float64.

An n-point Gauss rule for the weight w integrates ``∫ p(x) w(x) dx`` exactly for every
polynomial p of degree < 2n. The HiPPO transitions are integrals of products of two
polynomials of degree < N against the measure's weight, so N points make them exact.

Nodes come from the Golub-Welsch eigenvalue problem of the Jacobi matrix, are polished by
Newton steps on P_n^(α,β), and the weights come from the closed form
w_i = C_n / ((1 - x_i²) P_n'(x_i)²), which keeps full relative accuracy at the ends
(eigenvector weights lose it there). All in torch float64 on the CPU: NumPy's OpenBLAS
threads would compete with torch's own for the same cores. Rules are cached per (n, α, β); the returned tensors
are shared, so treat them as read-only.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from ..util.checks import positive_int
from .legendre import jacobi

__all__ = ["gauss_jacobi", "gauss_legendre", "shifted_gauss_jacobi", "shifted_gauss_legendre"]

_NEWTON_STEPS = 2


def _check(n: int, alpha: float, beta: float) -> None:
    positive_int("n (the number of nodes)", n)
    for arg, v in (("alpha", alpha), ("beta", beta)):
        if not (math.isfinite(v) and v > -1):
            raise ValueError(f"{arg} must be a finite number > -1, got {v!r}")


def _jacobi_matrix(n: int, alpha: float, beta: float) -> Tensor:
    """Symmetric tridiagonal (n, n) matrix of the orthonormal recurrence for (1-x)^α (1+x)^β."""
    s = alpha + beta
    k = torch.arange(n, dtype=torch.float64)
    diag = torch.empty(n, dtype=torch.float64)
    diag[0] = (beta - alpha) / (s + 2)
    if n > 1:
        kk = k[1:]
        diag[1:] = (beta**2 - alpha**2) / ((2 * kk + s) * (2 * kk + s + 2))
    # off-diagonal k = 1 .. n-1: the square root of the monic recurrence coefficient; at k = 1
    # the factor (k + s) / (2k + s - 1) is 1 (and 0/0 when s = -1), so it is left out there
    kk = k[1:]
    off_sq = 4 * kk * (kk + alpha) * (kk + beta) / ((2 * kk + s) ** 2 * (2 * kk + s + 1))
    off_sq[1:] *= (kk[1:] + s) / (2 * kk[1:] + s - 1)
    off = torch.sqrt(off_sq)
    return torch.diag(diag) + torch.diag(off, 1) + torch.diag(off, -1)


def _derivative(n: int, x: Tensor, alpha: float, beta: float) -> tuple[Tensor, Tensor]:
    """P_n^(α,β)(x) and its derivative (n + α + β + 1)/2 · P_{n-1}^(α+1,β+1)(x)."""
    value = jacobi(n + 1, x, alpha, beta)[..., n]
    slope = (n + alpha + beta + 1) / 2 * jacobi(n, x, alpha + 1, beta + 1)[..., n - 1]
    return value, slope


def gauss_jacobi(n: int, alpha: float = 0.0, beta: float = 0.0) -> tuple[Tensor, Tensor]:
    """Nodes (n,) ascending in (-1, 1) and weights (n,) for ``∫_{-1}^1 p(x) (1-x)^α (1+x)^β dx``,
    float64 on the CPU; exact for deg p < 2n."""
    _check(n, alpha, beta)  # before the cache, which takes 2.0 for the 2 it may hold
    return _gauss_jacobi(n, alpha, beta)


@functools.lru_cache(maxsize=64)
def _gauss_jacobi(n: int, alpha: float, beta: float) -> tuple[Tensor, Tensor]:
    """:func:`gauss_jacobi` for checked arguments."""
    s = alpha + beta
    x = torch.linalg.eigvalsh(_jacobi_matrix(n, alpha, beta))  # (n,) ascending
    for _ in range(_NEWTON_STEPS):
        value, slope = _derivative(n, x, alpha, beta)
        x = x - value / slope
    _, slope = _derivative(n, x, alpha, beta)
    # C_n = 2^(s+1) Γ(n+α+1) Γ(n+β+1) / (Γ(n+s+1) n!)   (Szegő (15.3.1))
    log_c = (
        (s + 1) * math.log(2)
        + math.lgamma(n + alpha + 1)
        + math.lgamma(n + beta + 1)
        - math.lgamma(n + s + 1)
        - math.lgamma(n + 1)
    )
    weights = math.exp(log_c) / ((1 - x**2) * slope**2)
    return x, weights


def gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre nodes and weights (n,) on [-1, 1] (weight 1), float64 on the CPU."""
    return gauss_jacobi(n, 0.0, 0.0)


@functools.lru_cache(maxsize=64)
def shifted_gauss_jacobi(n: int, beta: float = 0.0) -> tuple[Tensor, Tensor]:
    """Nodes (n,) in (0, 1) and weights (n,) for ``∫_0^1 p(u) u^β du``, float64 on the CPU.

    With u = (1 + x)/2: (1 + x)^β dx = 2^(β+1) u^β du, so the weights are divided by 2^(β+1).
    """
    x, w = gauss_jacobi(n, 0.0, beta)
    return (1 + x) / 2, w / 2 ** (beta + 1)


def shifted_gauss_legendre(n: int) -> tuple[Tensor, Tensor]:
    """Gauss-Legendre nodes and weights (n,) for ``∫_0^1 p(u) du``, float64 on the CPU."""
    return shifted_gauss_jacobi(n, 0.0)
