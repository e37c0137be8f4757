"""``melodi``: Melodi's hierarchical memory (Chen et al., 2024; google-research/meliad).

Melodi compresses the context window by window with *token mixing*: a learned linear map over
the token axis (``TokenMixing`` in meliad's ``melodi_memory.py``) that turns the window's
tokens plus the previous memory tokens into a few new tokens.

- **Short-term memory** (every layer): ``S`` tokens, recurrent across windows. The next
  window's queries attend to them in the same softmax as the local keys (meliad concatenates
  the short-term memory's keys before the window's). Update, per window:
  ``short <- W_s [norm(window); norm(short)] + b_s + short`` (mixing with norm and residual).
- **Long-term memory** (one middle layer in the paper): a FIFO of ``long_slots`` tokens; every
  window appends ``increment`` tokens ``W_l [norm(window); norm(short)] + b_l`` and the oldest
  fall out. The queries read it by a separate cross-attention, mixed with the self-attention
  output by a learned gate (meliad's ``attn_gate``, truncated-normal 0.25 init).

How it maps onto the memplug contract (a memory plugin sees only its layer's raw keys and
values, not the residual stream):

- Token mixing acts on the layer's keys and values instead of on hidden states. Because the
  mixing is linear over tokens and the key/value projections are linear over channels, mixing
  keys equals projecting mixed tokens, up to the normalisation; the same mixing matrix is used
  for keys and values, with RMS normalisation (learned scale per input kind and stream) where
  meliad applies its pre-mixing LayerNorms.
- meliad also threads ``summary`` tokens through all layers of the stack (extra tokens that
  every layer processes). A memory plugin cannot add tokens to the backbone, so the previous
  short-term memory stands in for the summary tokens in both mixings.
- Short-term keys come back raw with ``key_positions = -S .. -1`` (the layer rotates them as
  tokens just before the block); long-term keys are position-free (meliad's cross-attention
  has no position bias). Empty memories (before the first window) are hidden instead of
  being attended as zeros (meliad starts from zero tokens).
- The gate is per head ((H,)), the contract's gate; meliad's is per head and channel (H, D).
  Until the layer accepts an (H, D) gate this is a documented deviation.

Placement: ``long_term=True`` gives a layer both memories, ``False`` the short-term memory
only. :func:`melodi_layers` builds the paper's stack (long-term at the middle layer) for
``MemoryModel(memory=melodi_layers(n, block=...))``.

Sizes: ``block`` is required (the mixing matrices span the window's tokens); defaults follow
meliad's base config scaled to the block (window 512: short 64, increment 32), i.e. ``short =
block / 8``, ``increment = block / 16``, and ``long_slots`` = 1x memory
(:func:`memplug.budget.unit`). Parameters: ``(S + I) (L + S) + S + I`` mixing weights, ``4 D``
normalisation scales and ``H`` gate logits; :meth:`footprint` reports them.

Chunk invariant: both memories change only when a block completes. Gradients flow through both
memories within a call (back-propagation through the windows, as in meliad's training).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

import memplug
from memplug.budget import unit
from memplug.contracts import Memory, MemoryRead
from memplug.ops.retrieval import fifo_append, fifo_valid, fifo_windows, masked_softmax


class MelodiMemory(Memory):
    """Short-term (recurrent, token-mixed) and optional long-term (FIFO, gated) memory.

    State: ``short_keys``, ``short_values`` (B, Hkv, S, D), ``short_filled`` (1,) int64;
    with ``long_term``: ``long_keys``, ``long_values`` (B, Hkv, long_slots, D) newest last and
    ``long_count`` (1,) int64.
    """

    name = "melodi"

    def __init__(
        self,
        block: int,
        short_slots: int | None = None,
        long_slots: int | None = None,
        increment: int | None = None,
        long_term: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be a positive int (the window length), got {block!r}")
        self.block = block
        self.short_slots = max(1, block // 8) if short_slots is None else short_slots
        self.increment = max(1, block // 16) if increment is None else increment
        self.long_slots = unit(block) if long_slots is None else long_slots
        for name in ("short_slots", "increment", "long_slots"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        self.long_term = long_term

    def setup(self, heads: int, kv_heads: int, head_dim: int) -> None:
        super().setup(heads, kv_heads, head_dim)
        fan_in = self.block + self.short_slots
        std = 1.0 / math.sqrt(fan_in)  # meliad: variance scaling, fan-in, truncated normal
        # RMS scales: [window, short] x [keys, values]
        self.norm_weight = nn.Parameter(torch.ones(2, 2, head_dim))
        self.short_mix = nn.Parameter(nn.init.trunc_normal_(torch.empty(self.short_slots, fan_in), std=std, a=-2 * std, b=2 * std))
        self.short_bias = nn.Parameter(torch.zeros(self.short_slots))
        if self.long_term:
            self.long_mix = nn.Parameter(nn.init.trunc_normal_(torch.empty(self.increment, fan_in), std=std, a=-2 * std, b=2 * std))
            self.long_bias = nn.Parameter(torch.zeros(self.increment))
            self.gate = nn.Parameter(nn.init.trunc_normal_(torch.empty(heads), std=0.25, a=-0.5, b=0.5))

    def init_state(self, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        def zeros(slots: int) -> Tensor:
            return torch.zeros(batch, self.kv_heads, slots, self.head_dim, dtype=dtype, device=device)

        state = {"short_keys": zeros(self.short_slots), "short_values": zeros(self.short_slots),
                 "short_filled": torch.zeros(1, dtype=torch.long, device=device)}
        if self.long_term:
            state.update(long_keys=zeros(self.long_slots), long_values=zeros(self.long_slots),
                         long_count=torch.zeros(1, dtype=torch.long, device=device))
        return state

    # -- the per-window step: token mixing ---------------------------------------------------

    def _check(self, length: int) -> None:
        if length != self.block:
            raise ValueError(f"melodi memory built for block={self.block} got blocks of {length} tokens")

    def _mix_inputs(self, window: Tensor, short: Tensor, stream: int) -> Tensor:
        """RMS-normalised ``[window; short]`` (..., L + S, D) for stream 0 (keys) or 1 (values)."""
        d = window.shape[-1]
        w = F.rms_norm(window, (d,)) * self.norm_weight[0, stream].to(window.dtype)
        s = F.rms_norm(short, (d,)) * self.norm_weight[1, stream].to(short.dtype)
        return torch.cat([w, s], dim=-2)

    def _step(self, k: Tensor, v: Tensor, sk: Tensor, sv: Tensor) -> tuple[Tensor, ...]:
        """One window (B, Hkv, L, D): the next short memory and, with long_term, the increment."""
        out = []
        for stream, (x, short) in enumerate(((k, sk), (v, sv))):
            inputs = self._mix_inputs(x, short, stream)  # (B, Hkv, L + S, D)
            mixed = einsum(self.short_mix.to(x.dtype), inputs, "s t, b h t d -> b h s d")
            out.append(mixed + self.short_bias.to(x.dtype)[:, None] + short)  # norm and residual
            if self.long_term:
                inc = einsum(self.long_mix.to(x.dtype), inputs, "s t, b h t d -> b h s d")
                out.append(inc + self.long_bias.to(x.dtype)[:, None])
        if self.long_term:
            sk_new, inc_k, sv_new, inc_v = out
            return sk_new, sv_new, inc_k, inc_v
        return tuple(out)

    # -- reading ----------------------------------------------------------------------------

    def _short_read(self, keys: Tensor, values: Tensor, hidden: Tensor) -> MemoryRead:
        """Short-term slots (B, Hkv, nb, S, D) in the layer's softmax; ``hidden`` (nb,) bool."""
        nb, s = keys.shape[2], keys.shape[3]
        positions = torch.arange(-s, 0, device=keys.device, dtype=torch.float32).expand(nb, s)  # (nb, S)
        bias = torch.zeros(1, 1, nb, 1, s, dtype=keys.dtype, device=keys.device)
        bias.masked_fill_(hidden.view(1, 1, nb, 1, 1), float("-inf"))
        return MemoryRead(keys=keys, values=values, key_positions=positions, bias=bias)

    def _long_attend(self, q: Tensor, keys: Tensor, values: Tensor, valid: Tensor) -> Tensor:
        """Cross-attention of ``q`` (B, H, nb, L, D) to (B, Hkv, nb, M, D); valid (nb, M)."""
        qg = rearrange(q, "b (h g) n l d -> b h g n l d", h=self.kv_heads)
        logits = (qg @ keys.unsqueeze(2).transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, Hkv, G, nb, L, M)
        logits = logits.masked_fill(~valid.unsqueeze(-2), float("-inf"))
        weights, _ = masked_softmax(logits)
        out = weights @ values.unsqueeze(2)  # (B, Hkv, G, nb, L, D)
        return rearrange(out, "b h g n l d -> b (h g) n l d")

    def read(self, state: dict[str, Tensor], q: Tensor, t: int) -> MemoryRead:
        self._check(q.shape[-2])
        hidden = (state["short_filled"] == 0).expand(1)
        read = self._short_read(state["short_keys"].unsqueeze(2), state["short_values"].unsqueeze(2), hidden)
        if self.long_term:
            valid = fifo_valid(self.long_slots, 0, 1, int(state["long_count"]), device=q.device)  # (1, M)
            read.output = self._long_attend(q.unsqueeze(2), state["long_keys"].unsqueeze(2), state["long_values"].unsqueeze(2), valid)
            read.gate = self.gate
        return read

    def write(self, state: dict[str, Tensor], k: Tensor, v: Tensor, t0: int) -> dict[str, Tensor]:
        self._check(k.shape[-2])
        new = self._step(k, v, state["short_keys"], state["short_values"])
        out = {"short_keys": new[0], "short_values": new[1], "short_filled": torch.ones_like(state["short_filled"])}
        if self.long_term:
            out.update(
                long_keys=fifo_append(state["long_keys"], new[2], self.long_slots),
                long_values=fifo_append(state["long_values"], new[3], self.long_slots),
                long_count=(state["long_count"] + self.increment).clamp_max(self.long_slots),
            )
        return out

    def forward_blocks(
        self, state: dict[str, Tensor], q: Tensor, k: Tensor, v: Tensor, t0: int, complete: int
    ) -> tuple[MemoryRead, dict[str, Tensor]]:
        nb = q.shape[2]
        self._check(q.shape[3])
        # The short-term recurrence is a loop of small mixings; the reads are batched after it.
        sk, sv = [state["short_keys"]], [state["short_values"]]
        inc_k, inc_v = [], []
        for i in range(complete):
            new = self._step(k[:, :, i], v[:, :, i], sk[-1], sv[-1])
            sk.append(new[0])
            sv.append(new[1])
            if self.long_term:
                inc_k.append(new[2])
                inc_v.append(new[3])
        # block i reads the short memory after min(i, complete) writes
        reads_k = torch.stack([sk[min(i, complete)] for i in range(nb)], dim=2)  # (B, Hkv, nb, S, D)
        reads_v = torch.stack([sv[min(i, complete)] for i in range(nb)], dim=2)
        filled = int(state["short_filled"]) > 0
        hidden = torch.tensor([not filled and min(i, complete) == 0 for i in range(nb)], device=q.device)
        read = self._short_read(reads_k, reads_v, hidden)
        new_state = {"short_keys": sk[-1], "short_values": sv[-1],
                     "short_filled": state["short_filled"] if complete == 0 else torch.ones_like(state["short_filled"])}
        if self.long_term:
            count = int(state["long_count"])
            # bank = [stored | increments of the written blocks]; state j = window j of the bank
            bank_k = torch.cat([state["long_keys"], *inc_k], dim=-2)  # (B, Hkv, M + complete*I, D)
            bank_v = torch.cat([state["long_values"], *inc_v], dim=-2)
            # block i reads state min(i, complete): a view unless a block before the last is partial
            which = slice(0, nb) if complete >= nb - 1 else [min(i, complete) for i in range(nb)]
            keys = fifo_windows(bank_k, self.long_slots, self.increment, complete + 1)[:, :, which]  # (B, Hkv, nb, M, D)
            values = fifo_windows(bank_v, self.long_slots, self.increment, complete + 1)[:, :, which]
            valid = fifo_valid(self.long_slots, self.increment, complete + 1, count, device=q.device)[which]  # (nb, M)
            read.output = self._long_attend(q, keys, values, valid)
            read.gate = self.gate
            end = self.long_slots + complete * self.increment
            new_state.update(
                long_keys=bank_k[:, :, end - self.long_slots : end],
                long_values=bank_v[:, :, end - self.long_slots : end],
                long_count=(state["long_count"] + complete * self.increment).clamp_max(self.long_slots),
            )
        return read, new_state


def melodi_layers(num_layers: int, long_layer: int | None = None, **options) -> Callable[[int], MelodiMemory]:
    """The paper's placement: short-term memory in every layer, long-term at ``long_layer``.

    ``long_layer`` defaults to the middle layer (``num_layers // 2``; meliad's base config puts
    it at layer 6 of 12). Returns a ``layer index -> MelodiMemory`` factory for
    ``MemoryModel(memory=...)``; ``options`` go to :class:`MelodiMemory` (``block`` required).
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers!r}")
    where = num_layers // 2 if long_layer is None else long_layer
    if not 0 <= where < num_layers:
        raise ValueError(f"long_layer must be in [0, {num_layers}), got {long_layer!r}")
    if "long_term" in options:
        raise ValueError("melodi_layers places the long-term memory itself; do not pass long_term")

    def build(layer: int) -> MelodiMemory:
        return MelodiMemory(long_term=layer == where, **options)

    return build


@memplug.hookimpl
def memplug_add_memories(registry) -> None:
    registry.add(MelodiMemory)
