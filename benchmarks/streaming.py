"""Streaming: time per block and memory stay flat however long the stream (no growing cache).

A tiny model with a memory on every layer (elastic by default) reads ``--tokens`` tokens one
block per call, carrying its :class:`memplug.ModelState`. ``--encoder-cache-mb`` bounds each
elastic encoder's transition cache (a stream never repeats a block ratio, so an unbounded or
large cache is the one thing that grows). Each stream length runs in its own
subprocess, so its peak resident memory (``ru_maxrss``) is its own. Recorded per stream: the
time per block over the first, middle and last ``--window`` blocks (median and 90th percentile),
the resident memory (RSS) at those three points, the peak, and the model state size.

    python benchmarks/streaming.py --tokens 16k,256k,1M --memories elastic --encoder-cache-mb 0,16

Writes ``docs/results/streaming.md``, ``.json`` (machine, date, command) and ``.png``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch

import common
import memplug
from memory_configs import build_options, parse_scales

UNITS = {"k": 1024, "m": 1024**2}


def parse_tokens(text: str) -> list[int]:
    """``"16k,256k,1M"`` -> [16384, 262144, 1048576]."""
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        mult = UNITS.get(item[-1:], 1)
        digits = item[:-1] if item[-1:] in UNITS else item
        if not digits.isdigit():
            raise ValueError(f"--tokens takes counts like 16k,256k,1M; got {text!r}")
        out.append(int(digits) * mult)
    return out


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def stream(args: argparse.Namespace) -> dict:
    """One stream in this process: per-block times and RSS at the start, middle and end."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    options = build_options(args.memory, args.scale, args.block)
    if args.encoder_cache_mb and options["memory"] == "elastic":
        options["memory_options"]["encoder_options"] = {"cache_bytes": args.encoder_cache_mb * 2**20}
    model = memplug.build_model(
        "tiny", block=args.block, backbone_options=dict(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads),
        **options,
    ).eval()
    blocks = args.tokens // args.block
    marks = {"start": args.window, "middle": blocks // 2 + args.window // 2, "end": blocks}
    gen = torch.Generator().manual_seed(0)
    state, times, rss = None, [], {}
    with torch.inference_mode():
        for i in range(blocks):
            ids = torch.randint(0, 256, (1, args.block), generator=gen)
            start = time.perf_counter()
            state = model(ids, state=state).state
            times.append(time.perf_counter() - start)
            for name, at in marks.items():
                if i + 1 == at:
                    rss[name] = rss_mb()
    state_bytes = sum(t.numel() * t.element_size() for layer in state.layers for t in layer.values())
    windows = {"start": times[: args.window], "middle": times[blocks // 2 - args.window // 2 : blocks // 2 + args.window // 2],
               "end": times[-args.window :]}
    return dict(
        memory=args.memory, scale=args.scale, tokens=args.tokens, blocks=blocks, position=state.position,
        ms_per_block={k: 1e3 * statistics.median(v) for k, v in windows.items()},
        p90_ms_per_block={k: 1e3 * statistics.quantiles(v, n=10)[-1] for k, v in windows.items()},
        rss_mb=rss, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        state_bytes=state_bytes, total_s=sum(times),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", default="16k,256k,1M")
    p.add_argument("--memories", default="elastic")
    p.add_argument("--scale", default="1x")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--window", type=int, default=16, help="blocks per start/middle/end measurement")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--encoder-cache-mb", default="0",
                   help="bounds on each elastic encoder's transition cache, comma-separated (0: the encoder's default)")
    p.add_argument("--out", default="docs/results/streaming")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--memory", help=argparse.SUPPRESS)
    args = p.parse_args()
    started = time.perf_counter()
    if args.worker:
        args.tokens, args.scale, args.encoder_cache_mb = int(args.tokens), int(args.scale), int(args.encoder_cache_mb)
        print(json.dumps(stream(args)))
        return

    torch.set_num_threads(args.threads)  # as in the workers, so the recorded machine line says so
    rows = []
    for name in [n.strip() for n in args.memories.split(",") if n.strip()]:
        for scale in parse_scales(args.scale):
            for tokens, cache_mb in itertools.product(parse_tokens(args.tokens), args.encoder_cache_mb.split(",")):
                if tokens // args.block < 3 * args.window:
                    raise ValueError(f"--tokens {tokens} gives fewer than 3 x --window blocks of {args.block}")
                cmd = [sys.executable, __file__, "--worker", "--memory", name, "--scale", str(scale),
                       "--tokens", str(tokens), "--d-model", str(args.d_model), "--layers", str(args.layers),
                       "--heads", str(args.heads), "--block", str(args.block), "--window", str(args.window),
                       "--threads", str(args.threads), "--encoder-cache-mb", cache_mb.strip()]
                result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
                result["encoder_cache_mb"] = int(cache_mb) if name == "elastic" else None
                rows.append(result)
                ms = result["ms_per_block"]
                print(f"{name} {scale}x {tokens} tokens, cache {cache_mb} MB: ms/block start {ms['start']:.2f} middle {ms['middle']:.2f} "
                      f"end {ms['end']:.2f}; peak RSS {result['peak_rss_mb']:.0f} MB; {result['total_s']:.0f}s",
                      flush=True)

    config = {k: v for k, v in vars(args).items() if k not in ("out", "worker", "memory")}
    lines = [
        f"Tiny backbone d={args.d_model}, {args.layers} layers, {args.heads} heads, memory on every layer, "
        f"block {args.block}, one block per call (inference mode, {args.threads} thread(s)); each stream in its "
        f"own process. Times are medians (90th percentile in brackets) over {args.window} blocks at the start, "
        f"middle and end; RSS is sampled at the same points. Encoder cache: the bound on each layer's "
        f"elastic encoder transition cache in MB (default: the encoder's own, 64 MB shared by all layers); in a stream every block "
        f"start is a new ratio t0/t1, so the cache fills up to its bound and RSS grows until then.\n",
        "| memory | scale | encoder cache | tokens | ms/block start | middle | end | RSS MB start | middle | end | peak RSS MB "
        "| state bytes | total s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ms, p90, rss = r["ms_per_block"], r["p90_ms_per_block"], r["rss_mb"]
        cells = " | ".join(f"{ms[k]:.2f} ({p90[k]:.2f})" for k in ("start", "middle", "end"))
        mem = " | ".join(f"{rss[k]:.0f}" for k in ("start", "middle", "end"))
        cache = {None: "", 0: "default"}.get(r["encoder_cache_mb"], f"{r['encoder_cache_mb']} MB")
        lines.append(f"| {r['memory']} | {r['scale']}x | {cache} | {r['tokens']:,} | {cells} | {mem} | {r['peak_rss_mb']:.0f} "
                     f"| {r['state_bytes']:,} | {r['total_s']:.0f} |")
    out = Path(args.out)
    data = dict(config=config, results=rows)
    common.report(out.parent, out.name, "\n".join(lines), data, figure(data),
                  title="Streaming: time per block and memory over long streams", seconds=time.perf_counter() - started)


def figure(data: dict[str, Any]) -> Callable[[Any], None]:
    """The plot of a streaming report's JSON ``data``: ms per block and resident memory at the
    start, middle and end of each stream (flat lines: the cost does not grow with the stream)."""
    rows, stages = data["results"], ("start", "middle", "end")

    def draw(plt: Any) -> None:
        for panel, (key, label) in enumerate((("ms_per_block", "ms per block (median)"), ("rss_mb", "resident MB"))):
            plt.subplot(1, 2, panel + 1)
            for r in rows:
                plt.plot(stages, [r[key][s] for s in stages], marker="o",
                         label=f"{r['memory']} {r['scale']}x, {r['tokens']:,} tokens")
            plt.ylim(bottom=0)
            plt.xlabel("part of the stream")
            plt.ylabel(label)
        plt.legend(fontsize=7)

    return draw


if __name__ == "__main__":
    main()
