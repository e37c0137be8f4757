"""Retrievers: P sorted positions inside the encoder's support, for any encoder and any time.

Also: the warps are denser near t, fixed distances are clipped into the support, the learned
retriever gets gradients through ``encoder.basis`` and stays sorted and strictly inside the
support after optimizer steps, and bad arguments are specific ValueErrors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import memplug
from reference import fout_basis, jacobi_family, legt_basis

ENCODERS = {
    "legs": dict(order=8),
    "jacobi": dict(order=8, beta=1.0),
    "legt": dict(order=8, window=100.0),
    "fout": dict(order=8, window=100.0),
}
RETRIEVERS = [
    ("uniform", {}),
    ("warped", dict(warp="exponential")),
    ("warped", dict(warp="exponential", rate=0.01)),
    ("warped", dict(warp="power", rate=3.0)),
    ("warped", dict(warp="power", rate=0.5)),
    ("learned", {}),
]

encoder_names = st.sampled_from(sorted(ENCODERS))
retriever_specs = st.sampled_from(RETRIEVERS)
times = st.one_of(st.integers(0, 2000), st.floats(0.0, 1e6), st.integers(0, 10**7))


def encoder(name: str):
    return memplug.make_encoder(name, **ENCODERS[name])


def check_positions(pos: torch.Tensor, lo, hi, samples: int, strict: bool = False) -> None:
    """Shape (..., P), sorted, inside [lo, hi] (strictly inside when ``strict`` and lo < hi)."""
    assert pos.shape[-1] == samples
    assert pos.is_floating_point()
    lo = torch.as_tensor(lo, dtype=torch.float64).unsqueeze(-1)
    hi = torch.as_tensor(hi, dtype=torch.float64).unsqueeze(-1)
    p = pos.detach().to(torch.float64)
    slack = 1e-9 * hi.abs().clamp(min=1)  # rounding of lo + (hi - lo) * f
    assert (p >= lo - slack).all() and (p <= hi + slack).all()
    assert (p[..., 1:] >= p[..., :-1]).all()
    if strict:
        inside = (hi > lo).expand_as(p)
        assert ((p > lo) & (p < hi))[inside].all()
        assert (p[..., 1:] > p[..., :-1])[inside[..., 1:]].all()


@given(encoder_names, retriever_specs, st.integers(1, 40), times)
def test_positions_scalar_time(enc_name, spec, samples, t):
    enc = encoder(enc_name)
    ret = memplug.make_retriever(spec[0], samples=samples, **spec[1])
    pos = ret.positions(t, enc)
    assert pos.shape == (samples,)
    check_positions(pos, *enc.support(t), samples, strict=spec[0] == "learned")


@given(encoder_names, retriever_specs, st.integers(1, 20), st.lists(times, min_size=1, max_size=5),
       st.sampled_from([torch.float64, torch.float32, torch.int64]))
def test_positions_block_times(enc_name, spec, samples, ts, dtype):
    enc = encoder(enc_name)
    ret = memplug.make_retriever(spec[0], samples=samples, **spec[1])
    t = torch.tensor(ts, dtype=torch.float64).to(dtype)
    pos = ret.positions(t, enc)
    assert pos.shape == (len(ts), samples)
    assert pos.dtype == (dtype if dtype.is_floating_point else torch.float64)
    check_positions(pos, *enc.support(t.to(torch.float64)), samples, strict=spec[0] == "learned")
    # row i is what the scalar time ts[i] gives (a 0-d tensor counts as a scalar)
    for i in range(len(ts)):
        row = ret.positions(t[i], enc)
        assert row.shape == (samples,)
        assert torch.allclose(row.detach().double(), pos[i].detach().double(), rtol=1e-6, atol=1e-6)


def reference_positions(name: str, cfg: dict, samples: int, t: float, lo: float, hi: float) -> np.ndarray:
    """The retrievers' positions from their definitions, in NumPy: (P,) sorted, inside [lo, hi]."""
    u = (np.arange(samples) + 0.5) / samples  # cell midpoints; the learned retriever starts there
    if name in ("uniform", "learned"):
        return lo + (hi - lo) * u
    if "distances" in cfg:
        return np.sort(np.clip(t - np.asarray(cfg["distances"], dtype=np.float64), lo, hi))
    warp, rate = cfg.get("warp", "exponential"), cfg.get("rate")
    back = np.expm1((rate or 4.0) * u) / np.expm1(rate or 4.0) if warp == "exponential" else u ** (rate or 2.0)
    return np.sort(hi - (hi - lo) * back)  # a fraction d(u) of the support back from t


def reference_basis(enc_name: str, s: np.ndarray, t: float) -> np.ndarray:
    """The encoders' bases from tests/reference.py (SciPy's polynomials): (P, N)."""
    options = ENCODERS[enc_name]
    if enc_name in ("legs", "jacobi"):
        return jacobi_family(options["order"], s / t, options.get("beta", 0.0))
    lag_basis = legt_basis if enc_name == "legt" else fout_basis
    return lag_basis(options["order"], options["window"], t - s)


@pytest.mark.parametrize("enc_name", sorted(ENCODERS))
@pytest.mark.parametrize("name, cfg", RETRIEVERS + [("warped", dict(distances=[0, 3, 50, 1e9]))])
def test_read_is_the_reference_basis_at_the_reference_positions(enc_name, name, cfg):
    enc = encoder(enc_name)
    ret = memplug.make_retriever(name, **({"samples": 4} | cfg))
    gen = torch.Generator().manual_seed(0)
    times = [50.0, 100.0, 150.0]  # with the 100-token windows of legt and fout: inside and past the first
    blocks = torch.randn(2, 3, 8, 3, generator=gen, dtype=torch.float64)  # (B, nb, N, C)

    tol = 1e-6 if name == "learned" else 1e-9  # the learned positions are float32 parameters

    def want(i: int) -> np.ndarray:
        t = times[i]
        lo, hi = (float(v) for v in enc.support(t))
        phi = reference_basis(enc_name, reference_positions(name, cfg, 4, t, lo, hi), t)  # (P, N)
        return phi @ blocks[:, i].numpy()  # (B, P, C)

    for i, t in enumerate(times):  # one time: (B, N, C) -> (B, P, C)
        np.testing.assert_allclose(ret.read(enc, blocks[:, i], t).detach().numpy(), want(i), rtol=tol, atol=tol)
    batched = ret.read(enc, blocks, torch.tensor(times, dtype=torch.float64))  # (B, nb, P, C): block i at times[i]
    assert batched.shape == (2, 3, 4, 3)
    for i in range(len(times)):
        np.testing.assert_allclose(batched[:, i].detach().numpy(), want(i), rtol=tol, atol=tol)


def test_uniform_positions_are_cell_midpoints():
    enc = encoder("legt")  # window 100
    ret = memplug.make_retriever("uniform", samples=4)
    assert ret.positions(250, enc).tolist() == [162.5, 187.5, 212.5, 237.5]
    assert ret.positions(40, enc).tolist() == [5.0, 15.0, 25.0, 35.0]


@given(st.sampled_from(["exponential", "power"]), st.floats(1.0, 20.0), st.integers(3, 40), times)
def test_warps_are_denser_near_t(warp, rate, samples, t):
    enc = encoder("legs")
    pos = memplug.make_retriever("warped", samples=samples, warp=warp, rate=rate).positions(t, enc)
    gaps = pos.diff()
    # spacing shrinks (weakly) from the oldest sample to the newest
    assert (gaps[1:] <= gaps[:-1] + 1e-9 * max(1.0, t)).all()


def test_warp_rates_and_limits():
    enc = encoder("legs")
    uniform = memplug.make_retriever("uniform", samples=8).positions(800, enc)
    power1 = memplug.make_retriever("warped", samples=8, warp="power", rate=1.0).positions(800, enc)
    assert torch.allclose(power1, uniform)
    flat = memplug.make_retriever("warped", samples=8, warp="exponential", rate=1e-6).positions(800, enc)
    assert torch.allclose(flat, uniform, atol=1e-3)
    # closed forms: exponential d(u) = (e^(ru) - 1)/(e^r - 1), power d(u) = u^r, distance back from t
    u = (np.arange(8) + 0.5) / 8
    for warp, rate, d in [("exponential", 4.0, np.expm1(4 * u) / np.expm1(4.0)), ("power", 2.0, u**2)]:
        pos = memplug.make_retriever("warped", samples=8, warp=warp, rate=rate).positions(800, enc)
        np.testing.assert_allclose(pos.numpy(), np.sort(800 - 800 * d), rtol=1e-12)
    steep = memplug.make_retriever("warped", samples=8, rate=8.0).positions(800, enc)
    assert steep[-1] > memplug.make_retriever("warped", samples=8, rate=2.0).positions(800, enc)[-1]


@given(st.lists(st.floats(0.0, 1e7), min_size=1, max_size=12), times, encoder_names)
def test_fixed_distances_clipped_into_support(distances, t, enc_name):
    enc = encoder(enc_name)
    ret = memplug.make_retriever("warped", distances=distances)
    assert ret.samples == len(distances)
    pos = ret.positions(t, enc)
    lo, hi = enc.support(t)
    expected = np.sort(np.clip(float(t) - np.asarray(distances), lo, hi))
    np.testing.assert_allclose(pos.numpy(), expected, rtol=1e-12, atol=1e-9)
    check_positions(pos, lo, hi, len(distances))
    batched = ret.positions(torch.tensor([float(t), float(t) + 5]), enc)
    assert batched.shape == (2, len(distances))


@pytest.mark.parametrize(
    "cfg, match",
    [
        (dict(samples=0), "samples"),
        (dict(samples=2.5), "samples"),
        (dict(samples=4, warp="linear"), "warp"),
        (dict(samples=4, rate=0.0), "rate"),
        (dict(samples=4, rate=-1.0), "rate"),
        (dict(samples=4, warp="power", rate=math.inf), "rate"),
        (dict(distances=[]), "distances"),
        (dict(distances=[1.0, -2.0]), "distances"),
        (dict(distances=[1.0, 2.0], samples=3), "samples"),
        (dict(distances=[1.0], rate=2.0), "rate"),
    ],
)
def test_warped_errors(cfg, match):
    with pytest.raises(ValueError, match=match):
        memplug.make_retriever("warped", **cfg)


@pytest.mark.parametrize("name", ["uniform", "learned"])
def test_samples_errors(name):
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="samples"):
            memplug.make_retriever(name, samples=bad)


# ---- learned --------------------------------------------------------------------------------


def test_learned_starts_uniform():
    enc = encoder("legs")
    learned = memplug.make_retriever("learned", samples=6)
    uniform = memplug.make_retriever("uniform", samples=6)
    assert torch.allclose(learned.positions(300, enc), uniform.positions(300, enc), rtol=1e-6)
    assert [n for n, _ in learned.named_parameters()] == ["logits"]


@pytest.mark.parametrize("enc_name", sorted(ENCODERS))
def test_learned_gets_gradients_through_basis(enc_name):
    enc = encoder(enc_name)
    ret = memplug.make_retriever("learned", samples=5)
    state = torch.randn(8, 2, dtype=torch.float64)  # (N, C)
    target = torch.randn(5, 2, dtype=torch.float64)
    loss = (ret.read(enc, state, 80) - target).square().sum()
    loss.backward()
    grad = ret.logits.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert (grad.abs() > 0).sum() >= 5  # softmax: P + 1 logits, gradient summing to zero


@given(encoder_names, st.integers(1, 12), st.integers(0, 2**16))
def test_learned_stays_sorted_and_inside_after_steps(enc_name, samples, seed):
    gen = torch.Generator().manual_seed(seed)
    enc = encoder(enc_name)
    ret = memplug.make_retriever("learned", samples=samples)
    opt = torch.optim.Adam(ret.parameters(), lr=0.5)  # large steps: the map must keep the order
    t = torch.tensor([40.0, 90.0, 160.0])
    state = torch.randn(3, 8, 2, generator=gen)  # (nb, N, C)
    target = torch.randn(3, samples, 2, generator=gen)
    before = ret.positions(t, enc).detach().clone()
    for _ in range(5):
        opt.zero_grad()
        loss = (ret.read(enc, state, t) - target).square().mean()
        loss.backward()
        opt.step()
    pos = ret.positions(t, enc)
    check_positions(pos, *enc.support(t.double()), samples, strict=True)
    assert not torch.equal(pos.detach(), before)
