"""The kit catches each invariant it claims: one test double per invariant, breaking that one.

Each component below is a working built-in with one plausible bug that breaks exactly one
invariant of its contract. Every invariant the kit runs on it is run alone: the one broken
must raise the kit's :class:`InvariantViolation` naming it, and all the others must pass. So a
kit that stopped checking an invariant (a comparison of a value with itself, a chunked run
streamed as one chunk) is caught here, and so is a kit that blames the wrong invariant.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import memplug
from memplug.core.contracts import MemoryRead
from memplug.ops.sampling import midpoints, place
from memplug.plugins.memories.xl import XLMemory
from memplug.testing import InvariantViolation
from memplug.testing.encoders import encoder_invariants
from memplug.testing.memories import Harness, memory_invariants
from memplug.testing.retrievers import retriever_invariants
from memplug.testing.runner import Invariant, run_invariants, subject


# ---- encoders: a LegS with one bug (a plain Encoder, so the projection invariant is not run) ----


class LegSLike(memplug.Encoder):
    """LegS, delegated; the subclasses below each change one method."""

    name = "test-legs-like"

    def __init__(self) -> None:
        super().__init__()
        self.legs = memplug.make_encoder("legs", order=6)
        self.order = 6

    def support(self, t):
        return self.legs.support(t)

    def update(self, state, x, t0):
        return self.legs.update(state, x, t0)

    def scan(self, x, block, t0=0, state=None):
        return self.legs.scan(x, block, t0, state)

    def basis(self, positions, t):
        return self.legs.basis(positions, t)


class Squashed(LegSLike):
    """Squashes every token through tanh before projecting it: chunk invariant (a per-token
    map), right shapes and dtypes, but not linear."""

    name = "test-squashed"

    def update(self, state, x, t0):
        return self.legs.update(state, torch.tanh(x), t0)

    def scan(self, x, block, t0=0, state=None):
        return self.legs.scan(torch.tanh(x), block, t0, state)


class FirstTimeBasis(LegSLike):
    """Evaluates a batch of rows at the first row's time (a broadcasting slip): the scalar
    basis is right, the (nb, P) form at (nb,) times is not."""

    name = "test-first-time-basis"

    def basis(self, positions, t):
        if isinstance(t, Tensor) and t.dim() == 1:
            t = t[0]
        return self.legs.basis(positions, t)


class Bf16Tokens(LegSLike):
    """Rounds float32 tokens to bfloat16 before projecting them (an autocast leak): exact per
    token, so chunking still agrees, but a float32 stream drifts from float64 by ~1e-3."""

    name = "test-bf16-tokens"

    def _rounded(self, x):
        return x.to(torch.bfloat16).to(x.dtype) if x.dtype == torch.float32 else x

    def update(self, state, x, t0):
        return self.legs.update(state, self._rounded(x), t0)

    def scan(self, x, block, t0=0, state=None):
        return self.legs.scan(self._rounded(x), block, t0, state)


# ---- retrievers ---------------------------------------------------------------------------------


class ReadsElsewhere(memplug.Retriever):
    """Reports the uniform positions (cell midpoints) but reads at the cells' left edges: a read
    overridden for speed that no longer matches ``positions``."""

    name = "test-reads-elsewhere"
    samples = 4

    def positions(self, t, encoder):
        return place(midpoints(self.samples), *encoder.support(t))

    def read(self, encoder, state, t):
        edges = place(torch.arange(self.samples, dtype=torch.float64) / self.samples, *encoder.support(t))
        return encoder.basis(edges, t).to(state) @ state


# ---- memories: the XL cache with one bug --------------------------------------------------------


class Forgetful(XLMemory):
    """Starts every call from an empty cache, ignoring the state it is given: causal, and one
    call keeps its previous block, but a stream cut into chunks loses it at each cut."""

    name = "test-forgetful"

    def forward_blocks(self, state, q, k, v, t0, complete):
        return super().forward_blocks(self.init_state(k.shape[0], k.dtype, k.device), q, k, v, t0, complete)


class UnpacksByOrder(XLMemory):
    """Keeps its state as ``{"values", "keys"}`` and unpacks it by order
    (``values, keys = state.values()``): a live state keeps that order, a saved and loaded one
    comes back in another, and its keys and values trade places."""

    name = "test-unpacks-by-order"

    @staticmethod
    def _ordered(state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"values": state["values"], "keys": state["keys"]}

    def init_state(self, batch, dtype, device):
        return self._ordered(super().init_state(batch, dtype, device))

    def read(self, state, q, t) -> MemoryRead:
        values, keys = state.values()
        return super().read({"keys": keys, "values": values}, q, t)

    def write(self, state, k, v, t0):
        return self._ordered(super().write(state, k, v, t0))

    def forward_blocks(self, state, q, k, v, t0, complete):
        values, keys = state.values()
        read, new = super().forward_blocks({"keys": keys, "values": values}, q, k, v, t0, complete)
        return read, self._ordered(new)


# ---- the checks -----------------------------------------------------------------------------------

BLOCK = 4

#: invariant -> (the kind checked, the double that breaks it, what the violation must say was found)
CASES = {
    "linearity": ("encoder", Squashed, "update(a s1 + b s2, a x1 + b x2) vs a update(s1, x1) + b update(s2, x2)"),
    "basis": ("encoder", FirstTimeBasis, "basis of (nb, P) positions at (nb,) times vs one time at a time"),
    "float32 vs float64": ("encoder", Bf16Tokens, "float32 state after 4096 tokens is"),
    "read": ("retriever", ReadsElsewhere, "vs basis(positions(t), t) @ state"),
    "chunking invariance": ("memory", Forgetful, "logits streamed in chunks"),
    "state round-trip": ("memory", UnpacksByOrder, "saved and loaded at position"),
}


def invariants_of(kind: str, double: type) -> tuple[str, list[Invariant]]:
    """The subject and the invariants the kit's check of ``kind`` runs on ``double``, in order."""
    if kind == "encoder":
        encoder = double()
        return subject(encoder), encoder_invariants(encoder)
    if kind == "retriever":
        retriever = double()
        return subject(retriever), retriever_invariants(retriever)
    harness = Harness.build(double, block=BLOCK)
    return harness.label, memory_invariants(harness)


@pytest.mark.parametrize("invariant", sorted(CASES))
def test_the_kit_names_the_one_broken_invariant(invariant):
    kind, double, found = CASES[invariant]
    label, invariants = invariants_of(kind, double)
    violations = {}
    for one in invariants:  # each alone, so the others are seen to hold
        try:
            run_invariants(label, [one])
        except InvariantViolation as violation:
            violations[one.name] = str(violation)
    assert sorted(violations) == [invariant], violations
    message = violations[invariant]
    assert message.startswith(f"{kind} {double.name!r}") and f"breaks the invariant {invariant!r}" in message
    assert found in message, message

