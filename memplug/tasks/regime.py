"""The hidden-regime (gist) task.

Each sequence belongs to one of K regimes. Regime r colours the filler: symbols are drawn
i.i.d. from ``p_r(x) ∝ exp(tilt * z_r(x))`` over S symbols, with a fixed random ±1 pattern
``z_r`` per regime (``seed``). The tilt is weak, so one block of filler barely hints at the
regime while the statistics of the whole history reveal it. At random positions (on average
every ``query_every`` tokens) a QUERY marker is followed by the scored token, the regime's
answer: symbol ``r`` with probability ``answer_prob``, otherwise another symbol at random. With
probability ``stated`` the sequence opens with a marker naming the regime. A memory that keeps
the gist of the history (a running average is enough) answers well; a model that sees its
block alone cannot.

The Bayes-optimal predictor given a context C is exact: ``P(x | C) = Σ_r P(r | C) P(x | r)``
with ``P(r | C) ∝ Π_{j ∈ C} P(x_j | r)`` over the visible filler and answers (an answer counts
when its QUERY is visible too; a regime marker in C pins r).
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
        tilt: float = 0.2,
        answer_prob: float = 0.8,
        query_every: int = 96,
        stated: float = 0.5,
        seed: int = 0,
    ) -> None:
        if not 2 <= regimes <= symbols:
            raise ValueError(f"regimes must be in [2, symbols={symbols}], got {regimes}")
        if tilt < 0:
            raise ValueError(f"tilt must be >= 0, got {tilt}")
        if not 1 / symbols < answer_prob <= 1:
            raise ValueError(f"answer_prob must be in (1/symbols, 1], got {answer_prob}")
        if query_every < 2:
            raise ValueError(f"query_every must be >= 2, got {query_every}")
        if not 0 <= stated <= 1:
            raise ValueError(f"stated must be in [0, 1], got {stated}")
        self.symbols, self.regimes, self.query_every, self.stated = symbols, regimes, query_every, stated
        g = torch.Generator().manual_seed(seed)
        pattern = torch.randint(2, (regimes, symbols), generator=g).double() * 2 - 1  # (K, S) of ±1
        self.filler = torch.softmax(tilt * pattern, dim=-1)  # (K, S) filler law per regime
        other = (1 - answer_prob) / (symbols - 1)
        self.answers = torch.full((regimes, symbols), other, dtype=torch.float64)  # (K, S) answer law
        self.answers[torch.arange(regimes), torch.arange(regimes)] = answer_prob
        self.query = symbols
        self.vocab_size = symbols + 1 + regimes  # symbols, QUERY, one marker per regime

    def sample(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        regime = torch.randint(self.regimes, (batch,), generator=generator)
        seq = torch.multinomial(self.filler[regime].float(), length + 1, replacement=True, generator=generator)
        answers = torch.multinomial(self.answers[regime].float(), length + 1, replacement=True, generator=generator)
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
            targets=seq[:, 1:].clone(),
            scored=is_answer[:, 1:].clone(),
            distance=torch.full((batch, length), -1),
        )

    def oracle_nll(self, batch: Batch, context: str) -> Tensor:
        """Exact Bayes loss (nats) of every next token given ``context`` (QUERY tokens and
        markers, which carry no regime evidence in their timing, are scored at chance)."""
        ids, targets = batch.input_ids, batch.targets
        B, T = ids.shape
        log_filler, log_answer = self.filler.log(), self.answers.log()  # (K, S) each
        is_symbol = ids < self.symbols
        follows_query = torch.zeros_like(is_symbol)
        follows_query[:, 1:] = ids[:, :-1] == self.query
        sym = ids.clamp_max(self.symbols - 1)
        # evidence of every input token: log P(x_j | r) for filler, answers; 0 otherwise
        obs = torch.where((is_symbol & follows_query)[..., None], log_answer.T[sym], log_filler.T[sym])
        obs = torch.where(is_symbol[..., None], obs, 0.0)  # (B, T, K)
        cum = torch.cat([torch.zeros(B, 1, self.regimes, dtype=torch.float64), obs.cumsum(1)], 1)  # (B, T+1, K)
        start = block_start(T, context)  # (T,) first visible input position
        ll = cum[:, 1:] - cum[:, start]  # (B, T, K)
        # an answer at the window's first position has its QUERY out of view: count it as filler
        first = ids.gather(1, start[None, :].expand(B, T))  # (B, T) token at each window start
        first_is_answer = follows_query.gather(1, start[None, :].expand(B, T)) & (start > 0)[None, :] & (first < self.symbols)
        correction = log_filler.T[first.clamp_max(self.symbols - 1)] - log_answer.T[first.clamp_max(self.symbols - 1)]
        ll = ll + torch.where(first_is_answer[..., None], correction, 0.0)
        marker = ids[:, 0] > self.query
        sees_marker = (start == 0)[None, :] & marker[:, None]  # (B, T)
        named = (ids[:, 0] - self.query - 1).clamp(0, self.regimes - 1)
        pinned = torch.full((B, self.regimes), -math.inf, dtype=torch.float64)
        pinned[torch.arange(B), named] = 0.0
        ll = torch.where(sees_marker[..., None], pinned[:, None, :], ll)
        log_post = ll - ll.logsumexp(-1, keepdim=True)  # (B, T, K)
        nxt = targets.clamp_max(self.symbols - 1)
        answer_next = ids == self.query  # the target follows a QUERY
        law = torch.where(answer_next[..., None], log_answer.T[nxt], log_filler.T[nxt])  # (B, T, K)
        nll = -(log_post + law).logsumexp(-1)
        return torch.where(targets < self.symbols, nll, math.log(self.vocab_size))
