"""What every synthetic task provides: batches with scored positions, and an oracle."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Batch:
    """A batch of next-token problems.

    ``input_ids`` (B, T) and ``targets`` (B, T): ``targets[:, i]`` is the token after
    ``input_ids[:, i]``, -100 where nothing is scored. They are already shifted: give them to a
    model as ``shift_labels=``, not as ``labels=`` (which a model shifts itself). ``scored``
    (B, T) marks the positions the task's metric is about (a subset of the scored targets);
    ``distance`` (B, T) is, for recall tasks, how many tokens back the information needed at
    that position was stated (-1 where not applicable).
    """

    input_ids: Tensor
    targets: Tensor
    scored: Tensor
    distance: Tensor


class Task(abc.ABC):
    """A generator of :class:`Batch` es over a small vocabulary."""

    vocab_size: int

    @abc.abstractmethod
    def sample(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        """``batch`` sequences of ``length`` tokens (plus their targets)."""

    def oracle_nll(self, batch: Batch, context: str) -> Tensor | None:
        """Best achievable next-token loss in nats at every position (B, T) for a predictor
        that sees only ``context``: ``"full"`` (the whole history) or ``"block:L"`` (the
        tokens of its own length-L block). ``None`` where the task has no closed form."""
        return None


def block_start(length: int, context: str) -> Tensor:
    """For each position 0..length-1, the first position a ``context`` predictor may see."""
    pos = torch.arange(length)
    if context == "full":
        return torch.zeros_like(pos)
    kind, _, size = context.partition(":")
    if kind == "block" and size.isdigit() and int(size) > 0:
        return pos - pos % int(size)
    if kind == "window" and size.isdigit() and int(size) > 0:
        block = int(size) // 2  # block + previous block of size W/2
        return (pos - pos % block - block).clamp_min(0)
    raise ValueError(f"context must be 'full', 'block:L' or 'window:W' with positive integers, got {context!r}")


class ScoredOnly(Task):
    """``task`` with the training loss restricted to its scored tokens (other targets -100).

    Synthetic tasks are mostly i.i.d. filler whose only lesson is its distribution; once that is
    learned, the filler's gradient is noise that drowns the few tokens that depend on the
    history. Training on the scored tokens alone keeps the signal; scoring is unchanged.
    """

    def __init__(self, task: Task) -> None:
        self.task, self.vocab_size = task, task.vocab_size

    def sample(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        data = self.task.sample(batch, length, generator)
        data.targets = data.targets.masked_fill(~data.scored, -100)  # (B, T)
        return data

    def oracle_nll(self, batch: Batch, context: str) -> Tensor | None:
        return self.task.oracle_nll(batch, context)


class Mixture(Task):
    """Each sequence of a batch drawn from one of ``tasks`` (equal odds), for training.

    A curriculum's second stage mixes its first stage back in, so a skill that the harder task
    cannot reward on its own (the within-block control, for a model that cannot yet reach the
    distance) is not unlearned. The tasks must share one vocabulary. No oracle: evaluate the
    parts separately.
    """

    def __init__(self, *tasks: Task) -> None:
        if len(tasks) < 2 or len({t.vocab_size for t in tasks}) != 1:
            raise ValueError(f"Mixture needs >= 2 tasks with one vocab_size, got {[t.vocab_size for t in tasks]}")
        self.tasks, self.vocab_size = tasks, tasks[0].vocab_size

    def sample(self, batch: int, length: int, generator: torch.Generator) -> Batch:
        source = torch.randint(len(self.tasks), (batch,), generator=generator)  # (B,)
        parts = [task.sample(batch, length, generator) for task in self.tasks]
        rows = torch.arange(batch)
        fields = ("input_ids", "targets", "scored", "distance")
        return Batch(*(torch.stack([getattr(part, f) for part in parts])[source, rows] for f in fields))
