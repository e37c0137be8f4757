"""Operator calls of the block scan's training step, by method and number of blocks.

    python benchmarks/scan_methods.py --blocks 2,4,8,16,24,26,27,28,32,64,128

A GPU runs each operator call of an eager step as (about) one kernel launch, and a small model's
step there is bound by those launches, not by its arithmetic. This counts, on the CPU, the calls
that compute (:func:`throughput.count_ops`) in one forward + backward of
:func:`memplug.hippo.scan.linear_recurrence` with each method: the stand-in for the launches the
same step makes on a GPU. It also gives each method's multiply-adds. The transitions are LegS's own
for blocks of 256 tokens from t = 0; the tokens' contributions are random and take the gradient.
The counts do not depend on N or C while N fits one row chunk
(:data:`memplug.hippo.scan.TRIANGULAR_ROWS`): the default N = 64 is Elastic at 1x.

The table sets ``"auto"``'s choice on an accelerator (:data:`memplug.hippo.scan.PARALLEL_MIN_STEPS`):
the doubling scan only from the number of blocks at which it makes fewer calls.

The fused method (all the steps of a direction in one Triton kernel) runs here under Triton's
interpreter; its count is the operator calls around the kernel plus one per kernel launch (what
the interpreter runs inside is left out). Without Triton its column says so.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from unittest import mock

import torch

from memplug.app.report import write_report
from memplug.hippo import scan
from memplug.hippo.fused_scan import fused_available
from memplug.hippo.scale_invariant import ScaleInvariantMeasure
from common import int_list
from throughput import count_ops

#: the profiler range of one fused-kernel launch
KERNEL = "memplug::fused_scan_kernel"


def methods() -> tuple[str, ...]:
    """The methods to count: the fused one where Triton is installed (run by its interpreter)."""
    with mock.patch.dict(os.environ, {"TRITON_INTERPRET": "1"}):
        runs = fused_available(torch.device("cpu")) is None
    return ("sequential", "parallel", "fused") if runs else ("sequential", "parallel")


def calls(method: str, transitions: torch.Tensor, channels: int) -> int:
    """Computing operator calls of one forward + backward of the scan with ``method`` (for the
    fused method, those around its kernel plus one per launch)."""
    u = torch.randn(transitions.shape[0], transitions.shape[-1], channels, requires_grad=True)
    weight = torch.randn(u.shape)

    def step() -> None:
        states = scan.linear_recurrence(transitions, u, method=method, lower=True)
        (states * weight).sum().backward()  # the loss's own two calls (mul, sum) and their backward are counted too

    step()  # warm-up
    real = scan.fused_steps

    def launch(*args, **kwargs) -> None:  # one kernel launch, whatever the interpreter runs inside
        with torch.profiler.record_function(KERNEL):
            real(*args, **kwargs)

    with mock.patch.object(scan, "fused_steps", launch):
        return sum(count_ops(step, opaque=KERNEL).values())


def multiply_adds(method: str, blocks: int, order: int, channels: int) -> int:
    """Multiply-adds of the forward (dense transitions): nb N^2 C sequential, and for the doubling
    scan ceil(log2 nb) rounds of state and transition products."""
    if method in ("sequential", "fused"):
        return (blocks - 1) * order * order * channels
    total, d = 0, 1
    while d < blocks:
        total += (blocks - d) * order * order * channels  # P_i v_{i-d}
        if 2 * d < blocks:
            total += (blocks - d) * order ** 3  # P_i P_{i-d}
        d *= 2
    return total


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--blocks", default="2,4,8,16,24,26,27,28,32,64,128", help="numbers of blocks, comma-separated")
    p.add_argument("--order", type=int, default=64, help="N, the state's coefficients per channel")
    p.add_argument("--channels", type=int, default=64, help="C = batch x kv heads x 2 x head dim")
    p.add_argument("--block", type=int, default=256, help="tokens per block (sets the transitions)")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--name", default="scan_methods")
    args = p.parse_args(argv)
    blocks = int_list(args.blocks, "--blocks", minimum=2)
    for name in ("order", "channels", "block"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be a positive integer, got {getattr(args, name)}")
    started = time.perf_counter()
    measure = ScaleInvariantMeasure(args.order)
    rows = []
    for nb in blocks:
        spans = [(i * args.block, (i + 1) * args.block) for i in range(nb)]
        transitions = measure.span_transitions(spans, torch.float32, torch.device("cpu"))  # (nb, N, N)
        row = {"blocks": nb}
        for method in methods():
            with mock.patch.dict(os.environ, {"TRITON_INTERPRET": "1"}):  # the fused kernel on the CPU
                row[f"{method} calls"] = calls(method, transitions, args.channels)
            row[f"{method} multiply-adds"] = multiply_adds(method, nb, args.order, args.channels)
        rows.append(row)
        print(row, flush=True)
    fewer = [r["blocks"] for r in rows if r["parallel calls"] < r["sequential calls"]]
    lines = [
        f"One forward + backward of the block scan (N = {args.order}, C = {args.channels}, LegS transitions of "
        f"{args.block}-token blocks, float32, CPU), operator calls that compute (the stand-in for a GPU's "
        "kernel launches) and the forward's multiply-adds, by method.",
        "",
        "| blocks | sequential calls | parallel calls | fused calls | parallel / sequential multiply-adds |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        work = r["parallel multiply-adds"] / r["sequential multiply-adds"]
        fused = r.get("fused calls", "not run (no Triton)")
        lines.append(f"| {r['blocks']} | {r['sequential calls']} | {r['parallel calls']} | {fused} | {work:.1f}x |")
    lines += ["", (f"The doubling scan makes fewer calls from {min(fewer)} blocks on (of those measured)."
                   if fewer else "The doubling scan never made fewer calls here."),
              f"`memplug.hippo.scan.PARALLEL_MIN_STEPS` is {scan.PARALLEL_MIN_STEPS}."]
    markdown = "\n".join(lines)
    path = write_report(args.out, args.name, markdown, {"rows": rows, "parallel_fewer_from": min(fewer, default=None),
                                                        "log2": [math.ceil(math.log2(r["blocks"])) for r in rows]},
                        title="Block scan: operator calls by method", seconds=time.perf_counter() - started)
    print(markdown, f"\nwrote {path}", sep="\n")
    return {"rows": rows}


if __name__ == "__main__":
    main()
