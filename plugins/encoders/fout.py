"""FouT: the truncated Fourier measure, uniform weight 1/θ on the window ``[t - θ, t]``.

State, per channel: ``[c0, s0, c1, s1, ...]`` (N entries; ``s0`` is always 0, kept so that entry
``2k`` / ``2k + 1`` is the cosine / sine of frequency ``k``). With the lag ``x = t - s``:

- basis: ``f(t - x) ≈ c0 + √2 Σ_k (c_k cos(2πkx/θ) + s_k sin(2πkx/θ))``, ``x`` in ``[0, θ]``;
- (A, B): with ``B~ = [1, 0, √2, 0, √2, ...]`` and ``J`` the block-skew matrix with
  ``J[c_k, s_k] = -k``, ``J[s_k, c_k] = +k``: ``A = (2π J - 2 B~ B~ᵀ) / θ``, ``B = 2 B~ / θ``.
  The factor 2 comes from the jump at the window's edge: the Fourier series there converges to
  ``(f(t) + f(t - θ)) / 2``, which fixes the estimate of the value leaving the window.
- support: ``[max(0, t - θ), t]``.

The periodic basis cannot follow the jump between ``f(t)`` and ``f(t - θ)``, so FouT rings
(Gibbs) near both ends of the window; it is here as the HiPPO baseline, LegT is the accurate
sliding window.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import memplug
from memplug.hippo.time_invariant import TimeInvariantMeasure


class FouT(TimeInvariantMeasure):
    """Sliding-window Fourier measure (HiPPO-FouT), window θ = ``window`` tokens, ZOH per token.

    Args:
        order: N, coefficients per channel.
        window: θ, the window in tokens (> 0): the state describes ``[max(0, t - θ), t]``.
        cache_size: block transitions ``(Ā^L, K)`` kept per block length L (an LRU of this many).
        **kwargs: ``scan_method``, ``scan_precision`` of :class:`~memplug.hippo.time_invariant.TimeInvariantMeasure`.
    """

    name = "fout"

    def __init__(self, order: int = 64, window: float = 1024.0, cache_size: int = 8, **kwargs) -> None:
        super().__init__(order, window, cache_size, **kwargs)

    def _layout(self, dtype: torch.dtype, device: torch.device | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Frequency k (N,), sine mask (N,) and ``B~`` (N,) of the interleaved state
        (``B~`` is also the basis scale of the cosine entries: 1 for k = 0, √2 otherwise)."""
        n = torch.arange(self.order, device=device)
        freq, sine = n // 2, n % 2 == 1
        scale = torch.full((self.order,), math.sqrt(2.0), dtype=dtype, device=device)
        scale[0] = 1.0
        return freq.to(dtype), sine, scale * ~sine

    def ode_matrices(self) -> tuple[Tensor, Tensor]:
        freq, _, weight = self._layout(torch.float64)
        cos = torch.arange(0, self.order - 1, 2)  # c_k that have their s_k in the state
        J = torch.zeros(self.order, self.order, dtype=torch.float64)
        J[cos, cos + 1] = -freq[cos]
        J[cos + 1, cos] = freq[cos]
        A = (2 * math.pi * J - 2 * torch.outer(weight, weight)) / self.window
        return A, 2 * weight / self.window

    def lag_basis(self, lag: Tensor) -> Tensor:
        lag = torch.as_tensor(lag)
        if not lag.is_floating_point():
            lag = lag.to(torch.get_default_dtype())
        freq, sine, weight = self._layout(lag.dtype, lag.device)
        angle = (2 * math.pi / self.window) * lag.unsqueeze(-1) * freq  # (..., N)
        # cosine entries: B~ cos (1 for k = 0, √2 otherwise); sine entries: √2 sin (s0: sin 0 = 0)
        return torch.where(sine, math.sqrt(2.0) * torch.sin(angle), weight * torch.cos(angle))


@memplug.hookimpl
def memplug_add_encoders(registry) -> None:
    registry.add(FouT)
