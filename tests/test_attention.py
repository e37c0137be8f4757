"""memplug.ops.attention and the attention backends, against float64 NumPy definitions."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import memplug
from memplug.core.layer import select_attention
from memplug.ops.attention import merge_gated, merge_lse, reference_attention, repeat_kv, trapezoid_mask
from single_thread import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def numpy_attention(q, k, v, mask, scale):
    """Loop-by-loop float64 definition: out[n,h,i] = sum_j softmax_j(q.k*scale + mask) v[j]."""
    n, heads, lq, _ = q.shape
    group = heads // k.shape[1]
    out = np.zeros_like(q)
    lse = np.zeros(q.shape[:-1])
    for b in range(n):
        for h in range(heads):
            for i in range(lq):
                s = k[b, h // group] @ q[b, h, i] * scale + mask[b, h, i]
                m = s.max()
                w = np.exp(s - m)
                lse[b, h, i] = m + np.log(w.sum())
                out[b, h, i] = (w / w.sum()) @ v[b, h // group]
    return out, lse


def random_case(seed, n=2, heads=4, kv_heads=2, lq=5, memory=3, local=9, d=8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, heads, lq, d, generator=g, dtype=dtype)
    k = torch.randn(n, kv_heads, memory + local, d, generator=g, dtype=dtype)
    v = torch.randn(n, kv_heads, memory + local, d, generator=g, dtype=dtype)
    mask = trapezoid_mask(lq, local, memory, dtype=dtype).expand(n, heads, lq, memory + local).clone()
    mask[0, :, :, :memory] = float("-inf")  # an empty memory in the first sequence
    mask[1, 1, :, :memory] += -1.5  # a logit offset on one head
    return q, k, v, mask


@given(st.integers(0, 10_000), st.sampled_from([(4, 4), (4, 2), (6, 1)]))
def test_reference_matches_numpy_definition(seed, heads):
    q, k, v, mask = random_case(seed, heads=heads[0], kv_heads=heads[1])
    out, lse = reference_attention(q, k, v, mask, scale=0.3)
    ref_out, ref_lse = numpy_attention(q.numpy(), k.numpy(), v.numpy(), mask.numpy(), 0.3)
    np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-12)
    np.testing.assert_allclose(lse.numpy(), ref_lse, atol=1e-12)


def test_reference_hidden_row_is_zero():
    q, k, v = torch.randn(1, 1, 2, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    mask = torch.zeros(1, 1, 2, 3)
    mask[0, 0, 1] = float("-inf")
    out, lse = reference_attention(q, k, v, mask)
    assert torch.isfinite(out).all() and (out[0, 0, 1] == 0).all() and lse[0, 0, 1] == float("-inf")


@given(st.integers(1, 12), st.integers(0, 12), st.integers(0, 6))
def test_trapezoid_mask_definition(queries, extra, memory):
    local = queries + extra
    mask = trapezoid_mask(queries, local, memory)
    assert mask.shape == (queries, memory + local)
    for i in range(queries):
        for j in range(memory + local):
            visible = j < memory or (j - memory) <= i + local - queries
            assert (mask[i, j] == 0) if visible else (mask[i, j] == float("-inf"))


def test_trapezoid_mask_key_valid_and_errors():
    valid = torch.tensor([[True] * 8, [False] * 4 + [True] * 4])  # (2 blocks, 8 local keys)
    mask = trapezoid_mask(4, 8, 2, key_valid=valid)
    assert mask.shape == (2, 4, 10)
    assert torch.equal(mask[0], trapezoid_mask(4, 8, 2))
    assert (mask[1, :, 2:6] == float("-inf")).all() and (mask[1, :, :2] == 0).all()
    with pytest.raises(ValueError, match="local_keys"):
        trapezoid_mask(5, 4)
    with pytest.raises(ValueError, match="key_valid"):
        trapezoid_mask(4, 8, key_valid=torch.ones(7, dtype=torch.bool))


@given(st.integers(0, 10_000), st.integers(1, 11))
def test_merge_lse_equals_one_softmax(seed, split):
    q, k, v, mask = random_case(seed)
    full, full_lse = reference_attention(q, k, v, mask)
    a, lse_a = reference_attention(q, k[..., :split, :], v[..., :split, :], mask[..., :split])
    b, lse_b = reference_attention(q, k[..., split:, :], v[..., split:, :], mask[..., split:])
    out, lse = merge_lse(a, lse_a, b, lse_b)
    torch.testing.assert_close(out, full, atol=1e-12, rtol=0)
    torch.testing.assert_close(lse, full_lse, atol=1e-12, rtol=0)


def test_merge_lse_empty_sides():
    out = torch.randn(2, 3, 4)
    empty = torch.full((2, 3), float("-inf"))
    merged, lse = merge_lse(out, torch.zeros(2, 3), torch.randn(2, 3, 4), empty)
    torch.testing.assert_close(merged, out)
    both, lse = merge_lse(out, empty, out, empty)
    assert (both == 0).all() and (lse == float("-inf")).all()


def test_merge_gated():
    mem, local = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    gate = torch.tensor([-1.0, 0.0, 2.0])
    g = torch.sigmoid(gate)[None, :, None, None]
    torch.testing.assert_close(merge_gated(mem, local, gate), g * mem + (1 - g) * local)


def test_repeat_kv_groups_consecutive_heads():
    x = torch.arange(2.0).reshape(1, 2, 1, 1)
    assert repeat_kv(x, 6).flatten().tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="multiple"):
        repeat_kv(x, 3)


# --- backends ------------------------------------------------------------------------------

BACKENDS = ["sdpa", "flex", "xformers"]
DTYPES = {torch.float32: 2e-5, torch.bfloat16: 3e-2}


def backend_or_skip(name, device, dtype, masked):
    cls = memplug.core.manager.registry("attention").get(name)
    if not cls.supports(device, dtype, masked):
        pytest.skip(f"{name} does not support {device}/{dtype}/masked={masked} here")
    return cls()


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES))
def test_backend_matches_reference(name, dtype):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "flex" and dtype != torch.float32:
        pytest.skip("one flex compile (float32) keeps the suite fast")
    backend = backend_or_skip(name, device, dtype, True)
    q, k, v, mask = random_case(3, n=3, heads=4, kv_heads=2, lq=16, memory=8, local=32, d=16)
    with torch.no_grad():
        out = backend(q.to(device, dtype), k.to(device, dtype), v.to(device, dtype), mask.to(device), 0.25)
    ref, _ = reference_attention(q, k, v, mask, 0.25)
    torch.testing.assert_close(out.double().cpu(), ref, atol=DTYPES[dtype], rtol=DTYPES[dtype])


def test_sdpa_gradients_match_reference():
    backend = memplug.make_attention("sdpa")
    q, k, v, mask = random_case(5, heads=4, kv_heads=2)
    leaves = [x.float().requires_grad_() for x in (q, k, v)]
    backend(*leaves, mask.float(), 0.3).square().sum().backward()
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    reference_attention(*ref, mask, 0.3)[0].square().sum().backward()
    for a, b in zip(leaves, ref):
        torch.testing.assert_close(a.grad.double(), b.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("lq,lk", [(16, 16), (16, 40)])
def test_forward_causal_is_the_unhidden_trapezoid(name, lq, lk):
    """``forward_causal`` (no mask tensor) is attention under the trapezoid with nothing hidden:
    equal numbers of queries and keys (plain causal, SDPA's causal flag) and more keys than
    queries (memory slots in front: bottom-right causal), in values and in gradients."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "flex" and lq != lk:
        pytest.skip("one flex compile keeps the suite fast")
    backend = backend_or_skip(name, device, torch.float32, True)
    q, k, v, _ = random_case(7, n=3, heads=4, kv_heads=2, lq=lq, memory=lk - lq, local=lq, d=16)
    leaves = [x.to(device, torch.float32).requires_grad_() for x in (q, k, v)]
    out = backend.forward_causal(*leaves, 0.25)
    (out * torch.linspace(-1, 1, 16, device=device)).sum().backward()
    ref = [x.clone().requires_grad_() for x in (q, k, v)]
    ref_out, _ = reference_attention(*ref, trapezoid_mask(lq, lk, dtype=torch.float64), 0.25)
    (ref_out * torch.linspace(-1, 1, 16, dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(out.detach().double().cpu(), ref_out.detach(), atol=2e-5, rtol=2e-5)
    for a, b in zip(leaves, ref):
        torch.testing.assert_close(a.grad.double().cpu(), b.grad, atol=2e-5, rtol=2e-5)


def test_torch_bottom_right_causal_bias_is_the_trapezoid():
    """The GPU path of sdpa's ``forward_causal`` hands SDPA torch's ``causal_lower_right`` bias:
    it must hide exactly what the unhidden trapezoid hides (not the top-left causal mask)."""
    from torch.nn.attention.bias import causal_lower_right

    for lq, lk in [(5, 5), (5, 12), (1, 7)]:
        visible = causal_lower_right(lq, lk)._materialize(torch.device("cpu"))  # (Lq, Lk) bool
        assert torch.equal(visible, trapezoid_mask(lq, lk) == 0), (lq, lk)


def test_auto_selection_on_cpu_is_sdpa():
    assert select_attention(torch.device("cpu"), torch.float32, masked=True).name == "sdpa"
    assert select_attention(torch.device("cpu"), torch.bfloat16, masked=True).name == "sdpa"
    assert not memplug.core.manager.registry("attention").get("xformers").supports(torch.device("cpu"), torch.float32, True)


def test_flex_declines_and_refuses_the_cpu():
    """flex gave wrong outputs on the CPU with torch 2.14.1: neither auto-selection nor an explicit
    choice may run it there, with or without autograd."""
    cls = memplug.core.manager.registry("attention").get("flex")
    q = torch.randn(1, 1, 4, 8)
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            assert not cls.supports(torch.device("cpu"), torch.float32, True)
            with pytest.raises(RuntimeError, match="CUDA only"):
                cls()(q, q, q, None, 1.0)
    layer = memplug.core.layer.MemoryAttention(None, block=4, attention="flex")
    with pytest.raises(RuntimeError, match="CUDA only"):
        layer(q, q, q, {}, 0)
