"""LegT: the translated Legendre measure, uniform weight 1/θ on the window ``[t - θ, t]``.

With the lag ``x = t - s`` and ``n, k = 0 .. N-1``:

- basis: ``f(t - x) ≈ Σ_n c_n sqrt(2n+1) P_n(1 - 2x/θ)``, ``x`` in ``[0, θ]`` (the orthonormal
  shifted Legendre g_n evaluated at ``u = 1 - x/θ``, the position's fraction of the window);
- (A, B): ``A[n,k] = -sqrt((2n+1)(2k+1)) · (1 if n >= k else (-1)^(n-k)) / θ``,
  ``B[n] = sqrt(2n+1) / θ``. Differentiating ``c_n(t) = (1/θ) ∫_0^θ f(t-x) g_n(1-x/θ) dx``
  gives a term for the value entering (``f(t) g_n(1)``), one for the value leaving
  (``f(t-θ) g_n(0)``, estimated by the reconstruction at ``x = θ``) and ``g_n'`` expanded in
  lower degrees; together they give this A. The window is θ, not 2θ (some reference code
  writes the same matrices for a window of 2 and silently halves it); tests check the
  window length on a ramp.
- support: ``[max(0, t - θ), t]``. Before ``t = θ`` the window reaches back before the first
  token, where the signal is zero.
"""

from __future__ import annotations

import torch
from torch import Tensor

import memplug
from memplug.hippo.time_invariant import TimeInvariantMeasure
from memplug.hippo.legendre import shifted_legendre


class LegT(TimeInvariantMeasure):
    """Sliding-window Legendre measure (HiPPO-LegT), window θ = ``window`` tokens, ZOH per token.

    Args:
        order: N, coefficients per channel.
        window: θ, the window in tokens (> 0): the state describes ``[max(0, t - θ), t]``.
        cache_size: block transitions ``(Ā^L, K)`` kept per block length L (an LRU of this many).
        **kwargs: ``scan_method``, ``scan_precision`` of :class:`~memplug.hippo.time_invariant.TimeInvariantMeasure`.
    """

    name = "legt"

    def __init__(self, order: int = 64, window: float = 1024.0, cache_size: int = 8, **kwargs) -> None:
        super().__init__(order, window, cache_size, **kwargs)

    def ode_matrices(self) -> tuple[Tensor, Tensor]:
        n = torch.arange(self.order, dtype=torch.float64)
        root = (2 * n + 1).sqrt()  # (N,)
        diff = n[:, None] - n[None, :]  # (N, N): n - k
        sign = torch.where(diff >= 0, 1.0, (-1.0) ** diff.abs()).to(torch.float64)
        return -torch.outer(root, root) * sign / self.window, root / self.window

    def lag_basis(self, lag: Tensor) -> Tensor:
        lag = torch.as_tensor(lag)
        if not lag.is_floating_point():
            lag = lag.to(torch.get_default_dtype())
        return shifted_legendre(self.order, 1 - lag / self.window)


@memplug.hookimpl
def memplug_add_encoders(registry) -> None:
    registry.add(LegT)
