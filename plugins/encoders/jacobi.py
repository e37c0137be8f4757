"""Jacobi: the scale-invariant measure with weight (s/t)^β, a recency-weighted LegS.

- **Measure**: ω_t(s) = (s/t)^β / t on [0, t], β > -1;
  c_n(t) = (1/t) ∫_0^t f(s) q_n(s/t) (s/t)^β ds. β > 0 weighs recent history more, β < 0 the
  oldest; β = 0 is LegS.
- **Basis**: q_n(u) = sqrt(2n + β + 1) P_n^(0,β)(2u - 1), orthonormal on [0, 1] for u^β;
  f(s) ≈ Σ_n c_n(t) q_n(s/t) for s in [0, t] (the error is measured in the weight, so with
  β > 0 the oldest part is reconstructed least well).
- **Support**: [0, t].
- **(A, B)**: t c'(t) = A c + B f(t) with A[n, k] = -sqrt((2n+β+1)(2k+β+1)) for n > k,
  -(n + β + 1) for n = k, 0 above; B[n] = sqrt(2n + β + 1) (LegS at β = 0). Computed by
  quadrature in :meth:`~memplug.hippo.scale_invariant.ScaleInvariantMeasure.ode_matrices`.

Update: exact, c(t1) = M(t0/t1) c(t0) + U(t0, t1) x with
M(r) = r^(β+1) ∫_0^1 q_n(r u) q_m(u) u^β du (Gauss-Jacobi, exact) and U the exact integrals of
q_n u^β over the token cells (from Rodrigues' formula). For β ≠ 0 the block term has no
shift form, so U is (N, L) per (t0, t1), cached; at β = 0 it is LegS's (1 - r) T(r) U(0, L).
"""

from __future__ import annotations

import memplug
from memplug.hippo.scale_invariant import ScaleInvariantMeasure

__all__ = ["Jacobi"]


class Jacobi(ScaleInvariantMeasure):
    """Scale-invariant measure with weight (s/t)^β; see the module docstring.

    Args:
        order: N, coefficients per channel.
        beta: β > -1 (default 0, which equals ``legs``).
        **kwargs: ``cache_bytes``, ``scan_method``, ``scan_precision`` of :class:`ScaleInvariantMeasure`.
    """

    name = "jacobi"

    def __init__(self, order: int = 64, beta: float = 0.0, **kwargs) -> None:
        super().__init__(order, beta=beta, **kwargs)


@memplug.hookimpl
def memplug_add_encoders(registry) -> None:
    registry.add(Jacobi)
