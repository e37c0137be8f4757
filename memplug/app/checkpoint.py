"""Training checkpoints: one folder per step, complete or absent, verified when read.

Layout of ``<run>/checkpoints/step_0000100/``::

    model.safetensors   weights (safetensors; tied weights stored once)
    optimizer.pt        optimizer state (torch.save), when given
    rng.pt              Python, NumPy, torch (and CUDA) generator states
    meta.json           step, the experiment config, caller metadata, and the size and
                        SHA-256 of every file above; written last

The folder is built under a hidden temporary name and renamed into place (see
:mod:`memplug.util.atomic`), so a kill at any moment leaves the previous checkpoints intact and no
half-written one visible. Reading re-hashes every file: a corrupted or truncated checkpoint is
refused with :class:`CheckpointError` instead of loading garbage.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model
from torch import nn

from ..util.atomic import atomic_directory

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "capture_rng",
    "latest_checkpoint",
    "list_checkpoints",
    "prune_checkpoints",
    "read_checkpoint",
    "remove_temporaries",
    "restore_rng",
    "save_checkpoint",
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
    """Every random generator's state (restored exactly by :func:`restore_rng`)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


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
) -> Path:
    """Write ``directory`` atomically and return it.

    ``files`` are extra named blobs stored and verified like the rest (a trained tokenizer);
    ``meta`` is caller metadata merged into ``meta.json``. Raises ``OSError`` when the disk is
    full or the folder is not writable; the previous contents of ``directory`` then stay.
    """
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        save_model(unwrap(model), str(tmp / "model.safetensors"))
        blobs = dict(files or {})
        if optimizer is not None:
            blobs["optimizer.pt"] = _torch_bytes(optimizer.state_dict())
        if rng is not None:
            blobs["rng.pt"] = _torch_bytes(rng)
        for name, data in blobs.items():
            (tmp / name).write_bytes(data)
        listing = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir())}
        record = {
            "format": FORMAT,
            "step": step,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "torch": torch.__version__,
            **(meta or {}),
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

    def load_model(self, model: nn.Module, strict: bool = True) -> None:
        """Load the weights into ``model`` (built from :attr:`config`); shapes must match."""
        try:
            load_model(unwrap(model), str(self.path / "model.safetensors"), strict=strict)
        except RuntimeError as exc:
            raise CheckpointError(f"checkpoint {self.path} does not fit this model: {exc}") from None

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        path = self.file("optimizer.pt")
        if path is None:
            raise CheckpointError(f"checkpoint {self.path} has no optimizer state")
        optimizer.load_state_dict(torch.load(path, map_location="cpu", weights_only=False))

    def rng(self) -> dict[str, Any]:
        path = self.file("rng.pt")
        if path is None:
            raise CheckpointError(f"checkpoint {self.path} has no random-generator state")
        return torch.load(path, map_location="cpu", weights_only=False)


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
        if verify and _sha256(file) != info["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupted: the SHA-256 of {name} does not match meta.json")
    return Checkpoint(path, meta)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete-looking checkpoint folders under ``root`` (``step_N`` with a meta.json), by step."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and (p / "meta.json").exists()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def remove_temporaries(root: str | Path) -> list[Path]:
    """Delete the hidden half-written folders a killed writer left under ``root``; returns them.

    Call only when no other process writes checkpoints there (the trainer does, at start-up).
    """
    root = Path(root)
    stale = [p for p in root.glob(".step_*") if p.is_dir()] if root.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale
