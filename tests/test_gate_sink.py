"""The layer options for pretrained models: a zero-initialised memory gate and an attention sink."""

import pytest
import torch

import memplug
from memplug.core.state import ModelState
from memplug.backbones.tiny import TinyBackbone
from memplug.core.layer import MemoryAttention
from single_thread import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
BLOCK = 16
GATED = ["elastic", "xl", "knn", "melodi", "infini", "full"]


def model(memory, seed=0, **options):
    torch.manual_seed(seed)
    return memplug.build_model("tiny", memory=memory, block=BLOCK, backbone_options=SMALL, **options).eval()


def ids(length=5 * BLOCK + 3, batch=2, seed=1):
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("memory", GATED)
def test_closed_gate_is_the_local_model(memory):
    """At initialisation a gated memory contributes nothing: the local-window model's logits
    (the same backbone weights, memory=None), to float32 rounding."""
    x = ids()
    with torch.no_grad():
        local = model(None)(x).logits
        gated = model(memory, gate=True)(x).logits
        open_ = model(memory)(x).logits
    torch.testing.assert_close(gated, local, atol=1e-5, rtol=0)
    assert not torch.allclose(open_[:, 2 * BLOCK :], local[:, 2 * BLOCK :], atol=1e-3)  # the memory is read


def test_open_gate_is_the_ungated_model():
    """gate = 1 is the paper's one softmax over memory and local keys, exactly."""
    gated, ungated = model("elastic", gate=True), model("elastic")
    with torch.no_grad():
        for layer in gated.attn:
            layer.gate.fill_(1.0)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(gated(x).logits, ungated(x).logits, atol=1e-5, rtol=1e-5)


def test_gate_learns_from_zero():
    """Starting closed, the gate gets a gradient (a clamp at 0 would give none) and one
    optimizer step opens it, changing the logits."""
    m = model("elastic", gate=True).train()
    x = ids()
    m(x, labels=x).loss.backward()
    grads = torch.stack([layer.gate.grad for layer in m.attn])  # (layers, heads)
    assert (grads.abs() > 0).all()
    before = m(x).logits.detach()
    torch.optim.Adam([layer.gate for layer in m.attn], lr=0.1).step()  # each gate moves by 0.1
    assert not torch.allclose(m(x).logits, before, atol=1e-4)


def test_gate_parameters_are_one_per_head_per_memory_layer():
    m = memplug.build_model("tiny", memory="elastic", block=BLOCK, backbone_options=SMALL, gate=True, layers=[-1])
    names = [n for n, _ in m.named_parameters() if n.endswith(".gate")]
    assert names == ["attn.1.gate"] and m.attn[1].gate.shape == (4,)
    assert sum(p.numel() for p in m.parameters()) == sum(p.numel() for p in m.backbone.parameters()) + 4


@pytest.mark.parametrize("memory", [None, "none"])
def test_gate_without_a_memory_is_refused(memory):
    with pytest.raises(ValueError, match="gate=True lets a memory in"):
        MemoryAttention(
            None if memory is None else memplug.make_memory(memory), block=BLOCK, gate=True)


def test_gate_on_a_model_without_memory_builds_no_gate():
    m = model(None, gate=True)
    assert all(layer.gate is None for layer in m.attn)


def sink_reference(backbone: TinyBackbone, x: torch.Tensor, sink: int, block: int) -> torch.Tensor:
    """Logits of every later block as the full-causal backbone computes them on
    ``[first sink tokens | that block]`` at positions 0..sink+block-1."""
    out = []
    for start in range(block, x.shape[1], block):
        piece = torch.cat([x[:, :sink], x[:, start : start + block]], dim=1)
        out.append(backbone(piece)[:, sink:])
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("sink", [1, 4])
def test_sink_is_the_first_tokens_in_front_of_every_window(sink):
    m = model(None, sink=sink)
    x = ids(length=4 * BLOCK + 5)
    with torch.no_grad():
        got = m(x).logits
        want = sink_reference(m.backbone, x, sink, BLOCK)
        plain = model(None)(x).logits
    torch.testing.assert_close(got[:, BLOCK:], want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[:, :BLOCK], plain[:, :BLOCK], atol=1e-6, rtol=0)  # block 0 holds the sink itself


def test_sink_makes_later_blocks_see_the_first_token():
    x = ids()
    changed = x.clone()
    changed[:, 0] = (changed[:, 0] + 1) % 256
    with torch.no_grad():
        plain = model(None)
        with_sink = model(None, sink=1)
        assert torch.equal(plain(x).logits[:, BLOCK:], plain(changed).logits[:, BLOCK:])
        assert not torch.allclose(with_sink(x).logits[:, BLOCK:], with_sink(changed).logits[:, BLOCK:])


def test_sink_streams_across_calls_shorter_than_the_sink():
    m = model("elastic", sink=4, gate=True)
    x = ids()
    with torch.no_grad():
        whole = m(x).logits
        state, parts = None, []
        for a, b in [(0, 2), (2, 3), (3, 20), (20, x.shape[1])]:
            out = m(x[:, a:b], state=state)
            state, parts = out.state, parts + [out.logits]
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-5, rtol=1e-5)


def test_sink_options_are_checked():
    with pytest.raises(ValueError, match="sink must be at most block=16"):
        model(None, sink=BLOCK + 1)
    with pytest.raises(ValueError, match="sink must be an int >= 0, got True"):
        model(None, sink=True)
    m = model(None, sink=2)
    state = model(None)(ids()).state  # a stream made without a sink
    with pytest.raises(ValueError, match=r"another configuration \(sink: 0 vs 2"):  # the model's check
        m(ids(length=3), state=state)
    with pytest.raises(ValueError, match="made without sink"):  # the layer's, for a state that records nothing
        m(ids(length=3), state=ModelState(state.position, state.layers))
