"""memplug.testing itself: broken components are caught with messages that say what is wrong,
the strategies draw what they promise, the float64 reference is right, the pytest plugin loads
lazily, and the example plugin package's own tests pass."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import memplug
from memplug.core.contracts import Memory, MemoryRead
from memplug.ops.sampling import place
from memplug.plugins.memories.xl import XLMemory
from memplug.testing import InvariantViolation, check_encoder, check_memory, check_retriever
from memplug.testing import strategies as mst
from memplug.testing.reference import projection_reference

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "memplug-example-plugin"


# ---- broken components are caught -------------------------------------------------------------


class IgnoresT0(memplug.Encoder):
    """LegS whose update forgets where the tokens are: every chunk is treated as the start."""

    name = "test-ignores-t0"

    def __init__(self) -> None:
        super().__init__()
        self.legs = memplug.make_encoder("legs", order=6)
        self.order = 6

    def support(self, t):
        return self.legs.support(t)

    def update(self, state, x, t0):
        return self.legs.update(state, x, 0)

    def scan(self, x, block, t0=0, state=None):
        return self.legs.scan(x, block, t0, state)

    def basis(self, positions, t):
        return self.legs.basis(positions, t)


def test_encoder_that_ignores_t0_is_caught():
    with pytest.raises(AssertionError) as info:
        check_encoder(IgnoresT0())
    message = str(info.value)
    assert isinstance(info.value, InvariantViolation)
    assert "encoder 'test-ignores-t0'" in message
    assert "breaks the invariant 'chunking invariance'" in message
    assert "t0=" in message and "chunking=" in message and "relative error" in message


class GrowingBank(memplug.Encoder):
    """LegT that refuses positions past a precomputed table (a maximum context in disguise)."""

    name = "test-bank"

    def __init__(self) -> None:
        super().__init__()
        self.legt = memplug.make_encoder("legt", order=4, window=16.0)
        self.order = 4

    def support(self, t):
        return self.legt.support(t)

    def update(self, state, x, t0):
        if t0 + x.shape[-2] > 4096:
            raise IndexError(f"position {t0 + x.shape[-2]} is past the table of 4096")
        return self.legt.update(state, x, t0)

    def scan(self, x, block, t0=0, state=None):
        return self.legt.scan(x, block, t0, state)

    def basis(self, positions, t):
        return self.legt.basis(positions, t)


def test_encoder_with_a_maximum_context_is_caught():
    with pytest.raises(AssertionError) as info:
        check_encoder(GrowingBank())
    message = str(info.value)
    assert "breaks the invariant 'state shape'" in message
    assert "IndexError: position" in message and "past the table" in message


class SkewedProjection(memplug.Encoder):
    """Jacobi(β = 0.5) that claims to be LegS (β = 0): update and scan agree, basis is finite,
    but the states are not the projection for the weight the measure states."""

    name = "test-skewed"

    def __init__(self) -> None:
        super().__init__()
        self.inner = memplug.make_encoder("jacobi", order=6, beta=0.5)
        self.order = 6

    def support(self, t):
        return self.inner.support(t)

    def update(self, state, x, t0):
        return self.inner.update(state, x, t0)

    def scan(self, x, block, t0=0, state=None):
        return self.inner.scan(x, block, t0, state)

    def basis(self, positions, t):
        return self.inner.basis(positions, t)


def test_projection_against_the_stated_weight():
    check_encoder(SkewedProjection(), weight=lambda s, t: (s / t) ** 0.5 / t)
    with pytest.raises(AssertionError) as info:
        check_encoder(SkewedProjection(), weight=lambda s, t: torch.full_like(s, 1.0 / t))
    message = str(info.value)
    assert "breaks the invariant 'projection'" in message
    assert "vs the float64 quadrature of its definition" in message


class OutsideSupport(memplug.Retriever):
    """Uniform sampling, except that the last sample is one token in the future."""

    name = "test-outside"
    samples = 3

    def positions(self, t, encoder):
        lo, hi = encoder.support(t)
        fractions = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
        pos = place(fractions, lo, hi)
        return pos + (fractions == 1.0) * 1.0


def test_retriever_outside_the_support_is_caught():
    with pytest.raises(AssertionError) as info:
        check_retriever(OutsideSupport())
    message = str(info.value)
    assert "retriever 'test-outside'" in message and "breaks the invariant 'positions'" in message
    assert "positions lie outside the support" in message and "indices [2]" in message


class Unsorted(OutsideSupport):
    name = "test-unsorted"

    def positions(self, t, encoder):
        lo, hi = encoder.support(t)
        return place(torch.tensor([0.75, 0.25, 0.5], dtype=torch.float64), lo, hi)


def test_unsorted_retriever_is_caught():
    with pytest.raises(AssertionError, match="positions at t=.* are not sorted"):
        check_retriever(Unsorted())


class Leaky(Memory):
    """Gives every block the mean of its own keys and values as one slot: queries see the future."""

    name = "test-leaky"

    def init_state(self, batch, dtype, device):
        return {}

    def read(self, state, q, t):
        return MemoryRead()

    def write(self, state, k, v, t0):
        return state

    def forward_blocks(self, state, q, k, v, t0, complete):
        return MemoryRead(keys=k.mean(-2, keepdim=True), values=v.mean(-2, keepdim=True)), state


def test_leaking_memory_is_caught():
    with pytest.raises(AssertionError) as info:
        check_memory(Leaky())
    message = str(info.value)
    assert "memory 'test-leaky'" in message and "breaks the invariant 'causality'" in message
    assert "changed the logits at positions" in message and "input_ids" in message


class WriteOnly(Memory):
    """Stores the last block's keys but never gives the queries anything."""

    name = "test-write-only"

    def init_state(self, batch, dtype, device):
        return {"keys": torch.zeros(batch, self.kv_heads, 1, self.head_dim, dtype=dtype, device=device)}

    def read(self, state, q, t):
        return MemoryRead()

    def write(self, state, k, v, t0):
        return {"keys": k[:, :, -1:].detach()}


def test_memory_whose_state_is_never_read_is_caught():
    with pytest.raises(AssertionError) as info:
        check_memory(WriteOnly())
    message = str(info.value)
    assert "breaks the invariant 'gradient reach'" in message
    assert "the memory's state does not reach the output" in message


class UntrainedGate(WriteOnly):
    """A gate parameter that nothing uses."""

    name = "test-untrained"

    def setup(self, heads, kv_heads, head_dim, block=None):
        super().setup(heads, kv_heads, head_dim, block)
        self.gate = torch.nn.Parameter(torch.zeros(heads))


def test_memory_parameter_without_gradient_is_caught():
    with pytest.raises(AssertionError, match=r"parameter layer 0: gate got no gradient"):
        check_memory(UntrainedGate())


def test_chunking_exemption_needs_a_reason():
    class Exempt(XLMemory):
        name = "test-exempt"
        chunk_invariant = False

    with pytest.raises(AssertionError, match="chunk_invariant = False without a reason"):
        check_memory(Exempt)

    class ExemptWithReason(Exempt):
        chunk_invariant_reason = "a test double: the exemption path with its reason"

    check_memory(ExemptWithReason)


def test_the_profile_sets_the_number_of_examples():
    calls = []

    class Counting(OutsideSupport):
        name = "test-counting"

        def positions(self, t, encoder):
            calls.append(t)
            lo, hi = encoder.support(t)
            return place(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), lo, hi)

    check_retriever(Counting(), settings=settings(max_examples=3))
    few = len(calls)
    calls.clear()
    check_retriever(Counting(), settings=settings(max_examples=12))
    assert 0 < few < len(calls)


# ---- strategies -------------------------------------------------------------------------------


@given(st.data())
def test_chunkings_partition_the_total(data):
    total = data.draw(st.integers(1, 50))
    chunks = data.draw(mst.chunkings(total, max_chunks=6))
    assert sum(chunks) == total and all(c >= 1 for c in chunks) and 1 <= len(chunks) <= 6


@given(st.floats(0, 1e6), st.floats(0, 1e3), st.data())
def test_positions_are_sorted_inside_the_interval(lo, width, data):
    p = data.draw(mst.positions(lo, lo + width, size=5))
    assert p.shape == (5,) and p.dtype == torch.float64
    assert (p[1:] >= p[:-1]).all() and (p >= lo).all() and (p <= lo + width).all()


@given(mst.token_streams(length=mst.block_lengths(1, 9), channels=2, batch=(3,), dtype=mst.dtypes()))
def test_token_streams_have_the_asked_shape(x):
    assert x.shape[0] == 3 and 1 <= x.shape[1] <= 9 and x.shape[2] == 2
    assert x.dtype in (torch.float32, torch.float64) and torch.isfinite(x).all()


@given(mst.streams(), mst.start_times(5000), mst.token_ids(vocab=7))
def test_streams_are_reproducible(stream, t0, ids):
    torch.testing.assert_close(stream.tensor(), stream.tensor())
    assert stream.tensor(torch.float32).shape == stream.shape
    assert 0 <= t0 <= 5000
    assert ids.tensor().shape == (ids.batch, ids.length) and int(ids.tensor().max()) < 7


def test_strategies_refuse_bad_arguments():
    with pytest.raises(ValueError, match="min_value"):
        mst.block_lengths(0, 3)
    with pytest.raises(ValueError, match="max_chunks"):
        mst.chunkings(5, max_chunks=0)
    with pytest.raises(ValueError, match="kinds"):
        mst.streams(kinds=("square",))


# ---- the float64 reference --------------------------------------------------------------------


class NumpyLegS:
    """A LegS basis from NumPy's Legendre module: independent of memplug's own polynomials."""

    def __init__(self, order: int) -> None:
        self.order = order

    def support(self, t):
        return 0.0, t

    def basis(self, positions, t):
        x = 2 * positions.numpy() / t - 1
        cols = [math.sqrt(2 * n + 1) * np.polynomial.legendre.legval(x, np.eye(self.order)[n]) for n in range(self.order)]
        return torch.from_numpy(np.stack(cols, axis=-1))


def test_reference_equals_the_closed_form_for_legs():
    # c_n(t) = (1/t) Σ_j x_j ∫_j^{j+1} g_n(s/t) ds, with the exact antiderivative of P_n
    order, t0, length = 7, 3, 9
    x = torch.randn(length, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    times = [5, 12]
    got = projection_reference(NumpyLegS(order), x, t0, times, lambda s, t: torch.full_like(s, 1 / t))
    for k, t in enumerate(times):
        want = np.zeros((order, 2))
        for n in range(order):
            anti = np.polynomial.legendre.legint(np.eye(order)[n])  # ∫ P_n dx
            for j in range(t0, t):
                lo, hi = 2 * j / t - 1, 2 * (j + 1) / t - 1
                cell = (np.polynomial.legendre.legval(hi, anti) - np.polynomial.legendre.legval(lo, anti)) * t / 2
                want[n] += math.sqrt(2 * n + 1) * cell / t * x[j - t0].numpy()
        np.testing.assert_allclose(got[k].numpy(), want, rtol=0, atol=1e-14)


@pytest.mark.parametrize("beta", [-0.5, -0.9, 0.5])
def test_reference_handles_a_singular_weight(beta):
    # one token at t = 1: c_n = x_0 ∫_0^1 u^β q_n(u) du = x_0 δ_n0 / sqrt(β + 1) for the orthonormal q_n
    encoder = memplug.make_encoder("jacobi", order=5, beta=beta)
    got = projection_reference(encoder, torch.ones(1, 1, dtype=torch.float64), 0, [1], lambda s, t: (s / t) ** beta / t)
    want = torch.zeros(1, 5, 1, dtype=torch.float64)
    want[0, 0, 0] = 1 / math.sqrt(beta + 1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# ---- the pytest plugin and the example package -----------------------------------------------


def test_pytest_plugin_is_registered_and_lazy():
    code = (
        "import sys, importlib.metadata as m\n"
        "eps = [e for e in m.entry_points(group='pytest11') if e.name == 'memplug']\n"
        "assert eps and eps[0].value == 'memplug.testing.pytest_plugin', eps\n"
        "eps[0].load()\n"
        "heavy = [n for n in ('hypothesis', 'scipy', 'memplug.testing.encoders', 'memplug.testing.memories') if n in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_example_package_tests_pass(tmp_path):
    # "Install" the example without installing anything: its sources and a dist-info with its
    # entry points on PYTHONPATH, which is all importlib.metadata looks at.
    dist = tmp_path / "memplug_example_plugin-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: memplug-example-plugin\nVersion: 0.1.0\n")
    import tomllib

    entry_points = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["entry-points"]["memplug"]
    (dist / "entry_points.txt").write_text("[memplug]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLE), str(tmp_path)]), "OMP_NUM_THREADS": "1",
           "HYPOTHESIS_MAX_EXAMPLES": "8"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        cwd=EXAMPLE, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 passed" in result.stdout and "skipped" not in result.stdout, result.stdout


def test_docs_show_the_example_files_as_they_are():
    doc = (ROOT / "docs" / "testing.md").read_text()
    shown = re.findall(r"<!-- example file: (\S+) -->\n```\w*\n(.*?)\n```", doc, flags=re.S)
    assert {path for path, _ in shown} >= {"pyproject.toml", "memplug_example/measure.py",
                                             "memplug_example/sampler.py", "tests/test_plugins.py"}
    for path, text in shown:
        assert text == (EXAMPLE / path).read_text().rstrip(), f"docs/testing.md shows an outdated {path}"
