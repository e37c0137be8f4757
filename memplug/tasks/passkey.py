"""Passkey retrieval: a key stated once, recalled verbatim ``distance`` tokens later.

Layout: uniform random filler symbols; at a random position ``p`` the marker KEY and the key
``k_1..k_n``; at ``p + d`` the marker ASK and the same key again. The scored tokens are the key
tokens after ASK. Without the statement in view they are at chance (ln S nats each); with it,
exactly predictable. A distance of 0 blocks (statement and question in one block) is the
within-block copy control that must be learned before longer distances mean anything.

``repeat=R`` makes every R-token segment an independent instance (its own key, stated and asked
inside the segment). With R = the block length, every question is answerable from its own block
and a sequence holds one key per block: a dense within-block control, where one key per sequence
gives a model too few examples to learn the copy from when blocks are short.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Batch, Task, block_start


class PasskeyTask(Task):
    def __init__(self, symbols: int = 16, key_length: int = 5, distances: Sequence[int] = (32, 128, 512),
                 repeat: int | None = None) -> None:
        if symbols < 2:
            raise ValueError(f"symbols must be >= 2, got {symbols}")
        if key_length < 1:
            raise ValueError(f"key_length must be >= 1, got {key_length}")
        if not distances or min(distances) <= key_length:
            raise ValueError(f"distances must be non-empty and each > key_length={key_length}, got {list(distances)}")
        if repeat is not None and repeat < max(distances) + key_length + 2:
            raise ValueError(f"repeat must be None or >= max(distances) + key_length + 2 = "
                             f"{max(distances) + key_length + 2}, got {repeat}")
        self.symbols, self.key_length, self.distances, self.repeat = symbols, key_length, list(distances), repeat
        self.key_mark, self.ask_mark = symbols, symbols + 1
        self.vocab_size = symbols + 2

    def sample(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        n = self.key_length
        need = self.repeat or max(self.distances) + n + 2
        if length < need:
            raise ValueError(f"length must be >= {need} (max(distances) + key_length + 2, or repeat), got {length}")
        seq = torch.randint(self.symbols, (batch, length + 1), generator=generator)
        scored = torch.zeros(batch, length, dtype=torch.bool)
        distance = torch.full((batch, length), -1)
        size = self.repeat or length
        starts = range(0, length - size + 1, size)  # one instance per segment
        choice = torch.randint(len(self.distances), (batch, len(starts)), generator=generator)
        for b in range(batch):
            for s, lo in enumerate(starts):
                d = self.distances[int(choice[b, s])]
                # the last key token (p + d + n) stays inside the segment, so the next one cannot overwrite it
                p = lo + int(torch.randint(size - d - n - 1, (1,), generator=generator))
                key = torch.randint(self.symbols, (n,), generator=generator)
                seq[b, p], seq[b, p + 1 : p + 1 + n] = self.key_mark, key
                seq[b, p + d], seq[b, p + d + 1 : p + d + 1 + n] = self.ask_mark, key
                scored[b, p + d : p + d + n] = True  # inputs ASK, k_1..k_{n-1} predict k_1..k_n
                distance[b, p + d : p + d + n] = d
        return Batch(seq[:, :-1], seq[:, 1:].clone(), scored, distance)

    def oracle_nll(self, batch: Batch, context: str) -> Tensor:
        """Exact on scored positions: 0 if the key statement is in view, else ln S."""
        T = batch.input_ids.shape[1]
        statement = torch.arange(T) - batch.distance  # where the key was stated, per scored position
        visible = statement >= block_start(T, context)[None, :]
        return torch.where(batch.scored & visible, 0.0, math.log(self.symbols)).double()
