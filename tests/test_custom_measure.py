"""A measure defined outside the package, on TimeInvariantMeasure, behaves like a built-in.

The measure here is a translated Laguerre measure written independently of the docs example
(it takes its decay time as an argument): registered in code, built with ``make_encoder``,
listed by ``available``, exact against a float64 reference, reconstructing a signal, and read
by every retriever. The example in docs/custom-measures.md is run as written and checked
against it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import scipy.special
import torch
from hypothesis import given
from hypothesis import strategies as st

import memplug
from memplug.core import manager
from memplug.hippo.time_invariant import TimeInvariantMeasure
from reference import lti_token_states

DOCS = Path(__file__).resolve().parents[1] / "docs" / "custom-measures.md"


class Laguerre(TimeInvariantMeasure):
    """Weight e^(-x/τ)/τ on the lag x; basis L_n(x/τ); c_n' = (f - Σ_{k<=n} c_k)/τ."""

    name = "test-laguerre"

    def __init__(self, order: int = 16, window: float = 256.0, timescale: float = 16.0):
        super().__init__(order, window)
        self.timescale = timescale

    def ode_matrices(self):
        lower = np.tril(np.ones((self.order, self.order)))
        return -lower / self.timescale, np.full(self.order, 1.0 / self.timescale)

    def lag_basis(self, lag):
        y = lag / self.timescale
        out = [torch.ones_like(y), 1 - y]
        for n in range(1, self.order - 1):
            out.append(((2 * n + 1 - y) * out[n] - n * out[n - 1]) / (n + 1))
        return torch.stack(out[: self.order], dim=-1)


@pytest.fixture
def plugins(monkeypatch):
    """A fresh process-wide plugin manager for this test, the previous one restored after."""
    monkeypatch.setattr(manager, "_PLUGINS", None)
    memplug.register(Laguerre)
    return manager.get_plugin_manager()


def laguerre_reference(order: int, timescale: float) -> tuple[np.ndarray, np.ndarray]:
    return -np.tril(np.ones((order, order))) / timescale, np.full(order, 1.0 / timescale)


def test_registered_listed_and_built(plugins):
    assert "test-laguerre" in memplug.available("encoder")
    assert plugins.registries["encoder"].entries()["test-laguerre"].provider == "code"
    enc = memplug.make_encoder("test-laguerre", order=8, window=100.0, timescale=5.0)
    assert isinstance(enc, Laguerre) and enc.order == 8 and enc.support(250) == (150.0, 250)


@given(st.integers(1, 12), st.floats(0.5, 50.0), st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**16),
       st.sampled_from([torch.float64, torch.float32]))
def test_update_scan_chunks_match_float64_reference(order, timescale, length, block, seed, dtype):
    enc = Laguerre(order=order, window=64.0, timescale=timescale)
    x64 = torch.randn(length, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    ref = lti_token_states(*laguerre_reference(order, timescale), x64.numpy())  # (T, N, C)
    x = x64.to(dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    scale = np.abs(ref).max()
    state = enc.init_state(channels=2, dtype=dtype)
    one = enc.update(state, x, 0)
    assert np.abs(one.double().numpy() - ref[-1]).max() <= tol * scale
    chunked = state
    for start in range(0, length, 3):
        chunked = enc.update(chunked, x[start : start + 3], start)
    assert np.abs(chunked.double().numpy() - ref[-1]).max() <= tol * scale
    scanned = enc.scan(x, block)
    ends = [min(e, length) - 1 for e in range(block, length + block, block)]
    assert np.abs(scanned.double().numpy() - ref[ends]).max() <= tol * scale


@given(st.integers(1, 20), st.floats(0.5, 100.0))
def test_basis_is_orthonormal_under_the_weight(order, timescale):
    """(1/τ) ∫_0^∞ L_n(x/τ) L_m(x/τ) e^(-x/τ) dx = δ_nm, by Gauss-Laguerre quadrature."""
    enc = Laguerre(order=order, timescale=timescale)
    y, w = scipy.special.roots_laguerre(order + 2)
    phi = enc.lag_basis(torch.tensor(y * timescale)).numpy()  # (nodes, N)
    np.testing.assert_allclose(phi.T @ (w[:, None] * phi), np.eye(order), atol=1e-10)


def test_reconstructs_two_tone_signal():
    enc = Laguerre(order=32, window=500.0, timescale=500.0 / 16)
    s = torch.arange(1500, dtype=torch.float64) + 0.5
    f = lambda s: torch.sin(2 * torch.pi * s / 300) + 0.5 * torch.cos(2 * torch.pi * s / 190 + 1)  # noqa: E731
    state = enc.update(enc.init_state(channels=1, dtype=torch.float64), f(s)[:, None], 0)
    pos = torch.linspace(1000.5, 1499.5, 1000, dtype=torch.float64)
    error = ((enc.basis(pos, 1500) @ state)[:, 0] - f(pos)).norm() / f(pos).norm()
    assert error < 1e-2  # measured 4.2e-3
    recent = pos > 1400  # the last fifth of the window, where the weight is largest
    error_recent = ((enc.basis(pos[recent], 1500) @ state)[:, 0] - f(pos[recent])).norm() / f(pos[recent]).norm()
    assert error_recent < 1e-3


@pytest.mark.parametrize("name", ["uniform", "warped", "learned"])
def test_every_retriever_reads_it(plugins, name):
    enc = memplug.make_encoder("test-laguerre", order=8, window=100.0, timescale=10.0)
    ret = memplug.make_retriever(name, samples=5)
    state = enc.update(enc.init_state(channels=3), torch.randn(120, 3), 0)
    out = ret.read(enc, state, 120)
    assert out.shape == (5, 3) and torch.isfinite(out).all()
    if name == "learned":
        out.square().sum().backward()
        assert ret.logits.grad.abs().sum() > 0


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_docs_example_runs_and_agrees(plugins, capsys):
    blocks = python_blocks(DOCS)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), namespace)
    assert "relative error at the samples" in capsys.readouterr().out
    assert "lagt" in memplug.available("encoder")
    doc_enc = namespace["enc"]
    assert type(doc_enc).__name__ == "LagT" and doc_enc.order == 32 and doc_enc.window == 500.0
    # the docs' LagT is the same measure as the one written here
    ours = Laguerre(order=32, window=500.0, timescale=500.0 / 16)
    expected = ours.update(ours.init_state(channels=1, dtype=torch.float64), namespace["x"], 0)
    assert torch.allclose(namespace["state"], expected, rtol=1e-12, atol=1e-14)
    lag = torch.linspace(0, 500, 11, dtype=torch.float64)
    assert torch.allclose(doc_enc.lag_basis(lag), ours.lag_basis(lag), rtol=1e-12)
