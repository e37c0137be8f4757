"""memplug.util.lru.TensorLRU: the bounded cache behind the encoders' transitions and the read bases."""

import torch

from memplug.util.lru import TensorLRU


def test_bounded_by_entries_least_recent_first():
    cache = TensorLRU(max_items=2)
    cache.put("a", torch.zeros(1))
    cache.put("b", torch.zeros(1))
    assert cache.get("a") is not None  # a becomes the most recent
    cache.put("c", torch.zeros(1))
    assert list(cache) == ["a", "c"] and cache.get("b") is None


def test_bounded_by_bytes_counts_tuples_and_keeps_the_newest():
    cache = TensorLRU(max_bytes=64)
    cache.put("pair", (torch.zeros(4), torch.zeros(4)))  # 32 bytes
    cache.put("one", torch.zeros(8))  # 32 more: at the bound, both stay
    assert len(cache) == 2
    cache.put("big", torch.zeros(100))  # 400 bytes alone: kept, everything older evicted
    assert list(cache) == ["big"]
    cache.clear()
    cache.put("again", torch.zeros(16))
    assert list(cache) == ["again"]


def test_inference_tensors_are_stored_as_normal_tensors():
    cache = TensorLRU(max_items=4)
    with torch.inference_mode():
        stored = cache.put("t", (torch.ones(3), torch.ones(2)))
    assert not any(t.is_inference() for t in stored)
    weight = torch.ones(3, requires_grad=True)
    (weight * cache.get("t")[0]).sum().backward()  # usable by autograd after the mode ends
    assert weight.grad.tolist() == [1.0, 1.0, 1.0]
