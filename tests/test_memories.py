"""The baseline memories (none, xl, knn, melodi, infini, full) and elastic when present.

Every memory: block form == step form (through the real attention layer), causality, gradient
reach (every parameter trains, every state tensor changes the output), state save/load,
chunking invariance, and a tiny training run. Then each memory's own mathematics against a
float64 brute-force reference: kNN top-k and FIFO eviction, Infini-attention's delta rule,
Melodi's sizes, full attention == the plain full-causal transformer, and the memory budget.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memplug.backbones.tiny import TinyBackbone
from memplug.plugins.attention.sdpa import SDPAAttention
from memplug.plugins.memories.full import FullMemory
from memplug.plugins.memories.infini import InfiniMemory
from memplug.plugins.memories.knn import KNNMemory
from memplug.plugins.memories.melodi import MelodiMemory, melodi_layers
from memplug.plugins.memories.none import NoMemory
from memplug.plugins.memories.xl import XLMemory

from memplug.core.budget import SCALES, memory_options, unit
from memplug.core.contracts import Memory
from memplug.core.layer import MemoryAttention
from memplug.core.model import MemoryModel
from memplug.core.state import ModelState
from memplug.ops.linear_memory import feature_map, linear_retrieve, linear_update

L = 8  # block length
B, H, HKV, D = 2, 4, 2, 8  # batch, query heads, key/value heads, head dim
VOCAB = 32
HAS_ELASTIC = importlib.util.find_spec("memplug.plugins.memories.elastic") is not None
HAS_FAISS = importlib.util.find_spec("faiss") is not None


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second intra-op thread only adds contention on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str) -> Memory:
    """A small instance of each memory (sizes chosen so FIFOs evict within a test)."""
    if name == "none":
        return NoMemory()
    if name == "xl":
        return XLMemory(block=L)
    if name == "full":
        return FullMemory()
    if name == "knn-gate":
        return KNNMemory(capacity=12, topk=4, combine="gate")
    if name == "knn-joint":  # 16 slots >= 4 k: the gathered-values path (12 above: dense weights)
        return KNNMemory(capacity=16, topk=4, combine="joint")
    if name == "infini":
        return InfiniMemory()
    if name == "melodi":
        return MelodiMemory(block=L, short_slots=2, increment=2, long_slots=6)
    if name == "elastic":
        import memplug

        return memplug.make_memory("elastic", order=8, samples=8)
    raise ValueError(name)


NAMES = ["none", "xl", "full", "knn-gate", "knn-joint", "infini", "melodi"] + (["elastic"] if HAS_ELASTIC else [])
WITH_STATE = [n for n in NAMES if n != "none"]
WITH_PARAMS = ["knn-gate", "knn-joint", "infini", "melodi"]


def model_for(name: str, dtype: torch.dtype = torch.float64, seed: int = 0, span: str = "block") -> MemoryModel:
    torch.manual_seed(seed)
    backbone = TinyBackbone(vocab_size=VOCAB, d_model=H * D, n_layers=2, n_heads=H, n_kv_heads=HKV)
    model = MemoryModel(backbone, memory=lambda i: build(name), block=L, span=span, attention=SDPAAttention())
    return model.to(dtype)


def tokens(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, length), generator=torch.Generator().manual_seed(seed))


def rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return TinyBackbone(vocab_size=4, d_model=H * D, n_layers=1, n_heads=H).rotary(x, positions)


class StepForm(Memory):
    """Drives a set-up memory through its step form only: ``read`` then ``write`` per block.

    Streamed one block per call, the layer asks for one block at a time, so this is the
    definition that the memory's own ``forward_blocks`` must reproduce.
    """

    name = "step-form"

    def __init__(self, inner: Memory) -> None:
        super().__init__()
        self.inner = inner

    def setup(self, heads: int, kv_heads: int, head_dim: int, block: int | None = None) -> None:
        pass  # the inner memory is set up already (its parameters are shared)

    def init_state(self, batch, dtype, device):
        return self.inner.init_state(batch, dtype, device)

    def read(self, state, q, t):
        return self.inner.read(state, q, t)

    def write(self, state, k, v, t0):
        return self.inner.write(state, k, v, t0)

    def forward_blocks(self, state, q, k, v, t0, complete):
        assert q.shape[2] == 1, "stream one block per call"
        read = self.inner.read(state, q[:, :, 0], t0)
        if complete:
            state = self.inner.write(state, k[:, :, 0], v[:, :, 0], t0)
        from memplug.core.contracts import stack_reads

        return stack_reads([read]), state


# -- every memory -------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_block_form_equals_step_form(name):
    """One block-parallel call == the step form (read, write) streamed block by block."""
    torch.manual_seed(0)
    memory = build(name)
    layer = MemoryAttention(memory, L, attention=SDPAAttention())
    layer.setup(H, HKV, D)
    layer.double()
    stepper = MemoryAttention(StepForm(memory), L, attention=SDPAAttention())
    stepper.setup(H, HKV, D)
    t = 5 * L + 3  # a partial last block too
    q = torch.randn(B, H, t, D, dtype=torch.float64)
    k, v = torch.randn(2, B, HKV, t, D, dtype=torch.float64)
    whole, _ = layer(q, k, v, {}, 0, rope)
    outs, cache = [], {}
    for s in range(0, t, L):
        out, cache = stepper(q[:, :, s : s + L], k[:, :, s : s + L], v[:, :, s : s + L], cache, s, rope)
        outs.append(out)
    torch.testing.assert_close(torch.cat(outs, dim=2), whole, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
@given(cuts=st.lists(st.integers(1, 44), min_size=1, max_size=5, unique=True))
def test_chunking_invariance(name, cuts):
    """Any chunking of a stream gives the logits of one call (float64)."""
    model = model_for(name)
    ids = tokens(45)
    assert type(model.memories[0] if model.memories else NoMemory()).chunk_invariant
    whole = model(ids).logits
    parts, state = [], None
    for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), 45]):
        out = model(ids[:, a:b], state=state)
        parts.append(out.logits)
        state = out.state
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_causality(name):
    """Changing token j changes no logit before j (j inside a block and at a block start)."""
    model = model_for(name)
    ids = tokens(6 * L)
    base = model(ids).logits
    for j in (2 * L + 3, 4 * L):
        changed = ids.clone()
        changed[:, j] = (changed[:, j] + 1) % VOCAB
        logits = model(changed).logits
        torch.testing.assert_close(logits[:, :j], base[:, :j], rtol=0, atol=1e-12)
        assert not torch.allclose(logits[:, j:], base[:, j:])


@pytest.mark.parametrize("name", WITH_PARAMS)
def test_every_parameter_trains(name):
    """Every memory parameter (and every backbone parameter) gets a non-zero gradient."""
    model = model_for(name, torch.float32)
    ids = tokens(6 * L + 1)
    model(ids[:, :-1], shift_labels=ids[:, 1:]).loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: {pname} gets no gradient"
    assert sum(p.numel() for m in model.memories for p in m.parameters()) > 0


@pytest.mark.parametrize("name", WITH_STATE)
def test_every_state_tensor_changes_the_output(name):
    """Perturbing any floating state tensor mid-stream changes the next chunk's logits."""
    model = model_for(name)
    ids = tokens(5 * L)
    state = model(ids[:, : 3 * L]).state
    base = model(ids[:, 3 * L :], state=state).logits
    keys = [k for k, t in state.layers[0].items() if k.startswith("mem.") and t.is_floating_point()]
    assert keys, f"{name} keeps no floating state"
    for key in keys:
        layers = [dict(layer) for layer in state.layers]
        layers[0][key] = layers[0][key] + torch.randn_like(layers[0][key])
        out = model(ids[:, 3 * L :], state=ModelState(state.position, layers)).logits
        assert not torch.allclose(out, base), f"{name}: state {key} never changes the output"


@pytest.mark.parametrize("span", ["block", "previous"])
@pytest.mark.parametrize("name", NAMES)
def test_state_save_load(name, span, tmp_path):
    """A state saved mid-stream and loaded continues to identical logits (both local spans)."""
    model = model_for(name, torch.float32, span=span)
    ids = tokens(4 * L + 3)
    state = model(ids[:, : 2 * L + 5]).state
    expected = model(ids[:, 2 * L + 5 :], state=state).logits
    state.save(tmp_path / "state.safetensors")
    loaded = ModelState.load(tmp_path / "state.safetensors")
    assert loaded.position == state.position
    torch.testing.assert_close(model(ids[:, 2 * L + 5 :], state=loaded).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_training_run_lowers_the_loss(name):
    """A few Adam steps on a repeating pattern: the loss goes down."""
    model = model_for(name, torch.float32)
    pattern = torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(3))
    ids = pattern.repeat(B, 5)[:, : 6 * L + 1]  # (B, 49): the pattern recurs across blocks
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = model(ids[:, :-1], shift_labels=ids[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("name", NAMES)
def test_footprint(name):
    memory = build(name)
    memory.setup(H, HKV, D)
    fp = memory.footprint(batch=1)
    assert set(fp) == {"vectors", "bytes", "parameters"}
    assert fp["parameters"] == sum(p.numel() for p in memory.parameters())
    assert fp["bytes"] >= 4 * fp["vectors"] * HKV * D


# -- full -----------------------------------------------------------------------------------


def test_full_memory_is_the_full_causal_transformer():
    """Block-local attention + full memory == plain causal attention with absolute RoPE."""
    model = model_for("full")
    ids = tokens(5 * L + 2)
    torch.testing.assert_close(model(ids).logits, model.backbone(ids), rtol=1e-10, atol=1e-10)


def test_full_positions_and_clipping():
    memory = FullMemory(max_distance=5)
    memory.setup(H, HKV, D)
    state = memory.write(
        memory.init_state(B, torch.float64, torch.device("cpu")), *torch.randn(2, B, HKV, 12, D, dtype=torch.float64), 0
    )
    read = memory.read(state, torch.randn(B, H, L, D, dtype=torch.float64), 12)
    assert read.key_positions.tolist() == [[-5.0] * 7 + [-5.0, -4.0, -3.0, -2.0, -1.0]]
    assert memory.footprint(tokens=12)["vectors"] == 24
    with pytest.raises(ValueError, match="max_distance"):
        FullMemory(max_distance=0)


# -- xl ---------------------------------------------------------------------------------------


def test_xl_caches_the_previous_block_detached():
    memory = XLMemory(block=L)
    memory.setup(H, HKV, D)
    k = torch.randn(B, HKV, 3, L, D, requires_grad=True)
    v = torch.randn(B, HKV, 3, L, D)
    q = torch.randn(B, H, 3, L, D)
    read, state = memory.forward_blocks(memory.init_state(B, torch.float32, torch.device("cpu")), q, k, v, 0, 3)
    assert not read.keys.requires_grad and not state["keys"].requires_grad
    torch.testing.assert_close(read.keys[:, :, 1:], k[:, :, :2].detach())
    assert read.key_positions[0].tolist() == list(range(-L, 0))
    assert read.first_hidden and read.bias is None  # block 0 has nothing before it, the others hide nothing
    torch.testing.assert_close(state["keys"], k[:, :, 2].detach())
    assert memory.footprint()["vectors"] == 2 * L
    with pytest.raises(ValueError, match="block"):
        memory.forward_blocks(state, q[..., :4, :], k[..., :4, :], v[..., :4, :], 0, 3)


# -- knn --------------------------------------------------------------------------------------


def knn_reference(q, keys, values, count, topk, scale, normalize):
    """float64 NumPy brute force: per query head, top-k of the filled slots, then softmax."""
    q, keys, values = (np.asarray(x, dtype=np.float64) for x in (q, keys, values))
    if normalize:
        q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    b, h, length, d = q.shape
    group = h // keys.shape[1]
    out = np.zeros_like(q)
    lse = np.full((b, h, length), -np.inf)
    m = keys.shape[2]
    for bi in range(b):
        for hi in range(h):
            kv = hi // group
            filled = np.arange(m - count, m)
            for i in range(length):
                if count == 0:
                    continue
                scores = keys[bi, kv, filled] @ q[bi, hi, i]
                top = np.argsort(-scores)[: min(topk, count)]
                logits = scores[top] * scale[hi]
                w = np.exp(logits - logits.max())
                out[bi, hi, i] = (w / w.sum()) @ values[bi, kv, filled[top]]
                lse[bi, hi, i] = logits.max() + np.log(w.sum())
    return out, lse


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("topk", [5, 6])  # 20 slots: gathered values (k = 5), dense weights (k = 6)
def test_knn_topk_matches_brute_force(normalize, topk):
    torch.manual_seed(0)
    memory = KNNMemory(capacity=20, topk=topk, combine="joint", normalize=normalize)
    memory.setup(H, HKV, D)
    memory.double()
    if normalize:
        with torch.no_grad():
            memory.log_scale.copy_(torch.randn(H, dtype=torch.float64))
    state = memory.init_state(B, torch.float64, torch.device("cpu"))
    for t in range(0, 3 * L, L):  # 24 tokens into 20 slots: 4 evicted
        state = memory.write(state, *torch.randn(2, B, HKV, L, D, dtype=torch.float64), t)
    q = torch.randn(B, H, L, D, dtype=torch.float64)
    read = memory.read(state, q, 3 * L)
    scale = memory.log_scale.exp().tolist() if normalize else [1 / math.sqrt(D)] * H
    out, lse = knn_reference(q, state["keys"], state["values"], int(state["count"]), topk, scale, normalize)
    assert int(state["count"]) == 20
    np.testing.assert_allclose(read.output[:, :, 0].detach().numpy(), out, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(read.lse[:, :, 0].detach().numpy(), lse, rtol=1e-12, atol=1e-12)


def test_knn_fifo_eviction_and_detached_normalised_keys():
    memory = KNNMemory(capacity=12, topk=4)
    memory.setup(H, HKV, D)
    state = memory.init_state(B, torch.float32, torch.device("cpu"))
    ks, vs = torch.randn(2, B, HKV, 3 * L, D, requires_grad=True)
    for i in range(3):
        state = memory.write(state, ks[:, :, i * L : (i + 1) * L], vs[:, :, i * L : (i + 1) * L], i * L)
        assert int(state["count"]) == min(12, (i + 1) * L)
    torch.testing.assert_close(state["keys"], torch.nn.functional.normalize(ks[:, :, -12:], dim=-1).detach())
    torch.testing.assert_close(state["values"], vs[:, :, -12:].detach())
    assert not state["keys"].requires_grad and not state["values"].requires_grad
    # the empty memory gives nothing: zero output, -inf log-sum-exp
    empty = memory.init_state(B, torch.float32, torch.device("cpu"))
    joint = KNNMemory(capacity=12, topk=4, combine="joint")
    joint.setup(H, HKV, D)
    read = joint.read(empty, torch.randn(B, H, L, D), 0)
    assert (read.output == 0).all() and torch.isneginf(read.lse).all()


@pytest.mark.skipif(not HAS_FAISS, reason="faiss is not installed (optional: pip install faiss-cpu)")
def test_knn_faiss_search_matches_torch():
    torch.manual_seed(0)
    exact = KNNMemory(capacity=40, topk=6, combine="joint", search="torch")
    approx = KNNMemory(capacity=40, topk=6, combine="joint", search="faiss")
    for m in (exact, approx):
        m.setup(H, HKV, D)
    approx.load_state_dict(exact.state_dict())
    q = torch.randn(B, H, 4, L, D)
    k, v = torch.randn(2, B, HKV, 4, L, D)
    state = exact.init_state(B, torch.float32, torch.device("cpu"))
    a, sa = exact.forward_blocks(state, q, k, v, 0, 4)
    b, sb = approx.forward_blocks(state, q, k, v, 0, 4)
    torch.testing.assert_close(b.output, a.output, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.lse, a.lse, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sb["keys"], sa["keys"])


def test_knn_options_are_checked():
    for kwargs, word in [
        ({"capacity": 0}, "capacity"),
        ({"topk": 0}, "topk"),
        ({"combine": "sum"}, "combine"),
        ({"search": "annoy"}, "search"),
    ]:
        with pytest.raises(ValueError, match=word):
            KNNMemory(**kwargs)
    gate = KNNMemory(capacity=16)
    gate.setup(H, HKV, D)
    assert gate.footprint()["vectors"] == 32 and gate.footprint()["parameters"] == 2 * H


# -- infini -----------------------------------------------------------------------------------


def infini_reference(blocks_k, blocks_v, q, delta, eps=1e-6):
    """float64 NumPy: the paper's equations applied block by block, then one retrieval."""

    def sigma(x):
        return np.where(x > 0, x + 1.0, np.exp(x))

    d = q.shape[-1]
    memory, norm = np.zeros((d, d)), np.zeros(d)
    for k, v in zip(blocks_k, blocks_v):
        sk = sigma(k)
        if delta:
            v = v - (sk @ memory) / np.maximum(sk @ norm, eps)[:, None]
        memory = memory + sk.T @ v
        norm = norm + sk.sum(axis=0)
    sq = sigma(q)
    return (sq @ memory) / np.maximum(sq @ norm, eps)[:, None]


@pytest.mark.parametrize("delta", [True, False])
def test_infini_matches_the_paper_equations(delta):
    torch.manual_seed(0)
    memory = InfiniMemory(delta=delta)
    memory.setup(H, HKV, D)
    k, v = torch.randn(2, B, HKV, 3, L, D, dtype=torch.float64)
    q = torch.randn(B, H, 4, L, D, dtype=torch.float64)
    read, state = memory.forward_blocks(memory.init_state(B, torch.float64, torch.device("cpu")), q, k, v, 0, 3)
    for b in range(B):
        for h in range(H):
            kv = h // (H // HKV)
            for i in range(4):
                blocks = min(i, 3)
                expected = infini_reference(
                    k[b, kv, :blocks].numpy(), v[b, kv, :blocks].numpy(), q[b, h, i].numpy(), delta
                )
                np.testing.assert_allclose(read.output[b, h, i].numpy(), expected, rtol=1e-10, atol=1e-12)
    assert read.gate.shape == (H,) and memory.footprint()["vectors"] == D + 1


def test_infini_ops_shapes_and_empty_memory():
    phi = feature_map(torch.randn(3, 5, D))
    assert (phi > 0).all()
    memory, norm = torch.zeros(3, D, D), torch.zeros(3, D)
    assert (linear_retrieve(phi, memory, norm) == 0).all()
    m2, z2 = linear_update(memory, norm, phi, torch.randn(3, 5, D), delta=True)
    assert m2.shape == (3, D, D) and z2.shape == (3, D)
    with pytest.raises(ValueError, match="eps"):
        InfiniMemory(eps=0)


# -- melodi -----------------------------------------------------------------------------------


def test_melodi_sizes_parameters_and_placement():
    memory = MelodiMemory(block=64)
    assert (memory.short_slots, memory.increment, memory.long_slots) == (8, 4, unit(64))
    memory.setup(H, HKV, D)
    s, i, fan_in = 8, 4, 64 + 8
    expected = (s + i) * fan_in + s + i + 4 * D + H
    fp = memory.footprint()
    assert fp["parameters"] == expected
    assert fp["vectors"] == 2 * (s + unit(64))
    short_only = MelodiMemory(block=64, long_term=False)
    short_only.setup(H, HKV, D)
    assert short_only.footprint()["parameters"] == s * fan_in + s + 4 * D
    factory = melodi_layers(4, block=64)
    assert [factory(j).long_term for j in range(4)] == [False, False, True, False]
    with pytest.raises(ValueError, match="long_layer"):
        melodi_layers(4, long_layer=4, block=64)
    with pytest.raises(ValueError, match="block"):
        MelodiMemory(block=0)
    with pytest.raises(ValueError, match="long_slots"):
        MelodiMemory(block=8, long_slots=0)


def test_melodi_long_term_fifo():
    """The long-term memory keeps the newest ``long_slots`` increments, oldest evicted."""
    torch.manual_seed(0)
    memory = MelodiMemory(block=L, short_slots=2, increment=2, long_slots=5)
    memory.setup(H, HKV, D)
    state = memory.init_state(B, torch.float32, torch.device("cpu"))
    increments = []
    for t in range(0, 4 * L, L):
        k, v = torch.randn(2, B, HKV, L, D)
        short = torch.stack([state["short_keys"], state["short_values"]])
        increments.append(memory._scan(torch.stack([k, v])[:, :, :, None], short, 1)[1][0])
        state = memory.write(state, k, v, t)
    torch.testing.assert_close(state["long_keys"], torch.cat(increments, dim=-2)[:, :, -5:])
    assert int(state["long_count"]) == 5


# -- the budget -------------------------------------------------------------------------------


def test_memory_budget():
    assert unit(256) == 64 and unit(2) == 1
    for scale in SCALES:
        assert memory_options("knn", scale, 256) == {"capacity": 64 * scale}
        assert memory_options("elastic", scale, 256) == {"order": 64 * scale, "samples": 64 * scale}
        assert memory_options("melodi", scale, 256) == {"long_slots": 64 * scale}
        for fixed in ("none", "xl", "full", "infini"):
            assert memory_options(fixed, scale, 256) == {}
    knn = KNNMemory(**memory_options("knn", 4, 256))
    knn.setup(H, HKV, 64)
    assert knn.footprint()["vectors"] == 2 * 4 * unit(256)
    with pytest.raises(ValueError, match="scale"):
        memory_options("knn", 0, 256)
    with pytest.raises(KeyError, match="unknown memory 'lstm'; available: .*elastic"):
        memory_options("lstm", 1, 256)
    with pytest.raises(ValueError, match="scale must be a positive int, got True"):
        memory_options("knn", True, 256)
    with pytest.raises(ValueError, match="block"):
        unit(0)


# -- the retrieval ops --------------------------------------------------------------------------


def test_fifo_windows_are_the_fifo_states():
    """Window i of [stored | appended] equals the FIFO after i appends of `step` slots."""
    from memplug.ops.memory_banks import fifo_append, fifo_valid, fifo_windows

    capacity, step, blocks, count = 5, 2, 4, 3
    stored = torch.randn(3, capacity, D)
    new = torch.randn(3, blocks * step, D)
    windows = fifo_windows(torch.cat([stored, new], dim=-2), capacity, step, blocks)
    valid = fifo_valid(capacity, step, blocks, count)
    fifo, filled = stored, count
    for i in range(blocks):
        torch.testing.assert_close(windows[:, i], fifo)
        assert valid[i].tolist() == [s >= capacity - filled for s in range(capacity)]
        fifo = fifo_append(fifo, new[:, i * step : (i + 1) * step], capacity)
        filled = min(capacity, filled + step)


def test_masked_softmax_of_a_hidden_row_is_zero_with_finite_gradients():
    from memplug.ops.memory_banks import masked_softmax

    logits = torch.tensor([[0.5, float("-inf"), 1.0], [float("-inf")] * 3], requires_grad=True)
    weights, lse = masked_softmax(logits)
    torch.testing.assert_close(weights[0], torch.softmax(logits[0], dim=-1))
    assert (weights[1] == 0).all() and torch.isneginf(lse[1]) and torch.isfinite(lse[0])
    (weights.sum() + lse[0]).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    "name", ["none", "xl", "full", "knn", "melodi", "infini"] + (["elastic"] if HAS_ELASTIC else [])
)
def test_built_by_name_at_a_budget(name):
    """Each memory builds by name at 2x memory, and its footprint is what the budget says."""
    import memplug

    model = memplug.build_model(
        "tiny",
        memory=name,
        block=L,
        backbone_options=dict(vocab_size=VOCAB, d_model=H * D, n_layers=1, n_heads=H, n_kv_heads=HKV),
        memory_options=memory_options(name, 2, L),
    )
    assert model(tokens(2 * L + 3)).logits.shape == (B, 2 * L + 3, VOCAB)
    fp = model.memories[0].footprint()
    expected = {
        "knn": 2 * 2 * unit(L),
        "elastic": 2 * 2 * unit(L),
        "xl": 2 * L,
        "infini": D + 1,
        "none": 0,
        "full": 0,
        "melodi": 2 * (max(1, L // 8) + 2 * unit(L)),
    }
    assert fp["vectors"] == expected[name]
