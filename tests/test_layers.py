"""MemoryAttention against brute-force attention over the whole sequence (float64).

The test memories below are exact, so the block-parallel layer must equal plain attention with
an explicit (T x T) visibility rule:

- no memory, span "block": token p sees tokens of its own block up to p;
- no memory, span "previous": also the whole previous block;
- ``FullKeys`` (every past raw key as a memory slot, with its position): plain causal attention
  at absolute rotary positions, since window-local positions keep every relative distance;
- ``FullOutput`` (a partial attention over every past key, merged by log-sum-exp): plain causal
  attention (without rotation: the memory sees raw queries).
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from memplug.backbones.tiny import Rotary
from memplug.core.contracts import Memory, MemoryRead
from memplug.core.layer import MemoryAttention
from memplug.core.manager import registry
from memplug.ops.attention import reference_attention, trapezoid_mask
from memplug.plugins.memories.elastic import ElasticMemory
from memplug.plugins.memories.xl import XLMemory
from single_thread import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

CAPACITY = 64  # test memories hold up to this many tokens


class FullKeys(Memory):
    """Every past raw key/value as a slot; slots not yet written are hidden with -inf."""

    name = "test-full-keys"

    def init_state(self, batch, dtype, device):
        shape = (batch, self.kv_heads, CAPACITY, self.head_dim)
        return {"k": torch.zeros(shape, dtype=dtype, device=device), "v": torch.zeros(shape, dtype=dtype, device=device)}

    def read(self, state, q, t):
        slots = torch.arange(CAPACITY, device=q.device)
        bias = torch.zeros(CAPACITY, dtype=q.dtype, device=q.device).masked_fill(slots >= t, float("-inf"))
        return MemoryRead(keys=state["k"][:, :, None], values=state["v"][:, :, None],
                          key_positions=(slots - t)[None].to(q.dtype), bias=bias.reshape(1, 1, 1, 1, -1))

    def write(self, state, k, v, t0):
        new = {name: x.clone() for name, x in state.items()}
        new["k"][:, :, t0 : t0 + k.shape[2]] = k
        new["v"][:, :, t0 : t0 + v.shape[2]] = v
        return new


class FullOutput(FullKeys):
    """The same history, given as attention output + log-sum-exp (or + a gate)."""

    name = "test-full-output"

    def __init__(self, gate=None):
        super().__init__()
        self.gate = gate

    def read(self, state, q, t):
        keys = super().read(state, q, t)
        mask = keys.bias[:, :, 0]  # (1, 1, 1, C) -> broadcast over (B, H, L, C)
        out, lse = reference_attention(q, state["k"], state["v"], mask, q.shape[-1] ** -0.5)
        if self.gate is not None:
            return MemoryRead(output=out[:, :, None], gate=self.gate)
        return MemoryRead(output=out[:, :, None], lse=lse[:, :, None])


class KeysAndGate(FullKeys):
    """Melodi-like: a few raw keys in the softmax and a gated output."""

    name = "test-keys-gate"

    def __init__(self, gate):
        super().__init__()
        self.gate = gate

    def read(self, state, q, t):
        read = super().read(state, q, t)
        read.output, read.gate = torch.full_like(q, 0.5)[:, :, None], self.gate
        return read


class CountingSDPA(registry("attention").get("sdpa")):
    """sdpa, counting its masked and its mask-free (bottom-right causal) calls; with
    ``kernel=True`` it claims a causal kernel (as sdpa does on CUDA), so the CPU takes the
    layer's split of the first block too."""

    name = "test-counting-sdpa"

    def __init__(self, kernel=True):
        super().__init__()
        self.kernel = kernel
        self.calls = {"masked": 0, "causal": 0}

    def forward(self, q, k, v, mask, scale):
        self.calls["masked"] += mask is not None
        return super().forward(q, k, v, mask, scale)

    def forward_causal(self, q, k, v, scale):
        self.calls["causal"] += 1
        return reference_attention(q, k, v, trapezoid_mask(q.shape[-2], k.shape[-2], dtype=q.dtype), scale)[0]

    def has_causal_kernel(self, device):
        return self.kernel


#: the CPU's sdpa (one masked call where something is hidden) and one with a causal kernel
BACKENDS = pytest.mark.parametrize("attention", ["sdpa", CountingSDPA], ids=["sdpa", "causal-kernel"])


def backend(attention):
    return attention if isinstance(attention, str) else attention()


def brute_force(q, k, v, visible, rotary=None):
    """Attention over the whole sequence with a (T, T) boolean visibility, absolute rotations."""
    if rotary is not None:
        pos = torch.arange(q.shape[2])
        q, k = rotary(q, pos), rotary(k, pos)
    mask = torch.zeros(visible.shape, dtype=q.dtype).masked_fill(~visible, float("-inf"))
    return reference_attention(q, k, v, mask)[0]


def visibility(T, block, rule):
    p, j = torch.arange(T)[:, None], torch.arange(T)[None]
    causal = j <= p
    if rule == "causal":
        return causal
    first = block * (p // block - (1 if rule == "previous" else 0))
    return causal & (j >= first)


def qkv(seed, T, heads=4, kv_heads=2, d=8, batch=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, heads, T, d, generator=g, dtype=torch.float64),
            torch.randn(batch, kv_heads, T, d, generator=g, dtype=torch.float64),
            torch.randn(batch, kv_heads, T, d, generator=g, dtype=torch.float64))


def run_chunks(layer, q, k, v, cuts, rotate):
    """Feed the sequence in chunks split at ``cuts``; returns the concatenated output and cache."""
    cache, outs, t = {}, [], 0
    bounds = [0, *sorted(set(cuts)), q.shape[2]]
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            out, cache = layer(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], cache, a, rotate)
            outs.append(out)
    return torch.cat(outs, dim=2), cache


chunkings = st.lists(st.integers(1, 47), max_size=4)


@BACKENDS
@given(st.integers(0, 1000), st.sampled_from([4, 5, 16]), st.sampled_from(["block", "previous"]), chunkings)
def test_local_attention_matches_brute_force(attention, seed, block, span, cuts):
    T = 48
    q, k, v = qkv(seed, T)
    rotary = Rotary(8, 100.0)
    layer = MemoryAttention(None, block, span, attention=backend(attention))
    out, _ = run_chunks(layer, q, k, v, cuts, rotary)
    ref = brute_force(q, k, v, visibility(T, block, span), rotary)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=0)


@given(st.integers(0, 1000), st.sampled_from([4, 7, 16]), chunkings)
def test_full_keys_memory_is_causal_attention(seed, block, cuts):
    T = 48
    q, k, v = qkv(seed, T)
    rotary = Rotary(8, 100.0)
    layer = MemoryAttention(FullKeys(), block, "block", attention="sdpa")
    out, cache = run_chunks(layer, q, k, v, cuts, rotary)
    torch.testing.assert_close(out, brute_force(q, k, v, visibility(T, block, "causal"), rotary), atol=1e-10, rtol=0)
    assert {"mem.k", "mem.v"} <= set(cache)
    assert ("k" in cache) == (T % block != 0)


@given(st.integers(0, 1000), st.sampled_from([4, 16]), chunkings)
def test_output_lse_memory_is_causal_attention(seed, block, cuts):
    q, k, v = qkv(seed, 48)
    layer = MemoryAttention(FullOutput(), block, "block", attention="sdpa")
    out, _ = run_chunks(layer, q, k, v, cuts, None)
    torch.testing.assert_close(out, brute_force(q, k, v, visibility(48, block, "causal")), atol=1e-10, rtol=0)


def test_gated_memory_mixes_outputs():
    q, k, v = qkv(1, 40)
    gate = torch.tensor([-2.0, 0.0, 1.0, 3.0], dtype=torch.float64)
    gated, _ = MemoryAttention(FullOutput(gate), 8, attention="sdpa")(q, k, v, {}, 0)
    mem_and_local, _ = MemoryAttention(FullOutput(), 8, attention="sdpa")(q, k, v, {}, 0)
    local, _ = MemoryAttention(None, 8, attention="sdpa")(q, k, v, {}, 0)
    memory_only = brute_force(q, k, v, visibility(40, 8, "causal") & ~visibility(40, 8, "block"))
    g = torch.sigmoid(gate)[None, :, None, None]
    torch.testing.assert_close(gated, g * memory_only + (1 - g) * local, atol=1e-10, rtol=0)
    assert not torch.allclose(gated, mem_and_local)


def test_keys_and_gate_memory():
    q, k, v = qkv(2, 40)
    rotary = Rotary(8, 100.0)
    gate = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
    out, _ = MemoryAttention(KeysAndGate(gate), 8, attention="sdpa")(q, k, v, {}, 0, rotary)
    keys_only, _ = MemoryAttention(FullKeys(), 8, attention="sdpa")(q, k, v, {}, 0, rotary)
    g = torch.sigmoid(gate)[None, :, None, None]
    torch.testing.assert_close(out, g * 0.5 + (1 - g) * keys_only, atol=1e-10, rtol=0)


def test_memory_bias_per_kv_head_reaches_its_query_heads():
    class HideHead(FullKeys):
        def read(self, state, q, t):
            read = super().read(state, q, t)
            hidden = torch.tensor([0.0, float("-inf")], dtype=q.dtype).reshape(1, 2, 1, 1, 1)
            read.bias = read.bias + hidden  # kv head 1 never sees its memory
            return read

    q, k, v = qkv(3, 32)
    out, _ = MemoryAttention(HideHead(), 8, attention="sdpa")(q, k, v, {}, 0)
    full, _ = MemoryAttention(FullKeys(), 8, attention="sdpa")(q, k, v, {}, 0)
    local, _ = MemoryAttention(None, 8, attention="sdpa")(q, k, v, {}, 0)
    torch.testing.assert_close(out[:, :2], full[:, :2])  # query heads 0, 1 use kv head 0
    torch.testing.assert_close(out[:, 2:], local[:, 2:])  # query heads 2, 3 use kv head 1


def test_unhidden_calls_pass_no_mask():
    """A call that hides nothing (no memory offsets, no missing previous block, no sink inside
    the block) goes to the backend's mask-free causal call, the one that reaches a GPU's flash
    kernel; a call that hides something keeps its mask. Values are the brute-force tests' job."""
    q, k, v = qkv(0, 16)

    def calls(layer, cache=None, t0=0):
        layer.attention.calls.update(masked=0, causal=0)
        layer(q, k, v, {} if cache is None else cache, t0)
        return dict(layer.attention.calls)

    assert calls(MemoryAttention(None, 8, "block", attention=CountingSDPA())) == {"masked": 0, "causal": 1}
    # At the stream start only block 0 hides keys (no previous block, the sink inside it, an
    # empty memory): it goes alone, and both calls are mask-free.
    previous = MemoryAttention(None, 8, "previous", attention=CountingSDPA())
    assert calls(previous) == {"masked": 0, "causal": 2}
    _, cache = previous(q, k, v, {}, 0)
    assert calls(previous, cache, 16) == {"masked": 0, "causal": 1}
    sink = MemoryAttention(None, 8, "block", attention=CountingSDPA(), sink=2)
    assert calls(sink) == {"masked": 0, "causal": 2}
    _, cache = sink(q, k, v, {}, 0)
    assert calls(sink, cache, 16) == {"masked": 0, "causal": 1}
    elastic = MemoryAttention(ElasticMemory(order=4, samples=4), 8, "previous", attention=CountingSDPA(), sink=2)
    assert calls(elastic) == {"masked": 0, "causal": 2}
    _, cache = elastic(q, k, v, {}, 0)
    assert calls(elastic, cache, 16) == {"masked": 0, "causal": 1}
    assert calls(MemoryAttention(ElasticMemory(order=4, samples=4, logit_offset=1.0), 8, attention=CountingSDPA())) \
        == {"masked": 1, "causal": 0}  # an offset is a bias on the memory's logits
    assert calls(MemoryAttention(FullKeys(), 8, "block", attention=CountingSDPA())) == {"masked": 1, "causal": 0}
    one_block = MemoryAttention(ElasticMemory(order=4, samples=4), 8, "previous", attention=CountingSDPA(), sink=2)
    one_block.attention.calls.update(masked=0, causal=0)
    one_block(q[:, :, :5], k[:, :, :5], v[:, :, :5], {}, 0)
    assert one_block.attention.calls == {"masked": 0, "causal": 1}
    # without a causal kernel (sdpa on the CPU: its bottom-right causal call builds the mask
    # anyway) the first block is not split off: one masked call
    no_kernel = MemoryAttention(ElasticMemory(order=4, samples=4), 8, "previous", attention=CountingSDPA(kernel=False))
    assert calls(no_kernel) == {"masked": 1, "causal": 0}
    assert not registry("attention").get("sdpa")().has_causal_kernel(torch.device("cpu"))
    assert registry("attention").get("sdpa")().has_causal_kernel(torch.device("cuda"))


@BACKENDS
@given(st.integers(0, 1000), st.sampled_from([4, 7, 16]), chunkings)
def test_xl_memory_is_previous_block_attention(attention, seed, block, cuts):
    """XL's slots are the previous block at its positions, with the stream's first block hidden
    (``first_hidden``): on span "block" the layer is span "previous" attention."""
    T = 48
    q, k, v = qkv(seed, T)
    rotary = Rotary(8, 100.0)
    layer = MemoryAttention(XLMemory(block=block), block, "block", attention=backend(attention))
    out, _ = run_chunks(layer, q, k, v, cuts, rotary)
    torch.testing.assert_close(out, brute_force(q, k, v, visibility(T, block, "previous"), rotary), atol=1e-10, rtol=0)


@BACKENDS
@pytest.mark.parametrize("offset", [0.0, 2.0])
def test_first_block_sees_no_memory(attention, offset):
    """At t = 0 the memory is empty: block 0 attends as if there were none (alone, or with its
    slots hidden by the mask), the later blocks read it."""
    q, k, v = qkv(4, 32)
    memory = ElasticMemory(order=4, samples=4, logit_offset=offset)
    out, _ = MemoryAttention(memory, 8, "previous", attention=backend(attention), sink=2)(q, k, v, {}, 0)
    local, _ = MemoryAttention(None, 8, "previous", attention="sdpa", sink=2)(q, k, v, {}, 0)
    torch.testing.assert_close(out[:, :, :8], local[:, :, :8], atol=1e-12, rtol=0)
    assert not torch.allclose(out[:, :, 8:], local[:, :, 8:])


def test_layer_errors():
    with pytest.raises(ValueError, match="span"):
        MemoryAttention(None, 8, span="window")
    with pytest.raises(ValueError, match="block"):
        MemoryAttention(None, 0)
    q, k, v = qkv(0, 5)
    with pytest.raises(ValueError, match="partial block"):
        MemoryAttention(None, 4)(q, k, v, {}, t0=3)

    class NoLse(FullKeys):
        def read(self, state, q, t):
            return MemoryRead(output=q[:, :, None])

    with pytest.raises(ValueError, match="lse"):
        MemoryAttention(NoLse(), 4)(q, k, v, {}, 0)


def test_gradients_reach_inputs_through_memory():
    q, k, v = (x.float().requires_grad_() for x in qkv(4, 32))
    out, _ = MemoryAttention(FullKeys(), 8)(q, k, v, {}, 0)
    out[:, :, -1].sum().backward()  # the last token sees block 0 only through the memory
    assert k.grad[:, :, :8].abs().sum() > 0 and v.grad[:, :, :8].abs().sum() > 0
