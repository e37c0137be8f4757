"""``check_retriever``: the Retriever contract (:class:`memplug.Retriever`) as hypothesis properties.

Invariants, each checked with every encoder given (by default a LegS and a LegT), in training
and in eval mode (drawn per example):

- ``positions``: ``positions(t, encoder)`` is (P,) with P = ``retriever.samples``, finite,
  sorted, inside ``encoder.support(t)``, the same for ``t`` given as an int, a float or a
  0-d tensor, and computable with the retriever frozen under ``torch.no_grad``;
- ``batched positions``: for a (nb,) tensor of times, (nb, P) whose rows are the scalar form;
- ``read``: ``read(encoder, state, t)`` is ``basis(positions(t), t) @ state`` with shape
  (*batch, P, C), and its (nb,) form (states (*batch, nb, N, C)) has the scalar reads as rows;
- ``gradients`` (retrievers with trainable parameters): every trainable parameter gets a
  finite, non-zero gradient from a read.

A retriever may be random (e.g. drawing fresh positions in training): every call the kit
compares is made with torch's global generator seeded the same way, so the invariants hold for
a retriever whose positions are a function of ``t``, the encoder and that generator's state.
Randomness from a generator of its own cannot be checked this way.

Each invariant is one function below, of a :class:`Harness` (the retriever and its encoders)
and one drawn example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import torch
from hypothesis import settings as Settings
from hypothesis import strategies as st
from torch import Tensor

from memplug.core.contracts import Encoder, Retriever

from . import strategies as mst
from .runner import Invariant, Mismatch, component, expect_close, expect_gradient, run_invariants, subject

__all__ = ["check_retriever", "default_encoders", "retriever_invariants"]

RetrieverLike = Retriever | Callable[[], Retriever]
T = TypeVar("T")


def default_encoders() -> list[Encoder]:
    """The encoders a retriever is checked with when none are given: LegS (support [0, t]) and
    LegT with a window of 64 tokens (support [max(0, t - 64), t])."""
    from memplug import make_encoder

    return [make_encoder("legs", order=8), make_encoder("legt", order=8, window=64.0)]


@dataclass(frozen=True)
class ReadCase:
    """Block times ``times`` (nb,), read with encoder ``encoder`` from random states."""

    encoder: int
    encoder_label: str
    times: tuple[float, ...]
    state: mst.Stream  # its batch, channels and seed give the random states (*batch, nb, N, C)
    training: bool

    def describe(self) -> str:
        mode = "training" if self.training else "eval"
        return (f"{mode} mode, encoder {self.encoder_label}, times {self.times}, states of batch {self.state.batch} "
                f"with C={self.state.channels}")


def _seeded(seed: int, fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` with torch's global generator seeded by ``seed`` (and restored after)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn(*args)


def _tolerance(positions: Tensor, hi: float) -> float:
    return 8 * torch.finfo(positions.dtype).eps * max(1.0, abs(hi))


@dataclass
class Harness:
    """The retriever checked, the encoders it reads through, and how the invariants call it."""

    retriever: Retriever
    encoders: list[Encoder]

    def positions(self, case: ReadCase, t: float | Tensor) -> Tensor:
        return _seeded(case.state.seed, self.retriever.positions, t, self.encoders[case.encoder])

    def read(self, case: ReadCase, state: Tensor, t: float | Tensor) -> Tensor:
        return _seeded(case.state.seed, self.retriever.read, self.encoders[case.encoder], state, t)

    def states(self, case: ReadCase, *blocks: int) -> Tensor:
        """Random float64 states (*batch, *blocks, N, C) drawn from the case's seed."""
        gen = torch.Generator().manual_seed(case.state.seed)
        n = self.encoders[case.encoder].order
        return torch.randn(*case.state.batch, *blocks, n, case.state.channels, generator=gen, dtype=torch.float64)

    def scalar_positions(self, case: ReadCase, t: float) -> Tensor:
        """``positions(t)``, checked: (P,), finite, inside the support, sorted."""
        encoder, p = self.encoders[case.encoder], self.retriever.samples
        pos = self.positions(case, t)
        if tuple(pos.shape) != (p,):
            raise Mismatch(f"positions at t={t} have shape {tuple(pos.shape)}, expected ({p},)")
        if not pos.is_floating_point() or not torch.isfinite(pos).all():
            raise Mismatch(f"positions at t={t} are not finite floats: {pos.tolist()}")
        lo, hi = (float(v) for v in encoder.support(t))
        tol = _tolerance(pos, hi)
        outside = ((pos < lo - tol) | (pos > hi + tol)).nonzero().flatten().tolist()
        if outside:
            shown = [round(pos[i].item(), 6) for i in outside[:5]]
            raise Mismatch(f"at t={t}, {len(outside)} of {p} positions lie outside the support [{lo:g}, {hi:g}]: "
                           f"indices {outside[:5]} at {shown}")
        if (pos[1:] < pos[:-1]).any():
            raise Mismatch(f"positions at t={t} are not sorted: {pos.tolist()}")
        return pos


def in_mode(check: Callable[[Harness, ReadCase], None], harness: Harness, case: ReadCase) -> None:
    """``check`` with the retriever in the case's mode (training or eval), restored after."""
    retriever = harness.retriever
    was = retriever.training
    retriever.train(case.training)
    try:
        check(harness, case)
    finally:
        retriever.train(was)


# ---- the invariants: one function each, of the harness and one drawn example ------------------


def positions(h: Harness, case: ReadCase) -> None:
    for t in case.times:
        pos = h.scalar_positions(case, t)
        forms = {"a 0-d tensor": torch.tensor(t, dtype=torch.float64)}
        if t == int(t):
            forms["an int"] = int(t)
        for form, value in forms.items():
            expect_close(h.positions(case, value), pos, _tolerance(pos, t),
                         f"positions with t={t} given as {form} vs as a float")
        with torch.no_grad():
            frozen = [q.requires_grad for q in h.retriever.parameters()]
            h.retriever.requires_grad_(False)
            try:
                again = h.positions(case, t)
            finally:
                for q, flag in zip(h.retriever.parameters(), frozen):
                    q.requires_grad_(flag)
        expect_close(again, pos, _tolerance(pos, t), f"positions at t={t} with the retriever frozen under no_grad")


def batched_positions(h: Harness, case: ReadCase) -> None:
    rows = torch.stack([h.scalar_positions(case, t) for t in case.times])  # (nb, P)
    both = h.positions(case, torch.tensor(case.times, dtype=torch.float64))
    expect_close(both, rows, _tolerance(rows, max(case.times)),
                 "positions of a (nb,) tensor of times vs one time at a time")


def read(h: Harness, case: ReadCase) -> None:
    encoder = h.encoders[case.encoder]
    states = h.states(case, len(case.times))  # (*batch, nb, N, C)
    scalar = []
    for i, t in enumerate(case.times):
        out = h.read(case, states[..., i, :, :], t)
        want = encoder.basis(h.positions(case, t), t).to(torch.float64) @ states[..., i, :, :]
        expect_close(out, want, 1e-9, f"read at t={t} vs basis(positions(t), t) @ state")
        scalar.append(out)
    both = h.read(case, states, torch.tensor(case.times, dtype=torch.float64))
    expect_close(both, torch.stack(scalar, dim=-3), 1e-9, "read of (nb,) times vs one time at a time")


def gradients(h: Harness, case: ReadCase) -> None:
    state = h.states(case)  # (*batch, N, C)
    h.retriever.zero_grad(set_to_none=True)
    loss = sum(h.read(case, state, t).square().sum() for t in case.times)
    loss.backward()
    for name, q in h.retriever.named_parameters():
        if not q.requires_grad:
            continue
        expect_gradient(repr(name), q.grad, " from read")
    h.retriever.zero_grad(set_to_none=True)


# ---- the check ------------------------------------------------------------------------------


def check_retriever(
    retriever_or_factory: RetrieverLike,
    *,
    encoders: Sequence[Encoder] | None = None,
    max_t: int = 1_000_000,
    channels: int = 3,
    settings: Settings | None = None,
) -> None:
    """Check a retriever against its contract; raise ``AssertionError`` naming the first broken
    invariant, the (shrunk) failing example and the error found.

    Args:
        retriever_or_factory: a :class:`~memplug.core.contracts.Retriever`, or a callable returning one.
        encoders: encoders to read through (default :func:`default_encoders`).
        max_t: the latest time drawn.
        channels: the most channels C of a drawn state.
        settings: hypothesis settings; by default the active profile, without a deadline.
    """
    retriever = component(retriever_or_factory, Retriever, "retriever_or_factory")
    invariants = retriever_invariants(retriever, encoders=encoders, max_t=max_t, channels=channels)
    run_invariants(subject(retriever), invariants, settings)


def retriever_invariants(
    retriever: Retriever, *, encoders: Sequence[Encoder] | None = None, max_t: int = 1_000_000, channels: int = 3
) -> list[Invariant]:
    """The invariants :func:`check_retriever` runs on ``retriever``, in order (same options)."""
    encoders = list(default_encoders() if encoders is None else encoders)
    if not encoders or not all(isinstance(e, Encoder) for e in encoders):
        raise ValueError(f"encoders must be a non-empty list of memplug.Encoder, got {encoders!r}")
    harness, p = Harness(retriever, encoders), retriever.samples

    time = st.one_of(st.integers(1, 64), st.integers(1, max_t), st.floats(0.5, 1e4)).map(float)
    cases = st.integers(0, len(encoders) - 1).flatmap(
        lambda i: st.builds(
            ReadCase,
            encoder=st.just(i),
            encoder_label=st.just(repr(encoders[i])),
            times=st.lists(time, min_size=1, max_size=3).map(tuple),
            state=mst.streams(length=st.just(1), channels=st.integers(1, channels)),
            training=st.booleans(),
        )
    )

    def invariant(name: str, statement: str, check: Callable[[Harness, ReadCase], None]) -> Invariant[ReadCase]:
        return Invariant(name, statement, cases, partial(in_mode, check, harness))

    invariants = [
        invariant("positions", f"positions(t) are P={p} sorted finite positions inside encoder.support(t)", positions),
        invariant("batched positions", "positions of (nb,) times are (nb, P) with the scalar positions as rows",
                  batched_positions),
        invariant("read",
                  "read(encoder, state, t) == basis(positions(t), t) @ state, (*batch, P, C), batched == scalar", read),
    ]
    if any(q.requires_grad for q in retriever.parameters()):
        invariants.append(invariant(
            "gradients", "every trainable parameter gets a finite, non-zero gradient from a read", gradients))
    return invariants
