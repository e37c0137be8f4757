"""Shared pieces of the evidence scripts (tasks_suite, swaps, ablations, lm_sweep, length).

- :class:`Preset` and :func:`parse` : every script takes ``--preset smoke|cpu|gpu`` (sizes),
  ``--budget`` (training seconds per arm), ``--threads``, ``--seed`` and ``--out``.
- :func:`memory_spec` / :func:`build` : one model per arm from a memory spec such as ``none``,
  ``knn``, ``elastic`` (LegS) or ``elastic:jacobi``, at a budget scale (:mod:`memplug.core.budget`),
  with the same initial backbone weights for every arm of a seed.
- :func:`collect` : per-scored-token losses, hits, distances, positions and exact oracles over
  fresh evaluation batches, so a table can be cut by distance or position afterwards.
- :func:`finish` : the Markdown + JSON report and its plot, with the preset's settings;
  :func:`report` : the same for scripts without a preset; :func:`figure` : the plot alone.
- :func:`int_list` : a comma-separated list of integers from the command line.
- :func:`median_interval` : a distribution-free confidence interval for a median (timing rounds);
  :func:`paired_ratio` : an arm's speed against a reference timed in the same rounds, with one;
  :func:`interval_text` : one as table text.

Scripts run as ``python benchmarks/NAME.py`` (this folder is then on ``sys.path``).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import memory_configs
import torch
import torch.nn.functional as F

from memplug.core.model import MemoryModel, build_model
from memplug.app.precision import PRECISIONS, Precision, resolve_precision
from memplug.app.report import figure_markdown, write_report
from memplug.tasks import ScoredOnly
from memplug.tasks.base import Task
from memplug.tasks.run import TaskRun, train_on_task

LN2 = math.log(2)
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"

#: every memory of the comparison: the baselines, then Elastic with each measure
MEMORIES = ("none", "xl", "knn", "melodi", "infini", "full",
            "elastic", "elastic:jacobi", "elastic:legt", "elastic:fout")


@dataclass(frozen=True)
class Preset:
    """Sizes of one run: the model, the data shape, the training budget and the evaluation."""

    d_model: int
    n_layers: int
    n_heads: int
    block: int
    length: int
    batch: int
    budget: float  # training seconds per arm (a cap when ``steps`` is set)
    eval_batches: int
    lr: float = 2e-3
    memory_lr: float = 0.0  # learning rate of the memory's own parameters (gates, weights); 0: lr
    scale: int = 4  # memory budget multiple (memplug.core.budget) unless a script sweeps it
    layers: tuple[int, ...] = (-1,)  # the layers that get a memory
    precision: str = "auto"  # bf16 autocast or float32 (memplug.app.precision); auto: bf16 where it is fast
    steps: int | None = None  # training steps per arm: equal work for every arm on a shared machine

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def int_list(text: str, arg: str, minimum: int = 1, also: str = "",
             error: Callable[[str], NoReturn] | None = None) -> list[int]:
    """``"64,1024"`` -> [64, 1024]; anything else, or a value below ``minimum``, stops the script
    with one line naming ``arg`` (and ``also``, the other values the caller accepts: "'none' or "),
    through ``error`` when given (a parser's ``error``: usage, exit status 2)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < minimum:
        message = f"{arg} must be {also}comma-separated integers >= {minimum}, got {text!r}"
        if error is not None:
            error(message)
        raise SystemExit(message)
    return values


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """The order-statistic confidence interval of the median of ``values``: ``(x_(k), x_(n+1-k))``
    of the sorted values with the largest k whose coverage, 1 - 2 P(Binomial(n, 1/2) < k), is at
    least ``confidence``. It assumes only independent draws (no distribution), so it suits a few
    timing rounds; None when there are too few values for any k (n < 6 at 95%)."""
    n, tail = len(values), (1 - confidence) / 2
    below, k = 0.0, 0  # below: P(Binomial(n, 1/2) < k)
    while k < n // 2 and below + math.comb(n, k) / 2**n <= tail:
        below += math.comb(n, k) / 2**n
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def paired_ratio(times: Sequence[float], reference: Sequence[float]) -> tuple[float, tuple[float, float] | None]:
    """How fast an arm ran against a reference timed in the same rounds: the median over rounds of
    (reference's step time / the arm's), and its 95% interval (:func:`median_interval`)."""
    ratios = [b / a for a, b in zip(times, reference)]
    return statistics.median(ratios), median_interval(ratios)


def interval_text(interval: Sequence[float] | None) -> str:
    """``(0.886, 0.961)`` -> ``"0.886-0.961"``; None (no interval) -> ``""``."""
    return "" if interval is None else f"{interval[0]:.3f}-{interval[1]:.3f}"


def parse(description: str, presets: dict[str, Preset], add: Callable[[argparse.ArgumentParser], None] | None = None,
          argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Preset]:
    """Common arguments, then the preset with ``--budget`` applied; sets the torch threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--preset", choices=sorted(presets), default="cpu", help="sizes (default cpu)")
    parser.add_argument("--budget", type=float, default=None, help="training seconds per arm (default: preset's)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per arm (then --budget is only a cap); default: the preset's")
    parser.add_argument("--train-on", choices=("all", "scored"), default="all",
                        help="training loss on every token (default) or on the task's scored tokens only")
    parser.add_argument("--eval-batches", type=int, default=None, help="evaluation batches (default: the preset's)")
    parser.add_argument("--lr", type=float, default=None, help="AdamW learning rate (default: the preset's)")
    parser.add_argument("--memory-lr", type=float, default=None,
                        help="learning rate of the memory's own parameters: gates, a memory's weights "
                             "(default: the preset's; 0: --lr)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="bf16 autocast or float32 (default: the preset's, auto: bf16 where the device is fast in it)")
    parser.add_argument("--out", default=str(RESULTS), help="results folder (default docs/results)")
    parser.add_argument("--name", default=None, help="report name (default: the script's)")
    if add is not None:
        add(parser)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    preset = presets[args.preset]
    if args.budget is not None:
        if not args.budget > 0:
            parser.error(f"--budget must be > 0 seconds, got {args.budget}")
        preset = replace(preset, budget=args.budget)
    if args.eval_batches is not None:
        if args.eval_batches < 1:
            parser.error(f"--eval-batches must be >= 1, got {args.eval_batches}")
        preset = replace(preset, eval_batches=args.eval_batches)
    if args.precision is not None:
        preset = replace(preset, precision=args.precision)
    if args.lr is not None:
        if not args.lr > 0:
            parser.error(f"--lr must be > 0, got {args.lr}")
        preset = replace(preset, lr=args.lr)
    if args.memory_lr is not None:
        if not args.memory_lr >= 0:
            parser.error(f"--memory-lr must be >= 0 (0: the learning rate), got {args.memory_lr}")
        preset = replace(preset, memory_lr=args.memory_lr)
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"--steps must be >= 1, got {args.steps}")
        preset = replace(preset, steps=args.steps)
    args.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    return args, preset


def memory_spec(spec: str, p: Preset, scale: int | None = None) -> dict[str, Any]:
    """``build_model`` memory keywords for ``spec`` (``name`` or ``elastic:ENCODER``, optionally
    followed by ``@Kx`` for K times the memory budget) at ``scale`` (the spec's, else the preset's).

    Elastic encoders: ``legs`` (default), ``jacobi`` (β = 1, a recency-weighted scale-invariant
    measure), ``legt`` / ``fout`` with a window of the whole training sequence.
    """
    spec, at, size = spec.partition("@")
    if at:
        scale = memory_configs.parse_scales(size)[0]
    name, _, encoder = spec.partition(":")
    scale = p.scale if scale is None else scale
    options = memory_configs.model_options(name, scale, p.block)
    if encoder:
        if name != "elastic":
            raise ValueError(f"only elastic takes an encoder suffix, got spec {spec!r}")
        options["encoder"] = encoder
        if encoder == "jacobi":
            options["encoder_options"] = {"beta": 1.0}
        elif encoder in ("legt", "fout"):
            options["encoder_options"] = {"window": float(p.length)}
    return options


#: options of an arm that belong to the model's layers, not to its memory
LAYER_OPTIONS = ("span", "attention", "gate", "sink")


def build(vocab: int, spec: str, p: Preset, seed: int, device: torch.device, scale: int | None = None,
          **extra: Any) -> MemoryModel:
    """The tiny backbone with memory ``spec`` in ``p.layers``; ``extra`` holds more memory options
    and the layer options of :data:`LAYER_OPTIONS`. The backbone's initial weights depend only on
    ``seed`` (they are drawn first, before any memory parameter)."""
    options = {**memory_spec(spec, p, scale), **extra}
    memory = options.pop("memory", "elastic")
    layer = {k: options.pop(k) for k in LAYER_OPTIONS if k in options}
    torch.manual_seed(seed)
    model = build_model("tiny", memory=memory, block=p.block, layers=list(p.layers) if memory else None,
                        backbone_options=dict(vocab_size=vocab, d_model=p.d_model, n_layers=p.n_layers,
                                              n_heads=p.n_heads),
                        memory_options=options, **layer)
    return model.to(device)


def teaching(args: argparse.Namespace, task: Task) -> Task:
    """The task to train on: ``task`` itself, or :class:`memplug.tasks.ScoredOnly` (loss on the
    scored tokens only: the i.i.d. filler teaches nothing once its uniform law is learned, and its
    gradient noise drowns the few history-dependent tokens) with ``--train-on scored``."""
    return ScoredOnly(task) if args.train_on == "scored" else task


def parameters(model: torch.nn.Module) -> int:
    return sum(t.numel() for t in model.parameters())


def train(model: MemoryModel, task: Task, p: Preset, seed: int, seconds: float | None = None,
          steps: int | None = None, label: str = "",
          on_step: Callable[[int, float], None] | None = None) -> TaskRun:
    """``train_on_task`` for the preset's steps and budget (or ``seconds`` / ``steps``), no progress
    bar; ``on_step(step, loss)`` runs after every step."""
    run = train_on_task(model, task, length=p.length, batch=p.batch, lr=p.lr, memory_lr=p.memory_lr,
                        seconds=seconds or p.budget,
                        steps=steps or p.steps, seed=seed, precision=p.precision, progress=False, on_step=on_step)
    print(f"  trained {label or 'arm'}: {run.steps} steps in {run.seconds:.0f} s, last loss "
          f"{sum(run.losses[-10:]) / max(1, len(run.losses[-10:])):.3f}", flush=True)
    return run


def effort(p: Preset, share: float = 1.0) -> str:
    """The training effort per arm in words: ``"250 steps (at most 150 s)"`` or ``"150 s"``."""
    if p.steps:
        return f"{max(1, int(p.steps * share))} steps (at most {p.budget * share:.0f} s)"
    return f"{p.budget * share:.0f} s"


def portion(p: Preset, share: float) -> dict[str, Any]:
    """``train`` keywords for ``share`` of the preset's effort (steps when set, else seconds)."""
    return {"seconds": p.budget * share, "steps": max(1, int(p.steps * share)) if p.steps else None}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def collect(model: MemoryModel, task: Task, p: Preset, *, seed: int = 1234, batches: int | None = None,
            oracles: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Every scored token of ``batches`` fresh evaluation batches (the same ones for every arm):
    ``nll`` (nats), ``hit`` (argmax correct), ``distance``, ``position`` and ``oracle:CONTEXT``
    (the task's exact best loss for that context), each a flat float64 tensor."""
    device = model_device(model)
    gen = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    for _ in range(batches or p.eval_batches):
        data = task.sample(p.batch, p.length, gen)
        logits = model(data.input_ids.to(device)).logits.float().cpu()  # (B, T, V)
        nll = F.cross_entropy(logits.transpose(1, 2), data.targets, reduction="none")  # (B, T)
        mask = data.scored
        pos = torch.arange(p.length).expand_as(mask)
        found = {"nll": nll[mask], "hit": (logits.argmax(-1) == data.targets)[mask],
                 "distance": data.distance[mask], "position": pos[mask]}
        for context in oracles:
            found[f"oracle:{context}"] = task.oracle_nll(data, context)[mask]
        for key, value in found.items():
            parts.setdefault(key, []).append(value.double())
    model.train(was_training)
    return {key: torch.cat(value) for key, value in parts.items()}


def bits(values: dict[str, torch.Tensor], where: torch.Tensor | None = None, key: str = "nll") -> float:
    """Mean of ``values[key]`` in bits over the tokens ``where`` selects (nan if none)."""
    x = values[key] if where is None else values[key][where]
    return float(x.mean() / LN2) if x.numel() else float("nan")


def accuracy(values: dict[str, torch.Tensor], where: torch.Tensor | None = None) -> float:
    x = values["hit"] if where is None else values["hit"][where]
    return float(x.mean()) if x.numel() else float("nan")


def fmt(x: float | str | None, digits: int = 3) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def table(rows: list[dict[str, Any]], columns: Sequence[str], digits: int = 3) -> str:
    """A Markdown table of ``rows`` with ``columns`` (missing cells blank)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c), digits) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def report(directory: str | Path, name: str, markdown: str, data: dict[str, Any], draw: Callable[[Any], None] | None,
           *, title: str, seconds: float, precision: Precision | None = None) -> Path:
    """``NAME.md`` / ``NAME.json`` (:func:`memplug.app.report.write_report`: machine, date, command,
    wall-clock, precision) with ``NAME.png``, drawn by ``draw(plt)``, shown under the Markdown."""
    if draw is not None:
        markdown += figure_markdown(directory, name, draw)
    path = write_report(directory, name, markdown, data, title=title, seconds=seconds, precision=precision)
    print(f"wrote {path}", flush=True)
    return path


def finish(args: argparse.Namespace, name: str, title: str, markdown: str, data: dict[str, Any], started: float,
           preset: Preset, draw: Callable[[Any], None] | None = None) -> Path:
    """Write ``NAME.md`` / ``NAME.json`` (with machine, date, command, wall-clock) and ``NAME.png``."""
    name = args.name or name
    settings = (f"Preset `{args.preset}`: {asdict(preset)}; seed {args.seed}; device {args.device}; "
                f"torch threads {torch.get_num_threads()}; load average at the end "
                f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    return report(args.out, name, settings + "\n\n" + markdown,
                  {"preset": asdict(preset), "preset_name": args.preset, "seed": args.seed, **data}, draw,
                  title=title, seconds=time.perf_counter() - started,
                  precision=resolve_precision(preset.precision, args.device))
