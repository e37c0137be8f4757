"""Time-invariant HiPPO measures: a sliding window (or any fixed-shape weight) over the past.

A time-invariant measure weighs the past by the lag ``x = t - s`` only, so its coefficients
obey one linear ODE with constant matrices, ``c' = A c + B f``. Subclass
:class:`TimeInvariantMeasure`, give it

- :meth:`~TimeInvariantMeasure.ode_matrices`: the continuous ``(A (N, N), B (N,))`` for its
  window θ (float64), and
- :meth:`~TimeInvariantMeasure.lag_basis`: the reconstruction basis as a function of the lag,
  ``f(t - x) ≈ lag_basis(x) @ c`` for ``x`` in ``[0, θ]``,

and the base provides ``update``, ``scan``, ``basis`` and ``support`` (= ``[max(0, t - θ), t]``).

Discretisation: token ``j`` holds its value over ``[j, j + 1)``, so zero-order hold with a
step of one token is exact for the token signal: ``Ā, B̄ = zoh(A, B, 1)``. A block of L
tokens is one matmul, ``c' = Ā^L c + K x`` with ``K = [Ā^(L-1) B̄ ... B̄]``
(:func:`memplug.hippo.discretize.block_transition`); ``(Ā^L, K)`` (:meth:`~TimeInvariantMeasure.block_matrices`)
are built in float64 and kept in a small LRU cache per ``(θ, L, dtype, device)``, so a long
stream of equal blocks builds them once and the cache never grows past ``cache_size`` entries.
``Ā^L`` is the block's transition (the state map over the block with no input), the same
concept as the scale-invariant measures' ``M(r)``; ``update`` and ``scan`` are the common block
skeleton of :mod:`memplug.hippo.scan`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import torch
from torch import Tensor

from ..util.checks import positive_int
from ..util.lru import TensorLRU
from ..core.contracts import Encoder, TimeLike
from .discretize import block_transition, zoh
from .order import check_order
from .scan import Span, block_scan, block_update, check_scan_options

__all__ = ["TimeInvariantMeasure"]


class TimeInvariantMeasure(Encoder, abc.ABC):
    """Base class of measures whose weight depends on the lag ``t - s`` only (LegT, FouT, LagT).

    Args:
        order: N, coefficients per channel (>= 1).
        window: θ > 0 in tokens; the support is ``[max(0, t - θ), t]`` and ``ode_matrices`` /
            ``lag_basis`` are written for this θ.
        cache_size: how many block lengths keep their ``(Ā^L, K)`` (per dtype and device).
        scan_method: how :meth:`scan` runs the block recurrence, see
            :func:`memplug.hippo.scan.linear_recurrence` (``"auto"``, ``"sequential"``,
            ``"parallel"``).
        scan_precision: the products of :meth:`scan`'s sequential recurrence, ``"float32"`` or
            ``"bf16x6"`` (float32's accuracy from bf16 tensor-core products on a GPU; see
            :mod:`memplug.hippo.scan`).
    """

    #: the transitions expm(A L / window) are dense
    lower_triangular = False

    def __init__(self, order: int, window: float, cache_size: int = 8, *, scan_method: str = "auto",
                 scan_precision: str = "float32") -> None:
        super().__init__()
        check_order(order)
        if not float(window) > 0:
            raise ValueError(f"window must be > 0 tokens, got {window!r}")
        positive_int("cache_size", cache_size)
        check_scan_options(scan_method, scan_precision)
        self.scan_precision = scan_precision
        self.scan_method = scan_method
        self.order = order
        self.window = float(window)
        self.cache_size = cache_size
        self._blocks = TensorLRU(max_items=cache_size)

    def extra_repr(self) -> str:
        return f"order={self.order}, window={self.window:g}"

    # ---- what a measure defines -------------------------------------------------------------

    @abc.abstractmethod
    def ode_matrices(self) -> tuple[Tensor, Tensor]:
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
        A, B = self.ode_matrices()
        A = torch.as_tensor(A, dtype=torch.float64, device=device)
        B = torch.as_tensor(B, dtype=torch.float64, device=device)
        n = self.order
        if A.shape != (n, n) or B.shape != (n,):
            raise ValueError(
                f"{type(self).__name__}.ode_matrices() must return A ({n}, {n}) and B ({n},), "
                f"got {tuple(A.shape)} and {tuple(B.shape)}"
            )
        return zoh(A, B, 1.0)

    def block_matrices(self, length: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(Ā^L (N, N), K (N, L))`` for a span of ``length`` tokens: its transition and its
        input kernel, cached (LRU)."""
        key = (self.window, length, dtype, torch.device(device))
        hit = self._blocks.get(key)
        if hit is not None:
            return hit
        Ad, Bd = self.discrete(device)
        power, kernel = block_transition(Ad, Bd, length)
        return self._blocks.put(key, (_flush_subnormal(power.to(dtype)), _flush_subnormal(kernel.to(dtype))))

    def update(self, state: Tensor, x: Tensor, t0: int) -> Tensor:
        """State (..., N, C) after tokens ``x`` (..., L, C): ``Ā^L state + K x``; the result does
        not depend on ``t0`` (time invariance) beyond the zero history before position 0."""
        return block_update(self, state, x, t0)

    def scan(self, x: Tensor, block: int, t0: int = 0, state: Tensor | None = None) -> Tensor:
        """States after every block of ``block`` tokens (the last may be shorter): (..., nb, N, C).

        Every block's input term ``K x_i`` comes from one batched matmul; the states then follow
        from the block recurrence ``s_i = Ā^L s_(i-1) + K x_i``
        (:func:`memplug.hippo.scan.block_scan`).
        """
        return block_scan(self, x, block, t0, state, self.scan_method, self.scan_precision)

    # ---- the block recurrence (memplug.hippo.scan.BlockRecurrence) ---------------------------

    def span_transitions(self, spans: Sequence[Span], dtype: torch.dtype, device: torch.device) -> Tensor:
        """(k, N, N): Ā^(t1 - t0) for each span; equal spans share one matrix (an expanded view)."""
        lengths = [t1 - t0 for t0, t1 in spans]
        if len(set(lengths)) == 1:
            return self.block_matrices(lengths[0], dtype, device)[0].expand(len(spans), -1, -1)
        return torch.stack([self.block_matrices(n, dtype, device)[0] for n in lengths])

    def span_drive(self, blocks: Tensor, spans: Sequence[Span], dtype: torch.dtype) -> Tensor:
        """K x for each span: (..., k, L, C) -> (..., k, N, C) in ``dtype``, the tokens projected in
        their own dtype (K depends on the length only)."""
        kernel = self.block_matrices(blocks.shape[-2], blocks.dtype, blocks.device)[1]  # (N, L)
        return (kernel @ blocks).to(dtype)

    def basis(self, positions: Tensor, t: TimeLike) -> Tensor:
        """(..., P) absolute positions -> (..., P, N) via the lag ``t - positions``."""
        if isinstance(t, Tensor) and t.dim() > 0:
            t = t.unsqueeze(-1)  # (..., 1): one time per row of positions
        return self.lag_basis(t - positions)


def _flush_subnormal(x: Tensor) -> Tensor:
    """Zero the entries below the dtype's smallest normal number: a long block's oldest kernel
    columns decay that far, and subnormal operands make CPU matmuls many times slower."""
    return torch.where(x.abs() < torch.finfo(x.dtype).tiny, torch.zeros_like(x), x)
