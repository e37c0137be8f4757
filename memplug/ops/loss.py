"""The causal language-model loss, with Hugging Face's conventions.

``labels`` are aligned with ``input_ids`` (the common case is ``labels = input_ids``): the logits
at position ``i`` are scored against ``labels[:, i + 1]``, so the loss shifts them itself, and
``-100`` marks a position that is not scored. ``shift_labels`` are targets already shifted
(``shift_labels[:, i]`` is the token after position ``i``): the form a loop needs when a
sequence is fed in segments, since the last position of a segment has its target in the next
one. ``num_items_in_batch`` (what ``transformers.Trainer`` passes under gradient accumulation)
turns the mean into a sum divided by that count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "causal_lm_loss", "shift"]

IGNORE_INDEX = -100


def shift(labels: Tensor) -> Tensor:
    """(B, T) labels aligned with the inputs -> (B, T) targets of each position: ``labels`` moved
    one step left, the last position ignored (its target is not in ``labels``)."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def _check_targets(targets: Tensor, vocab: int, name: str) -> None:
    """A ValueError naming the first target outside [0, vocab) that is not ignored; one host
    sync, and no data-dependent shape unless there is one."""
    outside = (targets != IGNORE_INDEX) & ((targets < 0) | (targets >= vocab))  # (B, T)
    if bool(outside.any()):
        bad = targets[outside][0].item()
        raise ValueError(f"{name} hold {bad}, outside the vocabulary [0, {vocab}) (and not -100, ignored)")


def causal_lm_loss(
    logits: Tensor,
    labels: Tensor | None = None,
    *,
    shift_labels: Tensor | None = None,
    num_items_in_batch: Tensor | int | None = None,
) -> Tensor:
    """Next-token cross-entropy of ``logits`` (B, T, V) in float32.

    Give exactly one of ``labels`` (B, T), aligned with the inputs, or ``shift_labels`` (B, T),
    already shifted; positions whose target is ``-100`` are not scored, and any other target
    outside the vocabulary is a ValueError (in eager mode; a compiled graph skips that check, which
    reads the data, and leaves the error to ``cross_entropy``). The result is the mean
    over scored positions, or their sum divided by ``num_items_in_batch`` when given. No scored
    position gives NaN (the mean of nothing), as in ``transformers``.
    """
    if (labels is None) == (shift_labels is None):
        raise ValueError("give labels (aligned with input_ids) or shift_labels (already shifted), exactly one")
    targets = shift(labels) if labels is not None else shift_labels
    if targets.shape != logits.shape[:2]:
        name = "labels" if labels is not None else "shift_labels"
        raise ValueError(f"{name} must have the shape of input_ids {tuple(logits.shape[:2])}, got {tuple(targets.shape)}")
    targets = targets.to(logits.device)
    if not torch.compiler.is_compiling():  # a check that reads data: it would split a compiled graph
        _check_targets(targets, logits.shape[-1], "labels" if labels is not None else "shift_labels")
    flat = logits.flatten(0, 1).float()  # (B*T, V)
    if num_items_in_batch is None:
        return F.cross_entropy(flat, targets.flatten(), ignore_index=IGNORE_INDEX)
    total = F.cross_entropy(flat, targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch
