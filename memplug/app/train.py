"""``memplug train CONFIG [--set key=value ...] [--resume]``: train a MemoryModel on a corpus.

One step: the global batch of ``train.batch_size`` windows (``data.seq_len + 1`` tokens of one
document each, a fresh memory per window; see :mod:`memplug.data.windows`) is split over the
processes and into micro-batches; each micro-batch runs the model's block-parallel training
forward on the whole window, or, with ``train.bptt = S``, on segments of S tokens carrying
``state.detach()`` from one to the next (truncated back-propagation through time). AdamW with
decoupled weight decay on matrices, linear warm-up then cosine decay, gradient-norm clipping,
bf16 autocast where the device computes it fast (``train.precision``, see
:mod:`memplug.app.precision`) and optional ``torch.compile``.

Reproducibility: the batch of step ``s`` is a pure function of ``(train.seed, s)`` and the
learning rate a pure function of ``s``, so ``--resume`` (weights, optimizer moments and random
generators restored from the checkpoint) continues with exactly the losses of an uninterrupted
run, and N processes see the batches of one.

Faults: Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint and stops (a
second Ctrl-C stops at once); a kill leaves the last complete checkpoint (they are written
atomically); an unwritable output folder or a full disk stops training with a clear message.
"""

from __future__ import annotations

import argparse
import csv
import math
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.hookspecs import hookimpl
from ..util.atomic import atomic_write_bytes
from .checkpoint import (
    CheckpointError,
    capture_rng,
    latest_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    remove_temporaries,
    restore_rng,
    save_checkpoint,
    unwrap,
)
from .build import build_model_and_tokenizer
from .config import Config, ConfigError, load_config
from ..data import Prepared, TokenizedSplit, prepare
from ..data.windows import WindowSampler, eval_starts, gather
from .distributed import (
    DistInfo,
    all_mean,
    any_true,
    barrier,
    close_distributed,
    init_distributed,
)
from .evaluate import evaluate
from .precision import autocast, resolve_precision
from ..data.tokenizers import BPETokenizer, Tokenizer

log = logging.getLogger(__name__)

__all__ = ["OutputError", "TrainResult", "lr_at", "train"]

LOG_FIELDS = ("step", "split", "loss", "bpb", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s")


class OutputError(OSError):
    """The output folder cannot be written (read-only, full disk, not a folder)."""


# --- building blocks --------------------------------------------------------------------------------


def lr_at(step: int, steps: int, lr: float, warmup: int, min_lr_ratio: float) -> float:
    """Learning rate of optimizer step ``step`` (1-based): linear warm-up over ``warmup`` steps to
    ``lr``, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step <= warmup:
        return lr * step / max(warmup, 1)
    progress = (step - warmup) / max(steps - warmup, 1)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: matrices (and embeddings) decay, vectors (norms, biases, gates) do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


def prepare_data(config: Config) -> Prepared:
    return prepare(config.data.dataset, validation=config.data.validation, test=config.data.test,
                   seed=config.data.split_seed, **config.data.options)


class _StopRequest:
    """SIGINT / SIGTERM set a flag that the loop checks between steps; a second SIGINT raises
    ``KeyboardInterrupt`` at once. Only installed in the main thread."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signal_name = True, signal.Signals(signum).name

    @contextmanager
    def installed(self) -> Iterator[_StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class _Logger:
    """CSV rows (and TensorBoard scalars when installed); every write error is an OutputError."""

    def __init__(self, out: Path, resume_step: int | None, tensorboard: bool) -> None:
        self.path = out / "log.csv"
        try:
            rows = []
            if resume_step is not None and self.path.exists():  # drop rows written after the checkpoint
                with open(self.path, newline="") as handle:
                    rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= resume_step]
            self.handle = open(self.path, "w", newline="")  # noqa: SIM115 - open for the whole run, closed in close()
            self.writer = csv.DictWriter(self.handle, fieldnames=LOG_FIELDS)
            self.writer.writeheader()
            self.writer.writerows(rows)
            self.handle.flush()
        except OSError as exc:
            raise OutputError(f"cannot write the training log {self.path}: {exc.strerror or exc}") from None
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # tensorboard is optional (memplug[bench])
                self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        try:
            self.writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})
            self.handle.flush()
        except OSError as exc:
            raise OutputError(f"cannot write the training log {self.path}: {exc.strerror or exc}") from None
        if self.tb is not None:
            for key in ("loss", "bpb", "lr", "grad_norm", "tokens_per_s"):
                if row.get(key) not in (None, ""):
                    self.tb.add_scalar(f"{row['split']}/{key}", float(row[key]), int(row["step"]))

    def close(self) -> None:
        try:
            self.handle.close()
        except OSError:
            pass
        if self.tb is not None:
            self.tb.close()


def check_writable(out: Path) -> None:
    """Create ``out`` and write a probe file, or raise :class:`OutputError` saying why not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".memplug-write-test"
        atomic_write_bytes(probe, b"ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output directory {out} is not writable: {exc.strerror or exc}") from None


# --- the loop ------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a run did: per-step training losses (global mean), evaluations, the last checkpoint."""

    start_step: int
    step: int
    losses: dict[int, float] = field(default_factory=dict)
    evals: dict[int, dict[str, Any]] = field(default_factory=dict)
    checkpoint: Path | None = None
    interrupted: bool = False
    rank: int = 0


def _resume_from(config: Config, resume: bool | str | Path) -> Path | None:
    if resume is False or resume is None:
        return None
    if resume is True:
        found = latest_checkpoint(config.out_dir / "checkpoints")
        if found is None:
            raise CheckpointError(f"--resume: no checkpoint under {config.out_dir / 'checkpoints'}")
        return found
    return Path(resume)


def _flat(table: Any, prefix: str) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"prefix.a.b": 1}``."""
    if not isinstance(table, dict):
        return {prefix: table}
    return {k: v for key, value in table.items() for k, v in _flat(value, f"{prefix}.{key}").items()}


def _check_compatible(config: Config, saved: dict[str, Any], path: Path) -> None:
    now = config.to_dict()
    try:
        saved = Config.from_dict(saved).to_dict()  # the current layout, also for an older checkpoint
    except ConfigError as exc:
        raise CheckpointError(f"cannot resume from {path}: its config is not valid today ({exc})") from None
    for section in ("model", "data"):
        before, after = _flat(saved[section], section), _flat(now[section], section)
        keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if keys:
            raise CheckpointError(f"cannot resume from {path}: [{section}] differs from the config ({', '.join(keys)})")
    for key in ("batch_size", "seed"):
        if saved["train"][key] != now["train"][key]:
            raise CheckpointError(f"cannot resume from {path}: train.{key} was {saved['train'][key]}, "
                                  f"the config says {now['train'][key]}")


def train(
    config: Config,
    *,
    resume: bool | str | Path = False,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Run ``config``; see the module docstring. ``on_step(step, loss)`` is called after each step."""
    info = init_distributed(config.train.device)
    try:
        result = _train(config, info, resume, on_step)
        barrier(info)  # no rank tears the group down while another is still in a collective or writing
        return result
    finally:
        close_distributed(info)


def _train(config: Config, info: DistInfo, resume: bool | str | Path,
           on_step: Callable[[int, float], None] | None) -> TrainResult:
    tc, lc = config.train, config.log
    if tc.batch_size % info.world:
        raise ConfigError(f"train.batch_size: must be a multiple of the {info.world} processes, got {tc.batch_size}")
    share = tc.batch_size // info.world
    micro = tc.micro_batch or share
    if share % micro:
        raise ConfigError(f"train.micro_batch: must divide the {share} sequences per process, got {micro}")
    out, ckpt_dir = config.out_dir, config.out_dir / "checkpoints"
    resume_path = _resume_from(config, resume)
    ckpt = read_checkpoint(resume_path) if resume_path is not None else None
    if ckpt is not None:
        _check_compatible(config, ckpt.config or {}, ckpt.path)
    if info.main:
        check_writable(out)
        remove_temporaries(ckpt_dir)
    barrier(info)

    tok_file = ckpt.file("tokenizer.json") if ckpt is not None else None

    def setup() -> tuple[Prepared, nn.Module, Tokenizer, TokenizedSplit, TokenizedSplit]:
        torch.manual_seed(tc.seed)  # the same initial weights in every process
        prepared = prepare_data(config)
        model, tokenizer = build_model_and_tokenizer(config, prepared, tok_file.read_text() if tok_file else None)
        splits = prepared.split("train").tokens(tokenizer), prepared.split("validation").tokens(tokenizer)
        return prepared, model, tokenizer, *splits

    # Rank 0 fills the caches (splits, BPE, token arrays) first; the others then only read them.
    built = setup() if info.main else None
    barrier(info)
    prepared, model, tokenizer, train_data, val_data = built or setup()
    model.to(info.device)
    precision = resolve_precision(tc.precision, info.device)
    if info.main:
        log.info("train: precision %s", precision)
    sampler = WindowSampler(train_data, config.data.seq_len, tc.seed)
    val_windows = gather(val_data.tokens, eval_starts(val_data, config.data.seq_len, lc.eval_windows),
                         config.data.seq_len + 1)

    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=tc.betas)
    start = 0
    if ckpt is not None:
        ckpt.load_model(model)
        ckpt.load_optimizer(optimizer)
        restore_rng(ckpt.rng())
        start = ckpt.step
    runner: nn.Module = model
    if info.active:
        ids = [info.device.index] if info.device.type == "cuda" else None
        runner = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if tc.compile:
        runner = torch.compile(runner)

    result = TrainResult(start_step=start, step=start, rank=info.rank)
    logger = _Logger(out, start if ckpt is not None else None, lc.tensorboard) if info.main else None
    files = {"tokenizer.json": tokenizer.to_json().encode()} if isinstance(tokenizer, BPETokenizer) else {}
    meta = {"dataset": prepared.dataset, "splits": {s: prepared.split(s).hash for s in ("train", "validation", "test")},
            "world_size": info.world, "precision": {"name": precision.name, "reason": precision.reason}}

    def save(step: int) -> None:
        if info.main:
            path = ckpt_dir / f"step_{step:07d}"
            try:
                save_checkpoint(path, model, step=step, config=config.to_dict(), optimizer=optimizer,
                                rng=capture_rng(), files=files, meta=meta | {"tokens": step * tc.batch_size * config.data.seq_len})
                prune_checkpoints(ckpt_dir, lc.keep)
            except OSError as exc:
                last = latest_checkpoint(ckpt_dir)
                raise OutputError(f"cannot write checkpoint {path}: {exc.strerror or exc}; "
                                  f"the last complete checkpoint is {last or 'none'}") from None
            result.checkpoint = path
        barrier(info)

    def validate(step: int) -> None:
        if not info.main:  # one process evaluates; the others go on to the next collective call
            return
        scores = evaluate(unwrap(model), val_windows, tokenizer=tokenizer, batch_size=micro,
                          precision=precision, compare_masked=False)["memory"]
        result.evals[step] = scores
        if logger is not None:
            logger.write({"step": step, "split": "validation", "loss": f"{scores['loss']:.6f}",
                          "bpb": f"{scores['bpb']:.6f}", "elapsed_s": f"{time.perf_counter() - t0:.1f}"})

    seq = config.data.seq_len
    segment = tc.bptt or seq
    tokens_per_step = tc.batch_size * seq
    bar = None
    if info.main and lc.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=start, desc=config.name, unit="step", dynamic_ncols=True)
    stop = _StopRequest()
    t0 = t_log = time.perf_counter()
    interval_losses: list[float] = []
    step = start
    try:
        with stop.installed():
            model.train()
            while step < tc.steps:
                step += 1
                lr = lr_at(step, tc.steps, tc.lr, tc.warmup, tc.min_lr_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                rows = sampler.batch(step, tc.batch_size)[info.rank * share : (info.rank + 1) * share]  # (share, S+1)
                local = torch.zeros((), dtype=torch.float64)
                passes = [(m, s) for m in range(0, share, micro) for s in range(0, seq, segment)]
                for i, (m, s) in enumerate(passes):
                    chunk = rows[m : m + micro].to(info.device)  # (micro, S + 1)
                    x, y = chunk[:, s : s + segment], chunk[:, s + 1 : s + segment + 1]  # (micro, seg)
                    if s == 0:
                        state = None
                    sync = i == len(passes) - 1 or not info.active
                    with (nullcontext() if sync else runner.no_sync()), autocast(info.device, precision):
                        output = runner(x, state=state, labels=y)
                        # Equal-length windows: the global mean is the mean of per-pass means.
                        loss = output.loss * (micro * x.shape[1]) / (share * seq)
                    loss.backward()
                    state = output.state.detach()
                    local += loss.detach().double().cpu()
                grad_norm = float(nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or float("inf")))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step_loss = all_mean(float(local), info)
                result.losses[step], result.step = step_loss, step
                interval_losses.append(step_loss)
                if on_step is not None:
                    on_step(step, step_loss)
                now = time.perf_counter()
                if bar is not None:
                    bar.update(1)
                    rate = tokens_per_step * len(interval_losses) / max(now - t_log, 1e-9)
                    bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{rate:,.0f}")
                if logger is not None and (step % lc.log_every == 0 or step == tc.steps):
                    logger.write({"step": step, "split": "train", "loss": f"{sum(interval_losses) / len(interval_losses):.6f}",
                                  "lr": f"{lr:.6g}", "grad_norm": f"{grad_norm:.4f}", "tokens": step * tokens_per_step,
                                  "tokens_per_s": f"{tokens_per_step * len(interval_losses) / max(now - t_log, 1e-9):.1f}",
                                  "elapsed_s": f"{now - t0:.1f}"})
                    interval_losses, t_log = [], now
                if lc.eval_every and step % lc.eval_every == 0 and step < tc.steps:
                    validate(step)
                stopping = any_true(stop.requested, info)
                if step % lc.save_every == 0 or step == tc.steps or stopping:
                    save(step)
                if stopping:
                    result.interrupted = True
                    if info.main:
                        if bar is not None:
                            bar.close()  # the message on a line of its own
                        log.warning("train: %s received: stopped after step %d; checkpoint %s; continue with --resume",
                                    stop.signal_name or "stop", step, result.checkpoint)
                    break
            if not result.interrupted and step == tc.steps and (step not in result.evals):
                validate(step)
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
    return result


# --- command line -----------------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default=None, help="experiment TOML (configs/*.toml); default: built-in")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-3 --set model.memory.name=none")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="continue from the latest checkpoint of the run (or the one given)")
    parser.add_argument("--backbone", metavar="SPEC",
                        help="a registered backbone (tiny), or hf:smollm2 / hf:<model folder> / hf:<file.gguf> "
                             "for a Hugging Face model with its own tokenizer")


def backbone_overrides(spec: str) -> list[str]:
    """``--set`` overrides for ``--backbone SPEC``: ``hf:<model>`` selects the Hugging Face
    backbone on that model (``smollm2``, a folder or a GGUF file) and its own tokenizer."""
    if spec.startswith("hf:"):
        model = spec[3:]
        if not model:
            raise ConfigError("--backbone: hf: needs a model (hf:smollm2, hf:<folder> or hf:<file.gguf>)")
        return [f"model.backbone={{name = \"hf\", model = {json.dumps(model)}}}", 'data.tokenizer="hf"']
    return [f"model.backbone.name={json.dumps(spec)}"]


def _run(args: argparse.Namespace) -> int:
    from ..data import SourceMissingError

    try:
        overrides = args.set + (backbone_overrides(args.backbone) if args.backbone else [])
        config = load_config(args.config, overrides)
        result = train(config, resume=args.resume)
    except (ConfigError, CheckpointError, SourceMissingError, OutputError) as exc:
        print(f"memplug train: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except KeyboardInterrupt:
        print("memplug train: interrupted; the last complete checkpoint is kept", file=sys.stderr)
        return 130
    if result.interrupted:
        return 130
    if result.rank != 0:
        return 0
    last = result.evals.get(result.step)
    summary = f"; validation {last['bpb']:.4f} bits/byte" if last else ""
    print(f"trained to step {result.step}{summary}; checkpoint {result.checkpoint}", file=sys.stderr)
    return 0


@hookimpl
def memplug_add_commands(registry) -> None:
    registry.add("train", "train a model from a TOML experiment config", _add_arguments, _run)
