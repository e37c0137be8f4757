"""memplug.hippo.quadrature: Gauss-Jacobi rules against SciPy, and exactness on moments."""

import math

import numpy as np
import pytest
import scipy.special as sp
import torch
from hypothesis import given
from hypothesis import strategies as st

from memplug.hippo.quadrature import gauss_jacobi, gauss_legendre, shifted_gauss_jacobi, shifted_gauss_legendre

exponents = st.floats(-0.95, 6.0)


@given(st.integers(1, 64), st.sampled_from([0.0, 1.0, -0.5]), exponents)
def test_gauss_jacobi_matches_scipy(n, alpha, beta):
    x, w = gauss_jacobi(n, alpha, beta)
    xr, wr = sp.roots_jacobi(n, alpha, beta)
    assert x.dtype == w.dtype == torch.float64
    np.testing.assert_allclose(x.numpy(), xr, rtol=0, atol=1e-14)
    # SciPy's own weights drift by ~1e-10 relative at n = 64; ours are checked exactly below
    np.testing.assert_allclose(w.numpy(), wr, rtol=1e-9)


@given(st.integers(1, 80))
def test_gauss_legendre_matches_scipy(n):
    x, w = gauss_legendre(n)
    xr, wr = sp.roots_legendre(n)
    np.testing.assert_allclose(x.numpy(), xr, rtol=0, atol=1e-14)
    np.testing.assert_allclose(w.numpy(), wr, rtol=1e-9)


def check_moments(n: int, beta: float) -> None:
    """∫_0^1 u^k u^β du = 1/(k + β + 1) for every k < 2n (to 1e-10: a node near 0 carries an
    absolute error of 1e-16, ~1e-11 relative to its distance from the end at n = 257)."""
    u, w = shifted_gauss_jacobi(n, beta)
    k = torch.arange(2 * n, dtype=torch.float64)
    moments = (w[None, :] * u[None, :] ** k[:, None]).sum(-1)
    torch.testing.assert_close(moments, 1 / (k + beta + 1), rtol=1e-10, atol=0)
    assert bool((u > 0).all() and (u < 1).all() and (u[1:] > u[:-1]).all())


@given(st.integers(1, 80), exponents)
def test_shifted_rule_is_exact_on_moments(n, beta):
    check_moments(n, beta)


@pytest.mark.parametrize("beta", [0.0, -0.9, 2.5])
def test_large_rule_is_exact_on_moments(beta):
    check_moments(257, beta)


def test_shifted_legendre_is_beta_zero():
    u, w = shifted_gauss_legendre(7)
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-14)
    torch.testing.assert_close(u, shifted_gauss_jacobi(7, 0.0)[0])


@pytest.mark.parametrize("args", [(0, 0.0, 0.0), (3, -1.0, 0.0), (3, 0.0, float("nan")), (2.0, 0.0, 0.0)])
def test_bad_arguments_are_value_errors(args):
    with pytest.raises(ValueError):
        gauss_jacobi(*args)


def test_bad_arguments_are_refused_after_a_good_call_was_cached():
    """The rule is cached by its arguments, and 2.0 == 2 there: the check must come first."""
    gauss_jacobi(2, 0.0, 0.0)
    with pytest.raises(ValueError):
        gauss_jacobi(2.0, 0.0, 0.0)
