"""The contracts every memplug component implements: one abstract base class per kind.

All tensors are channels-last with batch dimensions leading. Time is continuous: token ``j``
occupies the interval ``[j, j + 1)``, so a state "after t tokens" describes the signal on
``encoder.support(t)``.

Five kinds of component, each an abstract base class with a unique ``name`` (the string users
type in ``make_encoder(name)`` and friends):

- :class:`Encoder`: a HiPPO measure that compresses a stream of C-channel vectors into a
  fixed-size state of N coefficients per channel.
- :class:`Retriever`: polynomial sampling; where in the compressed history to look.
- :class:`Memory`: what a memory-augmented attention layer talks to (Elastic and every baseline).
- :class:`AttentionBackend`: a kernel computing masked softmax attention.
- :class:`Backbone`: a decoder whose layers expose their attention inputs and outputs, so the
  :class:`memplug.core.model.MemoryModel` driver can put a memory between them.

and one for the data the models read: :class:`Dataset`, a named source of :class:`Document`
objects (corpora; :mod:`memplug.data` turns them into document-level splits).

The core (this package) never imports the plugins; plugins import the core.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..ops.attention import reference_attention, trapezoid_mask

__all__ = [
    "Dataset",
    "Document",
    "SourceMissingError",
    "Encoder",
    "Retriever",
    "Memory",
    "MemoryRead",
    "AttentionBackend",
    "Backbone",
    "Component",
]

TimeLike = int | float | Tensor


class Component(nn.Module):
    """Common base: a named, registrable ``nn.Module``.

    ``name`` is the registry key; ``kind`` is set on the five bases below and tells
    :func:`memplug.register` which registry a class belongs in.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = ""


class Encoder(Component, abc.ABC):
    """A HiPPO measure: online compression of a (..., L, C) stream into a (..., N, C) state.

    Subclasses state in their docstring which measure they are, their (A, B), their
    reconstruction basis and their support. Encoders have no trainable parameters unless they
    say so; caches (transition matrices) are plain attributes or non-persistent buffers.
    """

    kind = "encoder"

    #: N, the number of coefficients per channel (the state is (..., N, C)).
    order: int

    @abc.abstractmethod
    def support(self, t: float) -> tuple[float, float]:
        """The interval ``(lo, hi)`` of absolute time that the state at time ``t`` describes."""

    def init_state(
        self,
        *batch: int,
        channels: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """The empty state (the signal before any token): zeros of shape (*batch, N, channels)."""
        return torch.zeros(*batch, self.order, channels, dtype=dtype, device=device)

    @abc.abstractmethod
    def update(self, state: Tensor, x: Tensor, t0: int) -> Tensor:
        """Absorb tokens ``x`` (..., L, C) at positions ``t0 .. t0+L-1`` into ``state`` (..., N, C).

        Returns the state at time ``t0 + L``. Any ``L >= 1`` and any ``t0 >= 0``.
        """

    @abc.abstractmethod
    def scan(self, x: Tensor, block: int, t0: int = 0, state: Tensor | None = None) -> Tensor:
        """States at every block boundary, computed in parallel.

        ``x`` is (..., T, C) at positions ``t0 .. t0+T-1``; blocks are ``block`` tokens long,
        the last one possibly shorter. Returns (..., nblocks, N, C): entry ``i`` is the state
        after block ``i``. Equal to repeated :meth:`update` (tested to float64 1e-12).
        """

    @abc.abstractmethod
    def basis(self, positions: Tensor, t: TimeLike) -> Tensor:
        """Evaluation matrix: ``basis(p, t) @ state`` reconstructs the signal at positions ``p``.

        ``positions`` is (..., P) absolute times inside ``support(t)``; ``t`` is a scalar or a
        tensor broadcastable to ``positions[..., 0]``. Returns (..., P, N). Differentiable in
        ``positions`` (the learned retriever trains through it).
        """


class Retriever(Component, abc.ABC):
    """Polynomial sampling: the positions at which the compressed history is read back."""

    kind = "retriever"

    #: P, the number of samples read per memory.
    samples: int

    #: True when ``positions(t, encoder)`` depends on ``t`` and the encoder only (no parameters,
    #: no randomness): a memory may then cache the basis it reads with, so change such a
    #: retriever by swapping it, not by editing it in place. False unless a retriever says so.
    fixed: bool = False

    @abc.abstractmethod
    def positions(self, t: TimeLike, encoder: Encoder) -> Tensor:
        """Sorted absolute positions inside ``encoder.support(t)``: (P,) or, for a (nb,) tensor
        ``t``, (nb, P)."""

    def read(self, encoder: Encoder, state: Tensor, t: TimeLike) -> Tensor:
        """Samples of the reconstructed signal: ``basis(positions(t), t) @ state``.

        ``state`` is (..., N, C), or (..., nb, N, C) when ``t`` is a (nb,) tensor of block times.
        Returns (..., P, C) (respectively (..., nb, P, C)).
        """
        pos = self.positions(t, encoder)
        phi = encoder.basis(pos, t).to(state)  # (P, N) or (nb, P, N), on the state's device and dtype
        return phi @ state


@dataclass
class MemoryRead:
    """What a memory gives the queries of each block (block-parallel form).

    Shapes use B batch, Hkv key/value heads, H query heads, nb blocks, L block length,
    P memory slots, D head dimension. A memory fills either the key/value form (its slots join
    the local keys in one softmax) or the partial-output form (query-dependent memories).

    - ``keys``, ``values``: (B, Hkv, nb, P, D) raw (not rotated) memory keys and values.
    - ``key_positions``: (nb, P) or (B, Hkv, nb, P) positions of the memory keys relative to
      the start of their block (<= 0), or ``None`` to leave them without positional encoding.
      The layer applies the backbone's rotary embedding to them.
    - ``bias``: additive logit bias, 5-d and broadcastable to (B, Hkv, nb, 1, P); ``-inf`` hides a slot.
    - ``first_hidden``: the first block's slots are hidden, whatever ``bias`` says (an empty memory
      at t = 0). It says with a flag what a ``-inf`` bias row would say with a tensor, so a read
      whose other blocks need no bias leaves ``bias`` out, and the layer can run those blocks
      without a mask. Key/value form only.
    - ``output``, ``lse``: (B, H, nb, L, D) and (B, H, nb, L): a partial attention over the
      memory and its log-sum-exp, merged with local attention as one softmax.
    - ``gate``: (H,) logits; when set, ``out = sigmoid(g) * output + (1 - sigmoid(g)) * local``
      instead of the log-sum-exp merge (Memorizing Transformer's and Infini-attention's gate).
    """

    keys: Tensor | None = None
    values: Tensor | None = None
    key_positions: Tensor | None = None
    bias: Tensor | None = None
    output: Tensor | None = None
    lse: Tensor | None = None
    gate: Tensor | None = None
    first_hidden: bool = False

    @property
    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self) if f.name != "first_hidden")


class Memory(Component, abc.ABC):
    """The interface a memory-augmented attention layer talks to.

    State is a flat ``dict[str, Tensor]`` so it can be saved with safetensors. The step form
    (:meth:`read` then :meth:`write`, one block at a time) defines the semantics; the block form
    (:meth:`forward_blocks`) is what training calls and must equal it. The default
    :meth:`forward_blocks` loops over the step form; memories with a parallel form (Elastic's
    scan) override it.

    Queries of block ``i`` see the memory state after blocks ``0 .. i-1``; a block is written
    only once it is complete.
    """

    kind = "memory"

    #: False when chunking a sequence differently can change the result; then
    #: ``chunk_invariant_reason`` must say why (the testing kit checks both).
    chunk_invariant: ClassVar[bool] = True
    chunk_invariant_reason: ClassVar[str] = ""

    #: True for a memory that never gives the queries anything (the ``none`` baseline): the
    #: layer's zero-initialised gate has nothing to open there, so ``gate=True`` is refused.
    empty: ClassVar[bool] = False

    @property
    def retriever(self) -> Retriever | None:
        """The retriever of a memory that reads through one (Elastic, which registers it as the
        submodule ``retriever``), else ``None``. Such a memory also implements
        :meth:`set_retriever`, so ``MemoryModel.swap_retriever`` can change it."""
        found = self._modules.get("retriever")
        return found if isinstance(found, Retriever) else None

    #: The block length L the layer runs this memory with, set by :meth:`setup`.
    block: int | None = None

    def setup(self, heads: int, kv_heads: int, head_dim: int, block: int | None = None) -> None:
        """Called once by the layer before use, with the attention geometry and the block length.

        Memories with parameters create them here (shapes depend on the geometry, and for
        memories that mix a block's tokens, on ``block``).
        """
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        if block is not None:
            self.block = block

    def set_retriever(self, retriever: Retriever) -> None:
        """Read through ``retriever`` from now on (the state is unchanged). Memories without a
        retriever refuse."""
        raise TypeError(f"memory {self.name!r} reads through no retriever, so it has none to swap")

    @classmethod
    def budget(cls, slots: int) -> dict[str, Any]:
        """Constructor options that size this memory to ``slots`` key/value-vector slots per
        key/value head (see :mod:`memplug.core.budget`); ``{}`` for a memory without a size knob."""
        return {}

    @abc.abstractmethod
    def init_state(self, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        """The empty memory for ``batch`` sequences."""

    @abc.abstractmethod
    def read(self, state: dict[str, Tensor], q: Tensor, t: int) -> MemoryRead:
        """What the queries ``q`` (B, H, L, D) (raw, not rotated) of the block starting at ``t``
        may attend to. Returned with an ``nb`` axis of size 1."""

    @abc.abstractmethod
    def write(self, state: dict[str, Tensor], k: Tensor, v: Tensor, t0: int) -> dict[str, Tensor]:
        """Absorb a complete block of raw keys and values (B, Hkv, L, D) starting at ``t0``."""

    def forward_blocks(
        self, state: dict[str, Tensor], q: Tensor, k: Tensor, v: Tensor, t0: int, complete: int
    ) -> tuple[MemoryRead, dict[str, Tensor]]:
        """Reads for ``nb`` consecutive blocks and the state after the first ``complete`` ones.

        ``q`` (B, H, nb, L, D), ``k`` and ``v`` (B, Hkv, nb, L, D), raw; block ``i`` starts at
        ``t0 + i * L``. Returns the reads stacked on the ``nb`` axis, and the new state.
        """
        nb, length = q.shape[2], q.shape[3]
        reads = []
        for i in range(nb):
            t = t0 + i * length
            reads.append(self.read(state, q[:, :, i], t))
            if i < complete:
                state = self.write(state, k[:, :, i], v[:, :, i], t)
        return stack_reads(reads), state

    def footprint(self, batch: int = 1, dtype: torch.dtype = torch.float32) -> dict[str, int]:
        """State size in key/value-vector equivalents and bytes, and extra parameters."""
        state = self.init_state(batch, dtype, torch.device("cpu"))
        numel = sum(t.numel() for t in state.values())
        return {
            "vectors": numel // max(1, batch * self.kv_heads * self.head_dim),
            "bytes": sum(t.numel() * t.element_size() for t in state.values()),
            "parameters": sum(p.numel() for p in self.parameters()),
        }


def stack_reads(reads: list[MemoryRead]) -> MemoryRead:
    """Concatenate single-block reads (nb axis of size 1) along the block axis.

    Every field has its block axis at dim 2, except ``key_positions`` ((nb, P) or
    (B, Hkv, nb, P): dim -2) and ``gate`` (per head, shared by all blocks). An empty read (an
    empty memory, e.g. at t = 0) or a ``first_hidden`` one next to non-empty ones becomes a
    hidden one: zero slots with a ``-inf`` bias, zero output with a ``-inf`` log-sum-exp. A read
    without a bias next to one with a bias gets a zero bias (the same logits).
    """
    filled = [r for r in reads if not r.is_empty and not r.first_hidden]
    if not filled:
        return MemoryRead()
    flags = {"bias", "first_hidden"}
    present = {f.name for f in fields(MemoryRead) if getattr(filled[0], f.name) is not None} - flags
    for r in filled:
        mine = {f.name for f in fields(MemoryRead) if getattr(r, f.name) is not None} - flags
        if mine != present:
            raise ValueError(f"reads of one call must fill the same fields, got {sorted(present)} and {sorted(mine)}")
    reads = [_hidden_like(filled[0]) if r.is_empty or r.first_hidden else r for r in reads]
    # a read without a bias has a zero one: where another read of the call has one, fill it in
    like = next((r.bias for r in reads if r.bias is not None), None)
    if like is not None:
        reads = [r if r.bias is not None else replace(r, bias=torch.zeros_like(like[:, :, :1])) for r in reads]
    out = {}
    for f in fields(MemoryRead):
        items = [getattr(r, f.name) for r in reads]
        if f.name == "first_hidden":
            continue  # a hidden block is a -inf bias here
        if items[0] is None:
            out[f.name] = None
        elif f.name == "gate":
            out[f.name] = items[0]
        else:
            out[f.name] = torch.cat(items, dim=-2 if f.name == "key_positions" else 2)
    return MemoryRead(**out)


def _hidden_like(read: MemoryRead) -> MemoryRead:
    """A read shaped like ``read`` that contributes nothing to attention."""
    hidden = MemoryRead(gate=read.gate)
    if read.keys is not None:
        hidden.keys, hidden.values = torch.zeros_like(read.keys), torch.zeros_like(read.values)
        slots = read.keys.shape[-2]
        bias = read.bias if read.bias is not None else read.keys.new_zeros(1, 1, 1, 1, slots)
        hidden.bias = torch.full_like(bias, float("-inf"))
        if read.key_positions is not None:
            hidden.key_positions = torch.zeros_like(read.key_positions)
    elif read.bias is not None:
        hidden.bias = torch.full_like(read.bias, float("-inf"))
    if read.output is not None:
        hidden.output = torch.zeros_like(read.output)
        if read.lse is not None:
            hidden.lse = torch.full_like(read.lse, float("-inf"))
    return hidden


class AttentionBackend(Component, abc.ABC):
    """A softmax attention kernel: ``softmax(q k^T * scale + mask) v``.

    ``q`` (N, H, Lq, D), ``k``/``v`` (N, Hkv, Lk, D) with H a multiple of Hkv (grouped query
    attention), ``mask`` an additive float mask broadcastable to (N, H, Lq, Lk) or ``None``.
    """

    kind = "attention"

    #: Higher wins when several backends accept the same call.
    priority: ClassVar[int] = 0

    @classmethod
    @abc.abstractmethod
    def supports(cls, device: torch.device, dtype: torch.dtype, masked: bool) -> bool:
        """Whether this backend can run here (importable, right device and dtype)."""

    @abc.abstractmethod
    def forward(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float) -> Tensor:
        """Attention output (N, H, Lq, D)."""

    def forward_lse(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float
    ) -> tuple[Tensor, Tensor]:
        """Attention output (N, H, Lq, D) and its log-sum-exp (N, H, Lq), for merging with a
        memory's partial attention. The default is the explicit definition
        (:func:`memplug.ops.attention.reference_attention`); a backend with a fused kernel that
        returns the log-sum-exp overrides it."""
        return reference_attention(q, k, v, mask, scale)

    def forward_causal(self, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        """Attention output (N, H, Lq, D) under the bottom-right causal mask: query ``i`` sees
        key ``j`` iff ``j <= i + Lk - Lq`` (``Lk >= Lq``; with ``Lq == Lk`` plain causal).

        This is the memory layer's trapezoid when nothing is hidden (every memory slot and sink
        column visible, the local keys causal), its most common call. The default builds that
        mask (:func:`memplug.ops.attention.trapezoid_mask`) and calls :meth:`forward`; a backend
        with a causal kernel overrides it and skips the mask tensor (on a GPU, the mask is what
        keeps a call off the flash kernel)."""
        return self.forward(q, k, v, trapezoid_mask(q.shape[-2], k.shape[-2], dtype=q.dtype, device=q.device), scale)

    def has_causal_kernel(self, device: torch.device) -> bool:
        """Whether :meth:`forward_causal` runs without a mask tensor on ``device`` for every
        shape (the default builds one: False). Only then does the memory layer split a stream's
        first block off into a call of its own to spare the other blocks their mask; elsewhere
        two calls cost more than one masked call."""
        return False


class Backbone(Component, abc.ABC):
    """A decoder-only transformer exposed layer by layer.

    The driver calls ``embed``, then for every layer ``attention_inputs`` -> memory attention ->
    ``attention_output``, then ``head``. Queries, keys and values come out raw (not rotated);
    the driver applies :meth:`rotate` with positions local to each attention window.
    """

    kind = "backbone"

    #: Per-layer geometry.
    num_layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int

    #: The softmax scale of the attention the backbone was trained with; ``None`` means
    #: ``1 / sqrt(head_dim)``.
    attention_scale: float | None = None

    #: The backbone's own tokenizer when it comes with one (a pretrained model loaded from its
    #: files), else ``None``; ``data.tokenizer = "hf"`` trains with it.
    tokenizer: Any = None

    #: The dataclass holding the backbone's options, when it has one.
    config_class: ClassVar[type | None] = None

    #: Names of the attention's query, key, value and output projection modules (``nn.Linear``),
    #: which ``trainable="lora"`` adapts; empty when the backbone names none.
    attention_projections: tuple[str, ...] = ()

    @classmethod
    def option_names(cls) -> set[str]:
        """The keyword options the backbone takes: the fields of :attr:`config_class` and the
        keywords of its constructor. (Used to sort an old flat ``[model]`` config table.)"""
        names = {f.name for f in fields(cls.config_class)} if cls.config_class is not None else set()
        params = inspect.signature(cls.__init__).parameters.values()
        return names | {p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    @abc.abstractmethod
    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, d) hidden states."""

    @abc.abstractmethod
    def attention_inputs(self, layer: int, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, d) -> raw q (B, H, T, D), k (B, Hkv, T, D), v (B, Hkv, T, D)."""

    @abc.abstractmethod
    def attention_output(self, layer: int, h: Tensor, attn: Tensor) -> Tensor:
        """Residual stream after the layer: ``h`` (B, T, d) and attention ``attn`` (B, H, T, D)."""

    @abc.abstractmethod
    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        """Apply the positional rotation to ``x`` (..., T, D) at float ``positions`` (..., T).

        The rotation depends on the position and the channel only, the same for every leading
        index: the memory layer rotates a block's queries and keys (all their heads) in one call.
        Backbones without rotary embeddings return ``x`` unchanged.
        """

    @abc.abstractmethod
    def head(self, h: Tensor) -> Tensor:
        """(B, T, d) -> (B, T, vocab) logits."""


# --- data -------------------------------------------------------------------------------------


class SourceMissingError(FileNotFoundError):
    """A dataset's source files are not on this machine; the message says how to fetch them."""


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    ``name`` is stable across machines (a path relative to the source root); ``group`` names the
    work it belongs to (documents with one group share a split); ``text`` is the full text.
    """

    name: str
    group: str
    text: str


class Dataset(abc.ABC):
    """A corpus of long documents (registered through ``memplug_add_datasets``).

    :func:`memplug.data.prepare` turns its documents into document-level train / validation /
    test splits; documents that share a ``group`` (two editions of one play, say) always land in
    the same split, so no work leaks from training into evaluation.

    Subclasses set ``name`` (the registry key users type in ``memplug data prepare NAME``) and
    ``description``, accept their options as keyword arguments (a source path override, say),
    and implement :meth:`source` and :meth:`documents`.
    """

    kind: ClassVar[str] = "dataset"
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"dataset {self.name!r} takes no options, got {sorted(options)}")

    @abc.abstractmethod
    def source(self) -> str:
        """A string that identifies the source and its version (part of the cache key).

        Raises :class:`SourceMissingError` naming the command that fetches a missing source.
        """

    @abc.abstractmethod
    def documents(self) -> Iterator[Document]:
        """Every document, in a deterministic order."""

    def options(self) -> dict[str, Any]:
        """The options this instance was built with (recorded in the prepared manifest)."""
        return {}
