"""MemoryModel: chunking invariance, causality, gradient reach, state save/load, generation.

Each property runs for block-local attention (no memory) and for Elastic memory on every layer,
on a very small model so the 4k-token chunking check stays fast.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import memplug
from memplug.backbones.tiny import TinyBackbone
from memplug.core.model import MemoryModel
from memplug.core.state import ModelState
from single_thread import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(d_model=16, n_layers=2, n_heads=2, n_kv_heads=1)
MEMORIES = {
    "none": dict(memory=None),
    "none-previous": dict(memory=None, span="previous"),
    "elastic": dict(memory="elastic", memory_options=dict(order=16, samples=8)),
    "elastic-previous-sample": dict(memory="elastic", memory_options=dict(order=16, samples=8, positions="sample"),
                                    span="previous"),
    "elastic-gate-sink": dict(memory="elastic", memory_options=dict(order=16, samples=8), gate=True, sink=1),
}


def small_model(kind, block=64, seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = {**MEMORIES[kind], **overrides}
    return memplug.build_model("tiny", block=block, backbone_options=SMALL, **cfg).eval()


def stream(model, ids, cuts):
    """Logits of ``ids`` fed in chunks split at ``cuts``, and the final state."""
    state, outs = None, []
    bounds = [0, *sorted(set(cuts)), ids.shape[1]]
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            out = model(ids[:, a:b], state=state)
            state = out.state
            outs.append(out.logits)
    return torch.cat(outs, dim=1), state


@pytest.fixture(scope="module", params=sorted(MEMORIES))
def model(request):
    return small_model(request.param)


@pytest.fixture(scope="module")
def long_ids():
    return torch.randint(0, 256, (1, 4096), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def one_call(model, long_ids):
    with torch.no_grad():
        return model(long_ids).logits


@given(st.lists(st.integers(1, 4095), min_size=1, max_size=6))
def test_chunking_invariance_4k(model, long_ids, one_call, cuts):
    with torch.no_grad():
        logits, state = stream(model, long_ids, cuts)
    torch.testing.assert_close(logits, one_call, atol=1e-5, rtol=1e-5)
    assert state.position == 4096


def test_causality(model):
    ids = torch.randint(0, 256, (2, 300), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = model(ids).logits
        for j in (0, 63, 64, 150, 299):
            changed = ids.clone()
            changed[:, j] = (changed[:, j] + 17) % 256
            logits = model(changed).logits
            torch.testing.assert_close(logits[:, :j], base[:, :j], atol=0, rtol=0)
            assert not torch.allclose(logits[:, j], base[:, j])


def test_gradient_reach(model):
    ids = torch.randint(0, 256, (2, 200), generator=torch.Generator().manual_seed(2))
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_memory_changes_later_blocks():
    """With a memory, the first block reaches the logits of the third block; without, it cannot."""
    ids = torch.randint(0, 256, (1, 256), generator=torch.Generator().manual_seed(3))
    changed = ids.clone()
    changed[:, 5] = (changed[:, 5] + 1) % 256
    # Two layers of span "previous" reach two blocks back, so look at the fourth block.
    for kind, reaches in (("none", False), ("none-previous", False), ("elastic", True)):
        model = small_model(kind)
        with torch.no_grad():
            delta = (model(ids).logits - model(changed).logits)[:, 192:].abs().max()
        assert (delta > 1e-6) == reaches, (kind, delta)
    model = small_model("elastic").train()
    emb = model.backbone.tok_emb.weight
    grad = torch.autograd.grad(model(changed).logits[:, 192:].sum(), emb)[0]
    assert grad[changed[0, 5]].abs().sum() > 0  # gradients flow back through the memory


def test_state_save_load_continues_identically(model, tmp_path):
    ids = torch.randint(0, 256, (2, 500), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :211])
        first.state.save(tmp_path / "state.safetensors")
        loaded = ModelState.load(tmp_path / "state.safetensors")
        assert loaded.position == 211 and [sorted(x) for x in loaded.layers] == [sorted(x) for x in first.state.layers]
        rest = model(ids[:, 211:], state=loaded).logits
    torch.testing.assert_close(rest, full[:, 211:], atol=1e-5, rtol=1e-5)
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary file


def test_state_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="not a memplug model state"):
        ModelState.load(tmp_path / "other.safetensors")


def test_labels_align_with_input_ids_and_shift_inside(model):
    """labels=ids is next-token prediction (the loss shifts them, -100 is ignored); shift_labels
    are already-shifted targets; num_items_in_batch turns the mean into a sum over that count."""
    ids = torch.randint(0, 256, (2, 70), generator=torch.Generator().manual_seed(5))
    labels = ids.clone()
    labels[0, 10:20] = -100
    out = model(ids, labels=labels)
    logits, targets = out.logits[:, :-1].reshape(-1, 256), labels[:, 1:].reshape(-1)  # by hand: the next token
    keep = targets != -100
    torch.testing.assert_close(out.loss, F.cross_entropy(logits[keep], targets[keep]))
    shifted = torch.cat([labels[:, 1:], torch.full((2, 1), -100)], dim=1)  # (B, T): target of each position
    torch.testing.assert_close(model(ids, shift_labels=shifted).loss, out.loss)
    summed = model(ids, labels=labels, num_items_in_batch=torch.tensor(50)).loss
    torch.testing.assert_close(summed, F.cross_entropy(logits[keep], targets[keep], reduction="sum") / 50)
    assert all(not t.requires_grad for layer in out.state.detach().layers for t in layer.values())
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, labels=labels, shift_labels=shifted)
    with pytest.raises(ValueError, match=r"labels must have the shape of input_ids \(2, 70\)"):
        model(ids, labels=labels[:, 1:])
    with pytest.raises(ValueError, match=r"labels hold 300, outside the vocabulary \[0, 256\)"):
        model(ids, labels=torch.full_like(ids, 300))
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['position_ids'\]"):
        model(ids, position_ids=ids)


def test_output_reads_like_a_hugging_face_output(model):
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        out = model(ids, labels=ids)
        assert out[0] is out.loss and out["loss"] is out.loss and out[1] is out.logits and out[-1] is out.state
        assert out.to_tuple() == (out.loss, out.logits, out.state) and list(out) == ["loss", "logits", "state"]
        assert out[1:] == (out.logits, out.state) and out.past_key_values is out.state
        bare = model(ids)
        assert bare[0] is bare.logits and "loss" not in bare and len(bare) == 2
        with pytest.raises(KeyError, match="'loss': this output has"):
            bare["loss"]
        assert model(ids, use_cache=False).state is None
        as_tuple = model(ids, labels=ids, return_dict=False)
        assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[1], out.logits)
        # past_key_values is another name of state
        first = model(ids[:, :25])
        rest = model(ids[:, 25:], past_key_values=first.past_key_values, attention_mask=torch.ones(1, 15))
        torch.testing.assert_close(rest.logits, bare.logits[:, 25:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not both"):
        model(ids, state=first.state, past_key_values=first.state)
    with pytest.raises(ValueError, match="state must be a ModelState .* got tuple"):
        model(ids, past_key_values=((ids, ids),))
    mask = torch.ones(1, 40, dtype=torch.long)
    mask[0, -3:] = 0
    with pytest.raises(ValueError, match="attention_mask has zeros"):
        model(ids, attention_mask=mask)
    with pytest.raises(ValueError, match=r"attention_mask must be a tensor of the shape of input_ids \(1, 40\)"):
        model(ids, attention_mask=mask[:, 1:])


def test_bad_input_ids_name_the_problem():
    model = small_model("elastic", block=16)
    cases = {
        "must hold integer token ids, got dtype torch.float32": torch.zeros(1, 5),
        "must hold integer token ids, got dtype torch.bool": torch.zeros(1, 5, dtype=torch.bool),
        r"outside the vocabulary \[0, 256\)": torch.full((1, 5), 256),
        r"token id -1, outside": torch.full((1, 5), -1),
        r"must be \(batch, tokens\), got shape \(5,\); add a batch axis": torch.zeros(5, dtype=torch.long),
        r"got shape \(1, 5, 1\)": torch.zeros(1, 5, 1, dtype=torch.long),
        "must be a .* tensor of token ids, got list": [[1, 2]],
    }
    for message, ids in cases.items():
        with pytest.raises(ValueError, match=message):
            model(ids)
    with pytest.raises(ValueError, match="block must be a positive int, got True"):
        memplug.build_model("tiny", memory=None, block=True, backbone_options=SMALL)
    uint8 = torch.randint(0, 256, (2, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(uint8).logits, model(uint8.long()).logits)


@pytest.mark.parametrize("memory", ["none", "elastic", "elastic-previous-sample", "elastic-gate-sink"])
def test_training_forward_traces_as_one_graph(memory):
    """torch.compile captures a training forward (loss included) whole: nothing in it reads data
    back to the host (the input and label range checks run in eager mode only), which would split
    the graph and keep a GPU from replaying the step as one CUDA graph."""
    model = small_model(memory, block=16)
    ids = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids)  # eager first: the encoders' transitions are then cached
    explained = torch._dynamo.explain(model)(ids, labels=ids)
    assert explained.graph_break_count == 0, [str(b.reason).splitlines()[0] for b in explained.break_reasons]
    torch._dynamo.reset()


def test_batch_of_zero_rows():
    model = small_model("elastic", block=16)
    empty = torch.zeros(0, 40, dtype=torch.long)
    out = model(empty, labels=empty)
    assert out.logits.shape == (0, 40, 256) and out.state.position == 40 and torch.isnan(out.loss)
    assert model(empty[:, :5], state=out.state).state.position == 45
    assert model.generate(empty, max_new_tokens=3).shape == (0, 43)


def test_state_records_its_configuration_and_refuses_another(tmp_path):
    """A state of the same shapes from another encoder (or block) is refused, also after saving;
    a retriever swapped over a live state is not part of its meaning."""
    legs = memplug.build_model("tiny", "elastic", 16, backbone_options=SMALL, memory_options=dict(order=16, samples=8))
    legt = memplug.build_model("tiny", "elastic", 16, backbone_options=SMALL,
                               memory_options=dict(encoder="legt", order=16, samples=8))
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        state = legs(ids).state
        assert {k: t.shape for k, t in state.layers[0].items()} == \
            {k: t.shape for k, t in legt(ids).state.layers[0].items()}  # the same shapes
        state.save(tmp_path / "state.safetensors")
        loaded = ModelState.load(tmp_path / "state.safetensors")
        assert loaded.config == legs.state_config()
        for s in (state, loaded):
            with pytest.raises(ValueError, match=r"another configuration \(memories: .*LegS.* vs .*LegT"):
                legt(ids, state=s)
        other_block = memplug.build_model("tiny", "elastic", 8, backbone_options=SMALL,
                                          memory_options=dict(order=16, samples=8))
        with pytest.raises(ValueError, match=r"another configuration \(block: 16 vs 8"):
            other_block(ids, state=loaded)
        expected = legs(ids, state=state).logits
        torch.testing.assert_close(legs(ids, state=loaded).logits, expected)
        with legs.swap_retriever("warped", samples=8):
            legs(ids, state=loaded)  # the state keeps its meaning under another sampler


def test_generate_is_greedy_by_default_and_matches_recomputed_argmax():
    model = small_model("elastic", block=16)
    prompt = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(6))
    ids = model.generate(prompt, max_new_tokens=20)
    assert ids.shape == (2, 41) and torch.equal(ids[:, :21], prompt)
    assert torch.equal(model.generate(prompt, max_new_tokens=20), ids)  # greedy: the same tokens twice
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.equal(logits[:, 20:-1].argmax(-1), ids[:, 21:])
    assert model.generate(prompt).shape == (2, 21)  # transformers' default max_length=20 is below the prompt
    assert model.generate(prompt[:, :5]).shape == (2, 20)


def reference_filter(logits, top_k, top_p):
    """The kept set by definition, one row at a time: the top_k largest (with ties), then the most
    likely of those until their probability reaches top_p."""
    keep = torch.zeros_like(logits, dtype=torch.bool)
    for b, row in enumerate(logits):
        order = sorted(range(len(row)), key=lambda i: -row[i].item())
        kth = row[order[min(top_k, len(row)) - 1]] if top_k else -float("inf")
        allowed = [i for i in order if row[i] >= kth]
        probs = torch.softmax(row[allowed], dim=0)
        total = 0.0
        for j, i in enumerate(allowed):
            keep[b, i] = True
            total += probs[j].item()
            if total >= top_p - 1e-12:
                break
    return keep


@pytest.mark.parametrize(("top_k", "top_p"), [(5, 1.0), (0, 0.6), (20, 0.9), (None, 0.3)])
def test_filter_logits_keeps_the_top_k_then_top_p_set(top_k, top_p):
    from memplug.core.generation import filter_logits

    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(top_k or 1), dtype=torch.float64) * 2
    kept = torch.isfinite(filter_logits(logits, top_k, top_p))
    assert torch.equal(kept, reference_filter(logits, top_k, top_p))


def test_sampled_tokens_lie_in_the_top_k_top_p_set():
    model = small_model("elastic", block=16)
    prompt = torch.randint(0, 256, (3, 10), generator=torch.Generator().manual_seed(8))
    ids = model.generate(prompt, max_new_tokens=12, do_sample=True, temperature=0.7, top_k=8, top_p=0.8,
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(ids).logits[:, 9:-1].double() / 0.7  # (B, 12, V): the logits each token was drawn from
    allowed = reference_filter(logits.reshape(-1, 256), 8, 0.8).reshape(3, 12, 256)
    assert allowed.gather(-1, ids[:, 10:, None]).all()
    assert allowed.sum(-1).max() > 1  # a real choice was left
    again = model.generate(prompt, max_new_tokens=12, do_sample=True, temperature=0.7, top_k=8, top_p=0.8,
                           generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, ids)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        model.generate(prompt, 3, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="top_p must be a number in"):
        model.generate(prompt, 3, do_sample=True, top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0, got True"):
        model.generate(prompt, True)


def test_generate_stops_at_eos_pads_and_streams():
    model = small_model("elastic", block=16)
    prompt = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(9))
    free = model.generate(prompt, max_new_tokens=12)
    eos = int(free[0, 13])  # the fourth token of row 0
    received = []

    class Streamer:
        def put(self, value):
            received.append(value.clone())

        def end(self):
            received.append("end")

    ids = model.generate(prompt, max_new_tokens=12, eos_token_id=eos, pad_token_id=0, streamer=Streamer())
    row0_end = 10 + (free[0, 10:] == eos).nonzero()[0].item()
    row1_end = 10 + ((free[1, 10:] == eos).nonzero()[:1].flatten().tolist() or [99])[0]
    length = min(22, max(row0_end, row1_end) + 1)
    assert ids.shape == (2, length)
    for row, end in ((0, row0_end), (1, row1_end)):
        assert torch.equal(ids[row, : end + 1], free[row, : end + 1][: length])
        assert (ids[row, end + 1 :] == 0).all()
    assert torch.equal(received[0], prompt) and received[-1] == "end"
    assert torch.equal(torch.stack(received[1:-1], dim=1), ids[:, 10:])


def test_no_memory_block_covering_sequence_equals_plain_backbone():
    torch.manual_seed(0)
    backbone = TinyBackbone(**SMALL)
    model = MemoryModel(backbone, memory=None, block=128)
    ids = torch.randint(0, 256, (2, 100))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, backbone(ids), atol=1e-5, rtol=1e-5)


def test_build_model_routes_options():
    model = memplug.build_model("tiny", memory="elastic", block=32,
                                backbone_options=dict(d_model=32, n_layers=3, n_heads=2),
                                memory_options=dict(order=8, samples=4), layers=[-1], span="previous")
    assert model.backbone.config.d_model == 32 and model.block == 32
    assert [layer.memory is not None for layer in model.attn] == [False, False, True]
    assert model.attn[2].span == "previous" and model.attn[2].memory.encoder.order == 8
    assert model.attn[2].memory.retriever.samples == 4
    melodi = memplug.build_model("tiny", memory="melodi", block=32, backbone_options=SMALL)
    assert all(m.block == 32 for m in melodi.memories)  # the model's block reaches every memory
    with pytest.raises(ValueError, match="not a layer index"):
        memplug.build_model("tiny", memory=None, backbone_options=dict(n_layers=2), layers=[2])
    with pytest.raises(ValueError, match="memory_options"):
        MemoryModel(TinyBackbone(**SMALL), memory=None, memory_options=dict(order=3))
    with pytest.raises(TypeError, match="backbone_options=.*memory_options="):
        memplug.build_model("tiny", d_model=32)
