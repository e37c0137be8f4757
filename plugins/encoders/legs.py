"""LegS: the scaled Legendre measure, uniform over the whole past.

- **Measure**: ω_t(s) = 1/t on [0, t]; c_n(t) = (1/t) ∫_0^t f(s) g_n(s/t) ds.
- **Basis**: g_n(u) = sqrt(2n+1) P_n(2u - 1), orthonormal on [0, 1];
  f(s) ≈ Σ_n c_n(t) g_n(s/t) for s in [0, t].
- **Support**: [0, t].
- **(A, B)**: c'(t) = (A c + B f(t)) / t with A[n, k] = -sqrt((2n+1)(2k+1)) for n > k,
  -(n+1) for n = k, 0 above; B[n] = sqrt(2n+1) (:func:`legs_matrices`).

Updates (``discretization=``):

- ``"exact"`` (default): the exact block update of :class:`memplug.hippo.scale_invariant.ScaleInvariantMeasure`,
  c(t1) = M(t0/t1) c(t0) + (1 - r) T(r) U(0, L) x; any block length, any start, the cost does not
  depend on the absolute position, equal to the float64 projection of the token signal.
- ``"bilinear"``, ``"euler"``: the classic per-token ODE steps in t, with the 1/t factor taken at
  the end of each step (the HiPPO LegS recurrence, A/k at step k, which avoids the singular
  start), ``substeps`` steps per token. Discretisation error O(1/substeps) decays as t grows.
- ``"zoh"``: zero-order hold in log-time τ = ln t, where the ODE is time-invariant,
  dc/dτ = A c + B f. A token is constant over its cell, so each step is exact up to rounding
  (the first cell, from τ = -∞, gives Ā = 0 and B̄ = -A⁻¹B = e_0).

The ODE modes loop over tokens in Python and build an N x N step per token: they are for
comparison with classic HiPPO code, not for training.
"""

from __future__ import annotations

import torch
from torch import Tensor

import memplug
from memplug.util.checks import positive_int
from memplug.hippo.scale_invariant import ScaleInvariantMeasure
from memplug.hippo.discretize import DISCRETIZATIONS
from memplug.hippo.legendre import shifted_legendre, shifted_legendre_antiderivative, shifted_legendre_derivative
from memplug.hippo.quadrature import shifted_gauss_legendre
from memplug.hippo.scan import check_stream

__all__ = ["LegS", "legs_matrices"]

#: per-token ODE rules offered next to "exact"
ODE_RULES = ("bilinear", "zoh", "euler")
#: tokens whose step matrices are built at once in the ODE modes (bounds their memory)
_STEP_CHUNK = 64


def legs_matrices(order: int) -> tuple[Tensor, Tensor]:
    """The LegS (A (N, N), B (N,)) of c' = (A c + B f)/t, float64."""
    n = torch.arange(order, dtype=torch.float64)
    root = torch.sqrt(2 * n + 1)
    below = (n[:, None] > n[None, :]).to(torch.float64)
    return -torch.outer(root, root) * below - torch.diag(n + 1), root


class LegS(ScaleInvariantMeasure):
    """Scaled Legendre measure (uniform on [0, t]); see the module docstring.

    Args:
        order: N, coefficients per channel.
        discretization: ``"exact"`` (default), ``"bilinear"``, ``"zoh"`` (log-time) or ``"euler"``.
        substeps: ODE steps per token for the ODE discretisations (>= 1).
        **kwargs: ``cache_bytes``, ``scan_method``, ``scan_precision`` of :class:`ScaleInvariantMeasure`.
    """

    name = "legs"

    def __init__(self, order: int = 64, discretization: str = "exact", substeps: int = 1, **kwargs) -> None:
        super().__init__(order, beta=0.0, **kwargs)
        if discretization != "exact" and discretization not in ODE_RULES:
            raise ValueError(f"discretization must be 'exact' or one of {ODE_RULES}, got {discretization!r}")
        positive_int("substeps", substeps)
        self.discretization = discretization
        self.substeps = substeps

    def extra_repr(self) -> str:
        extra = "" if self.discretization == "exact" else f", substeps={self.substeps}"
        return f"order={self.order}, discretization={self.discretization!r}{extra}"

    # ---- the Legendre family (closed forms instead of the Jacobi defaults) ---------------------

    def family(self, u: Tensor) -> Tensor:
        return shifted_legendre(self.order, u)

    def family_derivative(self, u: Tensor) -> Tensor:
        return shifted_legendre_derivative(self.order, u)

    def weighted_antiderivative(self, u: Tensor) -> Tensor:
        return shifted_legendre_antiderivative(self.order, u)

    def quadrature(self) -> tuple[Tensor, Tensor]:
        return shifted_gauss_legendre(self.order)

    def ode_matrices(self) -> tuple[Tensor, Tensor]:
        return legs_matrices(self.order)

    # ---- updates ----------------------------------------------------------------------------

    def update(self, state: Tensor, x: Tensor, t0: int) -> Tensor:
        if self.discretization == "exact":
            return super().update(state, x, t0)
        t0 = check_stream(self.order, x, t0, state)
        dtype = torch.promote_types(state.dtype, x.dtype)
        c, x = state.to(dtype), x.to(dtype)
        for lo in range(0, x.shape[-2], _STEP_CHUNK):
            chunk = x[..., lo : lo + _STEP_CHUNK, :]  # (..., k, C)
            a_bar, b_bar = self.ode_steps(t0 + lo, chunk.shape[-2])
            a_bar, b_bar = a_bar.to(device=x.device, dtype=dtype), b_bar.to(device=x.device, dtype=dtype)
            for step in range(a_bar.shape[0]):
                token = chunk[..., step // self.substeps, None, :]  # (..., 1, C)
                c = a_bar[step] @ c + b_bar[step, :, None] * token  # (..., N, C)
        return c

    def scan(self, x: Tensor, block: int, t0: int = 0, state: Tensor | None = None) -> Tensor:
        if self.discretization == "exact":
            return super().scan(x, block, t0, state)
        positive_int("block", block)
        c = self.init_state(*x.shape[:-2], channels=x.shape[-1], dtype=x.dtype, device=x.device)
        c = c if state is None else state
        states = []
        for lo in range(0, x.shape[-2], block):
            c = self.update(c, x[..., lo : lo + block, :], t0 + lo)
            states.append(c)
        return torch.stack(states, dim=-3)  # (..., nb, N, C)

    def ode_steps(self, t0: int, tokens: int) -> tuple[Tensor, Tensor]:
        """Per-step (Ā (S, N, N), B̄ (S, N)) for ``tokens`` tokens from position t0 with the
        configured rule, S = tokens * substeps; float64 on the CPU."""
        A, B = legs_matrices(self.order)
        h = 1.0 / self.substeps
        steps = tokens * self.substeps
        ends = t0 + h * torch.arange(1, steps + 1, dtype=torch.float64)  # (S,) step end times
        starts = ends - h
        if self.discretization == "zoh":
            # log-time: dτ = ln(t_b / t_a); the step from t = 0 spans τ in (-∞, ln h]
            if t0 > 0:
                return DISCRETIZATIONS["zoh"](A, B, torch.log(ends / starts))
            first_a = torch.zeros(1, self.order, self.order, dtype=torch.float64)
            first_b = -torch.linalg.solve_triangular(A, B[:, None], upper=False)[:, 0]  # -A⁻¹B
            if steps == 1:
                return first_a, first_b[None]
            a_rest, b_rest = DISCRETIZATIONS["zoh"](A, B, torch.log(ends[1:] / starts[1:]))
            return torch.cat([first_a, a_rest]), torch.cat([first_b[None], b_rest])
        # every step at once: (A/t, B/t) for the S step ends t (the rules solve one matrix at a time)
        return DISCRETIZATIONS[self.discretization](A / ends[:, None, None], B / ends[:, None], h)


@memplug.hookimpl
def memplug_add_encoders(registry) -> None:
    registry.add(LegS)
