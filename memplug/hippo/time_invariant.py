"""Time-invariant HiPPO measures: a sliding window (or any fixed-shape weight) over the past.

A time-invariant measure weighs the past by the lag ``x = t - s`` only, so its coefficients
obey one linear ODE with constant matrices, ``c' = A c + B f``. Subclass
:class:`TimeInvariantMeasure`, give it

- :meth:`~TimeInvariantMeasure.transition`: the continuous ``(A (N, N), B (N,))`` for its
  window θ (float64), and
- :meth:`~TimeInvariantMeasure.lag_basis`: the reconstruction basis as a function of the lag,
  ``f(t - x) ≈ lag_basis(x) @ c`` for ``x`` in ``[0, θ]``,

and the base provides ``update``, ``scan``, ``basis`` and ``support`` (= ``[max(0, t - θ), t]``).

Discretisation: token ``j`` holds its value over ``[j, j + 1)``, so zero-order hold with a
step of one token is exact for the token signal: ``Ā, B̄ = zoh(A, B, 1)``. A block of L
tokens is one matmul, ``c' = Ā^L c + K x`` with ``K = [Ā^(L-1) B̄ ... B̄]``
(:func:`memplug.hippo.discretize.block_transition`); ``(Ā^L, K)`` are built in float64 and kept
in a small LRU cache per ``(θ, L, dtype, device)``, so a long stream of equal blocks builds
them once and the cache never grows past ``cache_size`` entries.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from ..util.checks import positive_int
from ..util.lru import TensorLRU
from ..core.contracts import Encoder, TimeLike
from .discretize import block_transition, zoh
from .order import check_order
from .scan import linear_recurrence

__all__ = ["TimeInvariantMeasure"]


class TimeInvariantMeasure(Encoder, abc.ABC):
    """Base class of measures whose weight depends on the lag ``t - s`` only (LegT, FouT, LagT).

    Args:
        order: N, coefficients per channel (>= 1).
        window: θ > 0 in tokens; the support is ``[max(0, t - θ), t]`` and ``transition`` /
            ``lag_basis`` are written for this θ.
        cache_size: how many block lengths keep their ``(Ā^L, K)`` (per dtype and device).
    """

    def __init__(self, order: int, window: float, cache_size: int = 8) -> None:
        super().__init__()
        check_order(order)
        if not float(window) > 0:
            raise ValueError(f"window must be > 0 tokens, got {window!r}")
        positive_int("cache_size", cache_size)
        self.order = order
        self.window = float(window)
        self.cache_size = cache_size
        self._blocks = TensorLRU(max_items=cache_size)

    def extra_repr(self) -> str:
        return f"order={self.order}, window={self.window:g}"

    # ---- what a measure defines -------------------------------------------------------------

    @abc.abstractmethod
    def transition(self) -> tuple[Tensor, Tensor]:
        """The continuous ``(A, B)`` of ``c' = A c + B f`` for window ``self.window``: float64
        tensors of shapes (N, N) and (N,) (NumPy arrays are accepted too)."""

    @abc.abstractmethod
    def lag_basis(self, lag: Tensor) -> Tensor:
        """Reconstruction basis at lags ``x = t - s``: (...,) -> (..., N), so that
        ``f(t - x) ≈ lag_basis(x) @ c``. Must be differentiable in ``lag``."""

    # ---- what the base provides -------------------------------------------------------------

    def support(self, t: TimeLike) -> tuple[TimeLike, TimeLike]:
        """``(max(0, t - θ), t)``; elementwise for a tensor ``t``."""
        if isinstance(t, Tensor):
            return (t - self.window).clamp(min=0), t
        return max(0.0, t - self.window), t

    def discrete(self, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """Per-token ``(Ā (N, N), B̄ (N,))`` by zero-order hold over one token, float64."""
        A, B = self.transition()
        A = torch.as_tensor(A, dtype=torch.float64, device=device)
        B = torch.as_tensor(B, dtype=torch.float64, device=device)
        n = self.order
        if A.shape != (n, n) or B.shape != (n,):
            raise ValueError(
                f"{type(self).__name__}.transition() must return A ({n}, {n}) and B ({n},), "
                f"got {tuple(A.shape)} and {tuple(B.shape)}"
            )
        return zoh(A, B, 1.0)

    def block(self, length: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(Ā^L (N, N), K (N, L))`` for a block of ``L = length`` tokens, cached (LRU)."""
        key = (self.window, length, dtype, torch.device(device))
        hit = self._blocks.get(key)
        if hit is not None:
            return hit
        Ad, Bd = self.discrete(device)
        power, kernel = block_transition(Ad, Bd, length)
        return self._blocks.put(key, (_flush_subnormal(power.to(dtype)), _flush_subnormal(kernel.to(dtype))))

    def update(self, state: Tensor, x: Tensor, t0: int) -> Tensor:
        """State (..., N, C) after tokens ``x`` (..., L, C); the result does not depend on ``t0``
        (time invariance) beyond the zero history before position 0."""
        _check_stream(x, t0)
        dtype = torch.promote_types(state.dtype, x.dtype)
        power = self.block(x.shape[-2], dtype, x.device)[0]
        kernel = self.block(x.shape[-2], x.dtype, x.device)[1]  # tokens projected in their own dtype
        return power @ state.to(dtype) + (kernel @ x).to(dtype)  # (..., N, C)

    def scan(self, x: Tensor, block: int, t0: int = 0, state: Tensor | None = None) -> Tensor:
        """States after every block of ``block`` tokens (the last may be shorter): (..., nb, N, C).

        Every block's input term ``K x_i`` comes from one batched matmul; the states then follow
        from the block recurrence ``s_i = Ā^L s_(i-1) + K x_i``.
        """
        _check_stream(x, t0)
        positive_int("block", block)
        dtype = x.dtype if state is None else torch.promote_types(state.dtype, x.dtype)
        state = None if state is None else state.to(dtype)
        length = x.shape[-2]
        full, rest = divmod(length, block)
        drive, powers = [], []
        if full:
            kernel = self.block(block, x.dtype, x.device)[1]  # tokens projected in their own dtype
            blocks = x[..., : full * block, :].unflatten(-2, (full, block))  # (..., nb, L, C)
            drive.append((kernel @ blocks).to(dtype))  # (..., nb, N, C)
            powers.append(self.block(block, dtype, x.device)[0].expand(full, -1, -1))  # (nb, N, N)
        if rest:
            kernel = self.block(rest, x.dtype, x.device)[1]
            drive.append((kernel @ x[..., full * block :, :]).to(dtype).unsqueeze(-3))  # (..., 1, N, C)
            powers.append(self.block(rest, dtype, x.device)[0].unsqueeze(0))  # (1, N, N)
        if len(drive) == 1:  # no copy for one part
            return linear_recurrence(powers[0], drive[0], state)
        return linear_recurrence(torch.cat(powers), torch.cat(drive, dim=-3), state)

    def basis(self, positions: Tensor, t: TimeLike) -> Tensor:
        """(..., P) absolute positions -> (..., P, N) via the lag ``t - positions``."""
        if isinstance(t, Tensor) and t.dim() > 0:
            t = t.unsqueeze(-1)  # (..., 1): one time per row of positions
        return self.lag_basis(t - positions)


def _flush_subnormal(x: Tensor) -> Tensor:
    """Zero the entries below the dtype's smallest normal number: a long block's oldest kernel
    columns decay that far, and subnormal operands make CPU matmuls many times slower."""
    return torch.where(x.abs() < torch.finfo(x.dtype).tiny, torch.zeros_like(x), x)


def _check_stream(x: Tensor, t0: int) -> None:
    if x.dim() < 2 or x.shape[-2] < 1:
        raise ValueError(f"x must be (..., L, C) with L >= 1, got shape {tuple(x.shape)}")
    if t0 < 0:
        raise ValueError(f"t0 must be >= 0, got {t0}")

