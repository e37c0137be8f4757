"""A corpus as a task: random windows of one document, every next token scored."""

from __future__ import annotations

import torch

from ..data.prepare import TokenizedSplit
from ..data.windows import WindowSampler
from .base import Batch, Task


class CorpusTask(Task):
    """Random ``length``-token windows, each inside one document of a tokenized split
    (:class:`memplug.data.windows.WindowSampler`); the task's generator picks the draw."""

    def __init__(self, data: TokenizedSplit, vocab_size: int = 256) -> None:
        self.data, self.vocab_size = data, vocab_size
        self._samplers: dict[int, WindowSampler] = {}

    def sample(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        if length not in self._samplers:
            self._samplers[length] = WindowSampler(self.data, length)
        draw = int(torch.randint(2**62, (1,), generator=generator))
        window = self._samplers[length].batch(draw, batch)  # (B, T+1)
        targets = window[:, 1:]
        return Batch(window[:, :-1], targets, torch.ones_like(targets, dtype=torch.bool), torch.full_like(targets, -1))
