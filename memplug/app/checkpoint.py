"""Training checkpoints: one folder per step, complete or absent, verified when read.

Layout of ``<run>/checkpoints/step_0000100/``::

    model.safetensors   weights (safetensors; tied weights stored once); a run that trains only
                        some tensors of a pretrained model stores only those, with the
                        SHA-256 of the base weights they apply to (meta.json: "tensors":
                        "trained", "base_sha256")
    optimizer.pt        optimizer state (torch.save), when given
    rng.pt              Python, NumPy, torch (and CUDA) generator states, as tensors and lists
    meta.json           step, the experiment config, caller metadata, and the size and
                        SHA-256 of every file above; written last

The folder is built under a hidden temporary name and renamed into place (see
:mod:`memplug.util.atomic`), so a kill at any moment leaves the previous checkpoints intact and no
half-written one visible. Reading re-hashes every file: a corrupted or truncated checkpoint is
refused with :class:`CheckpointError` instead of loading garbage.

Nothing in a checkpoint can run code: ``optimizer.pt`` and ``rng.pt`` hold only tensors and plain
values and are read with ``torch.load(weights_only=True)``, which refuses any other pickled
object (the SHA-256 in meta.json cannot vouch for them: it sits in the same folder).
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from ..core.pretrained import file_sha256, weights_sha256
from ..util.atomic import atomic_directory, follow_umask, recover_interrupted

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "capture_rng",
    "latest_checkpoint",
    "list_checkpoints",
    "newest_complete",
    "prune_checkpoints",
    "read_checkpoint",
    "recover_checkpoints",
    "restore_rng",
    "save_checkpoint",
    "step_of",
    "unwrap",
]

FORMAT = 1
STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted or incompatible; the message says which."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def capture_rng() -> dict[str, Any]:
    """Every random generator's state (restored exactly by :func:`restore_rng`), as tensors,
    lists and numbers only, so that it loads with ``torch.load(weights_only=True)``."""
    version, internal, gauss = random.getstate()
    numpy = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key", "pos"}, "has_gauss", "gauss"}
    state = {
        "python": [version, list(internal), gauss],
        "numpy": {"bit_generator": numpy["bit_generator"], "key": numpy["state"]["key"].tolist(),
                  "pos": int(numpy["state"]["pos"]), "has_gauss": int(numpy["has_gauss"]),
                  "gauss": float(numpy["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Set every random generator to a state from :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy = state["numpy"]
    np.random.set_state({"bit_generator": numpy["bit_generator"],
                         "state": {"key": np.array(numpy["key"], dtype=np.uint32), "pos": numpy["pos"]},
                         "has_gauss": numpy["has_gauss"], "gauss": numpy["gauss"]})
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def base_sha256(model: nn.Module) -> str | None:
    """The SHA-256 of the base weights ``model``'s backbone was loaded with (a pretrained model
    loaded by name or path), or None when its weights come from nowhere else (its own init)."""
    digests = getattr(getattr(unwrap(model), "backbone", None), "base_digests", None)
    return None if digests is None else weights_sha256(digests)


def _save_weights(model: nn.Module, path: Path, tensors: list[str] | None = None) -> None:
    """``save_model`` (or the state-dict entries named ``tensors`` only), with the file's
    permissions following the umask (safetensors writes 0600) and its I/O failures (a full disk)
    raised as the ``OSError`` they are: safetensors reports them as
    ``SafetensorError('... I/O error: ... (os error 28)')``."""
    try:
        if tensors is None:
            save_model(unwrap(model), str(path))
        else:
            state = unwrap(model).state_dict()
            save_file({name: state[name].detach().contiguous().cpu() for name in tensors}, str(path))
        follow_umask(path)
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise OSError(f"{path.name}: {exc}") from None
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None


def _load_failure(exc: Exception) -> str:
    """The reason in a ``torch.load(weights_only=True)`` failure, on one line (torch's message is a
    page of advice around the one sentence that says what was found)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n\n|$)", text, re.S)
    reason = found.group(1) if found else (text.strip().splitlines() or [type(exc).__name__])[0]
    return " ".join(reason.split())


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    *,
    step: int,
    config: dict[str, Any] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    rng: dict[str, Any] | None = None,
    files: dict[str, bytes] | None = None,
    meta: dict[str, Any] | None = None,
    tensors: list[str] | None = None,
) -> Path:
    """Write ``directory`` atomically and return it.

    ``files`` are extra named blobs stored and verified like the rest (a trained tokenizer);
    ``meta`` is caller metadata merged into ``meta.json``. ``tensors``: store only these
    state-dict entries (the trained ones) of a model whose backbone has base weights
    (:func:`base_sha256`), recorded so that loading checks the base first. Raises ``OSError``
    when the disk is full or the folder is not writable; the previous contents of ``directory``
    then stay.
    """
    directory = Path(directory)
    partial: dict[str, Any] = {}
    if tensors is not None:
        base = base_sha256(model)
        if base is None:
            raise ValueError("tensors: storing only some tensors needs a backbone loaded from base weights "
                             "(a pretrained model); this one has none to load them over")
        partial = {"tensors": "trained", "base_sha256": base}
    with atomic_directory(directory) as tmp:
        _save_weights(model, tmp / "model.safetensors", tensors)
        blobs = dict(files or {})
        if optimizer is not None:
            blobs["optimizer.pt"] = _torch_bytes(optimizer.state_dict())
        if rng is not None:
            blobs["rng.pt"] = _torch_bytes(rng)
        for name, data in blobs.items():
            (tmp / name).write_bytes(data)
        listing = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in sorted(tmp.iterdir())}
        record = {
            "format": FORMAT,
            "step": step,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
            **(meta or {}),
            **partial,
            "config": config,
            "files": listing,
        }
        (tmp / "meta.json").write_text(json.dumps(record, indent=1))
    return directory


@dataclass
class Checkpoint:
    """A verified checkpoint folder."""

    path: Path
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    @property
    def config(self) -> dict[str, Any] | None:
        return self.meta.get("config")

    def file(self, name: str) -> Path | None:
        return self.path / name if name in self.meta["files"] else None

    def text(self, name: str) -> str | None:
        """The UTF-8 text of file ``name`` (None when the checkpoint has none)."""
        path = self.file(name)
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CheckpointError(f"checkpoint {self.path}: {name} is not UTF-8 text") from None

    @property
    def partial(self) -> bool:
        """Whether only the trained tensors are stored (over base weights loaded elsewhere)."""
        return self.meta.get("tensors") == "trained"

    def load_model(self, model: nn.Module, strict: bool = True) -> None:
        """Load the weights into ``model`` (built from :attr:`config`); shapes must match. A
        :attr:`partial` checkpoint loads its tensors over the model's base weights after checking
        that they are the base it was trained from."""
        path = str(self.path / "model.safetensors")
        try:
            if not self.partial:
                load_model(unwrap(model), path, strict=strict)
                return
            expected, found = self.meta.get("base_sha256"), base_sha256(model)
            if found != expected:
                raise CheckpointError(f"checkpoint {self.path} stores trained tensors over base weights with SHA-256 "
                                      f"{str(expected)[:12]}..., but this model's base has "
                                      f"{found[:12] + '...' if found else 'none'}: load the same base model")
            unexpected = unwrap(model).load_state_dict(load_file(path), strict=False).unexpected_keys
            if unexpected:
                raise CheckpointError(f"checkpoint {self.path} does not fit this model: it holds {sorted(unexpected)[:5]}, "
                                      "which this model does not have")
        except SafetensorError as exc:
            raise CheckpointError(f"checkpoint {self.path}: model.safetensors is not a safetensors file ({exc})") from None
        except RuntimeError as exc:  # torch's message lists every mismatch, one per line
            raise CheckpointError(f"checkpoint {self.path} does not fit this model: {' '.join(str(exc).split())}") from None

    def _load_plain(self, name: str, what: str) -> Any:
        """``torch.load`` of file ``name`` with ``weights_only=True``: tensors and plain values only."""
        path = self.file(name)
        if path is None:
            raise CheckpointError(f"checkpoint {self.path} has no {what}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - untrusted bytes: any failure to read them is a refusal
            raise CheckpointError(f"checkpoint {self.path}: refused to load {name}: it holds something other than "
                                  f"tensors and plain values ({_load_failure(exc)})") from None

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        state = self._load_plain("optimizer.pt", "optimizer state")
        try:
            optimizer.load_state_dict(state)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {self.path}: optimizer.pt does not fit this model ({exc})") from None

    def rng(self) -> dict[str, Any]:
        return self._load_plain("rng.pt", "random-generator state")


def read_checkpoint(path: str | Path, verify: bool = True) -> Checkpoint:
    """Open a checkpoint folder, refusing an incomplete, truncated or corrupted one.

    ``verify`` re-hashes every file against ``meta.json`` (sizes are always checked).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist (expected a folder with meta.json)")
    try:
        meta = json.loads((path / "meta.json").read_text())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} has no meta.json: it is incomplete or not a memplug checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {path}: meta.json is corrupted ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "files" not in meta:
        raise CheckpointError(f"checkpoint {path}: meta.json is not a format-{FORMAT} memplug checkpoint record")
    for name, info in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        size = file.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(
                f"checkpoint {path} is truncated or corrupted: {name} has {size} bytes, meta.json says {info['bytes']}"
            )
        if verify and file_sha256(file) != info["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupted: the SHA-256 of {name} does not match meta.json")
    return Checkpoint(path, meta)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete-looking checkpoint folders under ``root`` (``step_N`` with a meta.json), by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "meta.json").exists()]
    return sorted(found, key=step_of)


def step_of(path: Path) -> int:
    """The step a checkpoint folder's name (``step_0000100``) gives."""
    match = STEP_DIR.match(path.name)
    if match is None:
        raise ValueError(f"not a checkpoint folder name (step_N): {path.name!r}")
    return int(match.group(1))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def newest_complete(root: str | Path, before: Path | None = None) -> Path | None:
    """The newest checkpoint under ``root`` that :func:`read_checkpoint` accepts (older than
    ``before`` when given), or None."""
    found = list_checkpoints(root)
    if before is not None:
        found = [p for p in found if step_of(p) < step_of(before)]
    for path in reversed(found):
        try:
            read_checkpoint(path)
            return path
        except CheckpointError:
            continue
    return None


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def recover_checkpoints(root: str | Path) -> list[Path]:
    """Repair what a killed writer left under ``root``: a checkpoint moved aside while it was
    being replaced goes back into place, half-written folders are deleted; returns the hidden
    entries removed (see :func:`memplug.util.atomic.recover_interrupted`).

    Call only while no other process writes checkpoints there (the trainer holds the run's lock).
    """
    return recover_interrupted(root)
