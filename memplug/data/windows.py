"""Token windows cut from long documents, for training and evaluation.

A window is ``seq_len + 1`` consecutive tokens of ONE document (inputs ``w[:-1]``, targets
``w[1:]``); it never spans two documents, and every window starts with a fresh memory, so a
memory never carries one document's content into another. Documents shorter than a window are
not used.

Training windows are drawn uniformly over all valid start positions as a pure function of
``(seed, step)``: the data order needs no state, so a resumed run and a run split over several
processes see exactly the batches of one uninterrupted run.
"""

from __future__ import annotations

import numpy as np
import torch

from .prepare import TokenizedSplit

__all__ = ["WindowSampler", "eval_starts", "gather"]


def gather(tokens: np.ndarray, starts: np.ndarray, span: int) -> torch.Tensor:
    """(len(starts), span) int64 tensor of ``tokens[s : s + span]`` for each start."""
    rows = [np.asarray(tokens[s : s + span], dtype=np.int64) for s in starts.tolist()]
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, span, dtype=torch.int64)


def _too_short(data: TokenizedSplit, span: int) -> ValueError:
    longest = int(data.lengths().max()) if len(data.lengths()) else 0
    return ValueError(f"seq_len={span - 1} needs documents of at least {span} tokens; the longest has {longest}")


class WindowSampler:
    """Random training windows, reproducible from ``(seed, step)``."""

    def __init__(self, data: TokenizedSplit, seq_len: int, seed: int = 0) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.data, self.span, self.seed = data, seq_len + 1, seed
        lengths = data.lengths()
        self.counts = np.maximum(lengths - self.span + 1, 0)  # valid starts per document
        if self.counts.sum() == 0:
            raise _too_short(data, self.span)
        self.cumulative = np.cumsum(self.counts)  # (documents,)
        self.documents_used = int((self.counts > 0).sum())
        self.tokens_used = int(lengths[self.counts > 0].sum())

    def starts(self, step: int, batch_size: int) -> np.ndarray:
        """(batch_size,) absolute token offsets of the windows of global batch ``step``."""
        rng = np.random.default_rng([self.seed, step])
        draws = rng.integers(0, int(self.cumulative[-1]), size=batch_size)  # uniform over all windows
        doc = np.searchsorted(self.cumulative, draws, side="right")
        before = np.where(doc > 0, self.cumulative[doc - 1], 0)
        return self.data.offsets[doc] + (draws - before)

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """(batch_size, seq_len + 1) token ids of global batch ``step``."""
        return gather(self.data.tokens, self.starts(step, batch_size), self.span)


def eval_starts(data: TokenizedSplit, seq_len: int, max_windows: int | None = None) -> np.ndarray:
    """Offsets of non-overlapping evaluation windows, round-robin over documents.

    Document ``d`` contributes windows at ``0, seq_len, 2 seq_len, ...`` (each ``seq_len + 1``
    long, sharing one token with the next); taking the first window of every document, then the
    second, ... means a small ``max_windows`` still covers many documents.
    """
    span = seq_len + 1
    per_doc = [
        [int(lo) + k * seq_len for k in range(max(0, (int(hi) - int(lo) - 1) // seq_len))]
        for lo, hi in zip(data.offsets[:-1], data.offsets[1:])
    ]
    if not any(per_doc):
        raise _too_short(data, span)
    order = [w[k] for k in range(max(map(len, per_doc))) for w in per_doc if k < len(w)]
    return np.array(order[:max_windows] if max_windows is not None else order, dtype=np.int64)
