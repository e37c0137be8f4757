"""Ablations of Elastic Memory on the hidden-regime task: one factor changed per arm.

    python benchmarks/ablations.py --preset cpu                  # every arm
    python benchmarks/ablations.py --preset cpu --arms default,N=16,P=16

The default arm is the tasks suite's elastic: LegS, exact block update, N = P = scale x unit,
uniform sampling, samples without positional encoding, memory-logit offset 0, local span of
the block, memory in the top layer. Each other arm changes one of: order N, samples P (the
sampling density), the measure (Jacobi β, LegT, FouT), the discretisation (bilinear / zoh ODE
steps instead of the exact update), sample positional encoding, the -ln P logit offset, the
local span (block + previous block), memory on all layers. Reported: bits per regime-dependent
token with the memory and with it masked (their difference is what the memory contributes).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

import common
from common import Preset
from tasks_suite import PRESETS as SUITE
from tasks_suite import regime_rows

from memplug.tasks import RegimeTask

# 17 arms: fewer steps (cpu) or seconds (gpu) each
PRESETS = {**SUITE, "cpu": replace(SUITE["cpu"], steps=150, budget=300), "gpu": replace(SUITE["gpu"], budget=6)}


def arms(p: Preset) -> dict[str, tuple[str, dict[str, Any], Preset]]:
    """name -> (memory spec, extra build options, preset)."""
    n = common.memory_spec("elastic", p)["order"]
    return {
        "default": ("elastic", {}, p),
        f"N={n // 4}": ("elastic", {"order": n // 4}, p),
        f"N={2 * n}": ("elastic", {"order": 2 * n}, p),
        f"P={n // 4}": ("elastic", {"samples": n // 4}, p),
        f"P={2 * n}": ("elastic", {"samples": 2 * n}, p),
        "jacobi beta=1": ("elastic:jacobi", {}, p),
        "jacobi beta=4": ("elastic", {"encoder": "jacobi", "encoder_options": {"beta": 4.0}}, p),
        "legt (window = sequence)": ("elastic:legt", {}, p),
        "fout (window = sequence)": ("elastic:fout", {}, p),
        "legs bilinear (ODE)": ("elastic", {"encoder_options": {"discretization": "bilinear"}}, p),
        "legs zoh (ODE)": ("elastic", {"encoder_options": {"discretization": "zoh"}}, p),
        "sample positions (RoPE)": ("elastic", {"positions": "sample"}, p),
        "logit offset -ln P": ("elastic", {"logit_offset": "-lnP"}, p),
        "logit offset +2": ("elastic", {"logit_offset": 2.0}, p),
        "span block + previous": ("elastic", {"span": "previous"}, p),
        "memory on all layers": ("elastic", {}, replace(p, layers=tuple(range(p.n_layers)))),
        "no memory (reference)": ("none", {}, p),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--arms", default=None, help="comma-separated arm names (default: all)")

    args, p = common.parse(__doc__.split("\n")[0], PRESETS, add, argv)
    started = time.perf_counter()
    task, skip = RegimeTask(), 4 * p.block
    table = arms(p)
    chosen = list(table) if args.arms is None else args.arms.split(",")
    unknown = [a for a in chosen if a not in table]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; known: {list(table)}")
    rows, runs = [], {}
    for name in chosen:
        spec, extra, q = table[name]
        model = common.build(task.vocab_size, spec, q, args.seed, args.device, **extra)
        runs[name] = common.train(model, common.teaching(args, task), q, args.seed, label=name)
        row = regime_rows(name, common.collect(model, task, q), q, skip)
        row |= {"steps": runs[name].steps, "s/step": runs[name].seconds / max(1, runs[name].steps),
                "params": common.parameters(model)}
        if model.memories:
            with model.memory_masked():
                row["masked bits"] = regime_rows(name, common.collect(model, task, q), q, skip)["bits"]
            row["memory gain"] = row["masked bits"] - row["bits"]
        rows.append(row)
        print("  ", {k: common.fmt(v) for k, v in row.items()}, flush=True)
    values = common.collect(model, task, p, oracles=("full", f"block:{p.block}"))
    refs = {c: regime_rows("", dict(values, nll=values[f"oracle:{c}"]), p, skip)["bits"] for c in ("full", f"block:{p.block}")}
    columns = ["memory", "bits", "masked bits", "memory gain", "accuracy", "steps", "s/step", "params"]
    markdown = (
        f"Hidden-regime task, bits per regime-dependent token (positions >= {skip}); `memory gain` = masked - with "
        f"memory (positive: the memory is used). {common.effort(p)} of training per arm (loss on {args.train_on} tokens); `steps` and `s/step` show "
        "what each arm cost (the ODE discretisations run per token).\n\n"
        + common.table([dict(r) for r in rows], columns)
        + f"\n\nOracles: whole history {refs['full']:.3f} bits, block of {p.block} alone {refs[f'block:{p.block}']:.3f} bits."
    )

    def draw(plt: Any) -> None:
        plt.barh([r["memory"] for r in rows], [r["bits"] for r in rows], label="with memory")
        plt.scatter([r.get("masked bits", float("nan")) for r in rows], [r["memory"] for r in rows], color="k",
                    marker="|", s=200, label="memory masked")
        plt.axvline(refs["full"], color="g", ls="--", lw=1, label="oracle: whole history")
        plt.axvline(refs[f"block:{p.block}"], color="r", ls=":", lw=1, label="oracle: block alone")
        plt.gca().invert_yaxis()
        plt.yticks(fontsize=7)
        lo = min(refs["full"], min(r["bits"] for r in rows)) - 0.1
        plt.xlim(left=lo)
        plt.xlabel("bits per regime-dependent token (lower is better)")
        plt.legend(fontsize=7)

    common.finish(args, "ablations", "Elastic Memory ablations (hidden-regime task)", markdown,
                  {"rows": rows, "oracles": refs, "losses": {k: r.losses for k, r in runs.items()}}, started, p, draw)
    return {"rows": rows}


if __name__ == "__main__":
    main()
