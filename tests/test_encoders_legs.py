"""LegS: the exact block update against the float64 projection of the token signal, chunking and
scan invariance, linearity, polynomial reproduction, a million-token float32 stream, the ODE
discretisations converging to the exact update, and the caches."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memplug.plugins.encoders.legs import LegS
from memplug.plugins.encoders.legs import legs_matrices as torch_legs_matrices
from reference import legs_dense_projection, legs_matrices, polynomial_projection
from streams import check_chunking_and_scan, check_exact_projection, relative_error, streams

import memplug
from memplug.hippo.scale_invariant import ScaleInvariantMeasure

positions = st.one_of(st.just(0), st.integers(1, 500), st.integers(10**5, 10**6))


@given(streams())
def test_state_is_the_exact_projection_at_any_t_and_chunking(stream):
    check_exact_projection(LegS(stream.order), stream, beta=0.0)


@st.composite
def chunked(draw):
    order, tokens = draw(st.integers(1, 16)), draw(st.integers(1, 70))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, tokens - 1)), max_size=6)))) if tokens > 1 else []
    seed = draw(st.integers(0, 2**31))
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, tokens, draw(st.integers(1, 3)), generator=gen, dtype=torch.float64)
    return order, x, cuts, draw(st.integers(1, tokens + 3)), draw(positions), seed


@given(chunked(), st.sampled_from(["sequential", "parallel"]))
def test_update_chunking_and_scan_agree_float64(case, method):
    order, x, cuts, block, t0, seed = case
    check_chunking_and_scan(LegS(order, scan_method=method), x, cuts, block, t0, rtol=1e-12, seed=seed + 1)


@given(chunked())
def test_update_chunking_and_scan_agree_float32(case):
    order, x, cuts, block, t0, seed = case
    encoder = LegS(order)
    check_chunking_and_scan(encoder, x.float(), cuts, block, t0, rtol=1e-5, seed=seed + 1)
    assert encoder.update(encoder.init_state(channels=x.shape[-1]), x[..., :1, :].float(), t0).dtype == torch.float32


@given(chunked(), st.floats(-3, 3), st.floats(-3, 3))
def test_update_is_linear(case, a, b):
    order, x, _, _, t0, seed = case
    encoder = LegS(order)
    gen = torch.Generator().manual_seed(seed + 2)  # not the streams of x and of the start state
    s1, s2 = torch.randn(2, *x.shape[:-2], order, x.shape[-1], generator=gen, dtype=torch.float64)
    y = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    combined = encoder.update(a * s1 + b * s2, a * x + b * y, t0)
    separate = a * encoder.update(s1, x, t0) + b * encoder.update(s2, y, t0)
    torch.testing.assert_close(combined, separate, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("t0", [0, 7, 4096, 10**6, 10**9])
def test_state_shape_never_depends_on_t(t0):
    encoder = LegS(12)
    x = torch.randn(2, 3, 33, 5)
    state = encoder.update(encoder.init_state(2, 3, channels=5), x, t0)
    assert state.shape == (2, 3, 12, 5)
    assert encoder.scan(x, 8, t0=t0).shape == (2, 3, 5, 12, 5)


@given(st.integers(1, 24), st.floats(1.0, 1e6), st.integers(0, 2**31))
def test_basis_reproduces_polynomials_of_degree_below_n(order, t, seed):
    rng = np.random.default_rng(seed)
    degree = rng.integers(0, order)
    coefficients = rng.standard_normal(degree + 1) / t ** np.arange(degree + 1)  # O(1) on [0, t]
    c = torch.from_numpy(polynomial_projection(coefficients, t, order))
    s = np.sort(rng.uniform(0, t, size=9))
    values = LegS(order).basis(torch.from_numpy(s), t) @ c
    expected = np.polynomial.polynomial.polyval(s, coefficients)
    np.testing.assert_allclose(values.numpy(), expected, rtol=0, atol=1e-10 * max(1.0, np.abs(expected).max()))


def test_basis_rows_per_block_time_and_empty_state():
    encoder = LegS(6)
    t = torch.tensor([0.0, 10.0, 20.0])
    pos = torch.tensor([[0.0, 0.0], [2.5, 10.0], [5.0, 20.0]])
    phi = encoder.basis(pos, t)
    assert phi.shape == (3, 2, 6)
    torch.testing.assert_close(phi[1], encoder.basis(pos[1], 10.0))
    assert torch.isfinite(phi[0]).all()  # t = 0: the (zero) state is read at u = 0
    assert encoder.support(7.0) == (0.0, 7.0)


def test_basis_is_differentiable_in_positions():
    encoder = LegS(7)
    pos = torch.tensor([[1.3, 4.0, 9.9], [0.2, 5.5, 6.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([10.0, 6.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda p: encoder.basis(p, t), (pos,))


def test_million_token_float32_stream_stays_close_to_float64():
    order, channels, block, tokens = 32, 4, 4096, 1_000_000
    rng = np.random.default_rng(0)
    s = np.arange(tokens)[:, None]
    x = rng.standard_normal((tokens, channels)) + np.sin(2 * np.pi * s / np.array([3e5, 7e4, 1e3, 50]))
    encoder = LegS(order, cache_bytes=4 * 2**20)  # every block has a new ratio: nothing accumulates
    states = {}
    for dtype in (torch.float32, torch.float64):
        xt = torch.from_numpy(x).to(dtype)
        state = encoder.init_state(channels=channels, dtype=dtype)
        for lo in range(0, tokens, block):
            state = encoder.update(state, xt[lo : lo + block], lo)
        states[dtype] = state
    exact = legs_dense_projection(x, order)
    assert relative_error(states[torch.float64], exact) <= 1e-9
    assert relative_error(states[torch.float32], states[torch.float64]) <= 1e-4
    assert encoder._cache._bytes <= 4 * 2**20


def test_ode_discretisations_converge_to_the_exact_update():
    order, tokens = 8, 48
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((tokens, 3)))
    zero = torch.zeros(order, 3, dtype=torch.float64)
    exact = LegS(order).update(zero, x, 0)
    for rule in ("bilinear", "euler"):
        errors = [
            relative_error(LegS(order, discretization=rule, substeps=k).update(zero, x, 0), exact) for k in (1, 2, 4, 8)
        ]
        assert all(b < 0.75 * a for a, b in itertools.pairwise(errors)), (rule, errors)
        assert errors[-1] < 0.05
    # ZOH in log-time is exact for a token signal (constant on each cell), at any substeps
    for k in (1, 3):
        assert relative_error(LegS(order, discretization="zoh", substeps=k).update(zero, x, 0), exact) < 1e-12
    late = LegS(order, discretization="zoh").scan(x, 16, t0=1000, state=exact)
    assert relative_error(late, LegS(order).scan(x, 16, t0=1000, state=exact)) < 1e-12


def test_classic_bilinear_recurrence_first_steps():
    """Step k (token k-1 -> k) of the classic code: c_k = (I - A/2k)^-1 ((I + A/2k) c + B x / k)."""
    A, B = torch_legs_matrices(5)
    x = torch.tensor([[0.7], [-1.2], [0.4]], dtype=torch.float64)
    c = torch.zeros(5, 1, dtype=torch.float64)
    eye = torch.eye(5, dtype=torch.float64)
    for k in range(1, 4):
        lhs = eye - A / (2 * k)
        c = torch.linalg.solve(lhs, (eye + A / (2 * k)) @ c + B[:, None] * x[k - 1] / k)
    ode = LegS(5, discretization="bilinear")
    torch.testing.assert_close(ode.update(torch.zeros(5, 1, dtype=torch.float64), x, 0), c)


def test_bilinear_steps_are_right_for_large_order():
    """N >= 160 is where a batched torch.linalg.solve goes wrong on 2 CPU threads (torch 2.13)."""
    order = 192
    a_bar, b_bar = LegS(order, discretization="bilinear").ode_steps(t0=10, tokens=3)
    A, B = legs_matrices(order)
    for step, t in enumerate((11.0, 12.0, 13.0)):
        lhs = np.eye(order) - A / (2 * t)
        np.testing.assert_allclose(a_bar[step].numpy(), np.linalg.solve(lhs, np.eye(order) + A / (2 * t)), atol=1e-12)
        np.testing.assert_allclose(b_bar[step].numpy(), np.linalg.solve(lhs, B / t), atol=1e-12)


@given(st.integers(1, 20), st.one_of(st.just(0.0), st.floats(1e-6, 0.999)))
def test_matrices_and_transition_are_consistent(order, r):
    """The textbook LegS (A, B) equal the ones derived from the family; M(r) = expm(A ln(1/r)); the
    shifted block form equals the direct cell integrals."""
    A, B = legs_matrices(order)
    A_t, B_t = torch_legs_matrices(order)
    np.testing.assert_allclose(A_t.numpy(), A, rtol=0, atol=1e-14)
    np.testing.assert_allclose(B_t.numpy(), B, rtol=1e-15)
    generic = ScaleInvariantMeasure(order)  # Jacobi family at β = 0, A from quadrature
    np.testing.assert_allclose(generic.ode_matrices()[0].numpy(), A, rtol=0, atol=1e-11 * order)
    np.testing.assert_allclose(generic.ode_matrices()[1].numpy(), B, rtol=1e-13)
    encoder = LegS(order)
    if r > 0:
        expm = torch.linalg.matrix_exp(torch.from_numpy(A) * math.log(1 / r))
        torch.testing.assert_close(encoder.transition(r), expm, rtol=0, atol=1e-12)
    t0 = int(r * 1000)
    direct = encoder.block_input(t0, 1000)
    shifted = (1 - t0 / 1000) * encoder.block_shift(t0 / 1000) @ encoder.block_input(0, 1000 - t0)
    torch.testing.assert_close(shifted, direct, rtol=0, atol=1e-13)


def test_cache_is_reused_and_bounded():
    encoder = LegS(16)
    x = torch.randn(2, 256, 3)
    encoder.scan(x, 32)
    size = len(encoder._cache)
    for _ in range(3):
        encoder.scan(x, 32)  # training: the same block positions every step
    assert len(encoder._cache) == size
    small = LegS(16, cache_bytes=16 * 16 * 4 * 3)
    for t0 in range(0, 64 * 50, 64):
        small.update(small.init_state(channels=3), x[:, :64], t0)
    assert small._cache._bytes <= 16 * 16 * 4 * 3 + 16 * 64 * 4


def test_follows_device_dtype_and_keeps_gradients():
    encoder = LegS(8)
    x = torch.randn(2, 40, 3, requires_grad=True)
    states = encoder.scan(x, 16)
    assert states.dtype == torch.float32 and states.device == x.device
    states.sum().backward()
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


@pytest.mark.parametrize("beta", [0.0, 1.0])  # the folded LegS block input and the cached Jacobi one
@pytest.mark.parametrize("t0", [0, 4096])
def test_bf16_tokens_are_projected_in_bf16_and_accumulated_in_float32(beta, t0):
    encoder = memplug.make_encoder("jacobi", order=16, beta=beta)
    state = encoder.init_state(2, channels=3, dtype=torch.float64)
    if t0:
        state = encoder.update(state, torch.randn(2, t0, 3, dtype=torch.float64), 0)
    x = torch.randn(2, 100, 3, dtype=torch.float64)
    exact = encoder.scan(x, 32, t0, state)  # (2, 4, N, 3)
    low = x.to(torch.bfloat16)
    scanned, stepped = encoder.scan(low, 32, t0, state.float()), encoder.update(state.float(), low, t0)
    assert scanned.dtype == stepped.dtype == torch.float32
    if not t0:  # no state at all (elastic's training calls): the empty state still counts as float32
        fresh = encoder.scan(low, 32)
        assert fresh.dtype == torch.float32 and relative_error(fresh.double(), exact) < 1e-2
        torch.testing.assert_close(fresh, scanned)
    # bf16 keeps 8 significant bits: the projection carries that error, the float32 sum adds none
    assert relative_error(scanned.double(), exact) < 1e-2
    assert relative_error(stepped.double(), exact[:, -1]) < 1e-2
    torch.testing.assert_close(scanned[:, -1], stepped, rtol=1e-2, atol=1e-3)
    # what is carried keeps float32 precision: with silent bf16 tokens the update is M state alone,
    # ~1e-7 from float64, where a state rounded through bf16 on the way would be ~2e-3 off
    if t0:
        silent = torch.zeros(2, 100, 3, dtype=torch.bfloat16)
        assert relative_error(encoder.scan(silent, 32, t0, state.float()).double(),
                              encoder.scan(silent.double(), 32, t0, state)) < 1e-5
        assert relative_error(encoder.update(state.float(), silent, t0).double(),
                              encoder.update(state, silent.double(), t0)) < 1e-5


@pytest.mark.parametrize(
    "call",
    [
        lambda: LegS(0),
        lambda: LegS(4, discretization="rk4"),
        lambda: LegS(4, substeps=0),
        lambda: LegS(4, scan_method="fast"),
        lambda: LegS(4).update(torch.zeros(4, 2), torch.zeros(3, 2), -1),
        lambda: LegS(4).update(torch.zeros(4, 2), torch.zeros(3, 2), 1.5),
        lambda: LegS(4).update(torch.zeros(5, 2), torch.zeros(3, 2), 0),
        lambda: LegS(4).update(torch.zeros(4, 2), torch.zeros(0, 2), 0),
        lambda: LegS(4).scan(torch.zeros(3, 2), 0),
    ],
)
def test_bad_arguments_are_value_errors(call):
    with pytest.raises(ValueError):
        call()


def test_equal_encoders_share_one_bounded_cache():
    """One encoder per layer (deep copies) must not multiply the transition cache."""
    import copy

    first = LegS(order=8, cache_bytes=2**20)
    second = copy.deepcopy(first)
    assert first._cache is second._cache
    assert LegS(order=9, cache_bytes=2**20)._cache is not first._cache


def test_default_cache_holds_one_training_step_of_transitions():
    """At a large order, the default bound keeps a 16-block sequence's transitions between steps
    (a bound below that evicts each before its reuse: a cyclic access defeats LRU)."""
    from memplug.hippo.scale_invariant import default_cache_bytes

    assert LegS(1024)._cache.max_bytes == default_cache_bytes(1024) >= 16 * 2 * 1024**2 * 4  # elastic 16x
    assert default_cache_bytes(8) == 64 * 2**20
    order, blocks, block = 192, 16, 4
    encoder = LegS(order)
    x = torch.randn(1, blocks * block, 2)
    encoder.scan(x, block)
    cached = len(encoder._cache)
    built = []
    original = encoder._ratio_matrices
    encoder._ratio_matrices = lambda *a, **k: built.append(1) or original(*a, **k)
    encoder.scan(x, block)
    assert not built and len(encoder._cache) == cached
    assert LegS(order, cache_bytes=2**20)._cache.max_bytes == 2**20
