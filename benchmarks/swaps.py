"""Test-time sampler swaps: when does changing Elastic Memory's retriever help, and a recipe for safe swaps.

    python benchmarks/swaps.py --preset cpu

Three elastic (LegS) models are trained on the hidden-regime task for the same budget, each with
one sampler: ``uniform`` (the paper's default), ``warped`` (exponential, rate 4) and ``jittered``
(random warp + stratified jitter per batch, uniform at evaluation; the recipe proposed here).
Each is then evaluated, with no retraining, under every sampler: uniform; exponential warps of
several rates; power warps (rate < 1 favours the distant past, > 1 the recent); ``learned``
positions fitted for a few seconds with every model weight frozen; and with its memory masked.
The table gives bits per regime-dependent token and the change against the sampler the model was
trained with (negative: the swap helped).

``--task code`` (or any corpus of ``memplug data list``) asks the same question on text, where
the recent past predicts most: byte-level models trained on the corpus's training split, scored
in bits per byte on held-out windows (document-level validation split) past the first blocks.

    python benchmarks/swaps.py --preset cpu --task code --name swaps_code
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

import common
import torch
from tasks_suite import PRESETS, regime_rows

from memplug.data import prepare
from memplug.tasks import RegimeTask
from memplug.tasks.corpus import CorpusTask
from memplug.data.tokenizers import ByteTokenizer

TRAINED = {
    "uniform": {"retriever": "uniform"},
    "warped exp 4": {"retriever": "warped", "retriever_options": {"warp": "exponential", "rate": 4.0}},
    "jittered": {"retriever": "jittered", "retriever_options": {"max_rate": 4.0}},
}
SWAPS: dict[str, tuple[str, dict[str, Any]]] = {
    "uniform": ("uniform", {}),
    "exp 1": ("warped", {"warp": "exponential", "rate": 1.0}),
    "exp 2": ("warped", {"warp": "exponential", "rate": 2.0}),
    "exp 4": ("warped", {"warp": "exponential", "rate": 4.0}),
    "exp 8": ("warped", {"warp": "exponential", "rate": 8.0}),
    "power 0.5": ("warped", {"warp": "power", "rate": 0.5}),
    "power 2": ("warped", {"warp": "power", "rate": 2.0}),
    "power 4": ("warped", {"warp": "power", "rate": 4.0}),
}
OWN = {"uniform": "uniform", "warped exp 4": "exp 4", "jittered": "uniform"}  # what each model is evaluated with


def fit_learned(model: torch.nn.Module, task: common.Task, p: common.Preset, share: float, seed: int,
                samples: int) -> Any:
    """Swap in ``learned`` positions and fit them alone (every other weight frozen); returns the swap."""
    swap = model.swap_retriever("learned", samples=samples)
    mine = {id(t) for m in model.memories for t in m.retriever.parameters()}
    frozen = [t for t in model.parameters() if id(t) not in mine and t.requires_grad]
    for t in frozen:
        t.requires_grad_(False)
    try:
        common.train(model, task, replace(p, lr=1e-2), seed + 7, label="learned positions", **common.portion(p, share))
    finally:
        for t in frozen:
            t.requires_grad_(True)
    return swap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--trained", default=",".join(TRAINED),
                            help=f"comma-separated training samplers among {list(TRAINED)}")
        parser.add_argument("--learn-share", type=float, default=0.15,
                            help="seconds spent fitting learned positions, as a share of --budget")
        parser.add_argument("--task", default="regime", help="regime (default) or a corpus name, e.g. code")

    args, p = common.parse(__doc__.split("\n")[0], PRESETS, add, argv)
    started = time.perf_counter()
    skip = 4 * p.block
    if args.task == "regime":
        task = scored = RegimeTask()
        unit, what = "bits", f"bits per regime-dependent token (positions >= {skip})"
    else:  # train on the corpus's training split, score held-out windows
        task, scored = (CorpusTask(prepare(args.task).split(split).tokens(ByteTokenizer()))
                        for split in ("train", "validation"))
        unit, what = "bits per byte", f"bits per byte of held-out `{args.task}` windows at positions >= {skip}"
    rows, runs = [], {}
    chosen = args.trained.split(",")
    if unknown := [t for t in chosen if t not in TRAINED]:
        raise SystemExit(f"--trained: unknown {unknown}; known: {list(TRAINED)}")
    for trained in chosen:
        options = TRAINED[trained]
        model = common.build(task.vocab_size, "elastic", p, args.seed, args.device, **options)
        runs[trained] = common.train(model, common.teaching(args, task), p, args.seed, label=f"elastic, {trained}")
        samples = model.memories[0].retriever.samples
        scores: dict[str, float] = {}
        model.eval()
        for label, (name, cfg) in SWAPS.items():
            with model.swap_retriever(name, samples=samples, **cfg):
                scores[label] = regime_rows(label, common.collect(model, scored, p), p, skip)["bits"]
        if trained == "jittered":  # its own sampler in eval mode is uniform; score the trained object too
            scores["jittered (eval = uniform)"] = regime_rows("", common.collect(model, scored, p), p, skip)["bits"]
        with model.memory_masked():
            scores["memory masked"] = regime_rows("", common.collect(model, scored, p), p, skip)["bits"]
        with fit_learned(model, common.teaching(args, task), p, args.learn_share, args.seed, samples):
            scores["learned (fitted, weights frozen)"] = regime_rows("", common.collect(model, scored, p), p, skip)["bits"]
        own = scores[OWN[trained]]
        for label, value in scores.items():
            rows.append({"trained with": trained, "evaluated with": label, "bits": value, "change": value - own,
                         "steps": runs[trained].steps})
        print("  ", trained, {k: round(v, 3) for k, v in scores.items()}, flush=True)
    refs = {}
    if args.task == "regime":
        oracle = common.collect(model, task, p, oracles=("full", f"block:{p.block}"))
        refs = {c: regime_rows("", dict(oracle, nll=oracle[f"oracle:{c}"]), p, skip)["bits"]
                for c in ("full", f"block:{p.block}")}

    pivot: dict[str, dict[str, Any]] = {}
    for r in rows:
        pivot.setdefault(r["evaluated with"], {"evaluated with": r["evaluated with"]})[r["trained with"]] = \
            f"{r['bits']:.3f} ({r['change']:+.3f})"
    columns = ["evaluated with", *chosen]
    markdown = (
        f"Elastic (LegS, N = P = {samples}, memory in layers {list(p.layers)}) trained on "
        + ("the hidden-regime task" if args.task == "regime" else f"the `{args.task}` corpus (bytes)")
        + f" for {common.effort(p)} per column, loss on {args.train_on} tokens "
        f"({', '.join(f'{k}: {r.steps} steps' for k, r in runs.items())}). Cells: {what} and, in brackets, the change "
        "against the sampler the model was trained with (`uniform` for the jittered model, its evaluation form); "
        "negative = the swap helped.\n\n"
        + common.table(list(pivot.values()), columns)
        + ("" if not refs else f"\n\nOracles on the same batches: whole history {refs['full']:.3f} bits, block of "
           f"{p.block} alone {refs[f'block:{p.block}']:.3f} bits.")
        + f"\n\nLearned positions were fitted for {common.effort(p, args.learn_share)} with lr 1e-2, every model "
          "weight frozen."
    )

    def draw(plt: Any) -> None:
        labels = list(pivot)
        for i, trained in enumerate(chosen):
            values = [next(r["bits"] for r in rows if r["trained with"] == trained and r["evaluated with"] == lab)
                      if any(r["trained with"] == trained and r["evaluated with"] == lab for r in rows) else float("nan")
                      for lab in labels]
            plt.barh([j + 0.27 * i for j in range(len(labels))], values, height=0.27, label=f"trained: {trained}")
        plt.yticks([j + 0.27 for j in range(len(labels))], labels, fontsize=7)
        plt.gca().invert_yaxis()
        if refs:
            plt.axvline(refs["full"], color="k", ls="--", lw=1, label="oracle: whole history")
            plt.axvline(refs[f"block:{p.block}"], color="r", ls=":", lw=1, label="oracle: block alone")
        plt.xlabel(f"{unit} (lower is better)")
        plt.legend(fontsize=7)

    title = "hidden-regime task" if args.task == "regime" else f"`{args.task}` corpus"
    common.finish(args, "swaps", f"Test-time sampler swaps ({title})", markdown,
                  {"rows": rows, "oracles": refs, "losses": {k: r.losses for k, r in runs.items()}}, started, p, draw)
    return {"rows": rows}


if __name__ == "__main__":
    main()
