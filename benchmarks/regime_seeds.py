"""Does a memory learn to use itself from scratch, seed after seed? The gist task over several seeds.

    python benchmarks/regime_seeds.py --preset cpu --threads 1 --steps 600 --seeds 0,1,2,3 \\
        --arms "elastic,elastic gate,melodi"

Every (arm, seed): the tiny backbone with the arm's memory in its top layer, the backbone's initial
weights drawn from the seed alone (the same for every arm), trained on the hidden-regime task with
the loss on the scored tokens (``--train-on all``: on every token, the regime-coloured filler too),
then scored in bits per regime-dependent token with its memory and with the memory masked (the
same weights, block-local attention). A seed **learned** when masking the memory costs at least
``--learned-bits`` (0.3 by default): the model then answers from what its memory keeps. The table
counts, per arm, the seeds that learned.

The arms are the tries of what might make learning reliable: the zero-initialised gate,
memory-logit offsets (a constant added to every memory slot's logit), a warm-up of the memory path
(an offset that starts high and falls to zero early in training: the memory carries most of the
attention, and so of the gradient, while the model is young), sampled keys normalised to unit
RMS, against melodi (which has a learned gate of its own) and no memory. Two more tries are
flags, for any arm: ``--train-on all`` and the learning rates (``--lr``, and ``--memory-lr`` for
the memory's own parameters, such as the gate).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import common
import torch
from tasks_suite import PRESETS

from memplug.plugins.memories.elastic import ElasticMemory
from memplug.tasks import RegimeTask

#: arm -> (memory spec, extra build options: memory options and the layer options of common.LAYER_OPTIONS)
ARMS: dict[str, tuple[str, dict[str, Any]]] = {
    "elastic": ("elastic", {}),
    "elastic gate": ("elastic", {"gate": True}),
    "elastic offset +2": ("elastic", {"logit_offset": 2.0}),
    "elastic offset -ln P": ("elastic", {"logit_offset": "-lnP"}),
    "elastic warm-up": ("elastic", {"logit_offset": 4.0}),
    "elastic normalised keys": ("elastic", {"normalize_keys": True}),
    "melodi": ("melodi", {}),
    "none": ("none", {}),
}

#: arm -> (steps, in which its elastic memories' logit offset falls linearly from the arm's
#: option to 0, where it then stays)
WARMUPS: dict[str, int] = {"elastic warm-up": 200}


def anneal(model: torch.nn.Module, start: float, steps: int):
    """``on_step`` for training: after step s, every elastic memory's logit offset is
    ``start * max(0, 1 - s / steps)``."""
    memories = [m for m in model.modules() if isinstance(m, ElasticMemory)]

    def on_step(step: int, loss: float) -> None:
        for memory in memories:
            memory.logit_offset = start * max(0.0, 1.0 - step / steps)

    return on_step


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--arms", default="elastic,elastic gate,melodi",
                            help=f"comma-separated, from: {', '.join(ARMS)}")
        parser.add_argument("--seeds", default="0,1,2,3", help="comma-separated seeds")
        parser.set_defaults(train_on="scored")  # the answers carry the signal the memory is for
        parser.add_argument("--learned-bits", type=float, default=0.3,
                            help="masking the memory must cost at least this many bits for a seed to count as learned")

    args, p = common.parse(__doc__.split("\n")[0], PRESETS, add, argv)
    started = time.perf_counter()
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; known: {list(ARMS)}")
    seeds = common.int_list(args.seeds, "--seeds", minimum=0)
    task, skip = RegimeTask(), 4 * p.block
    rows, summary, losses = [], [], {}
    for arm in arms:
        spec, extra = ARMS[arm]
        learned = 0
        for seed in seeds:
            model = common.build(task.vocab_size, spec, p, seed, args.device, **extra)
            on_step = anneal(model, extra["logit_offset"], WARMUPS[arm]) if arm in WARMUPS else None
            run = common.train(model, common.teaching(args, task), p, seed, label=f"{arm}, seed {seed}",
                               on_step=on_step)
            losses[f"{arm}, seed {seed}"] = run.losses
            with_memory = common.collect(model, task, p)
            late = with_memory["position"] >= skip
            with model.memory_masked():
                masked = common.collect(model, task, p)
            cost = common.bits(masked, late) - common.bits(with_memory, late)
            learned += cost >= args.learned_bits
            rows.append({"arm": arm, "seed": seed, "bits": common.bits(with_memory, late),
                         "masked bits": common.bits(masked, late), "masking costs": cost,
                         "learned": "yes" if cost >= args.learned_bits else "no", "steps": run.steps})
            print("  ", {k: common.fmt(v) for k, v in rows[-1].items()}, flush=True)
        mine = [r for r in rows if r["arm"] == arm]
        summary.append({"arm": arm, "learned": f"{learned} of {len(seeds)}",
                        "mean bits": sum(r["bits"] for r in mine) / len(mine),
                        "best bits": min(r["bits"] for r in mine), "worst bits": max(r["bits"] for r in mine)})
    oracle = common.collect(model, task, p, oracles=("full", f"block:{p.block}"))
    late = oracle["position"] >= skip
    oracles = (f"Exact oracles on the same evaluation batches: whole history "
               f"{common.bits(oracle, late, 'oracle:full'):.3f} bits, block of {p.block} alone "
               f"{common.bits(oracle, late, f'oracle:block:{p.block}'):.3f} bits.")
    loss = "the scored tokens" if args.train_on == "scored" else "every token"
    rates = f"learning rate {p.lr:g}" + (f" (the memory's parameters {p.memory_lr:g})" if p.memory_lr else "")
    intro = (f"Hidden-regime task, {common.effort(p)} of training per (arm, seed) at {rates}, "
             f"{p.batch} x {p.length} tokens per step, loss on {loss}; "
             f"bits per regime-dependent token (answers at positions >= {skip}). A seed learned when masking the "
             f"memory costs at least {args.learned_bits} bits. Memory in layers {list(p.layers)} at {p.scale}x "
             "the memory budget. Arm options: " + "; ".join(f"`{a}`: {ARMS[a][0]} {ARMS[a][1]}" for a in arms) + "."
             + "".join(f" `{a}`: the logit offset falls linearly to 0 over the first {WARMUPS[a]} steps, then stays 0."
                       for a in arms if a in WARMUPS))
    markdown = (intro + "\n\n" + common.table(summary, ["arm", "learned", "mean bits", "best bits", "worst bits"])
                + "\n\n" + common.table(rows, ["arm", "seed", "bits", "masked bits", "masking costs", "learned",
                                               "steps"]) + "\n\n" + oracles)

    def draw(plt: Any) -> None:
        for name, curve in losses.items():
            x = torch.tensor(curve)
            w = max(1, len(x) // 20)
            plt.plot((x.unfold(0, w, 1).mean(-1) if len(x) >= w else x) / common.LN2, label=name, linewidth=0.8)
        plt.xlabel("step")
        plt.ylabel("training loss on scored tokens (bits, smoothed)")
        plt.legend(fontsize=5)

    common.finish(args, args.name or "regime_seeds", "Learning to use memory from scratch, seed after seed",
                  markdown, {"rows": rows, "summary": summary, "losses": losses}, started, p, draw)
    return {"rows": rows, "summary": summary}


if __name__ == "__main__":
    main()
