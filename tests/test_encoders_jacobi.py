"""Jacobi (weight (s/t)^β): exact against the float64 projection from its definition, chunking
and scan invariance, polynomial reproduction, its (A, B), and β = 0 equal to LegS."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from memplug.plugins.encoders.jacobi import Jacobi
from memplug.plugins.encoders.legs import LegS
from reference import jacobi_matrices, polynomial_projection
from streams import check_chunking_and_scan, check_exact_projection, streams

betas = st.floats(-0.9, 4.0)


@given(streams(max_order=12, max_tokens=60), betas)
def test_state_is_the_exact_projection_at_any_t_and_chunking(stream, beta):
    check_exact_projection(Jacobi(stream.order, beta=beta), stream, beta=beta)


@given(
    st.integers(1, 12),
    st.integers(1, 60),
    st.lists(st.integers(1, 59), max_size=5),
    st.integers(1, 20),
    st.one_of(st.just(0), st.integers(1, 500), st.integers(10**5, 10**6)),
    betas,
    st.sampled_from([torch.float64, torch.float32]),
    st.integers(0, 2**31),
)
def test_update_chunking_and_scan_agree(order, tokens, cuts, block, t0, beta, dtype, seed):
    cuts = sorted({c for c in cuts if c < tokens})
    x = torch.randn(2, tokens, 3, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    check_chunking_and_scan(Jacobi(order, beta=beta), x, cuts, block, t0, rtol=rtol, seed=seed + 1)


@given(st.integers(1, 16), st.floats(1.0, 1e6), betas, st.integers(0, 2**31))
def test_basis_reproduces_polynomials_of_degree_below_n(order, t, beta, seed):
    rng = np.random.default_rng(seed)
    degree = rng.integers(0, order)
    coefficients = rng.standard_normal(degree + 1) / t ** np.arange(degree + 1)
    c = torch.from_numpy(polynomial_projection(coefficients, t, order, beta))
    s = np.sort(rng.uniform(0, t, size=9))
    values = Jacobi(order, beta=beta).basis(torch.from_numpy(s), t) @ c
    expected = np.polynomial.polynomial.polyval(s, coefficients)
    np.testing.assert_allclose(values.numpy(), expected, rtol=0, atol=1e-10 * max(1.0, np.abs(expected).max()))


@given(st.integers(1, 16), betas, st.floats(0.01, 0.999))
def test_matrices_and_transition_match_the_closed_form(order, beta, r):
    encoder = Jacobi(order, beta=beta)
    A, B = jacobi_matrices(order, beta)
    A_q, B_q = encoder.ode_matrices()
    np.testing.assert_allclose(A_q.numpy(), A, rtol=0, atol=1e-11 * (order + abs(beta)))
    np.testing.assert_allclose(B_q.numpy(), B, rtol=1e-12)
    expm = torch.linalg.matrix_exp(torch.from_numpy(A) * math.log(1 / r))
    torch.testing.assert_close(encoder.transition(r), expm, rtol=0, atol=1e-11)


@given(st.integers(1, 16), st.integers(1, 50), st.integers(1, 16), st.integers(0, 10**6), st.integers(0, 2**31))
def test_beta_zero_equals_legs(order, tokens, block, t0, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, 2, dtype=torch.float64, generator=gen)
    jacobi, legs = Jacobi(order, beta=0.0), LegS(order)
    start = torch.zeros(order, 2, dtype=torch.float64)
    if t0:  # a state from before t0
        start = torch.randn(order, 2, dtype=torch.float64, generator=gen)
    torch.testing.assert_close(jacobi.scan(x, block, t0, start), legs.scan(x, block, t0, start), rtol=1e-12, atol=1e-12)
    pos = torch.linspace(0, t0 + tokens, 7, dtype=torch.float64)
    torch.testing.assert_close(jacobi.basis(pos, t0 + tokens), legs.basis(pos, t0 + tokens), rtol=1e-12, atol=1e-12)


def test_beta_weighs_recent_history_more():
    """A unit token long ago moves the state less as β grows; a recent one more (relative to β = 0)."""
    t, order = 1000, 8
    old, new = torch.zeros(t, 1, dtype=torch.float64), torch.zeros(t, 1, dtype=torch.float64)
    old[10], new[990] = 1.0, 1.0

    def energy(beta, x):
        encoder = Jacobi(order, beta=beta)
        return float(encoder.update(encoder.init_state(channels=1, dtype=torch.float64), x, 0).norm())

    assert energy(2.0, old) < energy(0.0, old) and energy(2.0, new) > energy(0.0, new)


def test_basis_is_differentiable_in_positions():
    encoder = Jacobi(6, beta=1.5)
    pos = torch.tensor([0.5, 3.0, 7.25, 9.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: encoder.basis(p, 10.0), (pos,))


def test_block_input_cache_is_reused_in_training():
    encoder = Jacobi(8, beta=1.0)
    x = torch.randn(3, 128, 4)
    first = encoder.scan(x, 32)
    size = len(encoder._cache)
    torch.testing.assert_close(encoder.scan(x, 32), first)
    assert len(encoder._cache) == size


@pytest.mark.parametrize("beta", [-1.0, -3.0, float("inf"), float("nan")])
def test_beta_must_exceed_minus_one(beta):
    with pytest.raises(ValueError):
        Jacobi(4, beta=beta)
