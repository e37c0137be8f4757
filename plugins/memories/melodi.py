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
``MemoryModel(memory=melodi_layers(n))``.

Sizes: ``block`` is the model's (the MemoryModel passes it through :meth:`MelodiMemory.setup`;
the mixing matrices span the block's tokens); defaults follow
meliad's base config scaled to the block (window 512: short 64, increment 32), i.e. ``short =
block / 8``, ``increment = block / 16``, and ``long_slots`` = 1x memory
(:func:`memplug.core.budget.unit`). Parameters: ``(S + I) (L + S) + S + I`` mixing weights, ``4 D``
normalisation scales and ``H`` gate logits; :meth:`footprint` reports them.

Chunk invariant: both memories change only when a block completes. Gradients flow through both
memories within a call (back-propagation through the windows, as in meliad's training).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from einops import einsum, rearrange
from torch import Tensor, nn

import memplug
from memplug.core.budget import unit
from memplug.core.contracts import Memory, MemoryRead
from memplug.ops.attention import repeat_kv
from memplug.ops.memory_banks import fifo_append, fifo_valid, fifo_windows
from memplug.util.checks import positive_int


class MelodiMemory(Memory):
    """Short-term (recurrent, token-mixed) and optional long-term (FIFO, gated) memory.

    State: ``short_keys``, ``short_values`` (B, Hkv, S, D), ``short_filled`` (1,) int64;
    with ``long_term``: ``long_keys``, ``long_values`` (B, Hkv, long_slots, D) newest last and
    ``long_count`` (1,) int64.

    Args:
        block: the block length L (the mixing matrices span the block's tokens); given here or
            set by the layer through :meth:`setup`.
        short_slots: S, short-term memory tokens (default ``block // 8``).
        long_slots: long-term FIFO length (default: 1x memory, :func:`memplug.core.budget.unit`).
        increment: tokens appended to the long-term memory per block (default ``block // 16``).
        long_term: ``True``: short- and long-term memory; ``False``: short-term only.
    """

    name = "melodi"

    def __init__(
        self,
        block: int | None = None,
        short_slots: int | None = None,
        long_slots: int | None = None,
        increment: int | None = None,
        long_term: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("block", block), ("short_slots", short_slots), ("long_slots", long_slots),
                            ("increment", increment)):
            if value is not None:
                positive_int(name, value)
        self.block, self.long_term = block, long_term
        self._given = (short_slots, long_slots, increment)
        if block is not None:
            self._size(block)

    @classmethod
    def budget(cls, slots: int) -> dict[str, Any]:
        return {"long_slots": slots}

    def _size(self, block: int) -> None:
        """Sizes not given default to meliad's base config scaled to the block."""
        short, long, increment = self._given
        self.short_slots = max(1, block // 8) if short is None else short
        self.long_slots = unit(block) if long is None else long
        self.increment = max(1, block // 16) if increment is None else increment

    def setup(self, heads: int, kv_heads: int, head_dim: int, block: int | None = None) -> None:
        if block is not None and self.block is not None and block != self.block:
            raise ValueError(f"melodi memory built for block={self.block} is set up with block={block}")
        super().setup(heads, kv_heads, head_dim, block)
        if self.block is None:
            raise ValueError("melodi needs the block length (its mixing matrices span the block): "
                             "pass block=... or let the MemoryModel set it up")
        self._size(self.block)
        fan_in = self.block + self.short_slots
        std = 1.0 / math.sqrt(fan_in)  # meliad: variance scaling, fan-in, truncated normal
        # RMS scales: [window, short] x [keys, values]
        self.norm_weight = nn.Parameter(torch.ones(2, 2, head_dim))
        self.short_mix = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(self.short_slots, fan_in), std=std, a=-2 * std, b=2 * std)
        )
        self.short_bias = nn.Parameter(torch.zeros(self.short_slots))
        if self.long_term:
            self.long_mix = nn.Parameter(
                nn.init.trunc_normal_(torch.empty(self.increment, fan_in), std=std, a=-2 * std, b=2 * std)
            )
            self.long_bias = nn.Parameter(torch.zeros(self.increment))
            self.gate = nn.Parameter(nn.init.trunc_normal_(torch.empty(heads), std=0.25, a=-0.5, b=0.5))

    def init_state(self, batch: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        def zeros(slots: int) -> Tensor:
            return torch.zeros(batch, self.kv_heads, slots, self.head_dim, dtype=dtype, device=device)

        state = {
            "short_keys": zeros(self.short_slots),
            "short_values": zeros(self.short_slots),
            "short_filled": torch.zeros(1, dtype=torch.long, device=device),
        }
        if self.long_term:
            state.update(
                long_keys=zeros(self.long_slots),
                long_values=zeros(self.long_slots),
                long_count=torch.zeros(1, dtype=torch.long, device=device),
            )
        return state

    # -- token mixing -----------------------------------------------------------------------

    def _check(self, length: int) -> None:
        if length != self.block:
            raise ValueError(f"melodi memory built for block={self.block} got blocks of {length} tokens")

    def _norm(self, x: Tensor, kind: int) -> Tensor:
        """RMS-normalise stacked ``[keys, values]`` (2, ..., D); ``kind`` 0: window, 1: short."""
        w = self.norm_weight[kind].to(x.dtype)  # (2, D)
        return F.rms_norm(x, (x.shape[-1],)) * w.view(2, *([1] * (x.dim() - 2)), x.shape[-1])

    def _scan(self, kv: Tensor, short: Tensor, n: int) -> tuple[Tensor, Tensor | None]:
        """Write the first ``n`` blocks of ``kv`` (2, B, Hkv, nb, L, D) into ``short`` (2, B, Hkv, S, D).

        Returns the short memories before and after each write, (2, B, Hkv, n + 1, S, D), and,
        with ``long_term``, the long-term increments of the n blocks, (2, B, Hkv, n * I, D).
        The mixing ``W [norm(window); norm(short)]`` splits into a window part, computed for all
        blocks at once, and an S x S part inside the recurrence.
        """
        mix_w, mix_s = self.short_mix[:, : self.block].to(kv.dtype), self.short_mix[:, self.block :].to(kv.dtype)
        window = self._norm(kv[:, :, :, :n], 0)  # (2, B, Hkv, n, L, D)
        from_window = einsum(mix_w, window, "s t, k b h n t d -> k b h n s d")  # (2, B, Hkv, n, S, D)
        bias = self.short_bias.to(kv.dtype)[:, None]  # (S, 1)
        shorts, normed = [short], []
        for i in range(n):
            normed.append(self._norm(shorts[-1], 1))  # (2, B, Hkv, S, D)
            shorts.append(from_window[:, :, :, i] + mix_s @ normed[-1] + bias + shorts[-1])  # norm and residual
        increments = None
        if self.long_term and n:
            lw, ls = self.long_mix[:, : self.block].to(kv.dtype), self.long_mix[:, self.block :].to(kv.dtype)
            inc = einsum(lw, window, "s t, k b h n t d -> k b h n s d") + einsum(
                ls, torch.stack(normed, dim=3), "s t, k b h n t d -> k b h n s d"
            )  # (2, B, Hkv, n, I, D)
            increments = (inc + self.long_bias.to(kv.dtype)[:, None]).flatten(3, 4)  # (2, B, Hkv, n*I, D)
        return torch.stack(shorts, dim=3), increments

    # -- reading ----------------------------------------------------------------------------

    def _short_read(self, keys: Tensor, values: Tensor, hidden: Tensor) -> MemoryRead:
        """Short-term slots (B, Hkv, nb, S, D) in the layer's softmax; ``hidden`` (nb,) bool."""
        nb, s = keys.shape[2], keys.shape[3]
        positions = torch.arange(-s, 0, device=keys.device, dtype=torch.float32).expand(nb, s)  # (nb, S)
        bias = torch.zeros(1, 1, nb, 1, s, dtype=keys.dtype, device=keys.device)
        bias.masked_fill_(hidden.view(1, 1, nb, 1, 1), float("-inf"))
        return MemoryRead(keys=keys, values=values, key_positions=positions, bias=bias)

    def _long_attend(self, q: Tensor, keys: Tensor, values: Tensor, valid: Tensor) -> Tensor:
        """Cross-attention of ``q`` (B, H, nb, L, D) to (B, Hkv, nb, M, D); ``valid`` (nb, M).

        Blocks whose long-term memory is still empty get a zero output. All blocks run as one
        fused ``scaled_dot_product_attention`` call; an empty block is given one visible slot
        (a row with every slot hidden would be nan) and its output is then multiplied by 0.
        Tensor operations only: no host synchronisation, nothing data-dependent for compile.
        """
        b, h, nb, length, d = q.shape
        nonempty = valid.any(dim=-1)  # (nb,)
        first_slot = torch.arange(valid.shape[-1], device=valid.device) == 0  # (M,)
        visible = valid | (~nonempty[:, None] & first_slot)  # (nb, M)
        qs = rearrange(q, "b h n l d -> (b n) h l d")  # (B*nb, H, L, D)
        ks = repeat_kv(rearrange(keys, "b h n m d -> (b n) h m d"), h)  # (B*nb, H, M, D)
        vs = repeat_kv(rearrange(values, "b h n m d -> (b n) h m d"), h)
        mask = torch.zeros(visible.shape, dtype=q.dtype, device=q.device).masked_fill(~visible, float("-inf"))
        mask = mask.repeat(b, 1)[:, None, None, :]  # (B*nb, 1, 1, M)
        out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=1.0 / math.sqrt(d))
        out = rearrange(out, "(b n) h l d -> b h n l d", b=b)  # (B, H, nb, L, D)
        return out * nonempty.view(1, 1, nb, 1, 1).to(out.dtype)

    def read(self, state: dict[str, Tensor], q: Tensor, t: int) -> MemoryRead:
        self._check(q.shape[-2])
        hidden = (state["short_filled"] == 0).expand(1)
        read = self._short_read(state["short_keys"].unsqueeze(2), state["short_values"].unsqueeze(2), hidden)
        if self.long_term:
            valid = fifo_valid(self.long_slots, 0, 1, state["long_count"], device=q.device)  # (1, M)
            read.output = self._long_attend(
                q.unsqueeze(2), state["long_keys"].unsqueeze(2), state["long_values"].unsqueeze(2), valid
            )
            read.gate = self.gate
        return read

    def write(self, state: dict[str, Tensor], k: Tensor, v: Tensor, t0: int) -> dict[str, Tensor]:
        self._check(k.shape[-2])
        shorts, inc = self._scan(
            torch.stack([k, v])[:, :, :, None], torch.stack([state["short_keys"], state["short_values"]]), 1
        )
        out = {
            "short_keys": shorts[0, :, :, -1],
            "short_values": shorts[1, :, :, -1],
            "short_filled": torch.ones_like(state["short_filled"]),
        }
        if self.long_term:
            out.update(
                long_keys=fifo_append(state["long_keys"], inc[0], self.long_slots),
                long_values=fifo_append(state["long_values"], inc[1], self.long_slots),
                long_count=(state["long_count"] + self.increment).clamp_max(self.long_slots),
            )
        return out

    def forward_blocks(
        self, state: dict[str, Tensor], q: Tensor, k: Tensor, v: Tensor, t0: int, complete: int
    ) -> tuple[MemoryRead, dict[str, Tensor]]:
        nb = q.shape[2]
        self._check(q.shape[3])
        shorts, inc = self._scan(
            torch.stack([k, v]), torch.stack([state["short_keys"], state["short_values"]]), complete
        )
        # block i reads the state after min(i, complete) writes: a view unless a block before the last is partial
        which = slice(0, nb) if complete >= nb - 1 else [min(i, complete) for i in range(nb)]
        reads = shorts[:, :, :, which]  # (2, B, Hkv, nb, S, D)
        writes = torch.tensor([min(i, complete) for i in range(nb)], device=q.device)  # (nb,) before block i
        hidden = (writes == 0) & (state["short_filled"] == 0)  # (nb,): nothing was ever written
        read = self._short_read(reads[0], reads[1], hidden)
        new_state = {
            "short_keys": shorts[0, :, :, -1],
            "short_values": shorts[1, :, :, -1],
            "short_filled": state["short_filled"] if complete == 0 else torch.ones_like(state["short_filled"]),
        }
        if self.long_term:
            count = state["long_count"]
            # bank = [stored | increments of the written blocks]; state j = window j of the bank
            bank_k, bank_v = state["long_keys"], state["long_values"]
            if inc is not None:
                bank_k = torch.cat([bank_k, inc[0]], dim=-2)  # (B, Hkv, M + complete*I, D)
                bank_v = torch.cat([bank_v, inc[1]], dim=-2)
            keys = fifo_windows(bank_k, self.long_slots, self.increment, complete + 1)[
                :, :, which
            ]  # (B, Hkv, nb, M, D)
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
    ``MemoryModel(memory=...)``; ``options`` go to :class:`MelodiMemory`.
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
