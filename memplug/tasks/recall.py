"""Multi-key associative recall across blocks.

``pairs`` distinct keys, each bound to a random value, are stated as ``PAIR k v`` triples
within the first ``span`` tokens; later, ``ASK k`` questions ask for the value, and the scored
token is ``v`` after ``ASK k``. Filler between is random. Without the binding in view the value
is at chance (ln V nats); with it, exactly predictable. A question's distance is to the latest
triple that showed its binding: the PAIR, or an earlier ASK of the same key (which shows the
value too).

``repeat=R`` makes every R-token segment an independent instance (its own pairs, stated and
asked inside the segment): with R = the block length, every question is answerable from its own
block, the within-block control that a model must learn before distances mean anything.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Batch, Task, block_start


class RecallTask(Task):
    def __init__(self, keys: int = 16, values: int = 16, pairs: int = 4, queries: int = 4, span: int = 128,
                 repeat: int | None = None) -> None:
        if not 1 <= pairs <= keys:
            raise ValueError(f"pairs must be in [1, keys={keys}], got {pairs}")
        if values < 2 or queries < 1 or span < 3 * pairs:
            raise ValueError(f"need values >= 2, queries >= 1 and span >= 3 * pairs; got values={values}, queries={queries}, span={span}")
        if repeat is not None and repeat < span + 3 * queries:
            raise ValueError(f"repeat must be None or >= span + 3 * queries = {span + 3 * queries}, got {repeat}")
        self.keys, self.values, self.pairs, self.queries, self.span = keys, values, pairs, queries, span
        self.repeat = repeat
        # vocabulary: filler/values 0..V-1, keys V..V+K-1, then PAIR and ASK markers
        self.pair_mark, self.ask_mark = values + keys, values + keys + 1
        self.vocab_size = values + keys + 2

    def sample(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        need = self.repeat or self.span + 3 * self.queries + 1
        if length < need:
            raise ValueError(f"length must be >= {need} (span + 3 * queries + 1, or repeat), got {length}")
        seq = torch.randint(self.values, (batch, length + 1), generator=generator)
        scored = torch.zeros(batch, length, dtype=torch.bool)
        distance = torch.full((batch, length), -1)
        size = self.repeat or length
        for b in range(batch):
            for lo in range(0, length - size + 1, size):  # one instance per segment
                self._instance(seq[b], scored[b], distance[b], lo, size, generator)
        return Batch(seq[:, :-1], seq[:, 1:].clone(), scored, distance)

    def _instance(self, seq: Tensor, scored: Tensor, distance: Tensor, lo: int, size: int,
                  generator: torch.Generator) -> None:
        """Write one instance into tokens ``lo .. lo + size - 1`` of one sequence (in place)."""
        keys = torch.randperm(self.keys, generator=generator)[: self.pairs] + self.values
        vals = torch.randint(self.values, (self.pairs,), generator=generator)
        # non-overlapping triple slots inside the span, and after it
        stated = lo + torch.randperm(self.span // 3, generator=generator)[: self.pairs] * 3
        asked = lo + self.span + torch.randperm((size - self.span) // 3, generator=generator)[: self.queries] * 3
        last = stated.tolist()  # where each binding was last shown: its PAIR, then its latest ASK
        for i, p in enumerate(last):
            seq[p : p + 3] = torch.tensor([self.pair_mark, keys[i], vals[i]])
        for p in sorted(asked.tolist()):
            i = int(torch.randint(self.pairs, (1,), generator=generator))
            seq[p : p + 3] = torch.tensor([self.ask_mark, keys[i], vals[i]])
            scored[p + 1] = True  # input k predicts v
            # an earlier question about the same key shows the value too, so it counts as a statement
            distance[p + 1] = p - last[i]
            last[i] = p

    def oracle_nll(self, batch: Batch, context: str) -> Tensor:
        """Exact on scored positions: 0 if the binding is in view, else ln V."""
        T = batch.input_ids.shape[1]
        statement = torch.arange(T) - batch.distance
        visible = statement >= block_start(T, context)[None, :]
        return torch.where(batch.scored & visible, 0.0, math.log(self.values)).double()
