"""Time-invariant encoders (LegT, FouT) against float64 NumPy/SciPy references.

- matrices and bases equal the HiPPO formulas, written independently in reference.py;
- ``update`` over any chunking == ``scan`` with any block == one ``update`` == the float64
  per-token ZOH recurrence (float64 1e-12, float32 1e-5 relative);
- linearity, time invariance (the position never matters), fixed state shape;
- reconstruction of a band-limited signal inside the window, with measured bounds, and the
  window length is θ (not 2θ);
- the discretisation rules and the block transition against SciPy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from memplug.hippo.time_invariant import TimeInvariantMeasure
from memplug.hippo.discretize import DISCRETIZATIONS, block_transition, zoh
from memplug.plugins.encoders.fout import FouT
from memplug.plugins.encoders.legt import LegT
from memplug.testing import strategies as mst
from reference import fout_basis, fout_matrices, legt_basis, legt_matrices, lti_token_states

MEASURES = {"legt": (LegT, legt_matrices, legt_basis), "fout": (FouT, fout_matrices, fout_basis)}
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}

orders = st.integers(1, 12)
windows = st.floats(0.5, 300.0)
names = st.sampled_from(sorted(MEASURES))


def rel(actual: torch.Tensor, expected: np.ndarray | torch.Tensor) -> float:
    """max |actual - expected| / max |expected|, in float64."""
    expected = torch.as_tensor(expected, dtype=torch.float64)
    diff = (actual.detach().to(torch.float64) - expected).abs().max().item()
    return diff / max(expected.abs().max().item(), 1e-300)


def stream(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- the formulas ---------------------------------------------------------------------------


@given(names, orders, windows)
def test_matrices_match_reference(name, order, window):
    cls, matrices, _ = MEASURES[name]
    A, B = cls(order=order, window=window).ode_matrices()
    A_ref, B_ref = matrices(order, window)
    assert A.dtype == torch.float64 and A.shape == (order, order) and B.shape == (order,)
    np.testing.assert_allclose(A.numpy(), A_ref, rtol=1e-14, atol=1e-14 * np.abs(A_ref).max())
    np.testing.assert_allclose(B.numpy(), B_ref, rtol=1e-14, atol=0)


@given(names, orders, windows, st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6))
def test_basis_matches_reference(name, order, window, fractions):
    cls, _, basis = MEASURES[name]
    enc = cls(order=order, window=window)
    t = 1000.0
    pos = torch.tensor([t - f * window for f in fractions], dtype=torch.float64)
    phi = enc.basis(pos, t)
    assert phi.shape == (len(fractions), order)
    assert rel(phi, basis(order, window, t - pos.numpy())) < 1e-11


def test_basis_is_differentiable_in_positions():
    enc = LegT(order=6, window=40.0)
    pos = torch.tensor([70.0, 85.5, 99.0], dtype=torch.float64, requires_grad=True)
    phi = enc.basis(pos, torch.tensor(100.0, dtype=torch.float64))
    (grad,) = torch.autograd.grad(phi.sum(), pos)
    # d/ds of sqrt(2n+1) P_n(1 - 2(t-s)/θ) = sqrt(2n+1) P_n'(.) 2/θ
    u = 1 - 2 * (100.0 - pos.detach().numpy()) / 40.0
    n = np.arange(6)
    deriv = [np.polynomial.legendre.Legendre.basis(k).deriv()(u) for k in n]
    expected = (np.sqrt(2 * n + 1)[:, None] * np.array(deriv) * 2 / 40.0).sum(0)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-12)


# ---- update / scan / chunking ---------------------------------------------------------------


@st.composite
def streams_and_chunkings(draw):
    length = draw(st.integers(1, 48))
    chunks = draw(mst.chunkings(length, max_chunks=6))
    return length, chunks, draw(st.integers(1, length)), draw(st.integers(0, 2**16))


@given(names, orders, windows, streams_and_chunkings(), st.sampled_from([torch.float64, torch.float32]),
       st.sampled_from([0, 7, 1_000_000]), st.booleans())
def test_update_chunking_scan_and_reference_agree(name, order, window, case, dtype, t0, with_state):
    length, chunks, block, seed = case
    cls, matrices, _ = MEASURES[name]
    enc = cls(order=order, window=window)
    x64 = stream(seed, 2, length, 3)  # (B, T, C)
    s64 = stream(seed + 1, 2, order, 3) if with_state else torch.zeros(2, order, 3, dtype=torch.float64)
    A, B = matrices(order, window)
    ref = np.stack([lti_token_states(A, B, x64[b].numpy(), s64[b].numpy()) for b in range(2)])  # (B, T, N, C)
    x, s = x64.to(dtype), s64.to(dtype)
    tol = TOL[dtype]

    one = enc.update(s, x, t0)
    assert one.dtype == dtype and one.shape == (2, order, 3)
    assert rel(one, ref[:, -1]) < tol

    chunked, pos = s, t0
    for c in chunks:
        chunked = enc.update(chunked, x[:, pos - t0 : pos - t0 + c], pos)
        pos += c
    assert rel(chunked, ref[:, -1]) < tol

    scanned = enc.scan(x, block, t0=t0, state=s if with_state else None)
    ends = [min(e, length) - 1 for e in range(block, length + block, block)]
    assert scanned.shape == (2, len(ends), order, 3) and scanned.dtype == dtype
    assert rel(scanned, ref[:, ends]) < tol


@given(names, orders, windows, st.integers(1, 40), st.integers(0, 2**16), st.floats(-3, 3), st.floats(-3, 3))
def test_linearity(name, order, window, length, seed, a, b):
    enc = MEASURES[name][0](order=order, window=window)
    x, y = stream(seed, length, 2), stream(seed + 1, length, 2)
    sx, sy = stream(seed + 2, order, 2), stream(seed + 3, order, 2)
    lhs = enc.update(a * sx + b * sy, a * x + b * y, 5)
    rhs = a * enc.update(sx, x, 5) + b * enc.update(sy, y, 5)
    scale = max(abs(a), abs(b), 1e-3) * max(enc.update(sx, x, 5).abs().max(), enc.update(sy, y, 5).abs().max())
    assert (lhs - rhs).abs().max() <= 1e-12 * scale


@given(names, orders, st.integers(1, 30), st.integers(0, 10**9))
def test_state_shape_and_value_independent_of_position(name, order, length, t0):
    enc = MEASURES[name][0](order=order, window=64.0)
    x = stream(length, length, 2)
    s0 = enc.init_state(channels=2, dtype=torch.float64)
    at_zero, at_t0 = enc.update(s0, x, 0), enc.update(s0, x, t0)
    assert at_t0.shape == s0.shape == (order, 2)
    assert torch.equal(at_zero, at_t0)  # time invariance: the same cached block, the same numbers
    assert enc.scan(x, 4, t0=t0).shape == (math.ceil(length / 4), order, 2)


@pytest.mark.parametrize("name", sorted(MEASURES))
def test_bf16_tokens_accumulate_in_the_state_dtype(name):
    # bf16 tokens (keys under autocast) are projected in bf16 and accumulated in float32
    enc = MEASURES[name][0](order=6, window=30.0)
    x = stream(0, 20, 2).to(torch.bfloat16)
    state = stream(1, 6, 2).float()
    exact = enc.update(state.double(), x.double(), 0)
    stepped = enc.update(state, x, 0)
    assert stepped.dtype == torch.float32
    torch.testing.assert_close(stepped.double(), exact, rtol=2e-2, atol=2e-2)
    scanned = enc.scan(x, 7, state=state)[-1]
    assert scanned.dtype == torch.float32
    torch.testing.assert_close(scanned.double(), exact, rtol=2e-2, atol=2e-2)
    assert enc.update(state, x.double(), 0).dtype == torch.float64  # a wider input widens the state
    # what is carried keeps float32 precision (~1e-7): silent tokens leave the decayed state alone
    silent = torch.zeros_like(x)
    assert rel(enc.update(state, silent, 0), enc.update(state.double(), silent.double(), 0)) < 1e-5
    assert rel(enc.scan(silent, 7, state=state), enc.scan(silent.double(), 7, state=state.double())) < 1e-5


def test_block_cache_is_bounded():
    enc = LegT(order=4, window=16.0, cache_size=3)
    s = enc.init_state(channels=1)
    for length in range(1, 20):
        s = enc.update(s, torch.ones(length, 1), 0)
        assert len(enc._blocks) <= 3
    enc.update(s, torch.ones(19, 1), 0)  # the most recent length is still cached
    assert any(key[1] == 19 for key in enc._blocks)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="order"):
        LegT(order=0, window=10)
    with pytest.raises(ValueError, match="window"):
        FouT(order=4, window=0)
    enc = LegT(order=4, window=10)
    with pytest.raises(ValueError, match="block"):
        enc.scan(torch.ones(5, 1), 0)
    with pytest.raises(ValueError, match="t0"):
        enc.update(enc.init_state(channels=1), torch.ones(5, 1), -1)
    with pytest.raises(ValueError, match="x must be"):
        enc.update(enc.init_state(channels=1), torch.ones(0, 1), 0)


def test_support():
    enc = FouT(order=4, window=100)
    assert enc.support(30) == (0.0, 30)
    assert enc.support(250.0) == (150.0, 250.0)
    lo, hi = enc.support(torch.tensor([30.0, 250.0]))
    assert lo.tolist() == [0.0, 150.0] and hi.tolist() == [30.0, 250.0]


# ---- reconstruction and the window length ---------------------------------------------------

ORDER, WINDOW, LENGTH = 32, 500.0, 1500  # the set-up of docs/custom-measures.md's reconstruction
# one instance each, so the examples share the cached block transition
SETUP = {name: cls(order=ORDER, window=WINDOW) for name, (cls, _, _) in MEASURES.items()}


def reconstruction_error(enc: TimeInvariantMeasure, f, dtype=torch.float64) -> float:
    """Relative L2 error of the reconstruction over the window, tokens x_j = f(j + 1/2)."""
    x = torch.tensor(f(np.arange(LENGTH) + 0.5), dtype=dtype)[:, None]  # (T, 1)
    state = enc.update(enc.init_state(channels=1, dtype=dtype), x, 0)
    pos = torch.linspace(LENGTH - WINDOW + 0.5, LENGTH - 0.5, 1000, dtype=torch.float64)
    rec = (enc.basis(pos, LENGTH).to(dtype) @ state)[:, 0].double()
    true = torch.tensor(f(pos.numpy()))
    return ((rec - true).norm() / true.norm()).item()


def two_tone(p1: float, p2: float, phase1: float = 0.0, phase2: float = 1.0, amp: float = 0.5):
    return lambda s: np.sin(2 * np.pi * s / p1 + phase1) + amp * np.cos(2 * np.pi * s / p2 + phase2)


# measured: LegT 3.5e-5, FouT 0.128 (Gibbs ringing at the window's ends); float32 the same
@pytest.mark.parametrize("name, bound", [("legt", 1e-4), ("fout", 0.15)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reconstructs_two_tone_signal(name, bound, dtype):
    assert reconstruction_error(SETUP[name], two_tone(300.0, 190.0), dtype) < bound


# over 300 random draws: LegT at most 2.0e-4, FouT at most 0.23
@given(st.floats(150.0, 1000.0), st.floats(150.0, 1000.0), st.floats(0, 2 * np.pi), st.floats(0, 2 * np.pi),
       st.floats(0.2, 1.0))
def test_reconstructs_band_limited_signals(p1, p2, phase1, phase2, amp):
    f = two_tone(p1, p2, phase1, phase2, amp)
    assert reconstruction_error(SETUP["legt"], f) < 5e-4
    assert reconstruction_error(SETUP["fout"], f) < 0.3


def test_legt_window_is_theta_on_a_ramp():
    enc = SETUP["legt"]
    x = torch.arange(LENGTH, dtype=torch.float64)[:, None] + 0.5  # f(s) = s
    state = enc.update(enc.init_state(channels=1, dtype=torch.float64), x, 0)
    lag = torch.linspace(0.05 * WINDOW, 0.95 * WINDOW, 50, dtype=torch.float64)
    rec = (enc.basis(LENGTH - lag, LENGTH) @ state)[:, 0]
    # f(t - x) = t - x; a window of 2θ read as θ would give t - 2x (hundreds of tokens off)
    assert (rec - (LENGTH - lag)).abs().max() < 0.01


@pytest.mark.parametrize("name, tol", [("legt", 2e-3), ("fout", 0.06)])
@given(st.floats(0.2, 0.8))
def test_window_is_theta_on_a_bump(name, tol, where):
    """A bump at lag ``where * θ`` is reconstructed there (a halved window would put it at
    ``where * θ / 2`` or ``2 * where * θ``)."""
    enc = SETUP[name]
    centre = LENGTH - where * WINDOW

    def f(s):
        return np.exp(-(((s - centre) / 40.0) ** 2))

    x = torch.tensor(f(np.arange(LENGTH) + 0.5))[:, None]
    state = enc.update(enc.init_state(channels=1, dtype=torch.float64), x, 0)
    lag = torch.linspace(0, WINDOW, 1001, dtype=torch.float64)
    rec = (enc.basis(LENGTH - lag, LENGTH) @ state)[:, 0]
    assert abs(lag[rec.argmax()].item() - where * WINDOW) < 5.0
    assert (rec - torch.tensor(f(LENGTH - lag.numpy()))).abs().max() < tol


# ---- the discretisation ops -----------------------------------------------------------------


@given(st.floats(-50.0, -1e-6), st.floats(-5.0, 5.0), st.floats(1e-3, 3.0))
def test_zoh_scalar_closed_form(a, b, dt):
    Ad, Bd = zoh(torch.tensor([[a]], dtype=torch.float64), torch.tensor([b], dtype=torch.float64), dt)
    assert Ad.item() == pytest.approx(math.exp(a * dt), rel=1e-14)
    assert Bd.item() == pytest.approx(b * math.expm1(a * dt) / a, rel=1e-13, abs=1e-300)


@given(st.integers(1, 8), st.floats(1e-3, 2.0), st.integers(0, 2**16))
def test_zoh_symmetric_closed_form(n, dt, seed):
    """For A = V diag(λ) Vᵀ: Ā = V e^(λ dt) Vᵀ and B̄ = V diag((e^(λ dt) - 1)/λ) Vᵀ B."""
    V = np.linalg.qr(stream(seed, n, n).numpy())[0]
    lam = -np.abs(stream(seed + 1, n).numpy()) * 10 - 1e-3
    A = torch.tensor(V @ np.diag(lam) @ V.T)
    B = stream(seed + 2, n)
    Ad, Bd = zoh(A, B, dt)
    assert rel(Ad, V @ np.diag(np.exp(lam * dt)) @ V.T) < 1e-12
    assert rel(Bd, V @ np.diag(np.expm1(lam * dt) / lam) @ V.T @ B.numpy()) < 1e-12


@pytest.mark.parametrize("rule, order", [("euler", 1), ("backward", 1), ("bilinear", 2)])
def test_other_rules_converge_to_zoh_at_their_order(rule, order):
    A = stream(0, 5, 5) - 3 * torch.eye(5, dtype=torch.float64)
    B = stream(1, 5)
    errors = []
    for dt in (1e-2, 5e-3):
        Ad, Bd = DISCRETIZATIONS[rule](A, B, dt)
        Az, Bz = zoh(A, B, dt)
        errors.append(max((Ad - Az).abs().max().item(), (Bd - Bz).abs().max().item()))
    # local error O(dt^(order+1)): halving dt divides it by 2^(order+1)
    assert errors[0] / errors[1] == pytest.approx(2 ** (order + 1), rel=0.1)


def test_discretizations_broadcast_batched_steps():
    A, B = stream(0, 4, 4) - 2 * torch.eye(4, dtype=torch.float64), stream(1, 4)
    dt = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64)
    for rule in DISCRETIZATIONS.values():
        Ad, Bd = rule(A, B, dt)
        assert Ad.shape == (3, 4, 4) and Bd.shape == (3, 4)
        single = rule(A, B, 0.5)
        assert torch.allclose(Ad[1], single[0], rtol=1e-14) and torch.allclose(Bd[1], single[1], rtol=1e-14)
    with pytest.raises(ValueError, match="dt"):
        zoh(A, B, 0.0)


@given(st.integers(1, 6), st.integers(1, 70), st.integers(0, 2**16))
def test_block_transition_equals_steps(n, length, seed):
    Ad = stream(seed, n, n) / (2 * n)
    Bd = stream(seed + 1, n)
    power, kernel = block_transition(Ad, Bd, length)
    assert power.shape == (n, n) and kernel.shape == (n, length)
    c, x = stream(seed + 2, n, 2), stream(seed + 3, length, 2)
    steps = c
    for j in range(length):
        steps = Ad @ steps + Bd[:, None] * x[j]
    assert rel(power @ c + kernel @ x, steps) < 1e-12


def test_batched_discretisation_matches_one_matrix_at_a_time():
    """Regression: torch 2.13's batched CPU solve is wrong for N >= 160 on two threads."""
    from memplug.hippo.discretize import backward, bilinear

    torch.manual_seed(0)
    A = -torch.eye(192, dtype=torch.float64) * 3 + 0.05 * torch.randn(3, 192, 192, dtype=torch.float64)
    B = torch.randn(3, 192, dtype=torch.float64)
    for rule in (backward, bilinear):
        Ad, Bd = rule(A, B, 0.1)
        for i in range(3):
            Ai, Bi = rule(A[i], B[i], 0.1)
            torch.testing.assert_close(Ad[i], Ai, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(Bd[i], Bi, rtol=1e-12, atol=1e-12)
