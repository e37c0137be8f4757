"""``elastic``: Elastic Memory (arXiv 2602.11212), an encoder x retriever memory.

Compression. The layer's raw keys and values (before RoPE) of each key/value head are one
2D-channel signal ``[k | v]``; the encoder (a HiPPO measure, LegS by default) compresses it
online into a state of N coefficients per channel, so one scan serves keys and values (all kv
heads side by side: the state is (B, N, Hkv * 2D), channels ordered head, then k/v, then dim).
The state and its recurrence are float32, also under bf16 autocast; the encoder projects
the tokens in their own dtype (a bf16 matmul with float32 accumulation under autocast, like every
other projection of the model) and accumulates them in float32.

Reading (polynomial sampling). The queries of a block read the state at the block start at the
retriever's P positions, ``basis(positions, t) @ state``; the P reconstructed ``[k | v]``
vectors join the local keys in one softmax (the layer's trapezoid). A block that starts at
t = 0 has an empty memory, hidden (``MemoryRead.first_hidden``).

Block-parallel. ``forward_blocks`` gets every block of a call at once: ``encoder.scan`` gives
the states after each complete block, the states at the block starts are
``[state, scan[:, :-1]]``, and one ``retriever.read`` with a (nb,) tensor of block times reads
them all. It equals the step form (``read`` / ``write`` per block) because the scan equals
repeated updates.

Options. ``positions="none"`` (default): samples carry no positional encoding (the paper's
choice). ``positions="sample"``: each sample is rotated at its own position relative to the
block start (clipped to ``max_distance`` tokens when given). ``logit_offset``: a constant added
to every memory logit, parameter-free. ``-ln P`` gives the P samples together the weight of
about one key at the start, meant to help early learning, but it stopped the model from
learning to use its memory on the regime (gist) task (the ``ablations`` table of docs/results:
a memory gain of 0.005 bits where the default's is 1.04), so the default is 0; pass
``logit_offset="-lnP"`` or a float. ``logit_offset="density"`` adds ``ln(t / P)`` to a block's
memory logits while its history is shorter than the P samples (``t < P``), 0 after: P samples of
t tokens repeat each token about P / t times, and without it they would outweigh the local keys
by that factor (a memory of 1024 samples read after one block of 256 tokens counts each token 4
times); with it they weigh together as much as the t tokens would.

``normalize_keys=True`` rescales every sampled key to unit RMS over its D channels (values
unchanged), parameter-free: a polynomial reconstruction is a smoothed average of the history, so
its keys are shorter than raw keys, and shorter the more varied the history; normalised, a
sample's logit measures direction only.

Elastic adds no parameters of its own (a learned retriever brings its own).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import rearrange
from torch import Tensor

import memplug
from memplug.util.lru import TensorLRU
from memplug.core.contracts import Encoder, Memory, MemoryRead, Retriever
from memplug.core.manager import make_encoder, make_retriever

POSITIONS = ("none", "sample")
LOG_P = "-lnP"
DENSITY = "density"
BASIS_CACHE_BYTES = 16 * 2**20


def _component(kind: str, make, spec: Any, options: dict[str, Any]):
    """Build an encoder/retriever from a name (its own defaults fill what ``options`` leave out)
    or pass a ready object through."""
    if isinstance(spec, str):
        return make(spec, **options)
    if options:
        raise ValueError(f"{kind} options {sorted(options)} given together with a ready {kind} object")
    return make(spec)


class ElasticMemory(Memory):
    """Elastic Memory: HiPPO-compressed raw keys/values, read back by polynomial sampling.

    Args:
        encoder: a registered encoder name or an :class:`Encoder` (default ``"legs"``).
        retriever: a registered retriever name or a :class:`Retriever` (default ``"uniform"``).
        order: N for an encoder given by name (default: the encoder's, 64 for the built-ins).
        samples: P for a retriever given by name (default: the retriever's, 64 for the built-ins).
        encoder_options: more options of an encoder given by name (``window``, ``beta``, ...).
        retriever_options: more options of a retriever given by name (``warp``, ``rate``, ...).
        positions: ``"none"`` (samples unrotated) or ``"sample"`` (rotated at their positions).
        max_distance: with ``positions="sample"``, clip the distance to the block start.
        logit_offset: 0.0 (default), a float, ``"-lnP"`` (added to every memory logit) or
            ``"density"`` (``ln(t / P)`` while the history is shorter than P, then 0).
        normalize_keys: rescale every sampled key to unit RMS over its D channels.
    """

    name = "elastic"

    def __init__(
        self,
        encoder: str | Encoder = "legs",
        retriever: str | Retriever = "uniform",
        order: int | None = None,
        samples: int | None = None,
        encoder_options: dict[str, Any] | None = None,
        retriever_options: dict[str, Any] | None = None,
        positions: str = "none",
        max_distance: float | None = None,
        logit_offset: float | str = 0.0,
        normalize_keys: bool = False,
    ) -> None:
        super().__init__()
        enc_opts = dict(encoder_options or {}) | ({} if order is None else {"order": order})
        ret_opts = dict(retriever_options or {}) | ({} if samples is None else {"samples": samples})
        self.encoder = _component("encoder", make_encoder, encoder, enc_opts)
        self.retriever = _component("retriever", make_retriever, retriever, ret_opts)
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
        if max_distance is not None and not max_distance > 0:
            raise ValueError(f"max_distance must be > 0 or None, got {max_distance!r}")
        if isinstance(logit_offset, str) and logit_offset not in (LOG_P, DENSITY):
            raise ValueError(f"logit_offset must be a float, {LOG_P!r} or {DENSITY!r}, got {logit_offset!r}")
        if not isinstance(normalize_keys, bool):
            raise ValueError(f"normalize_keys must be True or False, got {normalize_keys!r}")
        self.positions, self.max_distance, self.logit_offset = positions, max_distance, logit_offset
        self.normalize_keys = normalize_keys
        # read bases of a fixed retriever by block times: training reads the same ones every step
        self._bases = TensorLRU(BASIS_CACHE_BYTES)

    def extra_repr(self) -> str:
        return f"positions={self.positions!r}, logit_offset={self.logit_offset!r}, normalize_keys={self.normalize_keys}"

    @classmethod
    def budget(cls, slots: int) -> dict[str, Any]:
        """N = P = ``slots``: N coefficients of keys and of values per head, read back as P samples."""
        return {"order": slots, "samples": slots}

    def set_retriever(self, retriever: Retriever) -> None:
        """Swap the sampling at test time (``MemoryModel.swap_retriever``); the state is unchanged."""
        self.retriever = retriever
        self._bases.clear()

    def offset(self) -> float:
        """The constant offset of every memory logit (0 for ``"density"``, whose offset depends
        on the block's time: :meth:`_read`)."""
        if self.logit_offset == LOG_P:
            return -math.log(self.retriever.samples)
        return 0.0 if self.logit_offset == DENSITY else float(self.logit_offset)

    # --- Memory contract -----------------------------------------------------------------
    # The encoder sees one signal per sequence with Hkv * 2D channels (every kv head's [k | v]):
    # channels are independent, and a few large matmuls beat many small per-head ones.
    def init_state(self, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        # float32 whatever the model's dtype: the state accumulates the whole history
        coef = self.encoder.init_state(batch, channels=2 * self.kv_heads * self.head_dim,
                                       dtype=torch.float32, device=device)  # (B, N, Hkv*2D)
        return {"coef": coef}

    def read(self, state: dict[str, Tensor], q: Tensor, t: int) -> MemoryRead:
        # one block: its basis is cached under (t, 1 block, length unused)
        coef = rearrange(state["coef"], "b n c -> 1 n (b c)")  # (1, N, B*Hkv*2D)
        return self._read(coef, q.dtype, (t, 1, 0), batch=q.shape[0])

    def write(self, state: dict[str, Tensor], k: Tensor, v: Tensor, t0: int) -> dict[str, Tensor]:
        with torch.autocast(k.device.type, enabled=False):
            x = rearrange([k, v], "kv b h l d -> b l (h kv d)")  # (B, L, Hkv*2D)
            return {"coef": self.encoder.update(state["coef"], x, t0)}

    def forward_blocks(
        self, state: dict[str, Tensor], q: Tensor, k: Tensor, v: Tensor, t0: int, complete: int
    ) -> tuple[MemoryRead, dict[str, Tensor]]:
        # The batch joins the channels: the encoder sees one signal of B*Hkv*2D channels, so
        # every block transition meets one (N, B*C) matrix (one matmul per block, not B), and
        # the transitions are never broadcast over the batch.
        batch, nb, length = k.shape[0], k.shape[2], k.shape[3]
        coef = rearrange(state["coef"], "b n c -> n (b c)")  # (N, B*C)
        states = [coef.unsqueeze(0)]  # (1, N, B*C): the state at the first block's start
        if complete:
            with torch.autocast(k.device.type, enabled=False):
                # one copy: the stack gathers the (n l)-major views straight into the channel order
                kv = [rearrange(t[:, :, :complete], "b h n l d -> (n l) b h d") for t in (k, v)]  # views
                x = torch.stack(kv, dim=-2).flatten(1)  # (c*L, B, Hkv, 2, D) -> (c*L, B*C)
                # at t0 = 0 the transition from the start is M(0) = 0: the start state adds nothing
                # (without one the scan still runs in float32, the empty state's dtype)
                states.append(self.encoder.scan(x, length, t0, coef if t0 else None))  # (c, N, B*C)
        states = torch.cat(states)  # (c+1, N, B*C): the states at every block start, then after the last
        read = self._read(states[:nb], q.dtype, (t0, nb, length), batch=batch)
        # a copy, not a view that keeps every block's state alive
        final = rearrange(states[complete], "n (b c) -> b n c", b=batch).clone(memory_format=torch.contiguous_format)
        return read, {"coef": final}

    def _read(self, states: Tensor, dtype: torch.dtype, when: tuple[int, int, int], batch: int) -> MemoryRead:
        """Samples of the states (nb, N, B*Hkv*2D) at the starts of the blocks ``when`` = (first
        block time, nb, block length)."""
        with torch.autocast(states.device.type, enabled=False):
            # read in the samples' dtype: they join bf16 keys under autocast either way
            samples = self._sample(states.to(dtype), when)  # (nb, P, B*Hkv*2D)
        samples = rearrange(samples.to(dtype), "n p (b h kv d) -> kv b h n p d", b=batch, h=self.kv_heads, kv=2)
        keys, values = samples.unbind(0)  # (B, Hkv, nb, P, D) each, views
        if self.normalize_keys:
            keys = torch.nn.functional.rms_norm(keys, keys.shape[-1:], eps=torch.finfo(keys.dtype).eps)
        slots = samples.shape[-2]
        first, nb, length = when
        # ln(t / P) for the blocks with 0 < t < P (t = 0 reads an empty memory, hidden anyway);
        # whether any has is known from the block times on the host, without a device sync
        density = self.logit_offset == DENSITY and any(0 < first + i * length < slots for i in range(nb))
        t = _block_times(when, states.device) if density or self.positions == "sample" else None  # (nb,)
        bias = None  # nothing to add: the layer's attention then needs no mask (on a GPU, flash)
        if density:
            share = torch.where(t > 0, (t / slots).clamp(max=1.0).log(), 0.0)  # (nb,)
            bias = share.to(dtype).view(1, 1, nb, 1, 1).expand(1, 1, nb, 1, slots)  # (1, 1, nb, 1, P)
        elif self.offset() != 0:  # a constant ("density" has none)
            bias = torch.full((1, 1, 1, 1, slots), self.offset(), dtype=dtype, device=states.device)  # every block
        key_positions = None
        if self.positions == "sample":
            rel = self.retriever.positions(t, self.encoder) - t.unsqueeze(-1)  # (nb, P), <= 0
            if self.max_distance is not None:
                rel = rel.clamp(min=-self.max_distance)
            key_positions = rel.to(torch.float32)
        # only the first block can start at t = 0, where the memory is empty
        return MemoryRead(keys=keys, values=values, key_positions=key_positions, bias=bias, first_hidden=when[0] == 0)

    def _sample(self, states: Tensor, when: tuple[int, int, int]) -> Tensor:
        """``retriever.read(encoder, states, t)`` at the block times ``when``, with the basis cached
        when the retriever is fixed and reads the contract's way (``basis @ state``). Evaluating the
        basis is ~N small ops per read, a cost that does not shrink with more threads; under
        ``torch.compile`` the cached basis also keeps those ops out of the graph, where tracing
        them dominated the compile time at N = 1024."""
        ret = self.retriever
        if not ret.fixed or type(ret).read is not Retriever.read:
            return ret.read(self.encoder, states, _block_times(when, states.device))
        key = (*when, states.dtype, states.device)
        phi = self._bases.get(key)
        if phi is None:
            t = _block_times(when, states.device)
            phi = self._bases.put(key, self.encoder.basis(ret.positions(t, self.encoder), t).to(states))  # (nb, P, N)
        return phi @ states


def _block_times(when: tuple[int, int, int], device: torch.device) -> Tensor:
    """The start times (nb,) float64 of the blocks ``when`` = (first block time, nb, block
    length), made only where they are needed: a cached read needs none (on a GPU, three kernels
    fewer per layer than making them on every call)."""
    first, nb, length = when
    step = max(length, 1)  # a single block (the step form) has length 0
    return torch.arange(first, first + nb * step, step, dtype=torch.float64, device=device)


@memplug.hookimpl
def memplug_add_memories(registry) -> None:
    registry.add(ElasticMemory)
