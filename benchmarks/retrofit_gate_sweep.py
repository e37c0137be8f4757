"""How far can the gate alone take an attached memory? SmolLM2 + gated Elastic with every gate fixed.

The retrofit experiment (``retrofit_finetune.py``) trains the per-head gates of Elastic attached to
SmolLM2 (``trainable="memory"``); in its CPU budget they moved from 0 to about 0.08 and perplexity
beyond the window barely changed. This sweep asks what the training could reach at most along
that direction: every gate of every layer set to one value ``g`` (0 is the local window with its
sink, 1 the ungated paper merge), nothing trained, perplexity of one held-out stream by position.
A clear minimum inside (0, 1) says that longer or faster gate training is worth running; a
minimum at 0 says the untrained memory's reads do not help this model at any mix.

    python benchmarks/retrofit_gate_sweep.py --gates 0,0.1,0.25,0.5,1 --eval-tokens 8192 --threads 2
    python benchmarks/retrofit_gate_sweep.py --memory-option encoder=legt --memory-option 'encoder_options={window=2048}'

The model, block, sink and memory settings are the ``--preset`` of ``retrofit_finetune.py``;
``--memory-option`` changes the memory as it does there.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, replace
from typing import Any

import common
import torch
from retrofit_finetune import (
    PRESETS,
    RESULTS,
    Preset,
    add_data_and_memory_arguments,
    build,
    by_position,
    describe_memory,
    held_out_stream,
    parse_data_and_memory_options,
    ppl,
    stream_nll,
)

from memplug.app.precision import autocast, resolve_precision
from memplug.backbones.hf import HFBackbone
from memplug.data.prepare import prepare
from memplug.data.tokenizers import HFTokenizer
from memplug.probes import MemoryModelReader


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, Preset]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--gates", default="0,0.1,0.25,0.5,1", help="comma-separated gate values (real numbers)")
    p.add_argument("--eval-tokens", type=int, default=8192, help="tokens of the held-out stream")
    p.add_argument("--block", type=int, default=None, help="the local window's block (default: the preset's)")
    add_data_and_memory_arguments(p)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--name", default="retrofit_gate_sweep")
    args = p.parse_args(argv)
    try:
        args.gates = [float(g) for g in args.gates.split(",")]
    except ValueError:
        p.error(f"--gates must be comma-separated real numbers, got {args.gates!r}")
    preset = PRESETS[args.preset]
    if args.block is not None:
        if args.block < 1:
            p.error(f"--block must be >= 1, got {args.block}")
        preset = replace(preset, block=args.block)
    if args.eval_tokens < 2 * preset.block:
        p.error(f"--eval-tokens must be >= {2 * preset.block} (two blocks), got {args.eval_tokens}")
    parse_data_and_memory_options(p, args, preset)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, preset


def main(argv: list[str] | None = None) -> None:
    args, p = parse(argv)
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = resolve_precision("auto", device)
    backbone = HFBackbone(args.model)
    if backbone.tokenizer is None:
        raise SystemExit(f"--model {args.model}: the model folder has no tokenizer files")
    backbone.hf.to(device).eval().requires_grad_(False)
    prepared = prepare(args.dataset, **args.dataset_option)
    ids = held_out_stream(prepared, HFTokenizer(backbone.tokenizer), args.eval_tokens)
    model = build("elastic+gate", backbone.hf, backbone, p, args).to(device)  # the gates are made on the CPU
    rows: list[dict[str, Any]] = []
    for g in args.gates:
        for layer in model.attn:
            layer.gate.data.fill_(g)
        t0 = time.perf_counter()
        with autocast(device, precision):
            nll = stream_nll(MemoryModelReader(model, p.chunk), ids, p.chunk)
        # the window's first block and the rest, then fixed buckets (comparable across --block)
        row = {"gate": g, f"0-{p.block}": ppl(nll[: p.block]), f"{p.block}-{args.eval_tokens}": ppl(nll[p.block :]),
               **by_position(nll, args.eval_tokens),
               "seconds": time.perf_counter() - t0}
        print(row, flush=True)
        rows.append(row)
    beyond = f"{p.block}-{args.eval_tokens}"
    best = min(rows, key=lambda r: r[beyond])
    body = (f"SmolLM2 (`{args.model}`), local window {p.block} with a sink of {p.sink} tokens, Elastic "
            f"({describe_memory(p, args)}, samples rotated at their positions) in every layer behind "
            f"the per-head gate, every gate fixed at the row's value, nothing trained. Perplexity of one stream of "
            f"{args.eval_tokens:,} held-out tokens (the {args.dataset} validation split). Gate 0 is the local "
            f"window with its sink; gate 1 the ungated merge.\n\n"
            + common.table(rows, list(rows[0]))
            + f"\n\nLowest perplexity beyond the window at gate {best['gate']:g}.")

    def draw(plt: Any) -> None:
        plt.plot([r["gate"] for r in rows], [r[beyond] for r in rows], marker="o")
        plt.xlabel("gate (every head, every layer)")
        plt.ylabel(f"perplexity, positions {beyond}")

    common.report(args.out, args.name, body, {"preset": asdict(p), "rows": rows}, draw,
                  title="Retrofit: how far the gate alone takes an attached Elastic memory",
                  seconds=time.perf_counter() - started, precision=precision)


if __name__ == "__main__":
    main()
