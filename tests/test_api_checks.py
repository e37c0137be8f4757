"""Bad arguments are refused before any work, with one line naming the argument, the value and
what is allowed: bools where an int is expected, an encoder order that would allocate without
bound, a warp rate that overflows."""

from __future__ import annotations

import pytest
import torch

import memplug
from memplug.hippo.order import MAX_ORDER


@pytest.mark.parametrize("encoder", ["legs", "jacobi", "legt", "fout"])
def test_encoder_order_is_bounded_and_no_bool(encoder):
    assert memplug.make_encoder(encoder, order=MAX_ORDER).order == MAX_ORDER  # nothing is allocated yet
    with pytest.raises(ValueError, match=rf"order must be at most {MAX_ORDER} .* got 1000000"):
        memplug.make_encoder(encoder, order=1_000_000)
    with pytest.raises(ValueError, match="order must be a positive int, got True"):
        memplug.make_encoder(encoder, order=True)


def test_encoder_int_options_refuse_bools():
    with pytest.raises(ValueError, match="substeps must be a positive int, got True"):
        memplug.make_encoder("legs", discretization="zoh", substeps=True)
    with pytest.raises(ValueError, match="cache_size must be a positive int, got True"):
        memplug.make_encoder("legt", cache_size=True)
    with pytest.raises(ValueError, match="cache_bytes must be an int >= 0, got False"):
        memplug.make_encoder("legs", cache_bytes=False)
    with pytest.raises(ValueError, match="block must be a positive int, got True"):
        memplug.make_encoder("legs", order=4).scan(torch.zeros(1, 8, 2), True)
    with pytest.raises(ValueError, match="block must be a positive int, got True"):
        memplug.make_encoder("legt", order=4).scan(torch.zeros(1, 8, 2), True)


@pytest.mark.parametrize("retriever", ["uniform", "warped", "learned", "jittered"])
def test_retriever_samples_refuse_bools(retriever):
    with pytest.raises(ValueError, match="samples must be a positive int, got True"):
        memplug.make_retriever(retriever, samples=True)


def test_warp_rate_that_overflows_is_refused():
    assert memplug.make_retriever("warped", samples=8, rate=700.0).rate == 700.0
    with pytest.raises(ValueError, match="rate must be at most 700 for warp='exponential'"):
        memplug.make_retriever("warped", samples=8, rate=710.0)
    for bad in (True, float("inf"), float("nan"), -1.0, "4"):
        with pytest.raises(ValueError, match="rate must be a finite number > 0"):
            memplug.make_retriever("warped", samples=8, rate=bad)
    with pytest.raises(ValueError, match="max_rate must be a finite number >= 1, got True"):
        memplug.make_retriever("jittered", max_rate=True)
