"""Scale-invariant HiPPO measures: the whole past [0, t], weighted by (s/t)^β.

A scale-invariant measure describes the signal f on [0, t] by its coefficients in an
orthonormal polynomial family q_0 .. q_{N-1} on [0, 1] with the weight u^β (β > -1):

    c_n(t) = ∫_0^1 f(t u) q_n(u) u^β du = (1/t) ∫_0^t f(s) q_n(s/t) (s/t)^β ds,
    f(s) ≈ Σ_n c_n(t) q_n(s/t)  on [0, t].

β = 0 is LegS (shifted Legendre); β > 0 weighs recent history more (Jacobi P_n^(0,β)).

**Exact block update**. For t1 > t0 and r = t0/t1, q_n(r v) is a polynomial of degree
n in v, so its integral against f(t0 v) v^β equals its integral against the degree-(N-1)
projection of f at t0. Splitting [0, 1] at r gives, with no discretisation at all,

    c(t1) = M(r) c(t0) + U(t0, t1) x,        M(r)[n, m] = r^(β+1) ∫_0^1 q_n(r u) q_m(u) u^β du,

where x are the L = t1 - t0 tokens (f is constant on each cell [j, j+1)) and
U(t0, t1)[n, j] = ∫ q_n(u) u^β du over the cell [(t0+j)/t1, (t0+j+1)/t1] (exact, from the
antiderivative of q_n u^β). M is an N-point Gauss-Jacobi quadrature of polynomials of degree
< 2N - 1: exact. It depends only on r, so an update costs the same at any absolute position,
and no table grows with the length of the stream.

For β = 0 the block term has a cheaper exact form: the block's own projection
d = U(0, L) x onto [t0, t1] determines its integral against every polynomial of degree < N, so
U(t0, t1) x = (1 - r) T(r) d with T[n, m] = ∫_0^1 q_n(r + (1 - r) v) q_m(v) dv. U(0, L) depends
only on L; M(r) and T(r) are two N x N quadratures.

Transitions are built in float64 on the CPU, cast to the inputs' dtype and device, and kept in
an LRU cache bounded in bytes (keyed by the reduced ratio t0/t1, or by (t0, t1) for the
direct U, and by dtype and device): in training the block positions repeat and an update costs
only matmuls.

The continuous form is the ODE t c'(t) = A c + B f(t), with A = -(β+1) I - K,
K[n, m] = ∫_0^1 u q_n'(u) q_m(u) u^β du, and B = q(1) (:meth:`ScaleInvariantMeasure.ode_matrices`);
M(r) = expm(A ln(1/r)).

Subclass :class:`ScaleInvariantMeasure` to add a measure: set ``beta`` and, to use another
orthonormal basis of the polynomials of degree < N for the weight u^β (or a faster evaluation
of the same one), override :meth:`~ScaleInvariantMeasure.family`,
:meth:`~ScaleInvariantMeasure.family_derivative`,
:meth:`~ScaleInvariantMeasure.weighted_antiderivative` and
:meth:`~ScaleInvariantMeasure.quadrature`; ``update``, ``scan``, ``basis`` and ``support``
follow. (Only weights u^β keep the exact update: the identity needs w(r u) ∝ w(u).)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ..util.checks import non_negative_int
from ..util.lru import TensorLRU
from ..core.contracts import Encoder, TimeLike
from .legendre import shifted_jacobi, shifted_jacobi_antiderivative, shifted_jacobi_derivative
from .order import check_order
from .quadrature import shifted_gauss_jacobi
from .scan import Span, block_scan, block_update, check_scan_options, check_stream, token_position

__all__ = ["ScaleInvariantMeasure", "default_cache_bytes"]

_F64 = torch.float64
_CPU = torch.device("cpu")


#: Transition caches shared by equal encoders: (module, class, order, beta, bytes) -> cache.
_CACHES: dict[tuple, TensorLRU] = {}


def default_cache_bytes(order: int) -> int:
    """64 MiB, or room for 32 block transitions [M(r), (1 - r) T(r)] of order N in float32
    (2 x N x N x 4 bytes each) if that is more: a training sequence of up to 32 blocks then
    keeps its transitions between steps (at N = 1024 that is 256 MiB)."""
    return max(64 * 2**20, 32 * 2 * order * order * 4)


class ScaleInvariantMeasure(Encoder):
    """A HiPPO measure on [0, t] with the scale-invariant weight (s/t)^β, exact block update.

    Measure: ω_t(s) = (s/t)^β / t on [0, t].  Basis: an orthonormal family q_n on [0, 1] for the
    weight u^β (default: Jacobi, q_n(u) = sqrt(2n+β+1) P_n^(0,β)(2u-1)); f(s) ≈ Σ c_n q_n(s/t).
    Support: [0, t].  ODE: t c' = A c + B f (:meth:`ode_matrices`).

    Args:
        order: N, coefficients per channel (>= 1).
        beta: the weight exponent β > -1 (0: uniform, LegS).
        cache_bytes: bound on the transition cache (default :func:`default_cache_bytes`: 64 MiB,
            or room for 32 float32 block transitions at this order if that is more). The cache
            is shared by every encoder of the same class, order, β and bound (the layers of a
            model each hold one encoder, and their transitions are identical), over all dtypes
            and devices. Training cycles through the same block starts at every step, so a bound
            below one step's transitions evicts each before its reuse and rebuilds them all.
        scan_method: how :meth:`scan` runs the block recurrence, see
            :func:`memplug.hippo.scan.linear_recurrence` (``"auto"``, ``"sequential"``,
            ``"parallel"``).
        scan_precision: the products of :meth:`scan`'s sequential recurrence, ``"float32"`` or
            ``"bf16x6"`` (float32's accuracy from bf16 tensor-core products on a GPU; see
            :mod:`memplug.hippo.scan`).
    """

    #: M(r) is lower triangular when q_n has degree n (the default family): q_n(r u) is then a
    #: polynomial of degree n in u, orthogonal to every q_m with m > n. The block scan skips the
    #: zeros. A subclass whose basis is not graded by degree sets this to False.
    lower_triangular = True

    def __init__(
        self, order: int = 64, beta: float = 0.0, *, cache_bytes: int | None = None, scan_method: str = "auto",
        scan_precision: str = "float32",
    ) -> None:
        super().__init__()
        check_order(order)
        beta = float(beta)
        if not (math.isfinite(beta) and beta > -1):
            raise ValueError(f"beta must be a finite number > -1, got {beta!r}")
        if cache_bytes is None:
            cache_bytes = default_cache_bytes(order)
        non_negative_int("cache_bytes", cache_bytes)
        check_scan_options(scan_method, scan_precision)
        self.scan_precision = scan_precision
        self.order = order
        self.beta = beta
        self.scan_method = scan_method
        self._cache_key = (type(self).__module__, type(self).__qualname__, order, beta, cache_bytes)

    @property
    def _cache(self) -> TensorLRU:
        # looked up by key, so deep copies (one encoder per layer) share one bounded cache
        if self._cache_key not in _CACHES:
            _CACHES[self._cache_key] = TensorLRU(self._cache_key[-1])
        return _CACHES[self._cache_key]

    def extra_repr(self) -> str:
        return f"order={self.order}, beta={self.beta:g}"

    # ---- the family: override these for another orthonormal basis --------------------------

    def family(self, u: Tensor) -> Tensor:
        """q_0 .. q_{N-1} at ``u`` in [0, 1]: (...) -> (..., N), differentiable in ``u``."""
        return shifted_jacobi(self.order, u, self.beta)

    def family_derivative(self, u: Tensor) -> Tensor:
        """q_n'(u): (...) -> (..., N)."""
        return shifted_jacobi_derivative(self.order, u, self.beta)

    def weighted_antiderivative(self, u: Tensor) -> Tensor:
        """∫_0^u q_n(v) v^β dv: (...) -> (..., N); its differences are the exact cell integrals."""
        return shifted_jacobi_antiderivative(self.order, u, self.beta)

    def quadrature(self) -> tuple[Tensor, Tensor]:
        """Nodes and weights (N,) of a rule exact for ``∫_0^1 p(u) u^β du``, deg p <= 2N - 2,
        float64 on the CPU (default: Gauss-Jacobi)."""
        return shifted_gauss_jacobi(self.order, self.beta)

    # ---- transitions (float64, uncached; the definitions) -----------------------------------

    def transition(self, ratio: float | Tensor) -> Tensor:
        """M(r) for r = t0/t1 in [0, 1]: (N, N), or (k, N, N) for a (k,) tensor of ratios; float64."""
        return self._ratio_matrices(torch.as_tensor(ratio, dtype=_F64), shift=False)[..., 0, :, :]

    def block_shift(self, ratio: float | Tensor) -> Tensor:
        """T(r)[n, m] = ∫_0^1 q_n(r + (1-r) v) q_m(v) dv (β = 0 only): (N, N) or (k, N, N), float64."""
        self._require_uniform("block_shift")
        r = torch.as_tensor(ratio, dtype=_F64)
        nodes, _ = self.quadrature()
        q_shifted = self.family(r[..., None] + (1 - r[..., None]) * nodes)  # (..., N nodes, N)
        return q_shifted.mT @ self._weighted_nodes()

    def _ratio_matrices(self, r: Tensor, shift: bool) -> Tensor:
        """(..., 1, N, N) [M(r)] or, with ``shift``, (..., 2, N, N) [M(r), (1 - r) T(r)], float64,
        from one evaluation of the family at the scaled (and shifted) quadrature nodes."""
        nodes, _ = self.quadrature()
        r = r[..., None, None]  # (..., 1, 1)
        points = [r * nodes] + ([r + (1 - r) * nodes] if shift else [])
        q = self.family(torch.cat(points, dim=-2))  # (..., 1|2, N nodes, N)
        scale = torch.cat([r ** (self.beta + 1)] + ([1 - r] if shift else []), dim=-1)  # (..., 1, 1|2)
        mats = scale.mT[..., None] * (q.mT @ self._weighted_nodes())
        if self.lower_triangular:  # what the quadrature leaves above the diagonal is rounding
            mats[..., 0, :, :] = mats[..., 0, :, :].tril()
        return mats

    def block_input(self, t0: int, t1: int) -> Tensor:
        """U(t0, t1) (N, L): the exact projection of tokens t0 .. t1-1 onto the state at t1, from
        cell integrals of q_n u^β; float64."""
        t0, t1 = token_position(t0, "t0"), token_position(t1, "t1")
        if t1 <= t0:
            raise ValueError(f"t1 must be > t0, got t0={t0}, t1={t1}")
        edges = torch.arange(t0, t1 + 1, dtype=_F64) / t1  # (L+1,) cell edges in u
        cumulative = self.weighted_antiderivative(edges)  # (L+1, N)
        return (cumulative[1:] - cumulative[:-1]).T  # (N, L)

    def ode_matrices(self) -> tuple[Tensor, Tensor]:
        """(A (N, N), B (N,)) of t c' = A c + B f, float64: A = -(β+1) I - K,
        K[n, m] = ∫ u q_n'(u) q_m(u) u^β du, B = q(1)."""
        nodes, _ = self.quadrature()
        k = (nodes[:, None] * self.family_derivative(nodes)).mT @ self._weighted_nodes()  # (N, N)
        a = -(self.beta + 1) * torch.eye(self.order, dtype=_F64) - k
        return a, self.family(torch.ones((), dtype=_F64))

    # ---- the Encoder contract ---------------------------------------------------------------

    def support(self, t: TimeLike) -> tuple[TimeLike, TimeLike]:
        """[0, t]: the whole past."""
        if isinstance(t, Tensor):
            return torch.zeros_like(t), t
        return 0.0, t

    def basis(self, positions: Tensor, t: TimeLike) -> Tensor:
        """(..., P) absolute positions in [0, t] -> (..., P, N): q_n(positions / t).

        ``t`` is a number or a tensor broadcastable to ``positions[..., 0]`` (one time per row).
        At t = 0 (an empty state) the rows are q(0). Differentiable in ``positions``.
        """
        t = torch.as_tensor(t, dtype=positions.dtype, device=positions.device)
        if t.dim() > 0:
            t = t.unsqueeze(-1)  # (..., 1): one time per row of positions
        u = torch.where(t > 0, positions / torch.where(t > 0, t, torch.ones_like(t)), torch.zeros_like(positions))
        return self.family(u)

    def update(self, state: Tensor, x: Tensor, t0: int) -> Tensor:
        """State (..., N, C) at t0 + L after the tokens ``x`` (..., L, C) at positions t0 ..:
        ``M(t0/t1) state + U(t0, t1) x`` (:func:`memplug.hippo.scan.block_update`). The tokens are
        projected in their own dtype (bf16 keys under autocast take a bf16 matmul with float32
        accumulation, like every other projection of the model); the transitions and the sum run
        in the promoted dtype of state and x."""
        return block_update(self, state, x, t0)

    def scan(self, x: Tensor, block: int, t0: int = 0, state: Tensor | None = None) -> Tensor:
        """States after every block (..., nb, N, C) (:func:`memplug.hippo.scan.block_scan`):
        every block's input term from one batched matmul (in x's dtype, as in :meth:`update`),
        then the block recurrence in the promoted dtype of state and x (float32 at least without
        a state)."""
        return block_scan(self, x, block, t0, state, self.scan_method, self.scan_precision)

    # ---- the block recurrence (memplug.hippo.scan.BlockRecurrence) ---------------------------

    def span_transitions(self, spans: Sequence[Span], dtype: torch.dtype, device: torch.device) -> Tensor:
        """(k, N, N): M(t0/t1) for each span (t0, t1). Several spans are stacked once and cached
        under the spans (training repeats them at every step); one span is its cached matrix."""
        device = torch.device(device)
        if len(spans) == 1:
            return self._by_ratio(spans, dtype, device)[0][:1]  # (1, N, N), no copy
        return self._cached(("S", tuple(spans)), dtype, device,
                            lambda: torch.stack([m[0] for m in self._by_ratio(spans, dtype, device)]))

    def span_drive(self, blocks: Tensor, spans: Sequence[Span], dtype: torch.dtype) -> Tensor:
        """U(t0, t1) x for each span: (..., k, L, C) -> (..., k, N, C) in ``dtype``; the tokens are
        projected in their own dtype."""
        length = blocks.shape[-2]
        if len(spans) == 1:
            t0 = spans[0][0]
            return self._drive(blocks[..., 0, :, :], t0, length, dtype).unsqueeze(-3)
        return self._drive_blocks(blocks, [t0 for t0, _ in spans], dtype)

    # ---- cached pieces ----------------------------------------------------------------------

    @property
    def uniform_weight(self) -> bool:
        """β = 0: the block term uses the cheaper form (1 - r) T(r) U(0, L)."""
        return self.beta == 0

    def _require_uniform(self, what: str) -> None:
        if not self.uniform_weight:
            raise ValueError(f"{what} needs the uniform weight (beta = 0), got beta = {self.beta:g}")

    def _weighted_nodes(self) -> Tensor:
        """diag(w) Q(nodes): (N nodes, N), float64, cached."""
        key = ("WQ", _F64, _CPU)
        hit = self._cache.get(key)
        if hit is None:
            nodes, weights = self.quadrature()
            hit = self._cache.put(key, weights[:, None] * self.family(nodes))
        return hit

    def _cached(self, key: tuple, dtype: torch.dtype, device: torch.device, build) -> Tensor:
        full_key = (*key, dtype, torch.device(device))
        hit = self._cache.get(full_key)
        if hit is None:
            hit = self._cache.put(full_key, build().to(device=device, dtype=dtype))
        return hit

    def _by_ratio(self, spans: Sequence[Span], dtype: torch.dtype, device: torch.device) -> list[Tensor]:
        """Per-span matrices for spans (t0, t1): (2, N, N) [M(r), (1 - r) T(r)] for β = 0, else
        (1, N, N) [M(r)], each. Keyed by the reduced fraction t0/t1; misses built in one batch."""
        device = torch.device(device)
        keys = []
        for t0, t1 in spans:
            g = math.gcd(t0, t1)
            keys.append(("R", t0 // g, t1 // g, dtype, device))
        found = {k: self._cache.get(k) for k in dict.fromkeys(keys)}
        missing = [k for k, hit in found.items() if hit is None]
        if missing:
            ratios = torch.tensor([k[1] / k[2] for k in missing], dtype=_F64)  # (m,)
            built = self._ratio_matrices(ratios, shift=self.uniform_weight).to(device=device, dtype=dtype)
            for k, mats in zip(missing, built):
                found[k] = self._cache.put(k, mats)
        return [found[k] for k in keys]

    def _own_input(self, length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """U(0, L) (N, L): the projection of a block onto its own span (β = 0)."""
        return self._cached(("U", 0, length), dtype, device, lambda: self.block_input(0, length))

    def _drive(self, x: Tensor, t0: int, length: int, dtype: torch.dtype) -> Tensor:
        """U(t0, t0 + L) x: (..., L, C) -> (..., N, C) in ``dtype``; the tokens are projected in
        their own dtype. For β = 0 as (1 - r) T(r) (U(0, L) x): in a stream every block has a new
        ratio, and T(r) (N, N) then meets the N x C projection instead of forming U (N, L)."""
        device, t1 = x.device, t0 + length
        if self.uniform_weight:
            own = (self._own_input(length, x.dtype, device) @ x).to(dtype)  # (..., N, C)
            return own if t0 == 0 else self._by_ratio([(t0, t1)], dtype, device)[0][1] @ own
        return (self._cached(("U", t0, t1), x.dtype, device, lambda: self.block_input(t0, t1)) @ x).to(dtype)

    def _drive_blocks(self, blocks: Tensor, starts: list[int], dtype: torch.dtype) -> Tensor:
        """U(s_i, s_i + L) x_i for equal blocks (..., nb, L, C) -> (..., nb, N, C), as :meth:`_drive`."""
        device, length = blocks.device, blocks.shape[-2]
        if self.uniform_weight:
            # U(s_i, s_i + L) = (1 - r_i) T(r_i) U(0, L), formed first (and cached: training
            # repeats the same block starts): the tokens then meet one matrix per block, and the
            # backward has no (N, N) product on the token side
            def build() -> Tensor:
                shifts = torch.stack([m[1] for m in self._by_ratio([(s, s + length) for s in starts], dtype, device)])
                return shifts @ self._own_input(length, dtype, device)  # (nb, N, L)

            inputs = self._cached(("W", tuple(starts), length), blocks.dtype, device, build)
        else:
            inputs = torch.stack(
                [
                    self._cached(("U", s, s + length), blocks.dtype, device, lambda s=s: self.block_input(s, s + length))
                    for s in starts
                ]
            )  # (nb, N, L)
        return (inputs @ blocks).to(dtype)
