"""A least-recently-used cache of tensors bounded by bytes: the encoders' transition matrices
and the memories' read bases, which training recomputes with the same arguments at every step."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import torch
from torch import Tensor

__all__ = ["TensorLRU"]


class TensorLRU:
    """Least-recently-used cache of tensors, bounded by their total size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, Tensor] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable) -> Tensor | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: Hashable, value: Tensor) -> Tensor:
        """Store ``value`` (a normal-tensor copy if it was made in inference mode, so autograd can
        use it after that mode ends) and return what is stored."""
        if value.is_inference():
            with torch.inference_mode(False):
                value = value.clone()
        old = self._items.pop(key, None)
        if old is not None:
            self._bytes -= old.numel() * old.element_size()
        self._items[key] = value
        self._bytes += value.numel() * value.element_size()
        while self._bytes > self.max_bytes and len(self._items) > 1:
            _, evicted = self._items.popitem(last=False)
            self._bytes -= evicted.numel() * evicted.element_size()
        return value

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)
