"""``memplug demo``: the main job. Memory doing something real, measured, on any CPU in minutes.

Three parts, each printed as it finishes and collected in one table and one figure:

1. **A long-range task** (:class:`memplug.tasks.RegimeTask`): the answer after each QUERY
   depends on a hidden regime that only the whole history reveals. The same small model is
   trained for the same number of steps (on the scored tokens) twice, with Elastic Memory (LegS,
   uniform sampling) in its top layer and without memory; both are scored in bits on the
   regime-dependent tokens, next to the exact Bayes oracles that see the whole history or the
   block alone. The elastic model is also scored with its memory masked and with exponential
   (recency) sampling swapped in. The demo then says whether it shows the memory effect: the
   elastic model well below the block-alone oracle, and masking its memory costing at least
   0.5 bits.
2. **Real data** (the CPython standard library source, no download): one elastic byte-level
   model, evaluated on held-out files with its memory, with its memory masked, and with a
   recency-warped retriever swapped in at test time. A small model trained for minutes does
   not beat block-local attention on real text (the ``lm_sweep`` table of docs/results: no
   memory does at 300 steps); this part reports what the memory contributes inside one
   trained model, not a win over a baseline.
3. **The encoder reconstruction plot** of ``memplug reconstruct``.

Every model trains a fixed number of steps (the same work on every machine), so the table
means the same everywhere; the precision is bf16 only where this machine computes it fast
(:mod:`memplug.app.precision`). After the first steps the demo prints how long it will take
here; ``--seconds`` caps each model's training time if needed (the table then says how many
steps each got).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.hookspecs import hookimpl
from ..core.model import MemoryModel, build_model
from ..tasks import RegimeTask, ScoredOnly
from ..tasks.corpus import CorpusTask
from ..tasks.run import TaskRun, score_on_task, train_on_task
from .precision import PRECISIONS, Precision, resolve_precision
from .report import figure_markdown, write_report

PARTS = ("regime", "code", "reconstruct")
WARP = dict(warp="exponential", rate=4.0)
#: the effect the demo must show on the regime task
EFFECT_MARGIN_BITS = 0.5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Setup:
    """One part's model and training: sizes, data shape, and the steps every machine trains."""

    d_model: int
    n_layers: int
    n_heads: int
    block: int
    length: int
    batch: int
    steps: int
    order: int = 64
    samples: int = 64
    lr: float = 2e-3

    @property
    def tokens(self) -> int:
        return self.length * self.batch


#: The regime task at a size where elastic learned to use its memory in every seed tried
#: (benchmarks/regime_seeds.py --preset demo counts the seeds; the claims page has the table): 16
#: sequences of 1024 tokens give about 170 scored answers per step; with a quarter of that, some
#: seeds never left the plateau in 600 steps. A width of 64 keeps a step near half a second on two
#: AVX2 cores in float32, so its 450 steps (300 left a smaller margin below the block-alone oracle in
#: a run not kept; ``--steps 300`` of that script measures it) and the rest of the demo fit in a
#: quarter of an hour there.
REGIME = Setup(d_model=64, n_layers=2, n_heads=4, block=64, length=1024, batch=16, steps=450)
CODE = Setup(d_model=128, n_layers=2, n_heads=4, block=128, length=1024, batch=8, steps=200)


def _model(setup: Setup, vocab: int, memory: str | None, seed: int) -> MemoryModel:
    torch.manual_seed(seed)  # the same initial weights for every arm
    options = dict(order=setup.order, samples=setup.samples) if memory == "elastic" else {}
    return build_model("tiny", memory=memory, block=setup.block, layers=[-1] if memory else None,
                       backbone_options=dict(vocab_size=vocab, d_model=setup.d_model, n_layers=setup.n_layers,
                                             n_heads=setup.n_heads),
                       memory_options=options)


class Clock:
    """Prints, after a model's first steps, how long it and the rest of the demo will take."""

    WARMUP = 5  # steps timed before the estimate (the first one pays for one-time set-up)

    def __init__(self, plan: list[tuple[str, Setup]]) -> None:
        self.plan, self.done = plan, 0
        self.started = 0.0

    def track(self, name: str) -> Any:
        index = [n for n, _ in self.plan].index(name)
        setup = self.plan[index][1]

        def on_step(step: int, loss: float) -> None:
            if step == 1:
                self.started = time.perf_counter()
            elif step == self.WARMUP + 1:
                per_step = (time.perf_counter() - self.started) / self.WARMUP
                rest = sum(s.steps * s.tokens for _, s in self.plan[index + 1 :]) / setup.tokens * per_step
                mine = per_step * (setup.steps - step)
                print(f"{name}: {per_step:.2f} s per step here, about {mine / 60:.1f} min for this model and "
                      f"{(mine + rest) / 60:.1f} min for the rest of the demo", file=sys.stderr, flush=True)

        return on_step


def _train(model: MemoryModel, task: Any, setup: Setup, name: str, seed: int, seconds: float | None,
           precision: Precision, progress: bool, clock: Clock) -> TaskRun:
    return train_on_task(model, task, length=setup.length, batch=setup.batch, lr=setup.lr, steps=setup.steps,
                         seconds=seconds, seed=seed, precision=precision, progress=progress, description=name,
                         on_step=clock.track(name))


def regime_part(seed: int, seconds: float | None, precision: Precision, progress: bool,
                clock: Clock) -> tuple[list[dict[str, Any]], dict[str, TaskRun]]:
    """Elastic vs no memory on the hidden-regime task; rows of bits per regime-dependent token."""
    setup, task = REGIME, RegimeTask()
    score = dict(length=setup.length, batch=setup.batch, batches=16, skip=4 * setup.block)
    rows, runs = [], {}
    for memory, name in (("elastic", "regime: elastic"), (None, "regime: none (block-local)")):
        model = _model(setup, task.vocab_size, memory, seed)
        runs[name] = _train(model, ScoredOnly(task), setup, name, seed, seconds, precision, progress, clock)
        result = score_on_task(model, task, oracles=("full", f"block:{setup.block}"), **score)
        rows.append({"part": "regime", "model": name.removeprefix("regime: "), "bits": result["bits"],
                     "steps": runs[name].steps})
        if memory == "elastic":
            with model.memory_masked():
                masked = score_on_task(model, task, **score)
            rows.append({"part": "regime", "model": "elastic, memory masked at test", "bits": masked["bits"]})
            with model.swap_retriever("warped", samples=setup.samples, **WARP):
                warped = score_on_task(model, task, **score)
            rows.append({"part": "regime", "model": "elastic, exponential sampling swapped in", "bits": warped["bits"]})
    rows.append({"part": "regime", "model": "oracle: whole history", "bits": result["oracle_full"]})
    rows.append({"part": "regime", "model": f"oracle: block of {setup.block} alone",
                 "bits": result[f"oracle_block:{setup.block}"]})
    return rows, runs


def code_part(seed: int, seconds: float | None, precision: Precision, progress: bool,
              clock: Clock) -> tuple[list[dict[str, Any]], dict[str, TaskRun]]:
    """One elastic model on the stdlib source: with memory, masked, and a swapped retriever."""
    from ..data import prepare
    from ..data.tokenizers import ByteTokenizer

    setup = CODE
    prepared = prepare("code")
    train = CorpusTask(prepared.split("train").tokens(ByteTokenizer()))
    held_out = CorpusTask(prepared.split("validation").tokens(ByteTokenizer()))
    model = _model(setup, 256, "elastic", seed)
    run = _train(model, train, setup, "code: elastic", seed, seconds, precision, progress, clock)
    score = dict(length=setup.length, batch=setup.batch, batches=8, skip=setup.block)
    rows = [{"part": "code", "model": "elastic", "bits": score_on_task(model, held_out, **score)["bits"],
             "steps": run.steps}]
    with model.memory_masked():
        rows.append({"part": "code", "model": "elastic, memory masked at test",
                     "bits": score_on_task(model, held_out, **score)["bits"]})
    with model.swap_retriever("warped", samples=setup.samples, **WARP):
        rows.append({"part": "code", "model": "elastic, exponential sampling swapped in",
                     "bits": score_on_task(model, held_out, **score)["bits"]})
    return rows, {"code: elastic": run}


def effect(rows: list[dict[str, Any]]) -> str | None:
    """One line saying whether the regime part shows the memory effect (None without that part)."""
    bits = {r["model"]: r["bits"] for r in rows if r["part"] == "regime"}
    if "elastic" not in bits:
        return None
    oracle = next(v for k, v in bits.items() if k.startswith("oracle: block"))
    below = oracle - bits["elastic"]
    cost = bits["elastic, memory masked at test"] - bits["elastic"]
    shown = below >= EFFECT_MARGIN_BITS and cost >= EFFECT_MARGIN_BITS
    return (f"**Memory effect {'shown' if shown else 'NOT shown'}**: elastic is {below:+.3f} bits below the "
            f"block-alone oracle and masking its memory costs {cost:+.3f} bits (both must be at least "
            f"{EFFECT_MARGIN_BITS}).")


def _draw(runs: dict[str, TaskRun], rows: list[dict[str, Any]]) -> Any:
    def draw(plt: Any) -> None:
        curves = plt.subplot(1, 2, 1)
        for name, run in runs.items():
            losses = torch.tensor(run.losses)
            window = max(1, len(losses) // 20)
            smooth = losses.unfold(0, window, 1).mean(-1) if len(losses) >= window else losses
            curves.plot(torch.arange(len(smooth)) + window, smooth / 0.6931, label=name)
        curves.set(xlabel="step", ylabel="training loss (bits/token, smoothed)", title="training")
        curves.legend(fontsize=7)
        bars = plt.subplot(1, 2, 2)
        regime = [r for r in rows if r["part"] == "regime"]
        bars.barh([r["model"] for r in regime], [r["bits"] for r in regime], color="tab:blue")
        bars.invert_yaxis()
        bars.tick_params(axis="y", labelsize=7)
        bars.set(xlabel="bits per regime-dependent token (lower is better)", title="hidden-regime task")

    return draw


def _markdown(rows: list[dict[str, Any]], reconstruction: list, plan: list[tuple[str, Setup]],
              seconds: float | None) -> str:
    steps = ", ".join(f"{name} {setup.steps} steps of {setup.batch} x {setup.length} tokens" for name, setup in plan)
    cap = f"; at most {seconds:.0f} s each (the `steps` column says how far each got)" if seconds else ""
    lines = [f"Training: {steps}{cap}.", "", "| part | model | bits | steps |", "|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['model']} | {r['bits']:.3f} | {r.get('steps', '')} |" for r in rows]
    lines += [
        "",
        "`regime`: bits per regime-dependent token (the answer after each QUERY, positions past the first four "
        "blocks), against the exact Bayes oracles. `code`: bits per byte on held-out CPython standard-library "
        "files, positions after the first block.",
    ]
    verdict = effect(rows)
    if verdict:
        lines += ["", verdict]
    if reconstruction:
        lines += ["", "| encoder | relative reconstruction error (synthetic) |", "|---|---|"]
        lines += [f"| {r.encoder} | {r.error:.2e} |" for r in reconstruction if r.signal == "synthetic"]
    return "\n".join(lines)


def run_demo(out: str | Path = "memplug-demo", seed: int = 0, progress: bool = True,
             parts: tuple[str, ...] = PARTS, seconds: float | None = None,
             precision: str = "auto") -> dict[str, Any]:
    """Run the demo; write ``demo.md``, ``demo.json``, ``demo.png`` and ``demo_reconstruct.png``
    into ``out``; return the rows, the time taken, the verdict and the report's Markdown.
    ``seconds`` caps each model's training time (``None``: the fixed steps, whatever they take);
    ``precision`` as in :mod:`memplug.app.precision`."""
    from .reconstruct import reconstruct

    if seconds is not None and not seconds > 0:
        raise ValueError(f"seconds must be > 0 (a cap on each model's training time), got {seconds}")
    unknown = set(parts) - set(PARTS)
    if unknown or not parts:
        raise ValueError(f"parts must be among {', '.join(PARTS)}; got {sorted(unknown) or 'none'}")
    chosen = resolve_precision(precision, "cpu" if not torch.cuda.is_available() else "cuda")
    print(f"memplug demo: precision {chosen}", file=sys.stderr)
    plan = ([("regime: elastic", REGIME), ("regime: none (block-local)", REGIME)] if "regime" in parts else []) \
        + ([("code: elastic", CODE)] if "code" in parts else [])
    clock = Clock(plan)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, runs, recon = [], {}, []
    if "regime" in parts:
        part_rows, part_runs = regime_part(seed, seconds, chosen, progress, clock)
        rows += part_rows
        runs |= part_runs
    if "code" in parts:
        part_rows, part_runs = code_part(seed, seconds, chosen, progress, clock)
        rows += part_rows
        runs |= part_runs
    if "reconstruct" in parts:
        recon = reconstruct(out=out / "demo_reconstruct.png")
    markdown = _markdown(rows, recon, plan, seconds)
    if runs:
        markdown += figure_markdown(out, "demo", _draw(runs, rows), size=(12, 4.2))
    if recon:
        markdown += "\n![reconstruction](demo_reconstruct.png)\n"
    elapsed = time.perf_counter() - start
    write_report(out, "demo", markdown, {"rows": rows, "steps": {n: s.steps for n, s in plan}, "seconds_cap": seconds,
                                         "effect": effect(rows), "losses": {k: r.losses for k, r in runs.items()}},
                 title="memplug demo", seconds=elapsed, precision=chosen)
    log.info("demo: wrote %s (%.1f min)", out / "demo.md", elapsed / 60)
    return {"rows": rows, "seconds": elapsed, "effect": effect(rows), "markdown": markdown}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="memplug-demo", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    parser.add_argument("--seconds", type=float, default=None,
                        help="cap on each model's training time (default: none; every model trains its fixed steps)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="bf16 autocast or float32; auto: bf16 where this machine computes it fast")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run(args: argparse.Namespace) -> int:
    try:
        result = run_demo(args.out, args.seed, not args.no_progress, tuple(p for p in args.parts.split(",") if p),
                          args.seconds, args.precision)
    except ValueError as exc:
        print(f"memplug demo: {exc}", file=sys.stderr)
        return 2
    print(result["markdown"].split("\n\n![")[0])  # the tables and the verdict, without the figures
    return 0


@hookimpl
def memplug_add_commands(registry) -> None:
    registry.add("demo", "the main job: memory on a long-range task and on real code, in minutes on any CPU",
                 _add_arguments, _run)
