"""The example plugins checked against memplug's contracts with the kit's pytest fixtures."""

from __future__ import annotations

from importlib import metadata

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import memplug
from memplug.testing import strategies as mst
from memplug_example.measure import Primacy
from memplug_example.sampler import Chebyshev


def test_primacy_measure(memplug_check_encoder):
    # includes the float64 projection check: Primacy is scale-invariant, so the kit knows its weight
    memplug_check_encoder(Primacy(order=12))


def test_chebyshev_sampler(memplug_check_retriever):
    memplug_check_retriever(Chebyshev(samples=6))


def test_chebyshev_sampler_on_the_primacy_measure(memplug_check_retriever):
    memplug_check_retriever(Chebyshev(samples=6), encoders=[Primacy(order=8)])


def test_both_in_an_elastic_memory(memplug_check_memory):
    memplug_check_memory(
        lambda layer: memplug.make_memory("elastic", encoder=Primacy(order=8), retriever=Chebyshev(samples=4))
    )


@given(t=mst.start_times().filter(lambda t: t > 0), samples=st.integers(1, 16))
def test_chebyshev_points_are_symmetric(t, samples):
    """A property of our own, with the kit's strategies: the points mirror about the middle."""
    positions = Chebyshev(samples).positions(t, Primacy(order=4))
    torch.testing.assert_close(positions, (t - positions).flip(0), rtol=0, atol=1e-9 * t)


def test_registered_through_entry_points():
    try:
        metadata.distribution("memplug-example-plugin")
    except metadata.PackageNotFoundError:
        pytest.skip("the example is not installed (pip install -e .): its entry points are not visible")
    assert "primacy" in memplug.available("encoder")
    assert "chebyshev" in memplug.available("retriever")
    memory = memplug.make_memory("elastic", encoder="primacy", retriever="chebyshev", order=8, samples=4)
    assert type(memory.encoder) is Primacy and type(memory.retriever) is Chebyshev
