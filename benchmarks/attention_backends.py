"""Every attention backend on the memory layer's call: error against float64, and time.

The call is the one :class:`memplug.core.layer.MemoryAttention` makes: one batched attention over
all blocks, each block's L queries against P memory slots plus its L local keys under the
trapezoid mask (memory visible, local keys causal), grouped-query heads. For each registered
backend that supports the device and dtype, the script reports the largest absolute error of
the output against :func:`memplug.ops.attention.reference_attention` in float64, and the median
time of a forward and of a forward + backward.

    python benchmarks/attention_backends.py --device cuda --out docs/results/gpu/attention_backends
    python benchmarks/attention_backends.py --device cpu --shapes 8x128x32 --out /tmp/ab

Writes ``NAME.md``, ``.json`` (machine, date, command) and ``.png``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import torch

from memplug.core.layer import attention_candidates
from memplug.ops.attention import reference_attention, trapezoid_mask

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"64x256x64"`` -> (calls, block L, memory slots P)."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--shapes takes CALLSxBLOCKxSLOTS items like 64x256x64, got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after two warm-up calls."""
    times = []
    for i in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked before any tensor is made: one line (usage, exit status 2) for a
    bad shape, dtype or count."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--shapes", default="64x256x64,16x1024x256", help="CALLSxBLOCKxSLOTS, comma-separated")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default="docs/results/attention_backends")
    args = p.parse_args(argv)
    try:
        for shape in args.shapes.split(","):
            parse_shape(shape)
    except ValueError as error:
        p.error(str(error))
    for dname in args.dtypes.split(","):
        if dname not in DTYPES:
            p.error(f"--dtypes takes {', '.join(DTYPES)}, comma-separated; got {dname!r}")
    for flag in ("heads", "kv_heads", "head_dim", "repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.heads % args.kv_heads:
        p.error(f"--heads ({args.heads}) must be a multiple of --kv-heads ({args.kv_heads})")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse(argv)
    started = time.perf_counter()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for shape in args.shapes.split(","):
        calls, block, slots = parse_shape(shape)
        q64 = torch.randn(calls, args.heads, block, args.head_dim, generator=gen, dtype=torch.float64)
        k64, v64 = (torch.randn(calls, args.kv_heads, slots + block, args.head_dim, generator=gen, dtype=torch.float64)
                    for _ in range(2))
        mask64 = trapezoid_mask(block, block, slots, dtype=torch.float64)[None, None]  # (1, 1, L, P + L)
        scale = args.head_dim ** -0.5
        exact, _ = reference_attention(q64, k64, v64, mask64, scale)
        for dname in args.dtypes.split(","):
            dtype = DTYPES[dname]
            q, k, v = (x.to(device, dtype) for x in (q64, k64, v64))
            mask = mask64.to(device, dtype)
            for backend in attention_candidates():
                row = dict(shape=shape, calls=calls, block=block, slots=slots, dtype=dname, backend=backend.name)
                if not backend.supports(device, dtype, masked=True):
                    rows.append({**row, "status": "not supported here"})
                    continue
                try:
                    with torch.no_grad():
                        out = backend(q, k, v, mask, scale)
                    row["max_abs_error"] = float((out.double().cpu() - exact).abs().max())
                    with torch.no_grad():
                        row["forward_ms"] = 1e3 * timed(lambda: backend(q, k, v, mask, scale), device, args.repeats)
                    leaves = [x.detach().requires_grad_() for x in (q, k, v)]

                    def step() -> None:
                        backend(*leaves, mask, scale).float().square().mean().backward()

                    row["forward_backward_ms"] = 1e3 * timed(step, device, args.repeats)
                    row["status"] = "ok"
                except Exception as exc:  # a backend that fails is a result too: report, go on
                    row["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                rows.append(row)
                print(row, flush=True)

    fmt = lambda x, d=3: "" if x is None else f"{x:.{d}g}" if isinstance(x, float) else str(x)  # noqa: E731
    lines = [
        f"Device {device}; {args.heads} query heads, {args.kv_heads} key/value heads, head dim {args.head_dim}. "
        "Shape CALLSxBLOCKxSLOTS: CALLS independent blocks (batch x blocks), each of BLOCK queries against SLOTS "
        "memory slots + BLOCK local keys under the trapezoid mask. Error: largest absolute difference from the "
        f"float64 definition. Times: median of {args.repeats} calls after 2 warm-ups.\n",
        "| shape | dtype | backend | max abs error | forward ms | forward + backward ms | status |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['shape']} | {r['dtype']} | {r['backend']} | {fmt(r.get('max_abs_error'))} | "
              f"{fmt(r.get('forward_ms'))} | {fmt(r.get('forward_backward_ms'))} | {r['status']} |" for r in rows]
    out = Path(args.out)
    config = {k: v for k, v in vars(args).items() if k != "out"}
    data = dict(config=config, device=str(device), results=rows)
    common.report(out.parent, out.name, "\n".join(lines), data, figure(data),
                  title="Attention backends on the memory layer's call", seconds=time.perf_counter() - started)
    return rows


def figure(data: dict[str, Any]) -> Callable[[Any], None]:
    """The plot of a backends report's JSON ``data``: forward + backward time and error against
    float64 for each backend that ran, per shape and dtype."""
    ran = [r for r in data["results"] if r["status"] == "ok"]
    cases = list(dict.fromkeys(f"{r['shape']} {r['dtype']}" for r in ran))
    backends = list(dict.fromkeys(r["backend"] for r in ran))

    def draw(plt: Any) -> None:
        width = 0.8 / max(1, len(backends))
        for panel, (key, label) in enumerate((("forward_backward_ms", "forward + backward ms"),
                                              ("max_abs_error", "max abs error vs float64"))):
            plt.subplot(1, 2, panel + 1)
            for i, backend in enumerate(backends):
                got = {f"{r['shape']} {r['dtype']}": r[key] for r in ran if r["backend"] == backend}
                plt.bar([c + i * width for c in range(len(cases))], [got.get(c, 0.0) for c in cases], width, label=backend)
            plt.xticks([c + 0.4 - width / 2 for c in range(len(cases))], cases, fontsize=7, rotation=20)
            plt.yscale("log")
            plt.ylabel(label)
        plt.legend(fontsize=7)
        plt.suptitle(f"device {data['device']}", fontsize=9)

    return draw


if __name__ == "__main__":
    main()
