"""Train and score a model on a synthetic task within a time or step budget.

Kept small on purpose: the general trainer (``memplug.app.train``) handles corpora, checkpoints and
distribution; this loop exists so that a memory can be compared on a task in a few CPU minutes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..app.precision import Precision, autocast, resolve_precision
from ..core.trainable import is_memory_parameter
from .base import Task

LN2 = math.log(2)


@dataclass
class TaskRun:
    """What :func:`train_on_task` did: steps, seconds, and the loss curve (nats per token)."""

    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    precision: Precision | None = None


def train_on_task(
    model: torch.nn.Module,
    task: Task,
    *,
    length: int,
    batch: int,
    lr: float = 2e-3,
    memory_lr: float = 0.0,
    steps: int | None = None,
    seconds: float | None = None,
    warmup: int = 20,
    seed: int = 0,
    precision: str | Precision = "auto",
    progress: bool = True,
    description: str = "train",
    on_step: Callable[[int, float], None] | None = None,
) -> TaskRun:
    """AdamW on fresh task batches until ``steps`` or ``seconds`` runs out (whichever first).

    The loss is next-token cross-entropy on every target (``Batch.targets`` other than -100,
    given to the model as ``shift_labels``); ``precision`` is ``"auto"`` (bf16 autocast where
    the device computes it fast), ``"bf16"`` or ``"fp32"`` (see :mod:`memplug.app.precision`).
    ``memory_lr`` (0: ``lr``) is the learning rate of the memory's own parameters
    (:func:`memplug.core.trainable.is_memory_parameter`: gates, a memory plugin's weights). Adam
    moves a parameter by about its learning rate per step whatever the gradient's size, so a gate
    that starts at 0 needs ``memory_lr * steps`` well above 1 to open fully.
    Returns the loss curve.
    """
    if steps is None and seconds is None:
        raise ValueError("give steps or seconds (or both)")
    if memory_lr < 0:
        raise ValueError(f"memory_lr must be >= 0 (0: lr), got {memory_lr}")
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    named = list(model.named_parameters())
    groups = [{"params": [t for n, t in named if not is_memory_parameter(n)]},
              {"params": [t for n, t in named if is_memory_parameter(n)], "lr": memory_lr or lr}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
    if not isinstance(precision, Precision):
        precision = resolve_precision(precision, device)
    run = TaskRun(precision=precision)
    start = time.perf_counter()
    bar = tqdm(total=steps, desc=description, disable=not progress, unit="step")
    model.train()
    while (steps is None or run.steps < steps) and (seconds is None or time.perf_counter() - start < seconds):
        data = task.sample(batch, length, gen)
        with autocast(device, precision):
            out = model(data.input_ids.to(device), shift_labels=data.targets.to(device))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        run.steps += 1
        run.losses.append(out.loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{run.losses[-1]:.3f}", refresh=False)
        if on_step is not None:
            on_step(run.steps, run.losses[-1])
    bar.close()
    run.seconds = time.perf_counter() - start
    return run


@torch.no_grad()
def score_on_task(
    model: torch.nn.Module,
    task: Task,
    *,
    length: int,
    batch: int,
    batches: int = 4,
    seed: int = 1234,
    skip: int = 0,
    oracles: tuple[str, ...] = (),
) -> dict[str, float]:
    """Bits per scored token (and accuracy) of ``model`` on fresh batches; positions before
    ``skip`` are ignored. ``oracles`` like ``("full", "block:64")`` add the task's exact
    best achievable bits for those contexts on the same batches."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    nll_sum, correct, count = 0.0, 0, 0
    oracle_sum = {c: 0.0 for c in oracles}
    for _ in range(batches):
        data = task.sample(batch, length, gen)
        logits = model(data.input_ids.to(device)).logits.float().cpu()
        mask = data.scored.clone()
        mask[:, :skip] = False
        nll = F.cross_entropy(logits.transpose(1, 2), data.targets, reduction="none")  # (B, T)
        nll_sum += nll[mask].sum().item()
        correct += (logits.argmax(-1) == data.targets)[mask].sum().item()
        count += int(mask.sum())
        for c in oracles:
            oracle_sum[c] += task.oracle_nll(data, c)[mask].sum().item()
    model.train()
    result = {"bits": nll_sum / count / LN2, "accuracy": correct / count, "scored": count}
    result.update({f"oracle_{c}": s / count / LN2 for c, s in oracle_sum.items()})
    return result
