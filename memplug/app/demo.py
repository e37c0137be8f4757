"""``memplug demo``: the main job. Memory doing something real, measured, in about 15 CPU minutes.

Three parts, each printed as it finishes and collected in one table and one figure:

1. **A long-range task** (:class:`memplug.tasks.RegimeTask`): the next token after each QUERY
   depends on a hidden regime that only the whole history reveals. The same small model is
   trained twice for the same time (on the scored tokens), with Elastic Memory (LegS, uniform
   sampling) in its top layer and without memory; both are scored in bits on the regime-dependent tokens, next to
   the exact Bayes oracles that see the whole history or the block alone. The elastic model is
   also scored with its memory masked and with exponential (recency) sampling swapped in.
2. **Real data** (the CPython standard library source, no download): one elastic byte-level
   model trained for the same time, evaluated on held-out files with its memory, with its
   memory masked, and with a recency-warped retriever swapped in at test time. A small model
   trained for minutes does not beat block-local attention on real text (the ``lm_sweep``
   table of docs/results: no memory does at 300 steps); this part reports what the memory
   contributes inside one trained model, not a win over a baseline.
3. **The encoder reconstruction plot** of ``memplug reconstruct``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..core.hookspecs import hookimpl
from ..core.model import MemoryModel, build_model
from .report import write_report
from ..tasks import RegimeTask, ScoredOnly
from ..tasks.corpus import CorpusTask
from ..tasks.run import TaskRun, score_on_task, train_on_task

#: Sizes of the demo: small enough that the regime task shows the memory at work within minutes of
#: CPU training (docs/results/demo.md holds a run).
REGIME = dict(d_model=128, n_layers=2, n_heads=4, block=64, length=1024, batch=16, order=64, samples=64, lr=2e-3)
CODE = dict(d_model=128, n_layers=2, n_heads=4, block=128, length=1024, batch=8, order=64, samples=64, lr=2e-3)
WARP = dict(warp="exponential", rate=4.0)

log = logging.getLogger(__name__)


def _model(cfg: dict[str, Any], vocab: int, memory: str | None, seed: int) -> MemoryModel:
    torch.manual_seed(seed)  # the same initial weights for every arm
    options = dict(order=cfg["order"], samples=cfg["samples"]) if memory == "elastic" else {}
    return build_model("tiny", memory=memory, block=cfg["block"], layers=[-1] if memory else None,
                       backbone_options=dict(vocab_size=vocab, d_model=cfg["d_model"], n_layers=cfg["n_layers"],
                                             n_heads=cfg["n_heads"]),
                       memory_options=options)


def regime_part(seconds: float, seed: int, progress: bool) -> tuple[list[dict[str, Any]], dict[str, TaskRun]]:
    """Elastic vs no memory on the hidden-regime task; rows of bits per regime-dependent token."""
    cfg, task = REGIME, RegimeTask()
    score = dict(length=cfg["length"], batch=cfg["batch"], batches=8, skip=256)
    rows, runs = [], {}
    for memory in ("elastic", None):
        model = _model(cfg, task.vocab_size, memory, seed)
        name = memory or "none (block-local)"
        runs[name] = train_on_task(model, ScoredOnly(task), length=cfg["length"], batch=cfg["batch"], lr=cfg["lr"],
                                   seconds=seconds, seed=seed, progress=progress, description=f"regime: {name}")
        result = score_on_task(model, task, oracles=("full", f"block:{cfg['block']}"), **score)
        rows.append({"part": "regime", "model": name, "bits": result["bits"], "steps": runs[name].steps})
        if memory == "elastic":
            with model.memory_masked():
                masked = score_on_task(model, task, **score)
            rows.append({"part": "regime", "model": "elastic, memory masked at test", "bits": masked["bits"]})
            with model.swap_retriever("warped", samples=cfg["samples"], **WARP):
                warped = score_on_task(model, task, **score)
            rows.append({"part": "regime", "model": "elastic, exponential sampling swapped in", "bits": warped["bits"]})
    rows.append({"part": "regime", "model": "oracle: whole history", "bits": result["oracle_full"]})
    rows.append({"part": "regime", "model": f"oracle: block of {cfg['block']} alone",
                 "bits": result[f"oracle_block:{cfg['block']}"]})
    return rows, runs


def code_part(seconds: float, seed: int, progress: bool) -> tuple[list[dict[str, Any]], dict[str, TaskRun]]:
    """One elastic model on the stdlib source: with memory, masked, and a swapped retriever."""
    from ..data import prepare
    from ..data.tokenizers import ByteTokenizer

    cfg = CODE
    prepared = prepare("code")
    train = CorpusTask(prepared.split("train").tokens(ByteTokenizer()))
    held_out = CorpusTask(prepared.split("validation").tokens(ByteTokenizer()))
    model = _model(cfg, 256, "elastic", seed)
    run = train_on_task(model, train, length=cfg["length"], batch=cfg["batch"], lr=cfg["lr"], seconds=seconds,
                        seed=seed, progress=progress, description="code: elastic")
    score = dict(length=cfg["length"], batch=cfg["batch"], batches=8, skip=cfg["block"])
    rows = [{"part": "code", "model": "elastic", "bits": score_on_task(model, held_out, **score)["bits"],
             "steps": run.steps}]
    with model.memory_masked():
        rows.append({"part": "code", "model": "elastic, memory masked at test",
                     "bits": score_on_task(model, held_out, **score)["bits"]})
    with model.swap_retriever("warped", samples=cfg["samples"], **WARP):
        rows.append({"part": "code", "model": "elastic, exponential sampling swapped in",
                     "bits": score_on_task(model, held_out, **score)["bits"]})
    return rows, {"code: elastic": run}


def _figure(runs: dict[str, TaskRun], rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, run in runs.items():
        window = max(1, len(run.losses) // 20)
        smooth = torch.tensor(run.losses).unfold(0, window, 1).mean(-1) if len(run.losses) >= window else torch.tensor(run.losses)
        curves.plot(torch.arange(len(smooth)) + window, smooth / 0.6931, label=name)
    curves.set(xlabel="step", ylabel="training loss (bits/token, smoothed)", title="training")
    curves.legend()
    regime = [r for r in rows if r["part"] == "regime"]
    bars.barh([r["model"] for r in regime], [r["bits"] for r in regime], color="tab:blue")
    bars.invert_yaxis()
    bars.set(xlabel="bits per regime-dependent token (lower is better)", title="hidden-regime task")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(rows: list[dict[str, Any]], reconstruction: list, seconds: float) -> str:
    lines = [
        f"Each model trained for {seconds:.0f} s on this machine (the `steps` column says how far that got).",
        "",
        "| part | model | bits | steps |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['part']} | {r['model']} | {r['bits']:.3f} | {r.get('steps', '')} |" for r in rows]
    lines += [
        "",
        "`regime`: bits per regime-dependent token (the answer after each QUERY, positions >= 256), "
        "against the exact Bayes oracles. `code`: bits per byte on held-out CPython standard-library "
        "files, positions after the first block.",
        "",
        "| encoder | relative reconstruction error (synthetic) |",
        "|---|---|",
    ]
    lines += [f"| {r.encoder} | {r.error:.2e} |" for r in reconstruction if r.signal == "synthetic"]
    lines += ["", "![training and scores](demo.png)", "", "![reconstruction](demo_reconstruct.png)"]
    return "\n".join(lines)


def run_demo(seconds: float = 180.0, out: str | Path = "memplug-demo", seed: int = 0, progress: bool = True,
             parts: tuple[str, ...] = ("regime", "code", "reconstruct")) -> dict[str, Any]:
    """Run the demo; write ``demo.md``, ``demo.json``, ``demo.png`` and ``demo_reconstruct.png``
    into ``out``; return the rows, the time taken and the report's Markdown. ``seconds`` is the
    training time of each model."""
    from .reconstruct import reconstruct

    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    unknown = set(parts) - {"regime", "code", "reconstruct"}
    if unknown:
        raise ValueError(f"parts must be among regime, code, reconstruct; got {sorted(unknown)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, runs, recon = [], {}, []
    if "regime" in parts:
        part_rows, part_runs = regime_part(seconds, seed, progress)
        rows += part_rows
        runs |= part_runs
    if "code" in parts:
        part_rows, part_runs = code_part(seconds, seed, progress)
        rows += part_rows
        runs |= part_runs
    if "reconstruct" in parts:
        recon = reconstruct(out=out / "demo_reconstruct.png")
    if runs:
        _figure(runs, rows, out / "demo.png")
    markdown = _markdown(rows, recon, seconds)
    elapsed = time.perf_counter() - start
    write_report(out, "demo", markdown, {"rows": rows, "seconds_per_model": seconds,
                                         "losses": {k: r.losses for k, r in runs.items()}},
                 title="memplug demo", seconds=elapsed)
    log.info("demo: wrote %s (%.1f min)", out / "demo.md", elapsed / 60)
    return {"rows": rows, "seconds": elapsed, "markdown": markdown}


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=180.0, help="training time of each model (default 180)")
    parser.add_argument("--out", default="memplug-demo", help="output folder (default ./memplug-demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", default="regime,code,reconstruct", help="comma-separated subset")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _run(args: argparse.Namespace) -> int:
    result = run_demo(args.seconds, args.out, args.seed, not args.no_progress, tuple(p for p in args.parts.split(",") if p))
    print(result["markdown"].split("\n\n![")[0])  # the tables, without the figures
    return 0


@hookimpl
def memplug_add_commands(registry) -> None:
    registry.add("demo", "the main job: memory on a long-range task and on real code, in about 15 CPU minutes",
                 _add_arguments, _run)
