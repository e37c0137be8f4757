"""``check_encoder``: the Encoder contract (:class:`memplug.Encoder`) as hypothesis properties.

Invariants, each run on its own drawn examples (each is one function below, of the encoder and
one example):

- ``support``: ``support(t)`` is an interval ``0 <= lo <= hi <= t`` of positive length, also
  elementwise for a (nb,) tensor of times (the built-in retrievers pass tensors);
- ``state shape``: ``init_state``, ``update`` and ``scan`` give (*batch, N, C) states (and
  (*batch, nblocks, N, C)) in the input's dtype, whatever ``t0`` (up to 1e6) and ``L``;
- ``chunking invariance``: ``update`` over any chunking == one ``update`` == ``scan`` at every
  block boundary, from any ``t0`` and any state reached before ``t0``;
- ``linearity``: ``update`` is linear in (state, x) jointly;
- ``basis``: ``basis`` of (P,) positions inside the support is (P, N), finite and float64 for
  float64 positions; the (nb, P) form with (nb,) times equals the rows of the scalar form;
  its gradient in the positions equals a central finite difference;
- ``projection`` (scale-invariant measures, or any encoder given a ``weight``): the state
  equals the kit's float64 quadrature of ``c_n(t) = ∫ f(s) w(s, t) q_n(s, t) ds``
  (:mod:`memplug.testing.reference`) at every chunk boundary;
- ``float32 vs float64``: a float32 stream of ``long_length`` tokens stays close to the same
  stream in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from hypothesis import strategies as st
from hypothesis import settings as Settings
from torch import Tensor

from memplug.core.contracts import Encoder

from . import strategies as mst
from .reference import Weight, projection_reference
from .runner import Invariant, Mismatch, component, expect_close, relative_error, run_invariants, subject

__all__ = ["check_encoder", "encoder_invariants", "projection_weight"]

EncoderLike = Encoder | Callable[[], Encoder]

#: Relative tolerance of the exactness invariants (chunking, linearity) per stream dtype.
EXACT_TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5}


def projection_weight(encoder: Encoder) -> Weight | None:
    """The density ``w(s, t) = (s/t)^β / t`` of a scale-invariant measure
    (:class:`memplug.hippo.scale_invariant.ScaleInvariantMeasure`, whatever orthonormal family it uses for
    the weight ``u^β``), or None for other encoders: pass ``weight=`` to :func:`check_encoder`
    to run the projection invariant for those.
    """
    from memplug.hippo.scale_invariant import ScaleInvariantMeasure

    if not isinstance(encoder, ScaleInvariantMeasure):
        return None
    beta = float(encoder.beta)
    return lambda s, t: (s / t) ** beta / t


# ---- drawn examples -------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamCase:
    """A stream ``x`` at positions ``t0 ..``, after a state built from ``prefix`` tokens just
    before ``t0`` (zero signal earlier), cut into ``chunking`` and scanned in ``block``s."""

    stream: mst.Stream
    dtype: torch.dtype
    t0: int
    prefix: mst.Stream | None
    chunking: tuple[int, ...]
    block: int

    def describe(self) -> str:
        before = "zero history" if self.prefix is None else f"state from {self.prefix.length} tokens before t0"
        return (
            f"x of shape {self.stream.shape} {str(self.dtype).removeprefix('torch.')} ({self.stream.kind}, seed "
            f"{self.stream.seed}) at t0={self.t0}, {before}, chunking={self.chunking}, scan block={self.block}"
        )


@st.composite
def stream_cases(
    draw: st.DrawFn, channels: int, max_length: int, max_t0: int, dtypes: tuple[torch.dtype, ...]
) -> StreamCase:
    stream = draw(mst.streams(length=mst.block_lengths(1, max_length), channels=st.integers(1, channels)))
    t0 = draw(mst.start_times(max_t0))
    prefix = None
    if t0 > 0 and draw(st.booleans()):
        prefix = draw(mst.streams(length=st.integers(1, min(t0, 8)), channels=st.just(stream.channels),
                                  batch=st.just(stream.batch)))
    return StreamCase(
        stream=stream,
        dtype=draw(st.sampled_from(dtypes)),
        t0=t0,
        prefix=prefix,
        chunking=draw(mst.chunkings(stream.length, max_chunks=6)),
        block=draw(mst.block_lengths(1, stream.length)),
    )


@dataclass(frozen=True)
class LinearCase:
    first: StreamCase
    second_seed: int
    a: float
    b: float

    def describe(self) -> str:
        return (f"a*(s1, x1) + b*(s2, x2) with a={self.a}, b={self.b}; x1: {self.first.describe()}; "
                f"x2 seed {self.second_seed}")


def times(max_t: int) -> st.SearchStrategy[float]:
    """Times ``t``: small integers, any integer up to ``max_t``, or fractional."""
    return st.one_of(st.integers(1, 64), st.integers(1, max_t), st.floats(0.5, 1e4)).map(float)


@dataclass(frozen=True)
class BasisCase:
    times: tuple[float, ...]
    fractions: tuple[tuple[float, ...], ...]  # (nb, P) fractions of each time's support

    def describe(self) -> str:
        return f"times {self.times}, P={len(self.fractions[0])} positions at support fractions {self.fractions}"


@st.composite
def basis_cases(draw: st.DrawFn, max_t: int) -> BasisCase:
    nb = draw(st.integers(1, 3))
    size = draw(st.integers(1, 6))
    time = times(max_t)
    fraction = st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 1.0]))
    fractions = st.lists(fraction, min_size=size, max_size=size).map(lambda f: tuple(sorted(f)))
    return BasisCase(
        times=tuple(draw(st.lists(time, min_size=nb, max_size=nb))),
        fractions=tuple(draw(st.lists(fractions, min_size=nb, max_size=nb))),
    )


@dataclass(frozen=True)
class LongCase:
    stream: mst.Stream
    t0: int
    block: int

    def describe(self) -> str:
        return (f"x of shape {self.stream.shape} ({self.stream.kind}, seed {self.stream.seed}) at t0={self.t0}, "
                f"updated in blocks of {self.block}")


# ---- helpers --------------------------------------------------------------------------------


def _initial_state(encoder: Encoder, case: StreamCase, dtype: torch.dtype | None = None) -> Tensor:
    """The state at ``t0``: empty, or after ``case.prefix`` at ``t0 - prefix.length``."""
    dtype = case.dtype if dtype is None else dtype
    state = encoder.init_state(*case.stream.batch, channels=case.stream.channels, dtype=dtype)
    if case.prefix is not None:
        state = encoder.update(state, case.prefix.tensor(dtype), case.t0 - case.prefix.length)
    return state


def _chunked(encoder: Encoder, state: Tensor, x: Tensor, t0: int, chunking: tuple[int, ...]) -> list[Tensor]:
    """States after each chunk of ``chunking``."""
    states, start = [], 0
    for length in chunking:
        state = encoder.update(state, x[..., start : start + length, :], t0 + start)
        states.append(state)
        start += length
    return states


def _blocks(length: int, block: int) -> tuple[int, ...]:
    return (block,) * (length // block) + ((length % block,) if length % block else ())


# ---- the invariants: one function each, of the encoder and one drawn example ------------------


def support(encoder: Encoder, ts: tuple[float, ...]) -> None:
    for t in ts:
        lo, hi = (float(v) for v in encoder.support(t))
        if not (0.0 <= lo < hi <= t * (1 + 1e-12)):
            raise Mismatch(f"support({t}) = ({lo}, {hi}) is not an interval 0 <= lo < hi <= t")
    lo_t, hi_t = encoder.support(torch.tensor(ts, dtype=torch.float64))
    lo_s, hi_s = zip(*(encoder.support(t) for t in ts))
    for got, want, end in ((lo_t, lo_s, "lo"), (hi_t, hi_s, "hi")):
        got = torch.as_tensor(got, dtype=torch.float64).expand(len(ts))
        expect_close(got, torch.tensor([float(v) for v in want], dtype=torch.float64), 1e-12,
                     f"support({end}) of a tensor of times vs one time at a time")


def state_shape(encoder: Encoder, case: StreamCase) -> None:
    batch, c, n = case.stream.batch, case.stream.channels, encoder.order
    want = (*batch, n, c)
    empty = encoder.init_state(*batch, channels=c, dtype=case.dtype)
    if tuple(empty.shape) != want or empty.dtype != case.dtype:
        raise Mismatch(f"init_state gave {tuple(empty.shape)} {empty.dtype}, expected {want} {case.dtype}")
    x = case.stream.tensor(case.dtype)
    for t0 in (0, case.t0):
        state = encoder.update(empty, x, t0)
        if tuple(state.shape) != want or state.dtype != case.dtype:
            raise Mismatch(f"update at t0={t0} gave {tuple(state.shape)} {state.dtype}, expected {want} {case.dtype}")
    states = encoder.scan(x, case.block, t0=case.t0)
    nb = math.ceil(case.stream.length / case.block)
    if tuple(states.shape) != (*batch, nb, n, c) or states.dtype != case.dtype:
        raise Mismatch(f"scan gave {tuple(states.shape)} {states.dtype}, expected {(*batch, nb, n, c)} {case.dtype}")


def chunking(encoder: Encoder, case: StreamCase) -> None:
    tol = EXACT_TOLERANCE[case.dtype]
    x = case.stream.tensor(case.dtype)
    start = _initial_state(encoder, case)
    one = encoder.update(start, x, case.t0)
    chunked = _chunked(encoder, start, x, case.t0, case.chunking)
    expect_close(chunked[-1], one, tol, f"update over chunks {case.chunking} vs one update of {x.shape[-2]} tokens")
    blocks = _blocks(case.stream.length, case.block)
    stepped = torch.stack(_chunked(encoder, start, x, case.t0, blocks), dim=-3)  # (*batch, nb, N, C)
    scanned = encoder.scan(x, case.block, t0=case.t0, state=None if case.prefix is None else start)
    expect_close(scanned, stepped, tol, f"scan(block={case.block}) vs update block by block")


def linearity(encoder: Encoder, case: LinearCase) -> None:
    first = case.first
    second = StreamCase(
        stream=mst.Stream(first.stream.batch, first.stream.length, first.stream.channels, "gaussian", case.second_seed),
        dtype=first.dtype, t0=first.t0, chunking=first.chunking, block=first.block,
        prefix=None if first.prefix is None else mst.Stream(
            first.prefix.batch, first.prefix.length, first.prefix.channels, "gaussian", case.second_seed + 1),
    )
    s1, s2 = _initial_state(encoder, first), _initial_state(encoder, second)
    x1, x2 = first.stream.tensor(), second.stream.tensor()
    mixed = encoder.update(case.a * s1 + case.b * s2, case.a * x1 + case.b * x2, first.t0)
    apart = case.a * encoder.update(s1, x1, first.t0) + case.b * encoder.update(s2, x2, first.t0)
    expect_close(mixed, apart, EXACT_TOLERANCE[torch.float64],
                 "update(a s1 + b s2, a x1 + b x2) vs a update(s1, x1) + b update(s2, x2)")


def basis(encoder: Encoder, case: BasisCase) -> None:
    """Values (shape, dtype, finite, batched == scalar), then the gradient in the positions."""
    n, rows = encoder.order, []
    for t, fractions in zip(case.times, case.fractions):
        lo, hi = (float(v) for v in encoder.support(t))
        p = lo + (hi - lo) * torch.tensor(fractions, dtype=torch.float64)  # (P,)
        phi = encoder.basis(p, t)
        if tuple(phi.shape) != (len(fractions), n):
            raise Mismatch(f"basis of {len(fractions)} positions at t={t} is {tuple(phi.shape)}, "
                           f"expected {(len(fractions), n)}")
        if phi.dtype != torch.float64:
            raise Mismatch(f"basis of float64 positions came back {phi.dtype} (dtype must follow the positions)")
        if not torch.isfinite(phi).all():
            raise Mismatch(f"basis at t={t}, positions {p.tolist()} has non-finite values")
        rows.append((p, phi))
    positions = torch.stack([p for p, _ in rows])  # (nb, P)
    batched = encoder.basis(positions, torch.tensor(case.times, dtype=torch.float64))
    expect_close(batched, torch.stack([phi for _, phi in rows]), 1e-12,
                 "basis of (nb, P) positions at (nb,) times vs one time at a time")
    _basis_gradient(encoder, case)


def _basis_gradient(encoder: Encoder, case: BasisCase) -> None:
    """d basis / d positions against a central difference along a random direction."""
    t, (lo, hi) = case.times[0], (float(v) for v in encoder.support(case.times[0]))
    inner = lo + (hi - lo) * (0.05 + 0.9 * torch.tensor(case.fractions[0], dtype=torch.float64))  # (P,)
    gen = torch.Generator().manual_seed(len(case.times))
    probe = torch.randn(len(case.fractions[0]), encoder.order, generator=gen, dtype=torch.float64)  # (P, N)
    direction = torch.randn(inner.shape, generator=gen, dtype=torch.float64)
    p = inner.clone().requires_grad_(True)
    value = (encoder.basis(p, t) * probe).sum()
    (grad,) = torch.autograd.grad(value, p)
    h = 1e-5 * (hi - lo)
    with torch.no_grad():
        plus = (encoder.basis(inner + h * direction, t) * probe).sum()
        minus = (encoder.basis(inner - h * direction, t) * probe).sum()
    numeric = (plus - minus) / (2 * h)
    analytic = (grad * direction).sum()
    scale = (grad.abs() * direction.abs()).sum().item() + numeric.abs().item()
    if not abs((analytic - numeric).item()) <= 1e-4 * max(scale, 1e-300):
        raise Mismatch(f"d basis / d positions at t={t}: autograd {analytic.item():.6g}, "
                       f"central difference {numeric.item():.6g}")


def projection(encoder: Encoder, weight: Weight, tolerance: float, case: StreamCase) -> None:
    x = case.stream.tensor(torch.float64)
    start = _initial_state(encoder, case)
    states = torch.stack(_chunked(encoder, start, x, case.t0, case.chunking), dim=-3)  # (*batch, k, N, C)
    ends = [case.t0 + e for e in torch.tensor(case.chunking).cumsum(0).tolist()]
    # the signal: zero, then the prefix tokens, then x
    if case.prefix is None:
        signal, begin = x, case.t0
    else:
        signal, begin = torch.cat([case.prefix.tensor(torch.float64), x], dim=-2), case.t0 - case.prefix.length
    reference = projection_reference(encoder, signal, begin, ends, weight)
    for i, t in enumerate(ends):
        expect_close(states[..., i, :, :], reference[..., i, :, :], tolerance,
                     f"state at t={t} vs the float64 quadrature of its definition")


def precision(encoder: Encoder, tolerance: float, case: LongCase) -> None:
    length = case.stream.length
    blocks = _blocks(length, case.block)
    finals = []
    for dtype in (torch.float32, torch.float64):
        x = case.stream.tensor(dtype)
        state = encoder.init_state(channels=case.stream.channels, dtype=dtype)
        finals.append(_chunked(encoder, state, x, case.t0, blocks)[-1])
    err = relative_error(finals[0], finals[1])
    if not err <= tolerance:
        raise Mismatch(f"float32 state after {length} tokens is {err:.3g} from float64 (allowed {tolerance:g})")


# ---- the check ------------------------------------------------------------------------------


def check_encoder(
    encoder_or_factory: EncoderLike,
    *,
    channels: int = 3,
    max_length: int = 48,
    max_t0: int = 1_000_000,
    weight: Weight | None = None,
    projection_tolerance: float = 1e-9,
    long_length: int = 4096,
    long_tolerance: float = 1e-4,
    settings: Settings | None = None,
) -> None:
    """Check an encoder against its contract; raise ``AssertionError`` naming the first broken
    invariant, the (shrunk) failing example and the error found.

    Args:
        encoder_or_factory: an :class:`~memplug.core.contracts.Encoder`, or a callable (a class, a
            ``functools.partial``) returning one.
        channels: the most channels C a drawn stream has.
        max_length: the longest stream in the exactness invariants.
        max_t0: the largest start position drawn (no maximum context: 1e6 by default).
        weight: ``w(s, t)`` (float64 tensor of positions, float time -> float64 tensor) to check
            the state against the float64 projection; taken from a scale-invariant measure when
            not given, and the invariant is not run for encoders without one.
        projection_tolerance: relative error allowed against that projection.
        long_length: tokens in the float32-vs-float64 stream.
        long_tolerance: relative error allowed there.
        settings: hypothesis settings; by default the active profile (its ``max_examples``,
            derandomisation, ...), without a deadline.
    """
    encoder = component(encoder_or_factory, Encoder, "encoder_or_factory")
    invariants = encoder_invariants(encoder, channels=channels, max_length=max_length, max_t0=max_t0, weight=weight,
                                    projection_tolerance=projection_tolerance, long_length=long_length,
                                    long_tolerance=long_tolerance)
    run_invariants(subject(encoder), invariants, settings)


def encoder_invariants(
    encoder: Encoder,
    *,
    channels: int = 3,
    max_length: int = 48,
    max_t0: int = 1_000_000,
    weight: Weight | None = None,
    projection_tolerance: float = 1e-9,
    long_length: int = 4096,
    long_tolerance: float = 1e-4,
) -> list[Invariant]:
    """The invariants :func:`check_encoder` runs on ``encoder``, in order (same options)."""
    weight = weight if weight is not None else projection_weight(encoder)
    n = encoder.order

    def streams(*dtypes: torch.dtype) -> st.SearchStrategy[StreamCase]:
        return stream_cases(channels, max_length, max_t0, dtypes)

    coefficient = st.floats(-3.0, 3.0, allow_subnormal=False)
    invariants = [
        Invariant("support", "support(t) is an interval 0 <= lo < hi <= t, elementwise for a tensor of times",
                  st.lists(times(max_t0), min_size=1, max_size=4).map(tuple), partial(support, encoder)),
        Invariant("state shape", f"states are (*batch, N={n}, C) in the input dtype at every t0 and L",
                  streams(torch.float32, torch.float64), partial(state_shape, encoder)),
        Invariant("chunking invariance", "update over any chunking == one update == scan at block boundaries",
                  streams(torch.float32, torch.float64), partial(chunking, encoder)),
        Invariant("linearity", "update is linear in (state, x)",
                  st.builds(LinearCase, first=streams(torch.float64), second_seed=st.integers(0, 2**16),
                            a=coefficient, b=coefficient),
                  partial(linearity, encoder)),
        Invariant("basis", f"basis(positions inside support(t), t) is (P, N={n}), finite, float64 in float64, "
                  "batched == scalar, differentiable in the positions", basis_cases(max_t0), partial(basis, encoder)),
    ]
    if weight is not None:
        invariants.append(Invariant(
            "projection",
            "the state is the float64 projection c_n(t) = ∫ f(s) w(s,t) q_n(s,t) ds of the token signal",
            streams(torch.float64), partial(projection, encoder, weight, projection_tolerance)))
    invariants.append(Invariant(
        "float32 vs float64", f"a float32 stream of {long_length} tokens stays within {long_tolerance:g} of float64",
        st.builds(LongCase, stream=mst.streams(length=st.just(long_length), channels=st.just(2), batch=st.just(())),
                  t0=mst.start_times(max_t0),
                  block=st.integers(max(1, long_length // 32), max(1, long_length // 2))),
        partial(precision, encoder, long_tolerance)))
    return invariants
