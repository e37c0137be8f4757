"""Float64 NumPy/SciPy references for the HiPPO mathematics of the encoders (docs/encoders.md).

Written from the definitions, independently of the torch code they check (SciPy's polynomial
evaluation and quadrature, per-cell integrals), and slow where that keeps them obvious.
Organised by section: generic operators, scale-invariant measures (LegS, Jacobi), then
time-invariant measures (LegT, FouT).
"""

from __future__ import annotations

import numpy as np
import scipy.special as sp

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
    """The LegS (A, B) of t c' = A c + B f, written out from the HiPPO-LegS formulas:
    A[n, m] = -sqrt(2n+1) sqrt(2m+1) for n > m, -(n+1) on the diagonal, 0 above; B[n] = sqrt(2n+1)."""
    n = np.arange(order)
    root = np.sqrt(2 * n + 1)
    A = -np.outer(root, root) * (n[:, None] > n[None, :]) - np.diag(n + 1.0)
    return A, root.copy()


def jacobi_matrices(order: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) of t c' = A c + B f for the weight (s/t)^β: A[n, k] = -sqrt((2n+β+1)(2k+β+1)) for
    n > k, -(n + β + 1) on the diagonal, 0 above; B[n] = sqrt(2n + β + 1). β = 0 is LegS."""
    n = np.arange(order)
    root = np.sqrt(2 * n + beta + 1)
    A = -np.outer(root, root) * (n[:, None] > n[None, :]) - np.diag(n + beta + 1.0)
    return A, root.copy()


def _gauss_jacobi_01(m: int, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights on [0, 1] for ∫_0^1 h(v) v^β dv (SciPy's Gauss-Jacobi, mapped)."""
    x, w = sp.roots_jacobi(m, 0.0, beta)
    return (x + 1) / 2, w / 2 ** (beta + 1)


def weighted_antiderivative(order: int, u: np.ndarray, beta: float = 0.0) -> np.ndarray:
    """∫_0^u q_n(v) v^β dv = u^(β+1) ∫_0^1 q_n(u s) s^β ds by Gauss-Jacobi: (...) -> (..., N)."""
    u = np.asarray(u, np.float64)
    v, w = _gauss_jacobi_01(order + 4, beta)
    return u[..., None] ** (beta + 1) * np.einsum("m,...mn->...n", w, jacobi_family(order, u[..., None] * v, beta))


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
    """LegS state (N, C) after the tokens x (T, C) at positions 0 .. T-1, for long streams.

    Cell integrals from ∫_{-1}^y P_n = (P_{n+1}(y) - P_{n-1}(y)) / (2n + 1) (y + 1 for n = 0),
    with Bonnet's recurrence for P_n at every cell edge (SciPy's per-degree evaluation is too
    slow for a million edges).
    """
    x = np.asarray(x, np.float64)
    steps = len(x)
    y = 2 * np.arange(steps + 1, dtype=np.float64) / steps - 1  # cell edges mapped to [-1, 1]
    p = [np.ones_like(y), y]
    for k in range(1, order):
        p.append(((2 * k + 1) * y * p[k] - k * p[k - 1]) / (k + 1))
    rows = [np.diff(y + 1) @ x / 2]
    for n in range(1, order):
        cumulative = np.sqrt(2 * n + 1) / 2 * (p[n + 1] - p[n - 1]) / (2 * n + 1)
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

# Written from the definitions, independently of memplug/hippo/time_invariant.py and plugins/encoders/{legt,fout}.py.
from scipy.linalg import expm  # noqa: E402  (this section's only extra import)


def legt_matrices(order: int, window: float) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-LegT (A (N, N), B (N,)) for a window θ, entry by entry from the formula."""
    A = np.empty((order, order))
    for n in range(order):
        for k in range(order):
            sign = 1.0 if n >= k else (-1.0) ** (n - k)
            A[n, k] = -np.sqrt((2 * n + 1) * (2 * k + 1)) * sign / window
    B = np.sqrt(2 * np.arange(order) + 1.0) / window
    return A, B


def legt_basis(order: int, window: float, lag: np.ndarray) -> np.ndarray:
    """sqrt(2n+1) P_n(1 - 2x/θ) at lags x (...,) -> (..., N), via scipy.special."""
    n = np.arange(order)
    return np.sqrt(2 * n + 1) * sp.eval_legendre(n, (1 - 2 * np.asarray(lag) / window)[..., None])


def fout_matrices(order: int, window: float) -> tuple[np.ndarray, np.ndarray]:
    """HiPPO-FouT (A, B) on the interleaved state [c0, s0, c1, s1, ...] for a window θ."""
    Bt = np.zeros(order)
    J = np.zeros((order, order))
    for i in range(order):
        k = i // 2
        if i % 2 == 0:  # cosine c_k
            Bt[i] = 1.0 if k == 0 else np.sqrt(2.0)
            if i + 1 < order:
                J[i, i + 1] = -k  # c_k' gets -k s_k
                J[i + 1, i] = k  # s_k' gets +k c_k
    return (2 * np.pi * J - 2 * np.outer(Bt, Bt)) / window, 2 * Bt / window


def fout_basis(order: int, window: float, lag: np.ndarray) -> np.ndarray:
    """c0 + √2 Σ (c_k cos + s_k sin)(2πkx/θ) as a matrix (..., N) at lags x (...,)."""
    lag = np.asarray(lag, dtype=np.float64)[..., None]
    out = np.zeros(lag.shape[:-1] + (order,))
    for i in range(order):
        k = i // 2
        angle = 2 * np.pi * k * lag[..., 0] / window
        if i % 2 == 0:
            out[..., i] = 1.0 if k == 0 else np.sqrt(2.0) * np.cos(angle)
        else:
            out[..., i] = np.sqrt(2.0) * np.sin(angle)
    return out


def lti_token_states(A: np.ndarray, B: np.ndarray, x: np.ndarray, state: np.ndarray | None = None) -> np.ndarray:
    """States after each token of ``x`` (T, C) for c' = A c + B f, f constant on each token.

    Zero-order hold over one token (expm of [[A, B], [0, 0]]), then the plain
    per-token recurrence in float64. Returns (T, N, C).
    """
    n = A.shape[0]
    E = expm(np.block([[A, B[:, None]], [np.zeros((1, n + 1))]]))
    Ad, Bd = E[:n, :n], E[:n, n]
    c = np.zeros((n, x.shape[1])) if state is None else np.array(state, dtype=np.float64)
    out = np.empty((x.shape[0], n, x.shape[1]))
    for j in range(x.shape[0]):
        c = Ad @ c + np.outer(Bd, x[j])
        out[j] = c
    return out
