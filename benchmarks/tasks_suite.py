"""Every memory on a long-range synthetic task, same model and training budget, against exact oracles.

    python benchmarks/tasks_suite.py --task regime --preset cpu          # ~10 arms x budget
    python benchmarks/tasks_suite.py --task passkey --preset cpu --memories none,xl,full,elastic
    python benchmarks/tasks_suite.py --task recall --preset smoke
    python benchmarks/tasks_suite.py --task passkey --preset far --dense-control  # distances of 2-64 blocks

``regime`` (gist): bits per regime-dependent token (the answer after each QUERY, positions past
the first ``skip`` tokens) between the Bayes oracle that sees the whole history and the one that
sees the block alone; elastic arms are also scored with their memory masked.

``passkey`` / ``recall`` run a curriculum: first the within-block copy control only (statement
and question in one block), then a mix of the control and distances of 2..64 blocks (for
recall, half the sequences drawn from the control: its task has no within-block questions, and
a model that cannot reach the distances yet unlearned the control without them). The table
reports accuracy by distance in blocks and, first, whether the control was learned (accuracy on
tokens whose statement is inside their own block >= 0.9). If it was not, the distance columns
measure nothing, and the table says so. With blocks of 16, one key per sequence is too little
control for a model to learn: ``--dense-control`` states and asks a key inside every block.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import common
import torch
from common import Preset

from memplug.app.demo import REGIME
from memplug.tasks import Mixture, PasskeyTask, RecallTask, RegimeTask
from memplug.tasks.base import Task

PRESETS = {
    "smoke": Preset(d_model=32, n_layers=2, n_heads=2, block=16, length=256, batch=4, budget=1.5, eval_batches=1,
                    scale=1, steps=6),
    # the demo's regime size (memory in use after 1-2 uncontended CPU minutes) with half the
    # sequence and batch, so a shared 2-core machine gets a few hundred steps per arm
    "cpu": Preset(d_model=128, n_layers=2, n_heads=4, block=64, length=512, batch=8, budget=400, eval_batches=12,
                  steps=250),
    # passkey / recall at 2-64 blocks on the CPU: the cpu preset's model and tokens per step with
    # blocks of 16 and 65 of them per sequence; at 16x the memory budget every memory holds what
    # the cpu preset's 4x holds (64 slots, elastic N = P = 64) for a 4x longer reach in blocks
    "far": Preset(d_model=128, n_layers=2, n_heads=4, block=16, length=1040, batch=4, budget=900, eval_batches=8,
                  scale=16, steps=3000),
    # the cpu preset's model with twice the sequence and the batch: four times the scored answers per step
    "wide": Preset(d_model=128, n_layers=2, n_heads=4, block=64, length=1024, batch=16, budget=1800, eval_batches=8,
                   steps=300),
    # exactly the demo's regime part (memplug demo): its model, data shape and steps; scale 4 at block
    # 64 is the demo's elastic order and samples (64)
    "demo": Preset(d_model=REGIME.d_model, n_layers=REGIME.n_layers, n_heads=REGIME.n_heads, block=REGIME.block,
                   length=REGIME.length, batch=REGIME.batch, lr=REGIME.lr, steps=REGIME.steps, budget=3600,
                   eval_batches=16),
    "gpu": Preset(d_model=256, n_layers=4, n_heads=4, block=64, length=2048, batch=32, budget=15, eval_batches=8),
}
CONTROL_LEARNED = 0.9
BLOCK_DISTANCES = (2, 4, 8, 16, 32, 64)


def make(task: str, p: Preset, dense_control: bool = False) -> tuple[Task, Task | None]:
    """The task, and for recall tasks the curriculum's first stage (the within-block control;
    for passkey with ``dense_control``, one key per block instead of one per sequence)."""
    if task == "regime":
        return RegimeTask(), None
    if task == "passkey":
        key = 4
        far = [d * p.block for d in BLOCK_DISTANCES if d * p.block + key + 2 <= p.length]
        near = sorted({key + 2, max(key + 2, p.block // 4), max(key + 2, p.block // 2)})  # within-block copies
        control = PasskeyTask(key_length=key, distances=near, repeat=p.block if dense_control else None)
        return PasskeyTask(key_length=key, distances=near + far), control
    if task == "recall":
        span = min(p.length // 2, 4 * p.block)
        # the control: an independent instance in every block
        control = RecallTask(span=max(6, p.block // 4), pairs=2, queries=max(1, p.block // 16), repeat=p.block)
        return RecallTask(span=span, pairs=4, queries=8), control
    raise ValueError(f"task must be regime, passkey or recall, got {task!r}")


def regime_rows(name: str, values: dict[str, torch.Tensor], p: Preset, skip: int) -> dict[str, Any]:
    late = values["position"] >= skip
    quarter = p.length // 4
    row = {"memory": name, "bits": common.bits(values, late), "accuracy": common.accuracy(values, late)}
    for q in range(4):
        where = (values["position"] >= q * quarter) & (values["position"] < (q + 1) * quarter)
        row[f"bits q{q + 1}"] = common.bits(values, where)
    return row


def recall_rows(name: str, values: dict[str, torch.Tensor], p: Preset,
                control: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Accuracy by distance in blocks on ``values``; ``control acc`` on the control task's
    batches (``control``, else ``values``), counting tokens whose statement is in their own block."""
    in_view = values[f"oracle:block:{p.block}"] == 0  # the statement is inside the token's own block
    ref = values if control is None else control
    row = {"memory": name, "control acc": common.accuracy(ref, ref[f"oracle:block:{p.block}"] == 0),
           "out-of-block acc": common.accuracy(values, ~in_view)}
    blocks = values["distance"] / p.block
    for lo in (1,) + BLOCK_DISTANCES:
        where = ~in_view & (blocks >= lo) & (blocks < 2 * lo)
        row[f"acc {lo}-{2 * lo}b"] = common.accuracy(values, where)
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--task", choices=("regime", "passkey", "recall"), default="regime")
        parser.add_argument("--memories", default=",".join(common.MEMORIES), help="comma-separated memory specs")
        parser.add_argument("--control-share", type=float, default=0.4,
                            help="share of the budget spent on the within-block control (passkey/recall)")
        parser.add_argument("--dense-control", action="store_true",
                            help="passkey: the control states and asks a key in every block, not one per sequence, "
                                 "and the second stage mixes it back in (as recall's does)")

    args, p = common.parse(__doc__.split("\n")[0], PRESETS, add, argv)
    started = time.perf_counter()
    task, control = make(args.task, p, args.dense_control)
    # the curriculum's second stage: passkey's distances include the within-block ones; recall's
    # do not (nor, at blocks of 16, do enough of passkey's), so half its sequences come from the
    # control, lest a model unlearn it meanwhile. A dense control's answers then outnumber the far
    # ones (a key per block against one per sequence), which the table states.
    second = Mixture(task, control) if args.task == "recall" or args.dense_control else task
    skip = 4 * p.block
    oracles = ("full", f"block:{p.block}")
    rows, runs, meta = [], {}, {}
    values = None
    for spec in args.memories.split(","):
        model = common.build(task.vocab_size, spec, p, args.seed, args.device)
        meta[spec] = {"parameters": common.parameters(model), "options": common.memory_spec(spec, p)}
        if control is None:
            run = common.train(model, common.teaching(args, task), p, args.seed, label=spec)
        else:  # curriculum: the control alone, then everything
            first = common.train(model, common.teaching(args, control), p, args.seed, label=f"{spec} (control)",
                                 **common.portion(p, args.control_share))
            rest = common.train(model, common.teaching(args, second), p, args.seed + 1, label=spec,
                                **common.portion(p, 1 - args.control_share))
            run = type(first)(first.steps + rest.steps, first.seconds + rest.seconds, first.losses + rest.losses)
        runs[spec] = run
        values = common.collect(model, task, p, oracles=oracles)
        if control is None:
            row = regime_rows(spec, values, p, skip)
        else:
            row = recall_rows(spec, values, p, common.collect(model, control, p, oracles=oracles))
        row |= {"steps": run.steps, "params": meta[spec]["parameters"]}
        rows.append(row)
        if spec.startswith("elastic"):
            with model.memory_masked():
                masked = common.collect(model, task, p)
            masked[f"oracle:block:{p.block}"] = values[f"oracle:block:{p.block}"]
            label = f"{spec}, memory masked at test"
            if control is None:
                rows.append(regime_rows(label, masked, p, skip))
            else:
                rows.append(recall_rows(label, masked, p) | {"control acc": None})
        print("  ", {k: common.fmt(v) for k, v in rows[-1].items()}, flush=True)
    for context in oracles:
        oracle = dict(values, nll=values[f"oracle:{context}"], hit=(values[f"oracle:{context}"] == 0).double())
        label = "oracle: whole history" if context == "full" else f"oracle: block of {p.block} alone"
        if args.task == "regime":
            rows.append(regime_rows(label, oracle, p, skip) | {"accuracy": None})
        else:
            rows.append({"memory": label, "control acc": 1.0,
                         "out-of-block acc": 1.0 if context == "full" else f"chance ({1 / task.symbols if args.task == 'passkey' else 1 / task.values:.3f})"})

    if args.task == "regime":
        columns = ["memory", "bits", "accuracy", "bits q1", "bits q2", "bits q3", "bits q4", "steps", "params"]
        intro = (f"Hidden-regime task: bits per regime-dependent token (answers at positions >= {skip}), accuracy, "
                 f"and bits by quarter of the {p.length}-token sequence. Every arm: the same backbone and initial "
                 f"weights, memory in layers {list(p.layers)} at {p.scale}x the memory budget, {common.effort(p)} of "
                 "training each (`steps` says how far that got), loss on "
                 + ("the scored tokens only." if args.train_on == "scored" else "every token."))
        verdict = ""
    else:
        columns = ["memory", "control acc", "out-of-block acc"] + [f"acc {lo}-{2 * lo}b" for lo in (1,) + BLOCK_DISTANCES] \
            + ["steps", "params"]
        learned = [r["memory"] for r in rows if isinstance(r.get("control acc"), float) and "oracle" not in r["memory"]
                   and r["control acc"] >= CONTROL_LEARNED]
        intro = (f"{args.task}: accuracy on the scored tokens, by distance to the statement in blocks of {p.block} "
                 f"(`control acc`: statement inside the token's own block). Curriculum: {args.control_share:.0%} of "
                 f"the training ({common.effort(p)} per arm) on the within-block control alone, then the full mix"
                 + (" (half the sequences from the control)." if args.task == "recall" or args.dense_control else ".")
                 + (f" The control states and asks a key inside every block ({p.length // p.block} per sequence, "
                    "against one per sequence at distance), so in the mixed stage most scored tokens are the "
                    "control's." if args.dense_control else ""))
        verdict = ("\n\n**Within-block control learned (acc >= 0.9) by: " + (", ".join(learned) or "none") + ".** "
                   + ("" if learned else "No arm learned the control, so the distance columns measure nothing "
                      "about memory at this budget."))
    markdown = intro + "\n\n" + common.table(rows, columns) + verdict
    meta_md = "\n\nMemory options per arm: " + "; ".join(f"`{k}`: {v['options']}" for k, v in meta.items())

    def draw(plt: Any) -> None:
        plt.subplot(1, 2, 1)
        for name, run in runs.items():
            x = torch.tensor(run.losses)
            w = max(1, len(x) // 20)
            plt.plot((x.unfold(0, w, 1).mean(-1) if len(x) >= w else x) / common.LN2, label=name)
        plt.xlabel("step")
        plt.ylabel("training loss (bits/token, smoothed)")
        plt.title(f"{args.task}: training, {common.effort(p)} per arm", fontsize=9)
        plt.legend(fontsize=6)
        plt.subplot(1, 2, 2)
        key = "bits" if args.task == "regime" else "out-of-block acc"
        shown = [r for r in rows if isinstance(r.get(key), float)]
        plt.barh([r["memory"] for r in shown], [r[key] for r in shown])
        plt.gca().invert_yaxis()
        plt.yticks(fontsize=6)
        plt.xlabel(key + (" (lower is better)" if key == "bits" else ""))

    common.finish(args, args.name or f"tasks_{args.task}", f"Synthetic task suite: {args.task}", markdown + meta_md,
                  {"rows": rows, "arms": meta, "losses": {k: r.losses for k, r in runs.items()}}, started, p, draw)
    return {"rows": rows}


if __name__ == "__main__":
    main()
