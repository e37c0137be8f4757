"""The ``elastic`` memory: block form = step form, reads, hidden empty memory, options, no
parameters, float32 state under bf16 autocast, and test-time retriever swaps."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import memplug
from memplug.core.contracts import Memory
from memplug.plugins.memories.elastic import ElasticMemory
from single_thread import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(d_model=16, n_layers=2, n_heads=2, n_kv_heads=1)


def memory(**options):
    mem = memplug.make_memory("elastic", **{"order": 12, "samples": 6, **options})
    mem.setup(4, 2, 8)
    return mem


def blocks(seed, nb=3, length=16, batch=2):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, 4, nb, length, 8, generator=g)
    k = torch.randn(batch, 2, nb, length, 8, generator=g)
    v = torch.randn(batch, 2, nb, length, 8, generator=g)
    return q, k, v


@given(st.integers(0, 1000), st.sampled_from([0, 16, 48]), st.booleans(), st.sampled_from(["none", "sample"]))
def test_block_form_equals_step_form(seed, t0, last_partial, positions):
    mem = memory(positions=positions)
    q, k, v = blocks(seed)
    state = mem.init_state(2, torch.float32, torch.device("cpu"))
    if t0:  # start mid-stream from a state that has seen t0 tokens
        gen = torch.Generator().manual_seed(seed + 1)
        state = mem.write(state, torch.randn(2, 2, t0, 8, generator=gen), torch.randn(2, 2, t0, 8, generator=gen), 0)
    complete = 2 if last_partial else 3
    fast, fast_state = mem.forward_blocks(state, q, k, v, t0, complete)
    slow, slow_state = Memory.forward_blocks(mem, state, q, k, v, t0, complete)  # read/write per block
    # the block form flags the empty first block; the step form stacks it as a -inf bias row
    assert fast.first_hidden == (t0 == 0) and fast.bias is None
    first = int(fast.first_hidden)
    if first:
        assert torch.isinf(slow.bias[:, :, 0]).all()
    assert slow.bias is None or slow.bias[:, :, first:].eq(0).all()
    for name in ("keys", "values", "key_positions"):
        a, b = getattr(fast, name), getattr(slow, name)
        assert (a is None) == (b is None), name
        if a is not None:
            axis = a.dim() - 2 if name == "key_positions" else 2  # the block axis
            torch.testing.assert_close(a, b.reshape(a.shape), atol=1e-5, rtol=1e-5)
            assert a.shape[axis] == q.shape[2]
    torch.testing.assert_close(fast_state["coef"], slow_state["coef"], atol=1e-5, rtol=1e-5)


def test_constant_history_reads_back_constant():
    """LegS represents a constant exactly, so every sample of a constant k/v stream is that constant."""
    mem = memory()
    k = torch.full((1, 2, 4, 16, 8), 0.7)
    v = torch.full((1, 2, 4, 16, 8), -1.3)
    q = torch.zeros(1, 4, 4, 16, 8)
    read, state = mem.forward_blocks(mem.init_state(1, torch.float32, torch.device("cpu")), q, k, v, 0, 4)
    torch.testing.assert_close(read.keys[:, :, 1:], torch.full_like(read.keys[:, :, 1:], 0.7), atol=1e-4, rtol=0)
    torch.testing.assert_close(read.values[:, :, 1:], torch.full_like(read.values[:, :, 1:], -1.3), atol=1e-4, rtol=0)
    assert state["coef"].shape == (1, 12, 2 * 2 * 8)  # fixed size: N x (Hkv * 2D)


def test_empty_memory_hidden_and_logit_offset():
    q, k, v = blocks(0)
    for option, offset in ((0.0, 0.0), ("-lnP", -math.log(6)), (1.5, 1.5)):
        mem = memory(logit_offset=option)
        state = mem.init_state(2, torch.float32, torch.device("cpu"))
        read, state = mem.forward_blocks(state, q, k, v, 0, 3)
        assert read.first_hidden  # block 0 starts at t = 0
        later, _ = mem.forward_blocks(state, q, k, v, 48, 3)
        assert not later.first_hidden
        for r in (read, later):
            if offset == 0:
                assert r.bias is None  # nothing to add: the layer needs no mask
            else:
                torch.testing.assert_close(r.bias, torch.full((1, 1, 1, 1, 6), offset))
    assert ElasticMemory.__init__.__defaults__ is not None and memory().logit_offset == 0.0


def test_density_offset_weighs_samples_as_the_tokens_they_repeat():
    """With more samples (40) than history tokens, each block's memory logits get ln(t / P):
    block times 0, 16, 32 -> hidden, ln 0.4, ln 0.8; the read of one block (the step form) gives
    the same; once t >= P there is nothing to add, so no bias (the layer stays mask-free)."""
    q, k, v = blocks(3)
    mem = memory(samples=40, logit_offset="density")
    state = mem.init_state(2, torch.float32, torch.device("cpu"))
    read, state = mem.forward_blocks(state, q, k, v, 0, 3)
    assert read.bias.shape == (1, 1, 3, 1, 40)
    torch.testing.assert_close(read.bias[0, 0, :, 0], torch.tensor([0.0, math.log(0.4), math.log(0.8)]).expand(40, 3).T)
    one = mem.read(state, q[:, :, :1], 48)  # after 48 tokens (>= P): nothing to add
    assert one.bias is None and mem.forward_blocks(state, q, k, v, 48, 3)[0].bias is None
    early = mem.read(mem.init_state(2, torch.float32, torch.device("cpu")), q[:, :, :1], 16)
    torch.testing.assert_close(early.bias, torch.full((1, 1, 1, 1, 40), math.log(0.4)))
    slow, _ = Memory.forward_blocks(mem, mem.init_state(2, torch.float32, torch.device("cpu")), q, k, v, 0, 3)
    torch.testing.assert_close(slow.bias[:, :, 1:], read.bias[:, :, 1:])  # the step form, block by block
    with pytest.raises(ValueError, match="'density'"):
        memory(logit_offset="dense")


@pytest.mark.parametrize("offset", ["density", 0.0])
def test_density_offset_makes_samples_of_a_constant_history_weigh_as_its_tokens(offset):
    """A history of 16 equal tokens, read as 40 samples (LegS keeps a constant exactly): with
    "density" the layer's second block attends as if those 16 tokens were keys beside its own; with
    no offset the 40 samples weigh 40 / 16 times too much."""
    from memplug.core.layer import MemoryAttention

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 32, 8, generator=g, dtype=torch.float64) for _ in range(3))  # (B, H, T, D)
    k[:, :, :16], v[:, :, :16] = k[:, :, :1], v[:, :, :1]  # block 0: one key and value, 16 times
    layer = MemoryAttention(ElasticMemory(order=12, samples=40, logit_offset=offset), 16, "block", attention="sdpa")
    out, _ = layer(q, k, v, {}, 0)
    causal = torch.ones(16, 16, dtype=torch.bool).tril()
    seen = torch.cat([torch.ones(16, 16, dtype=torch.bool), causal], dim=1)  # [the 16 history tokens | block 1]
    logits = (q[:, :, 16:] @ k.transpose(-1, -2)) / math.sqrt(8)  # (B, H, 16, 32)
    want = logits.masked_fill(~seen, float("-inf")).softmax(-1) @ v
    close = torch.allclose(out[:, :, 16:], want, atol=1e-4, rtol=0)
    assert close == (offset == "density")


def test_normalize_keys_rescales_keys_only():
    """Each sampled key keeps its direction at unit RMS over D; values and bias are untouched."""
    q, k, v = blocks(2)
    state = memory().init_state(2, torch.float32, torch.device("cpu"))
    plain, _ = memory().forward_blocks(state, q, k, v, 0, 3)
    normed, _ = memory(normalize_keys=True).forward_blocks(state, q, k, v, 0, 3)
    keys, ref = normed.keys[:, :, 1:], plain.keys[:, :, 1:]  # block 0's memory is empty
    torch.testing.assert_close(keys.pow(2).mean(-1), torch.ones(keys.shape[:-1]), rtol=0, atol=1e-4)
    torch.testing.assert_close(keys, ref / ref.pow(2).mean(-1, keepdim=True).sqrt(), rtol=0, atol=1e-4)
    assert normed.keys[:, :, 0].abs().max() == 0  # the empty memory stays zero, not NaN
    torch.testing.assert_close(normed.values, plain.values, rtol=0, atol=0)
    torch.testing.assert_close(normed.bias, plain.bias, rtol=0, atol=0)


def test_sample_positions():
    q, k, v = blocks(1)
    state = memory().init_state(2, torch.float32, torch.device("cpu"))
    assert memory().forward_blocks(state, q, k, v, 32, 3)[0].key_positions is None
    rel = memory(positions="sample").forward_blocks(state, q, k, v, 32, 3)[0].key_positions  # (nb, P)
    # blocks of 16 from t0 = 32 start at t = 32, 48, 64; LegS's support is [0, t] and the uniform
    # retriever reads the midpoints t (i + 1/2) / P of P = 6 cells: relative to the block start,
    # t ((i + 1/2) / 6 - 1), e.g. -29.333 .. -2.667 for t = 32
    starts = torch.tensor([32.0, 48.0, 64.0])[:, None]
    want = starts * ((torch.arange(6) + 0.5) / 6 - 1)  # (nb, P)
    torch.testing.assert_close(rel, want, rtol=0, atol=1e-4)
    clipped = memory(positions="sample", max_distance=10).forward_blocks(state, q, k, v, 32, 3)[0].key_positions
    torch.testing.assert_close(clipped, want.clamp(min=-10), rtol=0, atol=1e-4)


def test_option_errors():
    with pytest.raises(ValueError, match="positions"):
        ElasticMemory(positions="absolute")
    with pytest.raises(ValueError, match="logit_offset"):
        ElasticMemory(logit_offset="lnP")
    with pytest.raises(ValueError, match="max_distance"):
        ElasticMemory(max_distance=0)
    with pytest.raises(ValueError, match="normalize_keys"):
        ElasticMemory(normalize_keys="rms")
    with pytest.raises(ValueError, match="encoder options"):
        ElasticMemory(encoder=memplug.make_encoder("legs", order=4), order=8)
    mem = memplug.make_memory("elastic", encoder=memplug.make_encoder("legt", order=8, window=100.0),
                              retriever=memplug.make_retriever("uniform", samples=4))
    assert mem.encoder.order == 8 and mem.retriever.samples == 4


def test_no_parameters_added():
    torch.manual_seed(0)
    bare = memplug.build_model("tiny", memory=None, block=32, backbone_options=SMALL)
    elastic = memplug.build_model("tiny", memory="elastic", block=32, backbone_options=SMALL,
                                  memory_options=dict(order=8, samples=4))
    assert sum(p.numel() for p in elastic.parameters()) == sum(p.numel() for p in bare.parameters())
    assert sum(p.numel() for m in elastic.memories for p in m.parameters()) == 0
    assert len(elastic.memories) == 2


def test_float32_state_under_bf16_autocast(monkeypatch):
    from memplug.hippo import scan

    recurrences = []  # the dtypes the block recurrence runs in: the fresh stream's too (no state yet)
    real = scan.linear_recurrence
    monkeypatch.setattr(scan, "linear_recurrence", lambda A, u, *a, **k: (recurrences.append((A.dtype, u.dtype)),
                                                                          real(A, u, *a, **k))[1])
    torch.manual_seed(0)
    model = memplug.build_model("tiny", memory="elastic", block=32, backbone_options=SMALL,
                                memory_options=dict(order=8, samples=4))
    ids = torch.randint(0, 256, (2, 100))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
        with torch.no_grad(), model.memory_masked():
            local_bf16 = model(ids).logits.float()
    assert out.logits.dtype == torch.bfloat16
    assert all(layer["mem.coef"].dtype == torch.float32 for layer in out.state.layers)
    assert recurrences and set(recurrences) == {(torch.float32, torch.float32)}
    out.loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name
    with torch.no_grad():
        full = model(ids).logits
        with model.memory_masked():
            contribution = full - model(ids).logits  # what the memory adds to the float32 logits
    # the memory's part is ~0.07 here and bf16 moves the logits by ~0.002: a bf16 forward that
    # dropped the memory, or read it wrong by a tenth, fails
    size = contribution.abs().max().item()
    assert size > 0.03
    assert (out.logits.float() - full).abs().max() < 0.1 * size  # bf16 against float32
    assert (out.logits.float() - local_bf16 - contribution).abs().max() < 0.1 * size


def test_swap_retriever_changes_logits_not_weights():
    torch.manual_seed(0)
    model = memplug.build_model("tiny", memory="elastic", block=32, backbone_options=SMALL,
                                memory_options=dict(order=16, samples=8)).eval()
    ids = torch.randint(0, 256, (1, 160))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        base = model(ids).logits
        with model.swap_retriever("warped", samples=8, warp="exponential", rate=4.0) as swap:
            swapped = model(ids).logits
            assert all(m.retriever.name == "warped" for m in model.memories)
            assert len(swap.previous) == 2
        restored = model(ids).logits
        given = memplug.make_retriever("uniform", samples=3)
        handle = model.swap_retriever(given)
        fewer = model(ids).logits
        first, second = (m.retriever for m in model.memories)
        assert first is not second and given not in (first, second)  # a copy per layer, the caller's untouched
        handle.restore()
    torch.testing.assert_close(swapped[:, :32], base[:, :32])  # block 0 reads no memory
    assert not torch.allclose(swapped[:, 32:], base[:, 32:])
    assert not torch.allclose(fewer[:, 32:], base[:, 32:])
    torch.testing.assert_close(restored, base, atol=0, rtol=0)
    assert model.memories[0].retriever is not model.memories[1].retriever  # one copy per layer
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    with pytest.raises(ValueError, match="reads through a retriever"):
        memplug.build_model("tiny", memory=None, backbone_options=SMALL).swap_retriever("uniform")


@pytest.mark.parametrize("retriever", ["uniform", "warped", "learned"])
def test_cached_read_bases_equal_the_retrievers_own_read(retriever, monkeypatch):
    mem = memory(retriever=retriever)
    q, k, v = blocks(4)
    state = mem.init_state(2, torch.float32, torch.device("cpu"))
    reads = [mem.forward_blocks(state, q, k, v, 32, 3)[0] for _ in range(2)]  # the second hits the cache
    assert len(mem._bases) == (1 if mem.retriever.fixed else 0)
    monkeypatch.setattr(mem.retriever, "fixed", False)  # the same memory reading through retriever.read
    direct = mem.forward_blocks(state, q, k, v, 32, 3)[0]
    for read in reads:
        assert torch.equal(read.keys, direct.keys) and torch.equal(read.values, direct.values)
    mem.set_retriever(memplug.make_retriever("uniform", samples=6))
    assert len(mem._bases) == 0  # a swap never reads a stale basis


@pytest.mark.parametrize("encoder", ["legs", "jacobi", "legt"])
def test_encoder_caches_filled_in_inference_mode_serve_training(encoder):
    options = {"window": 64.0} if encoder == "legt" else {}
    torch.manual_seed(0)
    model = memplug.build_model("tiny", memory="elastic", block=16, backbone_options=SMALL,
                                memory_options=dict(order=8, samples=4, encoder=encoder, encoder_options=options))
    ids = torch.randint(0, 256, (1, 64))
    with torch.inference_mode():
        model(ids)
    model(ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name
