"""Elastic's block scan alone: dense steps against lower-triangular steps, forward + backward.

    python benchmarks/scan_speed.py --order 1024 --channels 512 --blocks 16 --rounds 7 --threads 2

The transitions are LegS's own (lower triangular) for blocks of 256 tokens from t = 0; the tokens'
contributions are random. Each round times the dense scan (``lower=False``: every step one
multiply-add over the whole N x N matrix) and the triangular one (``lower=True``: row chunks of
:data:`memplug.hippo.scan.TRIANGULAR_ROWS` against the columns up to their last row), one after
the other, so that load drifts alike for both; the ratio is the median of per-round ratios. The
two results are compared too: the skipped blocks hold exact zeros, so they must agree to rounding.

``--compiled`` also times the triangular scan under ``torch.compile`` (its out-of-place steps, which
a compiled graph runs) in the same rounds, against the eager triangular scan, and how long the
first compiled call took.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from memplug.app.report import write_report
from memplug.hippo import scan
from memplug.hippo.scale_invariant import ScaleInvariantMeasure


def timed(step: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--order", type=int, default=1024, help="N, the state's coefficients per channel")
    p.add_argument("--channels", type=int, default=512, help="C = batch x kv heads x 2 x head dim")
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--block", type=int, default=256, help="tokens per block (sets the transitions)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--compiled", action="store_true", help="also time the triangular scan under torch.compile")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--name", default="scan_speed")
    args = p.parse_args(argv)
    for name in ("order", "channels", "blocks", "block", "rounds"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    measure = ScaleInvariantMeasure(args.order)
    spans = [(i * args.block, (i + 1) * args.block) for i in range(args.blocks)]
    A = measure.span_transitions(spans, torch.float32, torch.device("cpu"))  # (nb, N, N)
    u = torch.randn(args.blocks, args.order, args.channels, generator=torch.Generator().manual_seed(0))
    weight = torch.randn_like(u)

    def step(lower: bool, compiled: bool = False) -> Callable[[], torch.Tensor]:
        def states_of(leaf: torch.Tensor) -> torch.Tensor:
            return scan.linear_recurrence_sequential(A, leaf, lower=lower)

        forward = torch.compile(states_of) if compiled else states_of

        def run() -> torch.Tensor:
            leaf = u.clone().requires_grad_()
            states = forward(leaf)
            (states * weight).sum().backward()
            return states.detach()
        return run

    arms = [step(False), step(True)] + ([step(True, compiled=True)] if args.compiled else [])
    reference = arms[0]()  # also the warm-up of both (transitions cached, buffers allocated)
    gap = (reference - arms[1]()).abs().max().item() / reference.abs().max().item()
    if args.compiled:
        compile_s = timed(arms[2])  # the first call compiles
    rounds = [tuple(timed(arm) for arm in arms) for _ in range(args.rounds)]
    row = {"dense s": min(r[0] for r in rounds), "triangular s": min(r[1] for r in rounds),
           "speed-up (paired median)": statistics.median(r[0] / r[1] for r in rounds), "relative gap": gap}
    if args.compiled:
        row |= {"compiled triangular s": min(r[2] for r in rounds), "compile s": compile_s,
                "compiled / eager time (paired median)": statistics.median(r[2] / r[1] for r in rounds),
                "compiled relative gap": (reference - arms[2]()).abs().max().item() / reference.abs().max().item()}
    chunks = -(-args.order // scan.TRIANGULAR_ROWS)
    work = (chunks + 1) / (2 * chunks) if chunks > 1 else 1.0
    markdown = (
        f"Block scan of N = {args.order}, C = {args.channels}, {args.blocks} blocks of {args.block} tokens, "
        f"float32, forward + backward, {torch.get_num_threads()} torch thread(s), {args.rounds} rounds. "
        f"Triangular steps in {chunks} row chunk(s) of {scan.TRIANGULAR_ROWS}: {work:.4f} of the dense "
        "multiply-adds.\n\n"
        "| dense s (fastest) | triangular s (fastest) | speed-up (paired median) | max difference / max state |\n"
        "|---|---|---|---|\n"
        f"| {row['dense s']:.3f} | {row['triangular s']:.3f} | **{row['speed-up (paired median)']:.2f}x** | "
        f"{row['relative gap']:.1e} |"
    )
    if args.compiled:
        markdown += (
            "\n\nThe triangular scan under torch.compile (out-of-place steps), in the same rounds:\n\n"
            "| compiled s (fastest) | compiled / eager time (paired median) | first call (compiling) s | "
            "max difference / max state |\n|---|---|---|---|\n"
            f"| {row['compiled triangular s']:.3f} | {row['compiled / eager time (paired median)']:.2f} | "
            f"{row['compile s']:.1f} | {row['compiled relative gap']:.1e} |"
        )
    path = write_report(args.out, args.name, markdown, {"row": row, "work_fraction": work, "rounds": rounds},
                        title="Block scan: dense against lower-triangular steps",
                        seconds=time.perf_counter() - started)
    print(markdown, f"\nwrote {path}", sep="\n")
    return row


if __name__ == "__main__":
    main()
