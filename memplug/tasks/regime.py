"""The hidden-regime (gist) task.

Each sequence belongs to one of K regimes. The stream is uniform random filler over S symbols,
interrupted at random positions (on average every ``query_every`` tokens) by a QUERY marker
whose next token, the scored one, is the regime's answer: symbol ``r`` with probability
``answer_prob``, otherwise another symbol at random. With probability ``stated`` the sequence
opens with a marker naming the regime; otherwise the regime is visible only in the statistics
of all earlier answers. A block holds about one earlier answer, the whole history many, so the
loss on answers separates a model that carries the gist of its history from one that sees its
block alone.

The Bayes-optimal predictor given a context C is exact:
``P(a | C) = Σ_r P(r | C) p_r(a)`` with ``P(r | C) ∝ Π p_r(a_j)`` over the answers in C whose
QUERY is in C too (a regime marker in C pins r).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Batch, Task, block_start


class RegimeTask(Task):
    def __init__(
        self,
        symbols: int = 16,
        regimes: int = 8,
        answer_prob: float = 0.5,
        query_every: int = 32,
        stated: float = 0.5,
    ) -> None:
        if not 2 <= regimes <= symbols:
            raise ValueError(f"regimes must be in [2, symbols={symbols}], got {regimes}")
        if not 1 / symbols < answer_prob <= 1:
            raise ValueError(f"answer_prob must be in (1/symbols, 1], got {answer_prob}")
        if query_every < 2:
            raise ValueError(f"query_every must be >= 2, got {query_every}")
        if not 0 <= stated <= 1:
            raise ValueError(f"stated must be in [0, 1], got {stated}")
        self.symbols, self.regimes, self.query_every, self.stated = symbols, regimes, query_every, stated
        other = (1 - answer_prob) / (symbols - 1)
        self.probs = torch.full((regimes, symbols), other, dtype=torch.float64)  # (K, S) answer law
        self.probs[torch.arange(regimes), torch.arange(regimes)] = answer_prob
        self.query = symbols
        self.vocab_size = symbols + 1 + regimes  # symbols, QUERY, one marker per regime

    def sample(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        seq = torch.randint(self.symbols, (batch, length + 1), generator=generator)
        regime = torch.randint(self.regimes, (batch,), generator=generator)
        answers = torch.multinomial(self.probs[regime].float(), length + 1, replacement=True, generator=generator)
        # QUERY at random positions (never two in a row), each followed by an answer
        is_query = torch.rand(batch, length + 1, generator=generator) < 1 / self.query_every
        is_query[:, 0] = False
        is_query[:, -1] = False
        is_query[:, 1:] &= ~is_query[:, :-1].clone()
        is_answer = torch.zeros_like(is_query)
        is_answer[:, 1:] = is_query[:, :-1]
        seq = torch.where(is_query, self.query, seq)
        seq = torch.where(is_answer, answers, seq)
        stated = torch.rand(batch, generator=generator) < self.stated
        seq[stated, 0] = self.symbols + 1 + regime[stated]
        return Batch(
            input_ids=seq[:, :-1],
            labels=seq[:, 1:].clone(),
            scored=is_answer[:, 1:].clone(),
            distance=torch.full((batch, length), -1),
        )

    def oracle_nll(self, batch: Batch, context: str) -> Tensor:
        """Exact Bayes loss (nats) of every next token given ``context``; filler is ln S."""
        ids, labels = batch.input_ids, batch.labels
        B, T = ids.shape
        logp = self.probs.log()  # (K, S)
        # answers among the inputs: token j is an answer when token j-1 is QUERY
        answer_in = torch.zeros_like(ids, dtype=torch.bool)
        answer_in[:, 1:] = ids[:, :-1] == self.query
        obs = torch.where(answer_in[..., None], logp.T[ids.clamp_max(self.symbols - 1)], 0.0)  # (B, T, K)
        cum = torch.cat([torch.zeros(B, 1, self.regimes, dtype=torch.float64), obs.cumsum(1)], 1)  # (B, T+1, K)
        start = block_start(T, context)  # (T,) first visible input position
        # answers at j in [start+1, t] whose QUERY (j-1) is visible too
        ll = cum[:, 1:] - cum[:, (start + 1).clamp_max(T)]
        ll = torch.where((start < torch.arange(T))[None, :, None], ll, 0.0)
        marker = ids[:, 0] > self.query
        sees_marker = (start == 0)[None, :] & marker[:, None]  # (B, T)
        named = (ids[:, 0] - self.query - 1).clamp(0, self.regimes - 1)
        pinned = torch.full((B, self.regimes), -math.inf, dtype=torch.float64)
        pinned[torch.arange(B), named] = 0.0
        ll = torch.where(sees_marker[..., None], pinned[:, None, :], ll)
        log_post = ll - ll.logsumexp(-1, keepdim=True)  # (B, T, K)
        answer_nll = -(log_post + logp.T[labels.clamp_max(self.symbols - 1)]).logsumexp(-1)  # (B, T)
        return torch.where(batch.scored, answer_nll, math.log(self.symbols))
