"""memplug.hippo.legendre against SciPy/NumPy in float64: values, derivatives, antiderivatives,
orthonormality of the shifted families, and gradients in x."""

import numpy as np
import pytest
import scipy.special as sp
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from numpy.polynomial import legendre as npleg
from reference import jacobi_family, weighted_antiderivative

from memplug.hippo.legendre import (
    jacobi,
    legendre,
    legendre_antiderivative,
    legendre_derivative,
    shifted_jacobi,
    shifted_jacobi_antiderivative,
    shifted_jacobi_derivative,
    shifted_legendre,
    shifted_legendre_antiderivative,
    shifted_legendre_derivative,
)

degrees = st.integers(1, 48)
betas = st.floats(-0.95, 6.0)
points = arrays(np.float64, st.integers(1, 20), elements=st.floats(-1, 1))
unit_points = arrays(np.float64, st.integers(1, 20), elements=st.floats(0, 1))


def close(actual: torch.Tensor, expected: np.ndarray, rtol: float = 1e-12) -> None:
    """Agreement relative to the largest magnitude of each degree (values grow with n)."""
    scale = np.maximum(np.abs(expected).max(axis=tuple(range(expected.ndim - 1)), keepdims=True), 1.0)
    np.testing.assert_allclose(actual.numpy() / scale, expected / scale, rtol=0, atol=rtol)


@given(degrees, points)
def test_legendre_matches_scipy(n, x):
    expected = np.stack([sp.eval_legendre(k, x) for k in range(n)], -1)
    close(legendre(n, torch.from_numpy(x)), expected)


@given(degrees, points)
def test_legendre_derivative_and_antiderivative_match_numpy(n, x):
    basis = np.eye(n)
    slope = np.stack([npleg.legval(x, npleg.legder(basis[k])) for k in range(n)], -1)
    area = np.stack([npleg.legval(x, npleg.legint(basis[k], lbnd=-1)) for k in range(n)], -1)
    close(legendre_derivative(n, torch.from_numpy(x)), slope)
    close(legendre_antiderivative(n, torch.from_numpy(x)), area)


@given(degrees, points, st.sampled_from([0.0, 1.0]), betas)
def test_jacobi_matches_scipy(n, x, alpha, beta):
    expected = np.stack([sp.eval_jacobi(k, alpha, beta, x) for k in range(n)], -1)
    close(jacobi(n, torch.from_numpy(x), alpha, beta), expected)


@given(degrees, unit_points, betas)
def test_shifted_jacobi_matches_reference_and_beta_zero_is_legendre(n, u, beta):
    ut = torch.from_numpy(u)
    close(shifted_jacobi(n, ut, beta), jacobi_family(n, u, beta))
    close(shifted_legendre(n, ut), jacobi_family(n, u, 0.0))
    close(shifted_jacobi(n, ut, 0.0), shifted_legendre(n, ut).numpy(), rtol=1e-13)


@given(degrees, betas)
def test_shifted_families_are_orthonormal(n, beta):
    x, w = sp.roots_jacobi(n + 1, 0.0, beta)  # exact for degree <= 2n + 1
    u, w = torch.from_numpy((x + 1) / 2), torch.from_numpy(w / 2 ** (beta + 1))
    q = shifted_jacobi(n, u, beta)
    gram = q.T @ (w[:, None] * q)
    torch.testing.assert_close(gram, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-11)


@given(degrees, unit_points, betas)
def test_weighted_antiderivative_matches_quadrature(n, u, beta):
    ut = torch.from_numpy(u)
    close(shifted_jacobi_antiderivative(n, ut, beta), weighted_antiderivative(n, u, beta))
    if beta == 0.0:
        close(shifted_legendre_antiderivative(n, ut), weighted_antiderivative(n, u, 0.0))


@given(st.integers(2, 24), betas)  # degree 0 alone is a constant with no graph
def test_derivatives_equal_autograd(n, beta):
    u = torch.linspace(0.01, 0.99, 13, dtype=torch.float64, requires_grad=True)
    for values, slopes in (
        (shifted_jacobi(n, u, beta), shifted_jacobi_derivative(n, u, beta)),
        (shifted_legendre(n, u), shifted_legendre_derivative(n, u)),
    ):
        auto = torch.stack([torch.autograd.grad(values[:, k].sum(), u, retain_graph=True)[0] for k in range(n)], -1)
        torch.testing.assert_close(slopes.detach(), auto, rtol=1e-10, atol=1e-10)


def test_gradcheck_in_x():
    u = torch.tensor([0.03, 0.4, 0.77, 0.98], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: shifted_legendre(9, v), (u,))
    assert torch.autograd.gradcheck(lambda v: shifted_jacobi(9, v, 1.5), (u,))
    assert torch.autograd.gradcheck(lambda v: legendre(9, 2 * v - 1), (u,))


def test_dtype_device_follow_input():
    x = torch.linspace(-1, 1, 5, dtype=torch.float32)
    assert legendre(4, x).dtype == torch.float32
    assert shifted_jacobi(4, x.abs(), 0.5).shape == (5, 4)


@pytest.mark.parametrize(
    "call",
    [
        lambda: legendre(0, torch.zeros(2)),
        lambda: shifted_legendre(2.5, torch.zeros(2)),
        lambda: shifted_jacobi(3, torch.zeros(2), -1.0),
        lambda: jacobi(3, torch.zeros(2), -2.0, 0.0),
    ],
)
def test_bad_arguments_are_value_errors(call):
    with pytest.raises(ValueError):
        call()
