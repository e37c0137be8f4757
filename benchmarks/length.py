"""Length: stream a trained elastic model far past its training length; loss, time and memory by position.

    python benchmarks/length.py --preset cpu        # 1M tokens

A byte-level elastic (LegS) model is trained on the code corpus with sequences of ``length``
tokens, then fed one long held-out byte stream (validation files concatenated) in chunks of
``chunk`` tokens through its streaming state. Reported per log-spaced position bucket: bits per
byte with the memory and with it masked (the same weights, block-local), milliseconds per block
and the size of the streamed state. For contrast, the ``full`` memory (every past key/value
kept) is streamed over the first ``--full-tokens`` tokens: its state and time per block grow.
"""

from __future__ import annotations

import argparse
import time
from itertools import pairwise
from typing import Any

import common
import torch
import torch.nn.functional as F
from common import Preset

from memplug.data import prepare
from memplug.core.model import MemoryModel
from memplug.tasks.corpus import CorpusTask
from memplug.data.tokenizers import ByteTokenizer

PRESETS = {
    "smoke": Preset(d_model=32, n_layers=2, n_heads=2, block=16, length=128, batch=2, budget=5, eval_batches=1,
                    steps=3),
    "cpu": Preset(d_model=128, n_layers=2, n_heads=4, block=64, length=512, batch=8, budget=300, eval_batches=1,
                  steps=200),
    "gpu": Preset(d_model=256, n_layers=4, n_heads=4, block=128, length=2048, batch=16, budget=20, eval_batches=1),
}
TOKENS = {"smoke": 4096, "cpu": 1 << 20, "gpu": 1 << 20}


def state_bytes(state: Any) -> int:
    return sum(t.numel() * t.element_size() for layer in state.layers for t in layer.values())


@torch.no_grad()
def stream(model: MemoryModel, ids: torch.Tensor, chunk: int) -> dict[str, torch.Tensor]:
    """Per-token loss (nats) of ``ids[1:]``, and per-chunk seconds and state bytes, streaming
    ``ids`` (T,) through the model ``chunk`` tokens at a time with batch 1."""
    model.eval()
    device = common.model_device(model)
    state, losses, seconds, sizes = None, [], [], []
    for start in range(0, ids.numel() - 1, chunk):
        x = ids[start : start + chunk].to(device)[None]  # (1, c)
        y = ids[start + 1 : start + chunk + 1].to(device)
        x = x[:, : y.numel()]
        tic = time.perf_counter()
        out = model(x, state=state)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - tic)
        state = out.state
        sizes.append(state_bytes(state))
        losses.append(F.cross_entropy(out.logits[0].float(), y, reduction="none").cpu())
    return {"nll": torch.cat(losses), "seconds": torch.tensor(seconds), "bytes": torch.tensor(sizes, dtype=torch.float64)}


def buckets(total: int, first: int) -> list[tuple[int, int]]:
    """[0, first), then factor-4 buckets up to ``total``."""
    edges = [0, first]
    while edges[-1] < total:
        edges.append(min(total, edges[-1] * 4))
    return list(pairwise(edges))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--tokens", type=int, default=None, help="stream length (default: 1M; smoke 4k)")
        parser.add_argument("--chunk", type=int, default=None, help="tokens per streaming call (default 16 blocks)")
        parser.add_argument("--full-tokens", type=int, default=None,
                            help="stream the full-attention memory this far for contrast (default tokens / 32)")

    args, p = common.parse(__doc__.split("\n")[0], PRESETS, add, argv)
    tokens = args.tokens or TOKENS[args.preset]
    chunk = args.chunk or 16 * p.block
    full_tokens = args.full_tokens or max(chunk * 2, tokens // 32)
    started = time.perf_counter()
    data = prepare("code")
    train_task = CorpusTask(data.split("train").tokens(ByteTokenizer()))
    held = data.split("validation").tokens(ByteTokenizer()).tokens
    if len(held) < tokens + 1:
        raise SystemExit(f"the code validation split has {len(held)} bytes, fewer than --tokens {tokens} + 1")
    ids = torch.as_tensor(held[: tokens + 1].astype("int64"))

    model = common.build(256, "elastic", p, args.seed, args.device)
    run = common.train(model, train_task, p, args.seed, label="elastic on code")
    with_memory = stream(model, ids, chunk)
    print(f"  streamed {tokens} tokens with memory in {with_memory['seconds'].sum():.0f} s", flush=True)
    with model.memory_masked():
        masked = stream(model, ids, chunk)
    full = common.build(256, "full", p, args.seed, args.device)
    full.load_state_dict(model.state_dict(), strict=False)  # same backbone weights; full adds none
    full_run = stream(full, ids[: full_tokens + 1], chunk)

    per_block = chunk // p.block
    rows = []
    for lo, hi in buckets(tokens, p.length):
        a, b = lo // chunk, max(lo // chunk + 1, hi // chunk)
        row = {"positions": f"{lo:,}-{hi:,}", "bpb": float(with_memory["nll"][lo:hi].mean() / common.LN2),
               "masked bpb": float(masked["nll"][lo:hi].mean() / common.LN2),
               "ms/block": 1e3 * float(with_memory["seconds"][a:b].mean()) / per_block,
               "state KiB": float(with_memory["bytes"][a:b].mean()) / 1024}
        if hi <= full_tokens:
            row["full: ms/block"] = 1e3 * float(full_run["seconds"][a:b].mean()) / per_block
            row["full: state KiB"] = float(full_run["bytes"][a:b].mean()) / 1024
        row["gain"] = row["masked bpb"] - row["bpb"]
        rows.append(row)
    markdown = (
        f"Elastic (LegS, {common.memory_spec('elastic', p)}, layers {list(p.layers)}) trained on the code corpus with "
        f"{p.length}-byte sequences for {run.steps} steps, then streamed over {tokens:,} held-out bytes (validation "
        f"files concatenated) in calls of {chunk} tokens, batch 1. `gain` = masked - with memory (positive: the memory "
        f"helps at those positions). The `full` memory (every past key/value, same weights) streamed over the first "
        f"{full_tokens:,} tokens for contrast.\n\n"
        + common.table(rows, ["positions", "bpb", "masked bpb", "gain", "ms/block", "state KiB", "full: ms/block",
                              "full: state KiB"])
    )

    def draw(plt: Any) -> None:
        nll = with_memory["nll"]
        width = max(chunk, tokens // 256)
        n = nll.numel() // width
        x = (torch.arange(n) + 0.5) * width
        plt.subplot(1, 2, 1)
        plt.plot(x, nll[: n * width].view(n, width).mean(1) / common.LN2, label="with memory")
        plt.plot(x, masked["nll"][: n * width].view(n, width).mean(1) / common.LN2, label="memory masked", alpha=0.7)
        plt.axvline(p.length, color="k", ls=":", lw=1, label="training length")
        plt.xscale("log")
        plt.xlabel("position (tokens)")
        plt.ylabel("bits per byte")
        plt.legend(fontsize=7)
        plt.subplot(1, 2, 2)
        pos = (torch.arange(with_memory["seconds"].numel()) + 1) * chunk
        plt.plot(pos, 1e3 * with_memory["seconds"] / per_block, ".", ms=2, label="elastic")
        fpos = (torch.arange(full_run["seconds"].numel()) + 1) * chunk
        plt.plot(fpos, 1e3 * full_run["seconds"] / per_block, ".", ms=2, label="full attention memory")
        plt.xscale("log")
        plt.yscale("log")
        plt.xlabel("position (tokens)")
        plt.ylabel("ms per block")
        plt.legend(fontsize=7)

    common.finish(args, "length", f"Streaming {tokens:,} tokens: loss, time and memory by position", markdown,
                  {"rows": rows, "train_steps": run.steps, "tokens": tokens, "chunk": chunk,
                   "seconds_per_chunk": with_memory["seconds"].tolist(), "full_seconds_per_chunk":
                   full_run["seconds"].tolist(), "state_bytes": with_memory["bytes"][-1].item()}, started, p, draw)
    return {"rows": rows}


if __name__ == "__main__":
    main()
