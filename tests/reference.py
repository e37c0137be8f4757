"""Float64 NumPy/SciPy references for the mathematics of DESIGN §4.

Written from the definitions, independently of the torch code they check (SciPy's polynomial
evaluation and quadrature, per-cell integrals), and slow where that keeps them obvious.
Organised by section: generic operators, scale-invariant measures (LegS, Jacobi), then
time-invariant measures (LegT, FouT).
"""

from __future__ import annotations

import numpy as np
import scipy.special as sp
from numpy.polynomial import legendre as npleg

# ============================================================================================
# Generic operators
# ============================================================================================


def linear_recurrence(A: np.ndarray, u: np.ndarray, c0: np.ndarray | None = None) -> np.ndarray:
    """States c_1 .. c_nb of c_{i+1} = A_i c_i + u_i, one step at a time.

    A (..., nb, N, N), u (..., nb, N, C), c0 (..., N, C) or None (zero) -> (..., nb, N, C).
    """
    A, u = np.asarray(A, np.float64), np.asarray(u, np.float64)
    c = np.zeros(u.shape[:-3] + u.shape[-2:]) if c0 is None else np.asarray(c0, np.float64)
    out = []
    for i in range(u.shape[-3]):
        c = A[..., i, :, :] @ c + u[..., i, :, :]
        out.append(c)
    return np.stack(out, axis=-3)


# ============================================================================================
# Scale-invariant measures: LegS (β = 0) and Jacobi (weight (s/t)^β)
# ============================================================================================


def jacobi_family(order: int, u: np.ndarray, beta: float = 0.0) -> np.ndarray:
    """q_n(u) = sqrt(2n + β + 1) P_n^(0,β)(2u - 1), orthonormal on [0, 1] for u^β: (...) -> (..., N)."""
    u = np.asarray(u, np.float64)
    return np.stack([np.sqrt(2 * n + beta + 1) * sp.eval_jacobi(n, 0.0, beta, 2 * u - 1) for n in range(order)], -1)


def legs_matrices(order: int) -> tuple[np.ndarray, np.ndarray]:
    """The LegS (A, B) of t c' = A c + B f, written out from DESIGN §4."""
    n = np.arange(order)
    root = np.sqrt(2 * n + 1)
    A = -np.outer(root, root) * (n[:, None] > n[None, :]) - np.diag(n + 1.0)
    return A, root.copy()


def _gauss_jacobi_01(m: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1] for ∫_0^1 h(v) v^β dv (SciPy's Gauss-Jacobi, mapped)."""
    x, w = sp.roots_jacobi(m, 0.0, beta)
    return (x + 1) / 2, w / 2 ** (beta + 1)


def scale_invariant_projection(
    positions: np.ndarray, values: np.ndarray, t: float, order: int, beta: float = 0.0
) -> np.ndarray:
    """c_n(t) = ∫_0^1 f(t u) q_n(u) u^β du for a token signal, straight from the definition.

    ``f`` equals ``values[i]`` (C,) on the cell [positions[i], positions[i] + 1) and 0 elsewhere
    (cells are clipped at t). Each cell is integrated separately: Gauss-Legendre with N + 32
    nodes (exact for β = 0; the weight u^β is analytic on cells away from 0), and Gauss-Jacobi
    for a cell starting at 0, where u^β may be singular. Returns (N, C).
    """
    positions = np.asarray(positions, np.float64)
    values = np.asarray(values, np.float64).reshape(len(positions), -1)
    lo = positions / t
    hi = np.minimum(positions + 1, t) / t
    keep = hi > lo
    lo, hi, values = lo[keep], hi[keep], values[keep]
    x, w = np.polynomial.legendre.leggauss(order + 32)
    u = lo[:, None] + (hi - lo)[:, None] * (x + 1) / 2  # (cells, m)
    cell = np.einsum("km,kmn->kn", (hi - lo)[:, None] / 2 * w * u**beta, jacobi_family(order, u, beta))
    first = lo == 0
    if first.any():
        v, wv = _gauss_jacobi_01(order + 32, beta)
        b = hi[first][:, None]  # ∫_0^b q(u) u^β du = b^(β+1) ∫_0^1 q(b v) v^β dv
        cell[first] = np.einsum("km,kmn->kn", b ** (beta + 1) * wv, jacobi_family(order, b * v, beta))
    return cell.T @ values  # (N, C)


def legs_dense_projection(x: np.ndarray, order: int) -> np.ndarray:
    """LegS state (N, C) after the tokens x (T, C) at positions 0 .. T-1, from the exact
    antiderivative of P_n (NumPy's ``legint``) at every cell edge; for long streams."""
    x = np.asarray(x, np.float64)
    steps = len(x)
    edges = 2 * np.arange(steps + 1, dtype=np.float64) / steps - 1  # cell edges mapped to [-1, 1]
    rows = []
    for n in range(order):
        antider = npleg.legint(np.eye(order)[n], lbnd=-1)
        cumulative = np.sqrt(2 * n + 1) / 2 * npleg.legval(edges, antider)
        rows.append(np.diff(cumulative) @ x)
    return np.stack(rows)


def polynomial_projection(coefficients: np.ndarray, t: float, order: int, beta: float = 0.0) -> np.ndarray:
    """c_n(t) for f(s) = Σ_k a_k s^k on [0, t] (``coefficients`` (K,), K <= N), by Gauss-Jacobi."""
    v, w = _gauss_jacobi_01(order + 4, beta)
    f = np.polynomial.polynomial.polyval(t * v, coefficients)
    return (w * f) @ jacobi_family(order, v, beta)


# ============================================================================================
# Time-invariant measures: LegT and FouT
# ============================================================================================
