"""MemoryAttention: the one attention layer every backbone runs through.

A sequence is cut into blocks of ``block`` tokens. The queries of a block attend, in one
softmax, to ``[memory slots | local keys]``: the memory's read for that block (what it holds of
everything before the block), then the local keys (the block, or the previous block and the
block), causal and aligned bottom-right: the "trapezoid" (see :mod:`memplug.ops.attention`).
Memories that give a partial attention output instead of keys are merged by log-sum-exp (as if
their keys were in the softmax) or by a per-head gate.

Block-parallel: a call with T new tokens prefixes the cached partial block, pads to whole
blocks, asks the memory for every block's read in one ``forward_blocks`` call, and runs one
batched attention call for all blocks. Training (a whole sequence) and streaming (chunks of any
length) take the same path, which is why any chunking gives the same outputs.

Positions (a decision of this project): rotary positions are local to each attention window,
never absolute. With ``span="block"`` a block's tokens sit at 0..L-1; with ``span="previous"``
the previous block sits at 0..L-1 and the block at L..2L-1. Memory keys come raw; a memory that
gives ``key_positions`` (relative to the block start, <= 0) has them rotated at
``W0 + key_positions`` with ``W0`` the window position of the block start; ``None`` leaves them
unrotated.

How a :class:`~memplug.core.contracts.MemoryRead` is merged is decided by which of its fields
are set (``_attend``), in this order:

1. ``keys``/``values`` set: the memory slots go first in the keys of one softmax,
   ``[slots | sink | previous block | block]``; ``bias`` is added to the slots' logits (``-inf``
   hides a slot), ``first_hidden`` hides the first block's slots (an empty memory at t = 0) and
   ``key_positions`` has the slot keys rotated. (Elastic, XL, full attention, kNN's joint mode.)
   Without keys the softmax covers the sink and the local keys only.
2. ``output`` set, ``gate`` not: ``output`` is a partial attention over keys outside that
   softmax and ``lse`` (required: a ``ValueError`` says so) its log-sum-exp; the two are merged
   by log-sum-exp (:func:`memplug.ops.attention.merge_lse`), which equals one softmax over both
   key sets. The backend must give its own log-sum-exp (``AttentionBackend.forward_lse``).
3. ``output`` and ``gate`` set: ``sigmoid(gate) * output + (1 - sigmoid(gate)) * softmax``
   (:func:`memplug.ops.attention.merge_gated`; ``lse`` is ignored). Memorizing Transformer and
   Infini-attention; Melodi fills keys (step 1) and a gated output together.
4. Nothing set (``MemoryRead()``, also every layer of a model inside
   ``MemoryModel.memory_masked()``): the local attention alone.

Two options of the layer, for attaching memory to a pretrained model:

- ``sink=S`` (StreamingLLM's attention sink): the stream's first S tokens stay visible to every
  later block, as keys at window positions 0..S-1 before the local window (which then starts at
  S). A pretrained model that puts attention mass on its first token keeps doing so.
- ``gate=True``: a learned weight per head, initialised to 0, lets the memory in:
  ``out = local + gate * (with_memory - local)`` (:func:`memplug.ops.attention.open_by_gate`),
  where ``local`` attends to the sink and the local window only. At initialisation the layer is
  the local-window layer exactly, so attaching never makes a model worse before training.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .contracts import AttentionBackend, Memory, MemoryRead
from .manager import make_attention, registry
from ..ops.attention import merge_gated, merge_lse, open_by_gate, repeat_kv, trapezoid_mask
from ..util.checks import non_negative_int, positive_int

__all__ = ["MemoryAttention", "select_attention", "SPANS"]

SPANS = ("block", "previous")
MEMORY_PREFIX = "mem."

Rotate = Callable[[Tensor, Tensor], Tensor]


def attention_candidates() -> tuple[AttentionBackend, ...]:
    """One instance of every registered attention backend, highest priority first."""
    reg = registry("attention")
    return tuple(sorted((reg.get(n)() for n in reg.names()), key=lambda b: -b.priority))


def select_attention(
    device: torch.device, dtype: torch.dtype, masked: bool, candidates: tuple[AttentionBackend, ...] | None = None
) -> AttentionBackend:
    """The backend with the highest priority whose ``supports`` accepts this call."""
    candidates = attention_candidates() if candidates is None else candidates
    for backend in candidates:
        if backend.supports(device, dtype, masked):
            return backend
    raise RuntimeError(f"no attention backend supports device={device}, dtype={dtype}, masked={masked}; "
                       f"registered: {[b.name for b in candidates]}")


class MemoryAttention(nn.Module):
    """Block-local attention with a memory in the same softmax.

    Args:
        memory: a :class:`memplug.core.contracts.Memory`, or ``None`` (plain block-local attention).
        block: block length L.
        span: ``"block"`` (the local keys are the block) or ``"previous"`` (the previous block
            and the block).
        attention: ``"auto"`` (the highest-priority backend that supports the call), a backend
            name or an :class:`~memplug.core.contracts.AttentionBackend`.
        scale: softmax scale (default ``1/sqrt(head_dim)``).
        gate: let the memory in through a zero-initialised per-head gate (see the module docstring).
        sink: how many of the stream's first tokens stay visible to every later block (at most
            ``block``; see the module docstring).
    """

    def __init__(
        self,
        memory: Memory | None,
        block: int,
        span: str = "block",
        attention: str | AttentionBackend = "auto",
        scale: float | None = None,
        gate: bool = False,
        sink: int = 0,
    ) -> None:
        super().__init__()
        positive_int("block", block)
        if span not in SPANS:
            raise ValueError(f"span must be one of {SPANS}, got {span!r}")
        if non_negative_int("sink", sink) > block:
            raise ValueError(f"sink must be at most block={block} (the sink tokens sit in the first block), got {sink}")
        if not isinstance(gate, bool):
            raise ValueError(f"gate must be True or False, got {gate!r}")
        if gate and (memory is None or memory.empty):
            raise ValueError(f"gate=True lets a memory in, but this layer's memory ({memory and memory.name!r}) "
                             "gives the queries nothing; use a memory such as 'elastic' or gate=False")
        self.memory, self.block, self.span, self.scale, self.sink = memory, block, span, scale, sink
        self.use_gate = gate
        self.masked = False  # set by MemoryModel.memory_masked(): the memory is neither read nor written
        self.gate: nn.Parameter | None = None  # (H,), created in setup (it needs the heads)
        self.attention = attention if attention == "auto" else make_attention(attention)
        # Instantiated here, not per call, so a compiled forward traces the choice without a break.
        self._candidates = attention_candidates() if attention == "auto" else ()
        self._geometry: tuple[int, int, int] | None = None

    def setup(self, heads: int, kv_heads: int, head_dim: int) -> None:
        """Tell the memory the attention geometry and block length (memories with parameters
        create them here), and create the gate."""
        self._geometry = (heads, kv_heads, head_dim)
        if self.memory is not None:
            self.memory.setup(heads, kv_heads, head_dim, self.block)
        if self.use_gate and self.gate is None:
            self.gate = nn.Parameter(torch.zeros(heads))

    def backend(self, device: torch.device, dtype: torch.dtype) -> AttentionBackend:
        """The backend for a call on ``device`` in ``dtype``."""
        if not isinstance(self.attention, str):
            return self.attention
        return select_attention(device, dtype, True, self._candidates)

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, cache: dict[str, Tensor], t0: int, rotate: Rotate | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Attention for T new tokens at absolute positions ``t0 .. t0+T-1``.

        ``q`` (B, H, T, D), ``k`` and ``v`` (B, Hkv, T, D), raw (not rotated). ``cache`` is this
        layer's part of the model state (empty at the start of a stream): the raw keys/values of
        the partial block (``"k"``, ``"v"``), of the previous complete block (``"prev_k"``,
        ``"prev_v"``, span ``"previous"``), of the sink tokens (``"sink_k"``, ``"sink_v"``) and
        the memory state (``"mem.*"``). ``rotate(x, pos)`` applies the backbone's positional
        rotation. Returns (B, H, T, D) and the new cache.
        """
        B, H, T, D = q.shape
        Hkv, L = k.shape[1], self.block
        if self._geometry is None:
            self.setup(H, Hkv, D)
        r = t0 % L  # tokens of the current block already seen (cached)
        b0 = t0 - r  # absolute start of the first block of this call
        cached = cache.get("k")
        if (0 if cached is None else cached.shape[2]) != r:
            raise ValueError(f"cache holds {0 if cached is None else cached.shape[2]} tokens of the partial block, "
                             f"but t0={t0} with block={L} needs {r}")
        if r:
            k = torch.cat([cache["k"].to(k.dtype), k], dim=2)  # (B, Hkv, r+T, D)
            v = torch.cat([cache["v"].to(v.dtype), v], dim=2)
        n = r + T
        nb, complete = -(-n // L), n // L
        pad = nb * L - n
        # Zero queries stand in for the cached positions and the tail padding; their rows are dropped.
        if r or pad:
            q = F.pad(q, (0, 0, r, pad))  # (B, H, nb*L, D)
        if pad:
            k, v = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))  # (B, Hkv, nb*L, D)
        qb = rearrange(q, "b h (n l) d -> b h n l d", l=L)  # (B, H, nb, L, D)
        kb = rearrange(k, "b h (n l) d -> b h n l d", l=L)  # (B, Hkv, nb, L, D)
        vb = rearrange(v, "b h (n l) d -> b h n l d", l=L)

        read, mem_state = MemoryRead(), {}
        if self.memory is not None and not self.masked:
            state = {name[len(MEMORY_PREFIX):]: t for name, t in cache.items() if name.startswith(MEMORY_PREFIX)}
            if not state:
                state = self.memory.init_state(B, k.dtype, k.device)
            read, mem_state = self.memory.forward_blocks(state, qb, kb, vb, b0, complete)

        sink = self._sink(cache, k, v, b0, n)  # (sink_k, sink_v) (B, Hkv, S, D) each, or None
        out = self._attend(qb, kb, vb, read, cache, rotate, sink, b0)  # (B, H, nb, L, D)
        # (B, H, T, D), stored as (B, T, H, D): the backbone's "b h t d -> b t (h d)" is then a view
        out = rearrange(out, "b h n l d -> b (n l) h d")[:, r : r + T].transpose(1, 2)

        # Slices are cloned so the cache never keeps this call's whole tensors alive.
        new_cache = {MEMORY_PREFIX + name: t for name, t in mem_state.items()}
        if n > complete * L:  # a partial block remains: keep its raw keys and values (not the padding)
            new_cache["k"], new_cache["v"] = k[:, :, complete * L : n].clone(), v[:, :, complete * L : n].clone()
        if self.span == "previous":
            if complete:
                new_cache["prev_k"], new_cache["prev_v"] = kb[:, :, complete - 1].clone(), vb[:, :, complete - 1].clone()
            elif "prev_k" in cache:
                new_cache["prev_k"], new_cache["prev_v"] = cache["prev_k"], cache["prev_v"]
        if sink is not None:
            new_cache["sink_k"], new_cache["sink_v"] = sink if "sink_k" in cache else (sink[0].clone(), sink[1].clone())
        return out, new_cache

    def _sink(self, cache: dict[str, Tensor], k: Tensor, v: Tensor, b0: int, n: int) -> tuple[Tensor, Tensor] | None:
        """The raw keys and values of the stream's first ``sink`` tokens, once they exist: from
        the cache, or from this call when it holds them (``k``, ``v`` start at block ``b0``)."""
        if not self.sink:
            return None
        if "sink_k" in cache:
            return cache["sink_k"].to(k.dtype), cache["sink_v"].to(v.dtype)
        if b0 > 0:
            raise ValueError(f"this layer keeps a sink of {self.sink} tokens, but the state continues a stream "
                             "that has none (it was made without sink)")
        if n < self.sink:  # the stream is still inside its first block: nothing needs the sink yet
            return None
        return k[:, :, : self.sink], v[:, :, : self.sink]

    def _attend(
        self, qb: Tensor, kb: Tensor, vb: Tensor, read: MemoryRead, cache: dict[str, Tensor], rotate: Rotate | None,
        sink: tuple[Tensor, Tensor] | None = None, b0: int = 0,
    ) -> Tensor:
        """One batched attention call over all blocks: (B, H, nb, L, D) queries -> (B, H, nb, L, D).

        Keys, in order: ``[memory slots | sink | previous block | block]``."""
        B, H, nb, L, D = qb.shape
        if read.first_hidden and read.keys is None:
            raise ValueError("MemoryRead.first_hidden hides memory slots: it needs `keys` (the key/value form)")
        S = self.sink
        w0 = S + (L if self.span == "previous" else 0)  # window position of the block start
        pos = torch.arange(w0, w0 + L, device=qb.device)  # (L,)
        if rotate is None:
            rotate = lambda x, pos: x  # noqa: E731
            q, k_local = qb, kb
        else:
            # queries and local keys share their positions: one call rotates both, so the
            # rotation's tables (cos, sin: a few kernels on a GPU) are computed once
            q, k_local = rotate(torch.cat([qb, kb], dim=1), pos).split([qb.shape[1], kb.shape[1]], dim=1)
        keys, values = [k_local], [vb]  # local keys, then what goes before them
        prev_missing = self.span == "previous" and "prev_k" not in cache  # the stream's first block has none
        if self.span == "previous":
            # Block i's previous block is block i-1; block 0's comes from the cache (absent at t = 0).
            first_k = cache.get("prev_k", torch.zeros_like(kb[:, :, 0])).to(kb.dtype)[:, :, None]  # (B, Hkv, 1, L, D)
            first_v = cache.get("prev_v", torch.zeros_like(vb[:, :, 0])).to(vb.dtype)[:, :, None]
            prev_k = torch.cat([first_k, kb[:, :, :-1]], dim=2)  # (B, Hkv, nb, L, D)
            prev_v = torch.cat([first_v, vb[:, :, :-1]], dim=2)
            keys.insert(0, rotate(prev_k, pos - L))
            values.insert(0, prev_v)
        local = sum(x.shape[-2] for x in keys)
        fixed = 0  # columns before the local keys that every query sees: memory slots, then sink
        if sink is not None:
            sink_pos = torch.arange(S, device=qb.device)  # (S,)
            sink_k = rotate(sink[0], sink_pos)[:, :, None].expand(-1, -1, nb, -1, -1)  # (B, Hkv, nb, S, D)
            keys.insert(0, sink_k)
            values.insert(0, sink[1][:, :, None].expand(-1, -1, nb, -1, -1))
            fixed = S
        slots = 0
        if read.keys is not None:
            mem_k = read.keys.to(kb.dtype)  # (B, Hkv, nb, P, D)
            if read.key_positions is not None:
                mem_k = rotate(mem_k, w0 + read.key_positions)
            keys.insert(0, mem_k)
            values.insert(0, read.values.to(vb.dtype))
            slots = mem_k.shape[-2]
        k = torch.cat(keys, dim=-2)  # (B, Hkv, nb, P + S + local, D)
        v = torch.cat(values, dim=-2)

        # What block 0 of the stream hides: its missing previous block, the sink it holds itself,
        # its empty memory. Every later block sees every column.
        hide_sink = sink is not None and b0 == 0
        hide_first = read.first_hidden and slots > 0
        offsets = read.bias is not None and slots > 0
        partial = read.output is not None and read.gate is None  # merged by log-sum-exp: needs the mask
        backend = self.backend(q.device, q.dtype)
        # When block 0 sees only its own keys, it can go alone (a square causal call on them) and
        # the later blocks hide nothing: two mask-free calls instead of one masked one, where the
        # backend has a causal kernel (on a GPU: flash instead of memory-efficient attention).
        first_alone = (b0 == 0 and (prev_missing or hide_sink or hide_first) and not (offsets or partial)
                       and (prev_missing or self.span == "block") and (hide_first or slots == 0)
                       and backend.has_causal_kernel(q.device))
        mask = None  # None: nothing hidden, the backend's bottom-right causal call (no mask tensor)
        if not first_alone and (prev_missing or hide_sink or hide_first or offsets or partial):
            key_valid = None
            if prev_missing:
                key_valid = torch.ones(nb, 2 * L, dtype=torch.bool, device=qb.device)
                key_valid[0, :L] = False  # (nb, 2L): the stream's first block has no previous block
            mask = trapezoid_mask(L, local, slots + fixed, key_valid, dtype=q.dtype, device=q.device)  # ([nb,] L, K)
            mask = mask.reshape(1, 1, -1, L, slots + fixed + local)  # (1, 1, nb|1, L, K)
            if hide_sink or hide_first:
                hide = torch.zeros(1, 1, nb, 1, slots + fixed + local, dtype=q.dtype, device=q.device)
                hide[:, :, 0, :, (0 if hide_first else slots) : (slots + S if hide_sink else slots)] = float("-inf")
                mask = mask + hide  # (1, 1, nb, L, K): block 0's hidden columns
            if offsets:
                bias = F.pad(read.bias.to(q.dtype), (0, fixed + local))  # (B|1, Hkv|1, nb|1, 1, K): zero beyond the slots
                if bias.shape[1] > 1:
                    bias = repeat_kv(bias.transpose(1, 2), H).transpose(1, 2)  # per query head
                mask = mask + bias  # (B|1, H|1, nb|1, L, K)
            mask = self._flatten_mask(mask, B, nb)  # (nb*B | 1, H|1, L, K)

        scale = self.scale if self.scale is not None else 1.0 / math.sqrt(D)
        # Blocks outer, batch inner: block 0 is the first B rows, the later blocks the rest.
        qf = rearrange(q, "b h n l d -> (n b) h l d")  # (nb*B, H, L, D)
        kf = rearrange(k, "b h n s d -> (n b) h s d")  # (nb*B, Hkv, K, D)
        vf = rearrange(v, "b h n s d -> (n b) h s d")

        def blocks(x: Tensor) -> Tensor:
            return rearrange(x, "(n b) h l d -> b h n l d", b=B)  # (B, H, nb, L, D)

        def call(qs: Tensor, ks: Tensor, vs: Tensor, skip: int) -> Tensor:
            """Queries (n, H, L, D) against the key columns from ``skip`` on: (n, H, L, D)."""
            if skip:  # (a slice even from 0 would cost its backward a copy)
                ks, vs = ks[:, :, skip:], vs[:, :, skip:]
            if mask is None:
                return backend.forward_causal(qs, ks, vs, scale)
            return backend(qs, ks, vs, mask[..., skip:] if skip else mask, scale)

        if first_alone:  # split once: its backward is one concatenation per tensor
            first, later = zip(*(x.split([B, x.shape[0] - B]) for x in (qf, kf, vf)))

        def attend(skip: int) -> Tensor:
            """The queries against the key columns from ``skip`` on: (B, H, nb, L, D)."""
            if not first_alone:
                return blocks(call(qf, kf, vf, skip))
            q0, k0, v0 = first
            head = call(q0, k0, v0, slots + fixed + local - L)  # block 0 on its own keys
            if nb == 1:
                return blocks(head)
            return blocks(torch.cat([head, call(*later, skip)]))

        if partial:
            if read.lse is None:
                raise ValueError("a MemoryRead with `output` needs `lse` (log-sum-exp merge) or `gate` (gated mix)")
            out, lse = backend.forward_lse(qf, kf, vf, mask, scale)
            base = blocks(out)
            joint, _ = merge_lse(base, rearrange(lse, "(n b) h l -> b h n l", b=B),
                                 read.output.to(out.dtype), read.lse.to(lse.dtype))
        else:
            joint = attend(0)
            # without the memory: the same call minus the slot columns (only needed for the gate)
            base = attend(slots) if self.gate is not None and slots else joint
            if read.output is not None:
                joint = merge_gated(read.output.to(joint.dtype), joint, read.gate)
        if self.gate is None:
            return joint
        return open_by_gate(base, joint, self.gate)

    @staticmethod
    def _flatten_mask(mask: Tensor, batch: int, nb: int) -> Tensor:
        """(B|1, H|1, nb|1, L, S) -> a mask for the (nb*B)-batched call, copied only if it varies."""
        if mask.shape[0] == 1 and mask.shape[2] == 1:
            return mask[:, :, 0]  # (1, H|1, L, S): the same for every block, broadcast
        mask = mask.expand(batch, mask.shape[1], nb, *mask.shape[3:])
        return rearrange(mask, "b h n l s -> (n b) h l s")  # (nb*B, H|1, L, S)
