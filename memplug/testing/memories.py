"""``check_memory``: the Memory contract (:class:`memplug.Memory`) as hypothesis properties.

A memory is checked inside a small :class:`memplug.core.model.MemoryModel` on the ``tiny`` backbone
(float64 by default, so that leaks far below float32 rounding are still seen). Invariants:

- ``causality``: changing the tokens from position j on never changes a logit before j;
- ``chunking invariance``: any chunking of a sequence, streamed with the state, gives the
  logits of one call (or the memory declares ``chunk_invariant = False`` with a
  ``chunk_invariant_reason``). A chunk inside one block makes the layer call
  ``forward_blocks`` for that single block, so this also checks the block-parallel form
  against the block-by-block one, through what the layer makes of the reads (a slot hidden by
  a ``-inf`` bias and an absent slot are the same thing there);
- ``state round-trip``: a state saved mid-stream and loaded again continues to the same logits;
- ``gradient reach``: every trainable parameter of the memory gets a finite, non-zero gradient,
  and, for a memory that holds a state, the tokens before the last local window change the
  logits of the last block (what the memory keeps is read).

Modes (:data:`MODES`): causality and the round-trip run in training and eval mode, chunking
invariance in eval mode (streaming is inference), gradient reach in training mode. Every
model call is made with torch's global generator seeded the same way, so calls compared with
each other draw the same randomness.

Each invariant is one function below, of a :class:`Harness` (the model the memory runs in) and
one drawn example.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from hypothesis import settings as Settings
from hypothesis import strategies as st
from torch import Tensor

from memplug.core.contracts import Backbone, Memory
from memplug.core.model import MemoryModel
from memplug.core.state import ModelState

from . import strategies as mst
from .runner import Invariant, Mismatch, expect_close, expect_gradient, run_invariants, subject

__all__ = ["Harness", "check_memory", "memory_invariants", "tiny_backbone"]

MemoryLike = Memory | type | str | Callable[[int], Memory]


def tiny_backbone(vocab: int = 32, seed: int = 0) -> Backbone:
    """The backbone memories are checked in: a 2-layer ``tiny`` decoder (d = 16, 2 query heads
    sharing 1 key/value head, so grouped-query attention is exercised), initialised with a
    larger spread than for training (std 0.1) so that what a memory contributes is far above
    rounding."""
    from memplug import make_backbone

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make_backbone("tiny", vocab_size=vocab, d_model=16, n_layers=2, n_heads=2, n_kv_heads=1, init_std=0.1)


def _factory(memory_or_factory: MemoryLike) -> MemoryLike:
    """What :class:`MemoryModel` accepts: a Memory class becomes ``layer -> cls()``."""
    if isinstance(memory_or_factory, type):
        if not issubclass(memory_or_factory, Memory):
            raise TypeError(f"memory_or_factory must be a memplug.Memory (class, instance, name or "
                            f"layer -> Memory callable), got the class {memory_or_factory.__name__}")
        cls = memory_or_factory
        return lambda layer: cls()
    return memory_or_factory


@dataclass(frozen=True)
class SequenceCase:
    """A token sequence with what an invariant does to it (``focus``): redraw the tokens from
    ``cut`` on (causality), stream it in ``chunking`` (chunking invariance), save the state
    after the first chunk (round-trip), or redraw what lies before the last local window
    (gradient reach)."""

    focus: str
    ids: mst.TokenIds
    chunking: tuple[int, ...]
    cut: int
    other_seed: int
    training: bool

    @property
    def split(self) -> int:
        return self.chunking[0] if len(self.chunking) > 1 else max(1, self.ids.length // 2)

    def describe(self) -> str:
        mode = "training" if self.training else "eval"
        ids = f"{mode} mode, input_ids {(self.ids.batch, self.ids.length)} (seed {self.ids.seed})"
        return {
            "causality": f"{ids}, tokens from j={self.cut} on redrawn (seed {self.other_seed})",
            "chunking": f"{ids} streamed in chunks {self.chunking}",
            "split": f"{ids}, state saved and loaded after {self.split} tokens",
            "reach": f"{ids}, tokens before the last block's local window redrawn (seed {self.other_seed})",
        }[self.focus]


#: The model mode each invariant runs in: causality and the state round-trip in both (drawn),
#: chunking invariance in eval mode (streaming is inference; a component that draws random
#: positions per call in training cannot be chunk invariant there), gradient reach in training.
MODES = {"causality": (False, True), "chunking": (False,), "split": (False, True), "reach": (True,)}


@st.composite
def sequence_cases(draw: st.DrawFn, focus: str, vocab: int, min_length: int, max_length: int) -> SequenceCase:
    ids = draw(mst.token_ids(vocab, length=st.integers(min_length, max_length)))
    return SequenceCase(
        focus=focus,
        ids=ids,
        chunking=draw(mst.chunkings(ids.length, max_chunks=8)),
        cut=draw(st.integers(0, ids.length - 1)),
        other_seed=draw(st.integers(0, 2**16)),
        training=draw(st.sampled_from(MODES[focus])),
    )


def _redrawn(case: SequenceCase, ids: Tensor, vocab: int) -> Tensor:
    """``ids`` with the tokens from ``case.cut`` on replaced by different ones."""
    gen = torch.Generator().manual_seed(case.other_seed)
    shift = torch.randint(1, vocab, ids[:, case.cut :].shape, generator=gen)
    out = ids.clone()
    out[:, case.cut :] = (ids[:, case.cut :] + shift) % vocab  # every redrawn token differs
    return out


@dataclass
class Harness:
    """The model a memory is checked in, and how the invariants call it."""

    model: MemoryModel
    vocab: int
    block: int
    window: int  # the local window in tokens: the block, or the previous block and the block
    longest: int  # the longest sequence drawn
    tolerance: float

    @classmethod
    def build(
        cls,
        memory_or_factory: MemoryLike,
        *,
        block: int = 4,
        max_blocks: int = 4,
        span: str = "block",
        layers: Sequence[int] | None = None,
        backbone: Backbone | Callable[[], Backbone] | None = None,
        dtype: torch.dtype = torch.float64,
        tolerance: float | None = None,
    ) -> Harness:
        """The model :func:`check_memory` checks ``memory_or_factory`` in (same options)."""
        base = backbone() if callable(backbone) and not isinstance(backbone, Backbone) else backbone
        base = tiny_backbone() if base is None else base
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = MemoryModel(copy.deepcopy(base), memory=_factory(memory_or_factory), block=block,
                                layers=layers, span=span).to(dtype)
        if not model.memories:
            raise ValueError(f"the model built from {memory_or_factory!r} has no memory in any layer")
        return cls(model, vocab=base.vocab_size, block=block, window=block * (2 if span == "previous" else 1),
                   longest=max_blocks * block + block - 1,
                   tolerance=tolerance if tolerance is not None else (1e-9 if dtype == torch.float64 else 1e-4))

    @property
    def label(self) -> str:
        """How messages name the memory."""
        return subject(self.model.memories[0])

    def forward(self, ids: Tensor, state: ModelState | None = None):
        """One model call with torch's global generator seeded the same way every time, so
        that calls compared with each other draw the same randomness (dropout, random samplers)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return self.model(ids, state=state)

    def logits(self, ids: Tensor, state: ModelState | None = None) -> tuple[Tensor, ModelState]:
        out = self.forward(ids, state)
        return out.logits, out.state

    @property
    def stateful(self) -> bool:
        """Whether the memory holds a state (an empty dict is a memory without one)."""
        return bool(self.model.memories[0].init_state(1, next(self.model.parameters()).dtype, torch.device("cpu")))

    def trainable(self) -> list[tuple[str, Tensor]]:
        return [(f"layer {i}: {name}", p) for i, layer in enumerate(self.model.attn) if layer.memory is not None
                for name, p in layer.memory.named_parameters() if p.requires_grad]


def in_mode(check: Callable[[Harness, SequenceCase], None], harness: Harness, case: SequenceCase) -> None:
    """``check`` with the model in the case's mode (training or eval)."""
    harness.model.train(case.training)
    check(harness, case)


# ---- the invariants: one function each, of the harness and one drawn example ------------------


def causality(h: Harness, case: SequenceCase) -> None:
    ids = case.ids.tensor()
    with torch.no_grad():
        base_logits, _ = h.logits(ids)
        other_logits, _ = h.logits(_redrawn(case, ids, h.vocab))
    if case.cut:
        err_before = (base_logits[:, : case.cut] - other_logits[:, : case.cut]).abs().amax(dim=(0, 2))  # (j,)
        scale = base_logits.abs().max().item()
        leaked = (err_before > h.tolerance * scale).nonzero().flatten().tolist()
        if leaked:
            raise Mismatch(f"changing tokens {case.cut}..{ids.shape[1] - 1} changed the logits at positions "
                           f"{leaked[:8]} (before {case.cut}) by up to {err_before.max().item() / scale:.3g} "
                           f"(relative; allowed {h.tolerance:g})")


def chunking(h: Harness, case: SequenceCase) -> None:
    ids = case.ids.tensor()
    with torch.no_grad():
        whole, _ = h.logits(ids)
        parts, state, start = [], None, 0
        for length in case.chunking:
            out, state = h.logits(ids[:, start : start + length], state)
            parts.append(out)
            start += length
    expect_close(torch.cat(parts, dim=1), whole, h.tolerance, f"logits streamed in chunks {case.chunking} vs one call")


def round_trip(h: Harness, case: SequenceCase) -> None:
    ids = case.ids.tensor()
    split = case.split
    with torch.no_grad():
        _, state = h.logits(ids[:, :split])
        for i, layer in enumerate(state.layers):
            bad = {k: type(v).__name__ for k, v in layer.items() if not isinstance(v, Tensor)}
            if bad:
                raise Mismatch(f"layer {i} state holds non-tensors {bad} (a memory state is a flat dict of tensors)")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "state.safetensors"
            state.save(path)
            loaded = ModelState.load(path)
        if loaded.position != state.position:
            raise Mismatch(f"position {state.position} came back as {loaded.position}")
        for i, (a, b) in enumerate(zip(state.layers, loaded.layers)):
            if sorted(a) != sorted(b):
                raise Mismatch(f"layer {i} state keys {sorted(a)} came back as {sorted(b)}")
            for key in a:
                if a[key].dtype != b[key].dtype or not torch.equal(a[key], b[key]):
                    raise Mismatch(f"layer {i} state[{key!r}] changed in the round trip")
        if split < ids.shape[1]:
            rest = ids[:, split:]
            expect_close(h.logits(rest, loaded)[0], h.logits(rest, state)[0], 0.0,
                         f"logits after a state saved and loaded at position {split} vs the live state")


def gradient_reach(h: Harness, case: SequenceCase) -> None:
    """Every trainable parameter gets a gradient; a stateful memory's state reaches the output."""
    ids = case.ids.tensor()
    h.model.zero_grad(set_to_none=True)
    logits = h.forward(ids).logits  # (B, T, vocab)
    F.cross_entropy(logits.flatten(0, 1), torch.roll(ids, -1, dims=1).flatten()).backward()
    for name, p in h.trainable():
        expect_gradient(name, p.grad)
    h.model.zero_grad(set_to_none=True)
    if not h.stateful:
        return
    # keep the last (possibly partial) block and its local window; redraw all before
    last = (ids.shape[1] - 1) // h.block * h.block
    cut = max(0, last - (h.window - h.block))
    if cut == 0:
        return
    with torch.no_grad():
        before = h.logits(ids)[0][:, last:]
        other = ids.clone()
        gen = torch.Generator().manual_seed(case.other_seed)
        other[:, :cut] = (ids[:, :cut] + torch.randint(1, h.vocab, (ids.shape[0], cut), generator=gen)) % h.vocab
        after = h.logits(other)[0][:, last:]
    change = (after - before).abs().max().item() / before.abs().max().item()
    if not change > 100 * h.tolerance:
        raise Mismatch(f"redrawing the {cut} tokens before the last block's local window changed its logits "
                       f"by {change:.3g} (relative): the memory's state does not reach the output")


# ---- the check ------------------------------------------------------------------------------


def check_memory(
    memory_or_factory: MemoryLike,
    *,
    block: int = 4,
    max_blocks: int = 4,
    span: str = "block",
    layers: Sequence[int] | None = None,
    backbone: Backbone | Callable[[], Backbone] | None = None,
    dtype: torch.dtype = torch.float64,
    tolerance: float | None = None,
    settings: Settings | None = None,
) -> None:
    """Check a memory against its contract; raise ``AssertionError`` naming the first broken
    invariant, the (shrunk) failing example and the error found.

    Args:
        memory_or_factory: a :class:`~memplug.core.contracts.Memory` (deep-copied per layer), a
            Memory class (built with no arguments), a registered name, or a callable
            ``layer_index -> Memory``. A memory that needs the block length at construction
            must be built with ``block`` below.
        block: the model's block length L.
        max_blocks: sequences are up to ``max_blocks * L + L - 1`` tokens.
        span: the layer's local span, ``"block"`` or ``"previous"``.
        layers: the layers with memory (default all).
        backbone: the backbone (or a zero-argument factory); default :func:`tiny_backbone`.
        dtype: the model's dtype (float64 by default).
        tolerance: relative tolerance of the equalities (default 1e-9 in float64, 1e-4 otherwise).
        settings: hypothesis settings; by default the active profile, without a deadline.
    """
    harness = Harness.build(memory_or_factory, block=block, max_blocks=max_blocks, span=span, layers=layers,
                            backbone=backbone, dtype=dtype, tolerance=tolerance)
    run_invariants(harness.label, memory_invariants(harness), settings)


def memory_invariants(harness: Harness) -> list[Invariant[SequenceCase]]:
    """The invariants :func:`check_memory` runs in ``harness``, in order. Raises
    ``AssertionError`` for a memory that declares ``chunk_invariant = False`` without a reason."""

    def invariant(name: str, statement: str, focus: str, check, shortest: int = 2,
                  longest: int = harness.longest) -> Invariant[SequenceCase]:
        cases = sequence_cases(focus, harness.vocab, shortest, longest)
        return Invariant(name, statement, cases, partial(in_mode, check, harness))

    invariants = [invariant("causality", "changing tokens from position j on never changes a logit before j",
                            "causality", causality)]
    exempt = [m for m in harness.model.memories if not m.chunk_invariant]
    if exempt:
        reason = getattr(exempt[0], "chunk_invariant_reason", "")
        if not isinstance(reason, str) or not reason.strip():
            raise AssertionError(
                f"{harness.label} declares chunk_invariant = False without a reason: set the class attribute "
                "chunk_invariant_reason to say why chunking can change its results"
            )
    else:
        invariants.append(invariant(
            "chunking invariance", "any chunking of a sequence, streamed with the state, gives the logits of one call",
            "chunking", chunking))
    invariants.append(invariant("state round-trip", "a state saved and loaded mid-stream continues to the same logits",
                                "split", round_trip))
    statement = "every trainable memory parameter gets a gradient" + (
        "; the tokens before the local window change the last block's logits" if harness.stateful else "")
    block, window = harness.block, harness.window
    invariants.append(invariant("gradient reach", statement, "reach", gradient_reach, shortest=window + block,
                                longest=max(harness.longest, window + 2 * block)))
    return invariants
