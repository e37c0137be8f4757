#!/usr/bin/env python
"""Exact LegS block update vs the classic per-token bilinear recurrence.

Times, in float32 with C channels:

- the exact block update ``c(t1) = M(r) c(t0) + (1 - r) T(r) U(0, L) x`` with its per-ratio
  transitions M(r), T(r) built fresh (a new position every call) and cached (the same position
  again, as in training); U(0, L) is built once per block length in both;
- the classic per-token recurrence ``c_k = Ā_k c_{k-1} + B̄_k x_k`` with the bilinear
  (Ā_k, B̄_k) of c' = (A c + B f)/t at t = k precomputed (the classic code keeps them in a
  table as long as the context); only its matmuls are timed, over a subset of the block's
  tokens, and scaled to L tokens;
- the fresh block update at absolute positions 2k, 64k and 1M (its cost must not depend on it);
- the discretisation error of the per-token bilinear recurrence against the exact update.

Usage: ``python benchmarks/encoders.py [--threads 1] [--repeats 11] [--subset 256]``.
Writes docs/results/encoders.json, .md and .png.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy loads: its threads fight torch's

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import torch
from memplug.plugins.encoders.legs import LegS, legs_matrices

from memplug.hippo.discretize import bilinear

TITLE = "Encoders: exact LegS block update vs per-token recurrence"
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
ORDERS = (64, 256)
LENGTHS = (512, 2048)
CHANNELS = 512
POSITIONS = (2048, 65536, 1 << 20)


#: the timer: CPU time of this thread with one torch thread (all the work runs in it, and other
#: jobs on a shared machine do not inflate it), wall time otherwise; set in main()
CLOCK: dict[str, Callable[[], float]] = {"now": time.perf_counter}


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = CLOCK["now"]()
        fn()
        times.append(CLOCK["now"]() - start)
    return 1e3 * statistics.median(times)


def fresh_positions(start: int):
    """Block starts start + 1, start + 2, ...: each ratio t0/t1 is new (no cache hit) and the
    position stays where it was asked for."""
    t0 = start
    while True:
        t0 += 1
        yield t0


def time_block(order: int, length: int, repeats: int) -> dict[str, float]:
    encoder = LegS(order)
    x = torch.randn(length, CHANNELS)
    state = torch.randn(order, CHANNELS)
    starts = fresh_positions(16 * length)
    fresh = median_ms(lambda: encoder.update(state, x, next(starts)), repeats)
    cached = median_ms(lambda: encoder.update(state, x, 8 * length), repeats)
    return {"fresh_ms": fresh, "cached_ms": cached}


def time_per_token(order: int, length: int, subset: int, repeats: int) -> dict[str, float]:
    """The classic recurrence over ``subset`` tokens at positions 8L.., scaled to L tokens."""
    A, B = legs_matrices(order)
    # step k ends at t = k
    ends = torch.arange(8 * length + 1, 8 * length + subset + 1, dtype=torch.float64)  # (S,)
    a_bar, b_bar = bilinear(A / ends[:, None, None], B / ends[:, None], 1.0)
    a_bar, b_bar = a_bar.float(), b_bar.float()[:, :, None]  # (S, N, N), (S, N, 1)
    x = torch.randn(subset, 1, CHANNELS)  # (S, 1, C)
    state = torch.randn(order, CHANNELS)

    def run() -> torch.Tensor:
        c = state
        for j in range(subset):
            c = a_bar[j] @ c + b_bar[j] * x[j]  # (N, C)
        return c

    measured = median_ms(run, max(3, repeats // 2), warmup=1)
    return {"per_token_ms": measured * length / subset, "per_token_tokens_timed": subset}


def time_positions(repeats: int) -> dict[str, dict[str, float]]:
    """Fresh and cached block updates (N = 256, L = 2048) at each absolute position,
    interleaved so that machine load affects every position alike."""
    order, length = 256, 2048
    encoder = LegS(order)
    x = torch.randn(length, CHANNELS)
    state = torch.randn(order, CHANNELS)
    starts = {p: fresh_positions(p) for p in POSITIONS}
    fresh: dict[int, list[float]] = {p: [] for p in POSITIONS}
    cached: dict[int, list[float]] = {p: [] for p in POSITIONS}
    for p in POSITIONS:
        encoder.update(state, x, p)  # warm: U(0, L) and the cached ratio at p
    for _ in range(repeats):
        for p in POSITIONS:
            t0 = next(starts[p])
            begin = CLOCK["now"]()
            encoder.update(state, x, t0)  # a ratio not seen before
            fresh[p].append(CLOCK["now"]() - begin)
            begin = CLOCK["now"]()
            encoder.update(state, x, p)
            cached[p].append(CLOCK["now"]() - begin)
    return {
        str(p): {"fresh_ms": 1e3 * statistics.median(fresh[p]), "cached_ms": 1e3 * statistics.median(cached[p])}
        for p in POSITIONS
    }


def bilinear_error(order: int = 64, length: int = 2048, blocks: int = 3) -> float:
    """Relative distance of the per-token bilinear state from the exact one at t = blocks * L."""
    x = torch.randn(blocks * length, 1, dtype=torch.float64)
    zero = torch.zeros(order, 1, dtype=torch.float64)
    exact = LegS(order).update(zero, x, 0)
    ode = LegS(order, discretization="bilinear").update(zero, x, 0)
    return float((ode - exact).norm() / exact.norm())


def markdown(result: dict) -> str:
    lines = [
        (
            f"float32, C = {CHANNELS} channels, torch threads = {result['threads']}, {result['clock']}, "
            f"median of {result['repeats']} runs. *Fresh*: M(r) and T(r) built for a position not seen before "
            "(U(0, L) is built once per block length); *cached*: the same position again, as in "
            "training. *Per-token*: the classic bilinear recurrence with its per-step matrices "
            f"precomputed (not timed), timed over {result['subset']} tokens and scaled to L. "
            "1-minute load average at the start and end of the run: "
            f"{result['load_average'][0]:.1f}, {result['load_average'][1]:.1f} "
            f"(other jobs shared the {os.cpu_count()} cores when it is above 0; "
            "thread CPU time does not count their share)."
        ),
        "",
        "| N | L | block, fresh (ms) | block, cached (ms) | per-token (ms) | speed-up fresh | speed-up cached |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['order']} | {row['length']} | {row['fresh_ms']:.2f} | {row['cached_ms']:.2f} | "
            f"{row['per_token_ms']:.1f} | {row['speedup_fresh']:.0f}x | {row['speedup_cached']:.0f}x |"
        )
    lines += [
        "",
        "Time per block (N = 256, L = 2048) at absolute position t0:",
        "",
        "| t0 | fresh (ms) | cached (ms) |",
        "|---|---|---|",
    ]
    for pos, row in result["positions"].items():
        lines.append(f"| {int(pos):,} | {row['fresh_ms']:.2f} | {row['cached_ms']:.2f} |")
    targets = result["targets"]
    lines += [
        "",
        (
            f"Fresh block at 1M / at 2k: {targets['position_ratio_fresh']:.3f}; "
            f"cached: {targets['position_ratio_cached']:.3f} (target: within 10%)."
        ),
        (
            f"At N = 256, L = 2048 the block update is {targets['speedup_fresh_256_2048']:.0f}x (fresh) and "
            f"{targets['speedup_cached_256_2048']:.0f}x (cached) faster than the per-token recurrence "
            "(target: >= 100x)."
        ),
        "",
        (
            "Discretisation error of the per-token bilinear recurrence (float64, N = 64, t = 6144): "
            f"{100 * result['bilinear_error']:.2f}% relative to the exact state."
        ),
        "",
    ]
    return "\n".join(lines)


def figure(data: dict[str, Any]) -> Callable[[Any], None]:
    """The plot of an encoders report's JSON ``data``: time per block of each update by order and
    block length, and the block update's time by absolute position."""

    def draw(plt: Any) -> None:
        plt.subplot(1, 2, 1)
        labels = [f"N={r['order']}, L={r['length']}" for r in data["rows"]]
        for key, label in (("fresh_ms", "block, fresh"), ("cached_ms", "block, cached"), ("per_token_ms", "per-token")):
            plt.plot(labels, [r[key] for r in data["rows"]], marker="o", label=label)
        plt.yscale("log")
        plt.xticks(fontsize=7, rotation=20)
        plt.ylabel("ms per block of L tokens")
        plt.legend(fontsize=7)
        plt.subplot(1, 2, 2)
        positions = [int(t) for t in data["positions"]]
        for key, label in (("fresh_ms", "fresh"), ("cached_ms", "cached")):
            plt.plot(positions, [r[key] for r in data["positions"].values()], marker="o", label=label)
        plt.xscale("log")
        plt.ylim(bottom=0)
        plt.xlabel("absolute position t0 of the block")
        plt.ylabel("ms per block (N = 256, L = 2048)")
        plt.legend(fontsize=7)

    return draw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1: timed in thread CPU time, else wall time)"
    )
    parser.add_argument("--repeats", type=int, default=11, help="timed runs per measurement (median)")
    parser.add_argument("--subset", type=int, default=256, help="tokens timed for the per-token recurrence")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for encoders.json / .md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    CLOCK["now"] = time.thread_time if args.threads == 1 else time.perf_counter
    began = time.perf_counter()
    load_before = os.getloadavg()[0]

    rows = []
    for order in ORDERS:
        for length in LENGTHS:
            row = {"order": order, "length": length, **time_block(order, length, args.repeats)}
            row.update(time_per_token(order, length, min(args.subset, length), args.repeats))
            row["speedup_fresh"] = row["per_token_ms"] / row["fresh_ms"]
            row["speedup_cached"] = row["per_token_ms"] / row["cached_ms"]
            rows.append(row)
            print(row, flush=True)
    positions = time_positions(args.repeats)
    print(positions, flush=True)
    big = next(r for r in rows if r["order"] == 256 and r["length"] == 2048)
    result = {
        "threads": args.threads,
        "clock": "thread CPU time" if args.threads == 1 else "wall time",
        "load_average": [load_before, os.getloadavg()[0]],
        "repeats": args.repeats,
        "subset": args.subset,
        "channels": CHANNELS,
        "rows": rows,
        "positions": positions,
        "bilinear_error": bilinear_error(),
        "targets": {
            "speedup_fresh_256_2048": big["speedup_fresh"],
            "speedup_cached_256_2048": big["speedup_cached"],
            "position_ratio_fresh": positions[str(POSITIONS[-1])]["fresh_ms"]
            / positions[str(POSITIONS[0])]["fresh_ms"],
            "position_ratio_cached": positions[str(POSITIONS[-1])]["cached_ms"]
            / positions[str(POSITIONS[0])]["cached_ms"],
        },
    }
    path = common.report(args.out, "encoders", markdown(result), result, figure(result), title=TITLE,
                         seconds=time.perf_counter() - began)
    print(path.read_text())


if __name__ == "__main__":
    main()
