"""Evaluation: perplexity and bits per byte, overall and by position, with and without memory.

``evaluate(model, windows, tokenizer=...)`` scores token windows (each ``seq_len + 1`` tokens of
one document, a fresh memory per window) and reports

- the loss (nats per token), perplexity and bits per byte over all predicted tokens;
- the same for the **first block** (nothing in memory yet: local attention only) and for the
  **later blocks** (where a memory can help), and bits per byte for every block index;
- with ``compare_masked=True``, the same model with its memory masked
  (:meth:`~memplug.core.model.MemoryModel.memory_masked`: weights untouched, the block-local model) and the **long-context gain**, masked
  minus with memory, in bits per byte (positive: the memory helps);
- optionally with another retriever swapped in for the run (``retriever=``), no retraining.

``memplug eval CHECKPOINT --data NAME`` runs it on a prepared split and writes JSON + Markdown.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.hookspecs import hookimpl
from ..util.atomic import atomic_write_bytes
from .arguments import one_line, positive_int_arg
from .precision import PRECISIONS, Precision, autocast, resolve_precision

if TYPE_CHECKING:
    from ..data.tokenizers import Tokenizer

__all__ = ["evaluate", "summarize", "to_markdown", "token_losses"]

LN2 = math.log(2)


@torch.no_grad()
def token_losses(
    model: nn.Module, windows: Tensor, *, batch_size: int = 4, precision: str | Precision = "auto"
) -> Tensor:
    """Per-token negative log-likelihood (nats) of ``windows[:, 1:]`` given the tokens before.

    ``windows`` is (N, T + 1) token ids; each row starts with a fresh model state. Returns (N, T)
    float32 on the CPU. The model is put in eval mode for the call and restored after.
    ``precision`` is ``"auto"``, ``"bf16"`` or ``"fp32"`` (see :mod:`memplug.app.precision`).
    """
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be (N, T + 1) with T >= 1, got shape {tuple(windows.shape)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for chunk in windows.split(batch_size):
            x, y = chunk[:, :-1].to(device), chunk[:, 1:].to(device)  # (b, T) each
            with autocast(device, precision):
                logits = model(x).logits  # (b, T, V)
            nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (b, T)
            out.append(nll.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


def block_bytes(windows: Tensor, block: int, tokenizer: Tokenizer | None) -> np.ndarray:
    """(N, nb) UTF-8 bytes that the targets of each block of each window stand for.

    ``tokenizer=None`` means byte-level (one byte per token)."""
    targets = windows[:, 1:].cpu().numpy()  # (N, T)
    n, t = targets.shape
    nb = math.ceil(t / block)
    out = np.zeros((n, nb), dtype=np.int64)
    for i in range(nb):
        part = targets[:, i * block : (i + 1) * block]  # (N, <=L)
        out[:, i] = part.shape[1] if tokenizer is None else [tokenizer.count_bytes(row) for row in part]
    return out


def _scores(nll_sum: float, tokens: int, nbytes: int) -> dict[str, float]:
    loss = nll_sum / max(tokens, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bpb": nll_sum / (max(nbytes, 1) * LN2),
            "tokens": tokens, "bytes": nbytes}


def summarize(nll: Tensor, nbytes: np.ndarray, block: int) -> dict[str, Any]:
    """Scores from per-token losses (N, T) and per-block byte counts (N, nb)."""
    n, t = nll.shape
    nb = nbytes.shape[1]
    sums = [float(nll[:, i * block : (i + 1) * block].double().sum()) for i in range(nb)]
    counts = [n * min(block, t - i * block) for i in range(nb)]
    per_bytes = nbytes.sum(axis=0).tolist()
    out = {
        **_scores(sum(sums), sum(counts), sum(per_bytes)),
        "first_block": _scores(sums[0], counts[0], per_bytes[0]),
        "per_block_bpb": [s / (max(b, 1) * LN2) for s, b in zip(sums, per_bytes)],
    }
    if nb > 1:
        out["later_blocks"] = _scores(sum(sums[1:]), sum(counts[1:]), sum(per_bytes[1:]))
    return out


def evaluate(
    model: nn.Module,
    windows: Tensor,
    *,
    tokenizer: Tokenizer | None = None,
    block: int | None = None,
    batch_size: int = 4,
    precision: str | Precision = "auto",
    compare_masked: bool = True,
    retriever: Any = None,
    retriever_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score ``windows`` (N, T + 1) with ``model``; see the module docstring for what is reported.

    ``tokenizer`` gives the bytes per token (``None``: byte-level); ``block`` the position
    buckets (default: the model's block). ``retriever`` (a name or a Retriever, with
    ``retriever_options``) is swapped into every Elastic layer for this evaluation only.
    Returns a JSON-ready dict: ``memory`` (the model as it is), ``masked`` and ``gain``.
    """
    block = block or int(model.block)
    nbytes = block_bytes(windows, block, tokenizer)
    if not isinstance(precision, Precision):
        precision = resolve_precision(precision, next(model.parameters()).device)
    swap = model.swap_retriever(retriever, **(retriever_options or {})) if retriever is not None else nullcontext()
    with swap:
        result: dict[str, Any] = {
            "windows": int(windows.shape[0]),
            "seq_len": int(windows.shape[1] - 1),
            "block": block,
            "precision": {"name": precision.name, "reason": precision.reason},
            "retriever": None if retriever is None else {"name": str(retriever), **(retriever_options or {})},
            "memory": summarize(token_losses(model, windows, batch_size=batch_size, precision=precision), nbytes, block),
        }
    if compare_masked and model.memories:
        with model.memory_masked():
            result["masked"] = summarize(token_losses(model, windows, batch_size=batch_size, precision=precision),
                                         nbytes, block)
        result["gain"] = {
            key: result["masked"][key]["bpb"] - result["memory"][key]["bpb"]
            for key in ("first_block", "later_blocks") if key in result["memory"]
        }
        result["gain"]["all"] = result["masked"]["bpb"] - result["memory"]["bpb"]
    return result


def to_markdown(result: dict[str, Any], title: str = "Evaluation") -> str:
    """A Markdown table of an :func:`evaluate` result (bits per byte; perplexity per token)."""
    swap = ""
    if result.get("retriever"):
        options = ", ".join(f"{k}={v}" for k, v in result["retriever"].items() if k != "name")
        swap = f", retriever swapped to {result['retriever']['name']}" + (f" ({options})" if options else "")
    precision = result.get("precision")
    computed = f"; {precision['name']} ({precision['reason']})" if precision else ""
    lines = [f"## {title}", "",
             f"{result['windows']} windows of {result['seq_len']} tokens, block {result['block']}{swap}{computed}", "",
             "| model | bits/byte | perplexity | first block bpb | later blocks bpb |", "|---|---|---|---|---|"]

    def row(name: str, r: dict[str, Any]) -> str:
        later = f"{r['later_blocks']['bpb']:.4f}" if "later_blocks" in r else "n/a"
        return f"| {name} | {r['bpb']:.4f} | {r['ppl']:.3f} | {r['first_block']['bpb']:.4f} | {later} |"

    lines.append(row("with memory", result["memory"]))
    if "masked" in result:
        lines.append(row("memory masked", result["masked"]))
        gain = result["gain"]
        later = f"{gain['later_blocks']:+.4f}" if "later_blocks" in gain else "n/a"
        lines.append(f"| gain (masked - memory) | {gain['all']:+.4f} | | {gain['first_block']:+.4f} | {later} |")
    return "\n".join(lines) + "\n"


# --- checkpoints and the command line -------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint folder (runs/NAME/checkpoints/step_N) or a run folder (latest)")
    parser.add_argument("--data", required=True, help="dataset name (memplug data list)")
    parser.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="dataset option")
    parser.add_argument("--seq-len", type=positive_int_arg, default=None,
                        help="tokens per window (default: the training length)")
    parser.add_argument("--windows", type=positive_int_arg, default=16,
                        help="windows to score (round-robin over documents)")
    parser.add_argument("--batch-size", type=positive_int_arg, default=4)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="bf16 autocast or float32; auto: bf16 where this device computes it fast (default)")
    parser.add_argument("--retriever", default=None, help="swap this retriever into every Elastic layer")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="retriever option (TOML value), e.g. --set samples=32 --set warp=exponential")
    parser.add_argument("--no-masked", action="store_true", help="skip the memory-masked comparison")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="output folder (default: RUN/eval)")


def _run(args: argparse.Namespace) -> int:
    from .build import load_trained
    from .checkpoint import CheckpointError, latest_checkpoint
    from .config import ConfigError, parse_pairs
    from ..data import SourceMissingError, prepare
    from ..data.windows import eval_starts, gather
    from .distributed import resolve_device

    path = Path(args.checkpoint)
    if (path / "checkpoints").is_dir():
        path = latest_checkpoint(path / "checkpoints") or path
    try:
        retriever_options = parse_pairs(args.set, "--set")
        dataset_options = parse_pairs(args.option, "--option", typed=False)
    except ConfigError as exc:
        print(f"memplug eval: error: {one_line(exc)}", file=sys.stderr)
        return 2
    if retriever_options and args.retriever is None:
        print("memplug eval: error: --set gives retriever options; name the retriever with --retriever",
              file=sys.stderr)
        return 2
    try:
        model, tokenizer, config = load_trained(path, resolve_device(args.device))
        same = args.data == config.data.dataset
        prepared = prepare(args.data, validation=config.data.validation if same else 0.05,
                           test=config.data.test if same else 0.05, seed=config.data.split_seed if same else 0,
                           **dataset_options)
        seq_len = args.seq_len if args.seq_len is not None else config.data.seq_len
        data = prepared.split(args.split).tokens(tokenizer)
        windows = gather(data.tokens, eval_starts(data, seq_len, args.windows), seq_len + 1)
        result = evaluate(model, windows, tokenizer=tokenizer, batch_size=args.batch_size, precision=args.precision,
                          compare_masked=not args.no_masked, retriever=args.retriever,
                          retriever_options=retriever_options)
    except (CheckpointError, ConfigError, SourceMissingError, ValueError, KeyError) as exc:
        print(f"memplug eval: error: {one_line(exc)}", file=sys.stderr)
        return 2
    result |= {"checkpoint": str(path), "dataset": args.data, "split": args.split,
               "split_hash": prepared.split(args.split).hash}
    tag = f"{path.name}-{args.data}-{args.split}" + (f"-{args.retriever}" if args.retriever else "")
    out = Path(args.out) if args.out else path.parent.parent / "eval"
    markdown = to_markdown(result, f"{config.name} {tag}")
    try:
        atomic_write_bytes(out / f"{tag}.json", json.dumps(result, indent=1).encode())
        atomic_write_bytes(out / f"{tag}.md", markdown.encode())
    except OSError as exc:
        print(f"memplug eval: error: cannot write results to {out}: {exc.strerror or exc}", file=sys.stderr)
        print(markdown)
        return 1
    print(markdown)
    print(f"wrote {out / tag}.json and .md", file=sys.stderr)
    return 0


@hookimpl
def memplug_add_commands(registry) -> None:
    registry.add("eval", "perplexity / bits per byte of a checkpoint, by position, with memory and masked",
                 _add_arguments, _run)
