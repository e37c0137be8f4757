"""Pretrained folders: what :meth:`MemoryModel.save_pretrained` writes and ``from_pretrained`` reads.

A folder holds::

    memplug_config.json   the format, the model's [model] table (the backbone's name and options,
                          the memory's name and options, block, layers, span, attention, gate,
                          sink), the base weights' SHA-256 when tensors are stored relative to a
                          base, which tensors are stored, the tokenizer's kind
    model.safetensors     the stored tensors, by the MemoryModel's state-dict names
    tokenizer files       when a tokenizer was saved (Hugging Face's files, or a BPE's tokenizer.json)

The one mechanism: :func:`write_pretrained` stores a *given subset* of a model's tensors with
its options, and loading builds the model from the options, checks the base, then loads the
subset over it. A model attached to a Hugging Face model stores only what differs from the base
model (added tensors such as gates, and tensors whose bytes changed), the base being referenced
by name or path and checked by the SHA-256 of its weights; a training run that trains only some
tensors (the memory's, or adapters) stores those by passing their names. A backbone takes part
by giving ``rebuild_options()`` (its options, JSON-ready, for ``make_backbone(name, **options)``)
or an options dataclass (``config_class`` and ``self.config``), and, when its weights come from
elsewhere, ``base_digests`` (the SHA-256 of each weight it was loaded with, by its state-dict
names).

This module never imports the model (the model imports it), so it deals in records and tensors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..util.atomic import atomic_directory

__all__ = [
    "CONFIG_NAME",
    "FORMAT",
    "WEIGHTS_NAME",
    "backbone_table",
    "file_sha256",
    "is_pretrained",
    "load_tokenizer",
    "read_pretrained",
    "read_tensors",
    "select_tensors",
    "tensor_digest",
    "tensor_digests",
    "weights_sha256",
    "write_pretrained",
]

FORMAT = "memplug.pretrained/1"
CONFIG_NAME = "memplug_config.json"
WEIGHTS_NAME = "model.safetensors"
#: What ``tensors=`` may name besides a list of names.
TENSOR_CHOICES = ("auto", "all", "changed")


# --- digests of weights -------------------------------------------------------------------------


def tensor_digest(tensor: Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (equal tensors on any device hash equal)."""
    t = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    digest.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return digest.hexdigest()


def tensor_digests(tensors: Mapping[str, Tensor]) -> dict[str, str]:
    """``{name: tensor_digest(tensor)}``, computing each shared tensor once."""
    seen: dict[tuple[Any, ...], str] = {}
    out = {}
    for name, t in tensors.items():
        key = _identity(t)
        if key not in seen:
            seen[key] = tensor_digest(t)
        out[name] = seen[key]
    return out


def weights_sha256(digests: Mapping[str, str]) -> str:
    """One SHA-256 for a set of named tensor digests (names sorted)."""
    return hashlib.sha256("".join(f"{n} {d}\n" for n, d in sorted(digests.items())).encode()).hexdigest()


def _identity(t: Tensor) -> tuple[Any, ...]:
    """Equal for two names of one tensor (tied weights), different for distinct views."""
    return (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)


# --- what a folder records ----------------------------------------------------------------------


def check_json(what: str, value: Any) -> Any:
    """``value`` if JSON can store it exactly, else a ValueError naming ``what``."""
    try:
        if json.loads(json.dumps(value)) != value:
            raise TypeError("changes in a JSON round trip")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} cannot be recorded in {CONFIG_NAME} ({exc}): {value!r}") from None
    return value


def backbone_table(backbone: Any) -> dict[str, Any]:
    """``{"name": ..., **options}`` that rebuild ``backbone`` with ``make_backbone``."""
    rebuild = getattr(backbone, "rebuild_options", None)
    config_class = getattr(backbone, "config_class", None)
    if callable(rebuild):
        options = rebuild()
    elif config_class is not None and isinstance(getattr(backbone, "config", None), config_class):
        options = dataclasses.asdict(backbone.config)
    else:
        raise ValueError(f"backbone {backbone.name!r} ({type(backbone).__name__}) does not say how to rebuild it: "
                         "give it rebuild_options() or an options dataclass (config_class and self.config)")
    return check_json(f"the options of backbone {backbone.name!r}", {"name": backbone.name, **options})


def select_tensors(
    state: Mapping[str, Tensor], tensors: str | Iterable[str], base: Mapping[str, str] | None
) -> tuple[list[str], str]:
    """The names of ``state`` to store, and how they were chosen (``"all"``, ``"changed"``, ``"chosen"``).

    ``tensors``: ``"all"``; ``"changed"``: names absent from ``base`` (``{name: digest}`` of the
    weights of a base model that can be loaded again, or ``None``) or whose digest differs;
    ``"auto"``: ``"changed"`` when there is a base, else ``"all"``; or the names themselves
    (e.g. the trained ones), which must include every tensor that differs from the base.
    """
    if isinstance(tensors, str):
        if tensors not in TENSOR_CHOICES:
            raise ValueError(f"tensors must be one of {TENSOR_CHOICES} or a list of tensor names, got {tensors!r}")
        if tensors == "auto":
            tensors = "changed" if base is not None else "all"
        if tensors == "all":
            return list(state), "all"
        if base is None:
            raise ValueError("tensors='changed' stores what differs from a base model that can be loaded again by "
                             "name or path; this model's backbone has none: use tensors='all'")
        now = tensor_digests(state)
        return [n for n in state if base.get(n) != now[n]], "changed"
    names = list(tensors)
    unknown = sorted(set(names) - set(state))
    if unknown:
        raise ValueError(f"tensors names {unknown[:5]} that are not in the model's state dict")
    if base is None:
        raise ValueError("a chosen subset of tensors is stored over a base model that can be loaded again by name or "
                         "path; this model's backbone has none, so the rest would be lost: use tensors='all'")
    now = tensor_digests(state)
    chosen = {_identity(state[n]) for n in names}  # a tied tensor is stored under any of its names
    lost = sorted(n for n in state if _identity(state[n]) not in chosen and base.get(n) != now[n])
    if lost:
        raise ValueError(f"tensors leaves out {len(lost)} tensors that differ from the base model ({lost[:3]}...), "
                         "which would be lost: add them, or use tensors='changed'")
    return names, "chosen"


def unique_tensors(tensors: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """CPU copies of ``tensors`` with each shared tensor once, and ``{other name: stored name}``."""
    kept: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple[Any, ...], str] = {}
    for name, t in tensors.items():
        key = _identity(t)
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
            kept[name] = t.detach().to("cpu", copy=True).contiguous()
    return kept, aliases


# --- folders --------------------------------------------------------------------------------------


def is_pretrained(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`write_pretrained`."""
    return (Path(path) / CONFIG_NAME).is_file()


def write_pretrained(
    directory: str | Path,
    record: Mapping[str, Any],
    tensors: Mapping[str, Tensor],
    *,
    tokenizer: Any = None,
    overwrite: bool = False,
) -> Path:
    """Write ``record`` (JSON-ready) and ``tensors`` into ``directory``, atomically.

    Tied tensors are stored once and recorded as aliases. ``tokenizer``: a Hugging Face tokenizer
    (anything with ``save_pretrained``) or a memplug byte or BPE tokenizer. A folder saved
    before is replaced as a whole; any other non-empty folder is refused unless ``overwrite``.
    """
    directory = Path(directory)
    if directory.exists() and not overwrite and not is_pretrained(directory) and (
            not directory.is_dir() or any(directory.iterdir())):
        raise ValueError(f"{directory} exists and is not a memplug pretrained folder; saving would replace it: "
                         "choose a new folder or pass overwrite=True")
    kept, aliases = unique_tensors(tensors)
    with atomic_directory(directory) as tmp:
        save_file(kept, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        kind = _save_tokenizer(tokenizer, tmp)
        full = {**record, "aliases": aliases, "tokenizer": kind, "weights_sha256": file_sha256(tmp / WEIGHTS_NAME)}
        (tmp / CONFIG_NAME).write_text(json.dumps(check_json("the model record", full), indent=1))
    return directory


def read_pretrained(directory: str | Path) -> dict[str, Any]:
    """The record of a folder written by :func:`write_pretrained` (format checked)."""
    path = Path(directory) / CONFIG_NAME
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory} is not a memplug pretrained folder: it has no {CONFIG_NAME}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is corrupted ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} record (format={record.get('format') if isinstance(record, dict) else None!r})")
    return record


def read_tensors(directory: str | Path, record: Mapping[str, Any], device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The stored tensors, aliases included, after checking the weights file's SHA-256."""
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is incomplete: {WEIGHTS_NAME} is missing")
    if file_sha256(path) != record["weights_sha256"]:
        raise ValueError(f"{path} is corrupted: its SHA-256 does not match {CONFIG_NAME}")
    tensors = load_file(str(path), device=str(device))
    return tensors | {alias: tensors[name] for alias, name in record.get("aliases", {}).items()}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- tokenizers -----------------------------------------------------------------------------------


def _save_tokenizer(tokenizer: Any, folder: Path) -> str | None:
    """Write ``tokenizer``'s files into ``folder``; its kind (``"hf"``, ``"bpe"``, ``"byte"``) or None."""
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(folder))
        return "hf"
    kind = getattr(tokenizer, "name", None)
    if kind == "bpe":
        (folder / "tokenizer.json").write_text(tokenizer.to_json())
        return "bpe"
    if kind == "byte":
        return "byte"
    raise ValueError(f"tokenizer must be a Hugging Face tokenizer (with save_pretrained) or a memplug byte or bpe "
                     f"tokenizer, got {type(tokenizer).__name__}")


def load_tokenizer(directory: str | Path, record: Mapping[str, Any]) -> Any:
    """The memplug :class:`~memplug.data.tokenizers.Tokenizer` saved in a folder, or ``None``."""
    from ..data.tokenizers import BPETokenizer, ByteTokenizer, HFTokenizer

    kind = record.get("tokenizer")
    if kind == "hf":
        return HFTokenizer.from_pretrained(directory, local_files_only=True)
    if kind == "bpe":
        return BPETokenizer.load(Path(directory) / "tokenizer.json")
    if kind == "byte":
        return ByteTokenizer()
    return None
