"""``memplug train CONFIG [--set key=value ...] [--resume | --overwrite]``: train a MemoryModel on a corpus.

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

Nothing lost: a run folder that holds a run is refused unless the training resumes it or is told
to overwrite it, and one training at a time holds it (see :mod:`memplug.app.run_folder`).

Faults: Ctrl-C (SIGINT) or SIGTERM finishes the current step, writes a checkpoint and stops (a
second Ctrl-C stops at once); a kill leaves the last complete checkpoint (they are written
atomically); an unwritable output folder or a full disk stops training with a clear message; a
loss or gradient norm that is not finite stops it before that step is applied or saved
(:class:`DivergedError`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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

from ..core.contracts import Dataset, SourceMissingError
from ..core.hookspecs import hookimpl
from ..core import manager
from ..core.trainable import TrainableSummary, is_memory_parameter
from ..data import Prepared, TokenizedSplit, get_dataset, prepare
from ..data.tokenizers import BPETokenizer, Tokenizer
from ..data.windows import WindowSampler, eval_starts, gather
from .arguments import one_line
from .build import apply_trainable, build_model_and_tokenizer
from .checkpoint import (
    STEP_DIR,
    Checkpoint,
    CheckpointError,
    base_sha256,
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    newest_complete,
    prune_checkpoints,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
    step_of,
    unwrap,
)
from .config import Config, ConfigError, TrainConfig, describe_config, load_config
from .distributed import (
    DistInfo,
    all_mean,
    any_true,
    barrier,
    close_distributed,
    init_distributed,
    main_first,
    main_only,
)
from .evaluate import evaluate
from .precision import autocast, resolve_precision
from .run_folder import OutputError, RunFolder, RunFolderError, check_fresh, claim_run_folder
from .train_log import TrainLog

log = logging.getLogger(__name__)

__all__ = ["DivergedError", "OutputError", "RunFolderError", "TrainResult", "lr_at", "train"]


class DivergedError(RuntimeError):
    """The loss, the gradient norm or the weights stopped being finite; nothing of that step was
    applied or saved, and the message names the last checkpoint."""


# --- building blocks --------------------------------------------------------------------------------


def lr_at(step: int, steps: int, lr: float, warmup: int, min_lr_ratio: float) -> float:
    """Learning rate of optimizer step ``step`` (1-based): linear warm-up over ``warmup`` steps to
    ``lr``, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step <= warmup:
        return lr * step / max(warmup, 1)
    progress = (step - warmup) / max(steps - warmup, 1)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


#: how far, at least, Adam must be able to move a zero-initialised memory gate over a run for it
#: to open: on SmolLM2 gates whose learning rates summed to 0.3 opened to 0.08, to 3 opened to
#: 0.70; on the gist task from scratch sums of 0.6 and 1.2 left the memory unused in most seeds, 6
#: in none
GATE_REACH = 3.0


def gate_reach(config: Config) -> float | None:
    """How far Adam can move a memory gate over the whole run: the sum of the memory's learning
    rate over the schedule (Adam moves a parameter by about its learning rate per step, whatever
    the gradient's size). None when ``model.gate`` is off."""
    if not config.model.gate:
        return None
    tc = config.train
    return sum(lr_at(step, tc.steps, _memory_peak(tc), tc.warmup, tc.min_lr_ratio) for step in range(1, tc.steps + 1))


def _memory_peak(tc: TrainConfig) -> float:
    """The memory's peak learning rate: ``train.memory_lr``, or ``train.lr`` when it is 0."""
    return tc.memory_lr or tc.lr


def gate_warning(config: Config) -> str | None:
    """A one-line warning when a gate that starts closed cannot open in this run (its reach,
    :func:`gate_reach`, is under :data:`GATE_REACH`), naming the setting to raise; else None."""
    reach = gate_reach(config)
    if reach is None or reach >= GATE_REACH * (1 - 1e-9):  # the sum's rounding
        return None
    tc = config.train
    peak = _memory_peak(tc)
    rate = f"train.memory_lr={peak:g}" if tc.memory_lr else f"train.lr={peak:g} (train.memory_lr is 0)"
    return (f"model.gate starts closed, and over {tc.steps} steps at {rate} Adam can move it by about "
            f"{reach:.2g} in all, too little to open it: set train.memory_lr to {peak * GATE_REACH / reach:.2g} "
            "or more")


def param_groups(model: nn.Module, weight_decay: float, memory_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters: matrices (and embeddings) decay, vectors (norms,
    biases, gates) do not; the memory's parameters (:func:`is_memory_parameter`) run at
    ``memory_lr_scale`` times the learning rate (each group's ``lr_scale``). Empty groups are left
    out; at scale 1 the memory is not a group of its own (the layout of earlier checkpoints)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    split = memory_lr_scale != 1.0
    groups = []
    for memory in (False, True) if split else (None,):
        for matrix in (True, False):
            params = [p for n, p in named
                      if (memory is None or is_memory_parameter(n) == memory) and (p.ndim >= 2) == matrix]
            if params:
                groups.append({"params": params, "weight_decay": weight_decay if matrix else 0.0,
                               "lr_scale": memory_lr_scale if memory else 1.0})
    return groups


def check_components(config: Config) -> Dataset:
    """The dataset of ``config.data`` (its options checked), after checking that the backbone,
    memory and attention backend of ``config.model`` are registered: what can be refused before
    anything is written."""
    try:
        dataset = get_dataset(config.data.dataset, **config.data.options)
    except KeyError as exc:
        raise ConfigError(f"data.dataset: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"data.options: {exc}") from None
    names = {"model.backbone.name": ("backbone", config.model.backbone["name"]),
             "model.memory.name": ("memory", config.model.memory["name"])}
    if config.model.attention != "auto":
        names["model.attention"] = ("attention", config.model.attention)
    for key, (kind, name) in names.items():
        try:
            manager.registry(kind).get(name)
        except KeyError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    return dataset


def prepare_data(config: Config, dataset: Dataset | None = None) -> Prepared:
    """The prepared splits of ``config.data`` (of ``dataset`` when given: its checked instance)."""
    options = {} if dataset is not None else config.data.options
    try:
        return prepare(dataset or config.data.dataset, validation=config.data.validation, test=config.data.test,
                       seed=config.data.split_seed, **options)
    except ValueError as exc:
        raise ConfigError(f"data: {exc}") from None


def _windows(split: str, make: Callable[[], Any]) -> Any:
    """``make()``, with a split too short for ``data.seq_len`` reported as a ConfigError."""
    try:
        return make()
    except ValueError as exc:
        raise ConfigError(f"data.seq_len: the {split} split has no document long enough: {exc}") from None


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


# --- resuming -------------------------------------------------------------------------------------------


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
    shaping = ("trainable", "lora_rank") if now["train"]["trainable"] == "lora" else ("trainable",)
    for key in ("batch_size", "seed", *shaping):  # trainable (and a LoRA rank) shape the trained tensors
        if saved["train"][key] != now["train"][key]:
            raise CheckpointError(f"cannot resume from {path}: train.{key} was {saved['train'][key]}, "
                                  f"the config says {now['train'][key]}")


def _read_resumable(path: Path) -> Checkpoint:
    """``read_checkpoint(path)``; when it is refused, the message names the newest complete
    checkpoint before it, to resume from instead."""
    try:
        return read_checkpoint(path)
    except CheckpointError as exc:
        if not STEP_DIR.match(path.name):
            raise
        older = newest_complete(path.parent, before=path)
        hint = (f"the newest complete checkpoint before it is {older}: resume from it with --resume {older}"
                if older is not None else "no complete checkpoint comes before it")
        raise CheckpointError(f"{exc}; {hint}") from None


def open_resume(config: Config, resume: bool | str | Path) -> Checkpoint | None:
    """The checkpoint ``--resume`` continues from (None for a fresh run), verified and checked
    against ``config``. A run folder with checkpoints after it is refused: resuming would mix two
    histories in one folder."""
    if resume is False or resume is None:
        return None
    root = config.out_dir / "checkpoints"
    path = latest_checkpoint(root) if resume is True else Path(resume)
    if path is None:
        raise CheckpointError(f"--resume: no checkpoint under {root}")
    ckpt = _read_resumable(path)
    _check_compatible(config, ckpt.config or {}, ckpt.path)
    later = [p.name for p in list_checkpoints(root) if step_of(p) > ckpt.step]
    if later:
        raise CheckpointError(f"cannot resume from step {ckpt.step}: {root} holds later checkpoints "
                              f"({', '.join(later)}); delete them to go back to step {ckpt.step}, or resume from "
                              "the latest")
    return ckpt


# --- the run --------------------------------------------------------------------------------------------


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
    #: what trained: the mode and the trainable and total parameter counts (TrainableSummary.to_dict())
    trainable: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Built:
    """What a run trains on: the model, its tokenizer and the tokenized splits."""

    prepared: Prepared
    model: nn.Module
    tokenizer: Tokenizer
    train: TokenizedSplit
    validation: TokenizedSplit
    trainable: TrainableSummary


def _build(config: Config, dataset: Dataset, ckpt: Checkpoint | None) -> _Built:
    torch.manual_seed(config.train.seed)  # the same initial weights in every process
    prepared = prepare_data(config, dataset)
    tokenizer_json = ckpt.text("tokenizer.json") if ckpt is not None else None
    model, tokenizer = build_model_and_tokenizer(config, prepared, tokenizer_json)
    trainable = apply_trainable(model, config)
    return _Built(prepared, model, tokenizer, prepared.split("train").tokens(tokenizer),
                  prepared.split("validation").tokens(tokenizer), trainable)


class _Trainer:
    """One process's part of a run: the model, optimizer and data, the loop, logs and checkpoints."""

    def __init__(self, config: Config, info: DistInfo, built: _Built, ckpt: Checkpoint | None,
                 on_step: Callable[[int, float], None] | None) -> None:
        self.config, self.info, self.on_step = config, info, on_step
        tc, seq = config.train, config.data.seq_len
        self.share = tc.batch_size // info.world
        self.micro = tc.micro_batch or self.share
        self.model, self.tokenizer = built.model.to(info.device), built.tokenizer
        self.precision = resolve_precision(tc.precision, info.device)
        self.sampler = _windows("train", lambda: WindowSampler(built.train, seq, tc.seed))
        starts = _windows("validation", lambda: eval_starts(built.validation, seq, config.log.eval_windows))
        self.val_windows = gather(built.validation.tokens, starts, seq + 1)
        self.trainable = built.trainable
        memory_lr_scale = tc.memory_lr / tc.lr if tc.memory_lr else 1.0
        self.optimizer = torch.optim.AdamW(param_groups(self.model, tc.weight_decay, memory_lr_scale), lr=tc.lr,
                                           betas=tc.betas)
        if tc.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        # A partial run over pretrained weights stores only what it trains (and the base's SHA-256).
        self.stored = ([n for n, p in self.model.named_parameters() if p.requires_grad]
                       if tc.trainable != "all" and base_sha256(self.model) is not None else None)
        start = 0
        if ckpt is not None:
            ckpt.load_model(self.model)
            ckpt.load_optimizer(self.optimizer)
            restore_rng(ckpt.rng())
            start = ckpt.step
        self.runner: nn.Module = self.model
        if info.active:
            ids = [info.device.index] if info.device.type == "cuda" else None
            self.runner = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if tc.compile:
            self.runner = torch.compile(self.runner)
        self.result = TrainResult(start_step=start, step=start, rank=info.rank, trainable=self.trainable.to_dict())
        self.ckpt_dir = config.out_dir / "checkpoints"
        self.log = (TrainLog(config.out_dir, start if ckpt is not None else None, config.log.tensorboard)
                    if info.main else None)
        self.files = {"tokenizer.json": self.tokenizer.to_json().encode()} if isinstance(self.tokenizer, BPETokenizer) else {}
        self.meta = {"dataset": built.prepared.dataset, "world_size": info.world,
                     "splits": {s: built.prepared.split(s).hash for s in ("train", "validation", "test")},
                     "precision": {"name": self.precision.name, "reason": self.precision.reason},
                     "trainable": self.trainable.to_dict()}
        self.t0 = self.t_log = time.perf_counter()
        self.interval_losses: list[float] = []

    # -- one step --------------------------------------------------------------------------------------

    def step(self, step: int) -> tuple[float, float, float]:
        """Run optimizer step ``step``; returns (global mean loss, gradient norm, learning rate).

        Raises :class:`DivergedError`, before the optimizer applies anything, when the loss or the
        gradient norm is not finite (every process sees the same values)."""
        tc = self.config.train
        lr = lr_at(step, tc.steps, tc.lr, tc.warmup, tc.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        rank = self.info.rank
        rows = self.sampler.batch(step, tc.batch_size)[rank * self.share : (rank + 1) * self.share]  # (share, S+1)
        loss = all_mean(self._accumulate(rows), self.info)
        grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip or float("inf")))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            self._diverged(f"the loss is {loss} and the gradient norm {grad_norm} at step {step}", lr)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, grad_norm, lr

    def _accumulate(self, rows: torch.Tensor) -> float:
        """Forward and backward over this process's ``rows`` (share, S + 1), by micro-batch and
        BPTT segment, gradients accumulated; returns this process's mean loss."""
        seq = self.config.data.seq_len
        segment = self.config.train.bptt or seq
        micro, share = self.micro, self.share
        total = torch.zeros((), dtype=torch.float64)
        passes = [(m, s) for m in range(0, share, micro) for s in range(0, seq, segment)]
        state = None
        for i, (m, s) in enumerate(passes):
            chunk = rows[m : m + micro].to(self.info.device)  # (micro, S + 1)
            x, y = chunk[:, s : s + segment], chunk[:, s + 1 : s + segment + 1]  # (micro, seg)
            if s == 0:
                state = None  # a fresh memory at every window start
            sync = i == len(passes) - 1 or not self.info.active  # DDP all-reduces on the last pass only
            with (nullcontext() if sync else self.runner.no_sync()), autocast(self.info.device, self.precision):
                output = self.runner(x, state=state, shift_labels=y)
                # Equal-length windows: the process's mean is the mean of per-pass means.
                loss = output.loss * (micro * x.shape[1]) / (share * seq)
            loss.backward()
            state = output.state.detach()
            total += loss.detach().double().cpu()
        return float(total)

    def _diverged(self, what: str, lr: float) -> None:
        last = latest_checkpoint(self.ckpt_dir)
        raise DivergedError(f"training diverged: {what} (learning rate {lr:.3g}); stopped without applying or "
                            f"saving it; the last checkpoint is {last or 'none'}")

    # -- saving, validating, logging ---------------------------------------------------------------

    def save(self, step: int) -> None:
        """Checkpoint ``step`` (rank 0) and prune old ones; weights that are not finite are never saved."""
        if self.info.main:
            if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
                self._diverged(f"the weights after step {step} are not finite", self.optimizer.param_groups[0]["lr"])
            path = self.ckpt_dir / f"step_{step:07d}"
            tc = self.config.train
            try:
                save_checkpoint(path, self.model, step=step, config=self.config.to_dict(), optimizer=self.optimizer,
                                rng=capture_rng(), files=self.files,
                                meta=self.meta | {"tokens": step * tc.batch_size * self.config.data.seq_len},
                                tensors=self.stored)
                prune_checkpoints(self.ckpt_dir, self.config.log.keep)
            except OSError as exc:
                raise OutputError(f"cannot write checkpoint {path}: {exc.strerror or exc}; "
                                  f"the last complete checkpoint is {latest_checkpoint(self.ckpt_dir) or 'none'}") from None
            self.result.checkpoint = path
        barrier(self.info)

    def validate(self, step: int) -> None:
        if not self.info.main:  # one process evaluates; the others go on to the next collective call
            return
        scores = evaluate(unwrap(self.model), self.val_windows, tokenizer=self.tokenizer, batch_size=self.micro,
                          precision=self.precision, compare_masked=False)["memory"]
        self.result.evals[step] = scores
        if self.log is not None:
            self.log.write({"step": step, "split": "validation", "loss": f"{scores['loss']:.6f}",
                            "bpb": f"{scores['bpb']:.6f}", "elapsed_s": f"{time.perf_counter() - self.t0:.1f}"})

    def _tokens_per_s(self, now: float) -> float:
        tokens = self.config.train.batch_size * self.config.data.seq_len * len(self.interval_losses)
        return tokens / max(now - self.t_log, 1e-9)

    def _log_train(self, step: int, lr: float, grad_norm: float, now: float) -> None:
        """A training row averaging the steps since the last one, every ``log.log_every`` steps."""
        if self.log is None or not (step % self.config.log.log_every == 0 or step == self.config.train.steps):
            return
        tokens_per_step = self.config.train.batch_size * self.config.data.seq_len
        mean = sum(self.interval_losses) / len(self.interval_losses)
        self.log.write({"step": step, "split": "train", "loss": f"{mean:.6f}", "lr": f"{lr:.6g}",
                        "grad_norm": f"{grad_norm:.4f}", "tokens": step * tokens_per_step,
                        "tokens_per_s": f"{self._tokens_per_s(now):.1f}", "elapsed_s": f"{now - self.t0:.1f}"})
        self.interval_losses, self.t_log = [], now

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        config, result = self.config, self.result
        bar = None
        if self.info.main and config.log.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=config.train.steps, initial=result.start_step, desc=config.name, unit="step",
                       dynamic_ncols=True)
        stop = _StopRequest()
        step = result.start_step
        try:
            with stop.installed():
                self.model.train()
                while step < config.train.steps:
                    step += 1
                    loss, grad_norm, lr = self.step(step)
                    result.losses[step], result.step = loss, step
                    self.interval_losses.append(loss)
                    if self.on_step is not None:
                        self.on_step(step, loss)
                    now = time.perf_counter()
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{self._tokens_per_s(now):,.0f}")
                    self._log_train(step, lr, grad_norm, now)
                    if config.log.eval_every and step % config.log.eval_every == 0 and step < config.train.steps:
                        self.validate(step)
                    stopping = any_true(stop.requested, self.info)
                    if step % config.log.save_every == 0 or step == config.train.steps or stopping:
                        self.save(step)
                    if stopping:
                        result.interrupted = True
                        if self.info.main:
                            if bar is not None:
                                bar.close()  # the message on a line of its own
                            log.warning("train: %s received: stopped after step %d; checkpoint %s; continue with "
                                        "--resume", stop.signal_name or "stop", step, result.checkpoint)
                        break
                if not result.interrupted and step == config.train.steps and step not in result.evals:
                    self.validate(step)
        finally:
            if bar is not None:
                bar.close()
            if self.log is not None:
                self.log.close()
        return result


def train(
    config: Config,
    *,
    resume: bool | str | Path = False,
    overwrite: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Run ``config``; see the module docstring. ``on_step(step, loss)`` is called after each step.

    ``resume``: continue the run's latest checkpoint (``True``) or the one given; ``overwrite``:
    discard what the run folder holds. Without either, a run folder that holds a run is refused
    (:class:`RunFolderError`), before anything is written.
    """
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the folder and --overwrite discards it: give one")
    dataset = check_components(config)
    try:
        info = init_distributed(config.train.device)
    except ValueError as exc:
        raise ConfigError(f"train.device: {exc}") from None
    try:
        result = _train(config, info, dataset, resume, overwrite, on_step)
        barrier(info)  # no rank tears the group down while another is still in a collective or writing
        return result
    finally:
        close_distributed(info)


def _check_batch(config: Config, info: DistInfo) -> None:
    tc = config.train
    if tc.batch_size % info.world:
        raise ConfigError(f"train.batch_size: must be a multiple of the {info.world} processes, got {tc.batch_size}")
    share = tc.batch_size // info.world
    if share % (tc.micro_batch or share):
        raise ConfigError(f"train.micro_batch: must divide the {share} sequences per process, got {tc.micro_batch}")


def _train(config: Config, info: DistInfo, dataset: Dataset, resume: bool | str | Path, overwrite: bool,
           on_step: Callable[[int, float], None] | None) -> TrainResult:
    _check_batch(config, info)
    out = config.out_dir
    main_only(lambda: check_fresh(out, resume=bool(resume), overwrite=overwrite), info)  # before any work
    folder: RunFolder | None = main_only(lambda: claim_run_folder(out, resume=bool(resume), overwrite=overwrite), info)
    started = False
    try:
        ckpt = main_first(lambda: open_resume(config, resume), info)
        # Rank 0 fills the caches (splits, BPE, token arrays) first; the others then only read them.
        built = main_first(lambda: _build(config, dataset, ckpt), info)
        trainer = _Trainer(config, info, built, ckpt, on_step)
        started = True
        if info.main:
            log.info("train: precision %s", trainer.precision)
            log.info("train: %s", trainer.trainable)
            if (warning := gate_warning(config)) is not None:
                log.warning("train: %s", warning)
        return trainer.run()
    finally:
        if folder is not None:
            folder.release(failed=not started)


# --- command line -----------------------------------------------------------------------------------


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default=None, help="experiment TOML (configs/*.toml); default: built-in")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-3 --set model.memory.name=none")
    parser.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                        help="continue from the latest checkpoint of the run (or the one given)")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard the run the folder holds (its checkpoints, log.csv, tensorboard and eval)")
    parser.add_argument("--backbone", metavar="SPEC",
                        help="a registered backbone (tiny), or hf:smollm2 / hf:<model folder> / hf:<file.gguf> "
                             "for a Hugging Face model with its own tokenizer")
    parser.add_argument("--show-config", action="store_true",
                        help="print every config key with its value, default and help, then exit")


def backbone_overrides(spec: str) -> list[str]:
    """``--set`` overrides for ``--backbone SPEC``: ``hf:<model>`` selects the Hugging Face
    backbone on that model (``smollm2``, a folder or a GGUF file) and its own tokenizer."""
    if spec.startswith("hf:"):
        model = spec[3:]
        if not model:
            raise ConfigError("--backbone: hf: needs a model (hf:smollm2, hf:<folder> or hf:<file.gguf>)")
        return [f"model.backbone={{name = \"hf\", model = {json.dumps(model)}}}", 'data.tokenizer="hf"']
    return [f"model.backbone.name={json.dumps(spec)}"]


#: Exit status 2: the input is wrong (config, data, checkpoint, run folder); 1: a fault while running.
INPUT_ERRORS = (ConfigError, CheckpointError, SourceMissingError, RunFolderError)


def _run(args: argparse.Namespace) -> int:
    try:
        overrides = args.set + (backbone_overrides(args.backbone) if args.backbone else [])
        config = load_config(args.config, overrides)
        if args.show_config:
            print(describe_config(config), end="")
            return 0
        result = train(config, resume=args.resume, overwrite=args.overwrite)
    except (*INPUT_ERRORS, OutputError, DivergedError) as exc:
        print(f"memplug train: error: {one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, INPUT_ERRORS) else 1
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
