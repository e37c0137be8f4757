"""A least-recently-used cache of tensors bounded by bytes and/or entries: the encoders'
transition matrices and the memories' read bases, which training recomputes with the same
arguments at every step."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator

import torch
from torch import Tensor

__all__ = ["TensorLRU"]


Entry = Tensor | tuple[Tensor, ...]


def _nbytes(value: Entry) -> int:
    parts = value if isinstance(value, tuple) else (value,)
    return sum(t.numel() * t.element_size() for t in parts)


def _trainable(value: Tensor) -> Tensor:
    """A normal-tensor copy of an inference tensor, so autograd can use it after that mode ends."""
    if not value.is_inference():
        return value
    with torch.inference_mode(False):
        return value.clone()


class TensorLRU:
    """Least-recently-used cache of tensors (or tuples of tensors), bounded by their total size
    in bytes and/or by the number of entries (``None``: no bound of that kind). The newest entry
    is always kept, even when it alone exceeds ``max_bytes``."""

    def __init__(self, max_bytes: int | None = None, max_items: int | None = None) -> None:
        self.max_bytes, self.max_items = max_bytes, max_items
        self._items: OrderedDict[Hashable, Entry] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable) -> Entry | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: Hashable, value: Entry) -> Entry:
        """Store ``value`` (normal-tensor copies of inference tensors) and return what is stored."""
        value = tuple(map(_trainable, value)) if isinstance(value, tuple) else _trainable(value)
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= _nbytes(old)
        self._items[key] = value
        self._bytes += _nbytes(value)
        while len(self._items) > 1 and (
            (self.max_bytes is not None and self._bytes > self.max_bytes)
            or (self.max_items is not None and len(self._items) > self.max_items)
        ):
            _, evicted = self._items.popitem(last=False)
            self._bytes -= _nbytes(evicted)
        return value

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Hashable]:
        """The keys, least recently used first."""
        return iter(self._items)
