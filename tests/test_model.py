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
    model(ids, labels=ids.roll(-1, 1)).loss.backward()
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


def test_labels_loss_and_detach(model):
    ids = torch.randint(0, 256, (2, 70), generator=torch.Generator().manual_seed(5))
    labels = ids.roll(-1, 1)
    labels[:, -1] = -100
    out = model(ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 256), labels[:, :-1].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    assert all(not t.requires_grad for layer in out.state.detach().layers for t in layer.values())


def test_generate_greedy_matches_recomputed_argmax():
    model = small_model("elastic", block=16)
    prompt = torch.randint(0, 256, (2, 21), generator=torch.Generator().manual_seed(6))
    ids = model.generate(prompt, max_new_tokens=20, temperature=0)
    assert ids.shape == (2, 41) and torch.equal(ids[:, :21], prompt)
    with torch.no_grad():
        logits = model(ids).logits
    assert torch.equal(logits[:, 20:-1].argmax(-1), ids[:, 21:])
    sampled = model.generate(prompt, max_new_tokens=5, temperature=0.8, top_k=3)
    assert sampled.shape == (2, 26)


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
