"""``prepare(NAME)``: a corpus as cached document-level splits, and their token arrays.

Layout of a prepared corpus (``<cache>/data/<name>-<key>/``, written atomically)::

    manifest.json      dataset, options, source, split settings, and per split: its documents
                       (name, group, sha256, byte range), the SHA-256 of its file list, sizes
    train.bin ...      the UTF-8 text of the split's documents, concatenated
    tokens/<tok>/      token arrays per tokenizer, made on first use (<split>.npy + offsets)

``key`` hashes everything that determines the content (dataset, options, source identity,
fractions, seed), so a changed source or setting prepares afresh and never reuses stale splits.
Exact duplicate documents (Milton's copies, empty ``__init__.py`` files) are kept once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..util.atomic import atomic_directory, atomic_write_bytes
from ..core.contracts import Dataset
from ..core.manager import registry
from .cache import cache_dir
from .splits import SPLITS, assign_splits, check_fractions, split_hash
from .tokenizers import TOKENIZERS, BPETokenizer, ByteTokenizer, HFTokenizer, Tokenizer

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "Prepared", "Split", "TokenizedSplit", "get_dataset", "make_tokenizer", "prepare", "train_bpe"]

FORMAT = 1


def get_dataset(name: str | Dataset, **options: Any) -> Dataset:
    """A registered dataset by name (``"literature"``, ``"code"``, ``"pydocs"``, plugins'), or
    a :class:`Dataset` passed through."""
    if isinstance(name, Dataset):
        if options:
            raise ValueError(f"options {sorted(options)} given together with a ready Dataset object")
        return name
    cls = registry("dataset").get(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(f"dataset {name!r}: bad options {sorted(options)}: {exc}") from None


@dataclass(frozen=True)
class TokenizedSplit:
    """A split as one token array: ``tokens[offsets[i]:offsets[i+1]]`` is document ``i``."""

    tokens: np.ndarray  # (total,) uint8 / uint16 / int32
    offsets: np.ndarray  # (documents + 1,) int64

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class Split:
    """One split of a prepared corpus."""

    prepared: Prepared
    name: str

    @property
    def info(self) -> dict[str, Any]:
        return self.prepared.manifest["splits"][self.name]

    @property
    def hash(self) -> str:
        """SHA-256 of this split's file list (names and content hashes)."""
        return self.info["hash"]

    @property
    def documents(self) -> list[dict[str, Any]]:
        return self.info["files"]

    @cached_property
    def _bytes(self) -> np.ndarray:
        path = self.prepared.directory / f"{self.name}.bin"
        if path.stat().st_size == 0:
            return np.zeros(0, np.uint8)
        return np.memmap(path, dtype=np.uint8, mode="r")

    def offsets(self) -> np.ndarray:
        """(documents + 1,) byte offsets of the documents in the split's text."""
        return np.array([0] + [d["end"] for d in self.documents], dtype=np.int64)

    def text(self, index: int) -> str:
        doc = self.documents[index]
        return bytes(self._bytes[doc["start"] : doc["end"]]).decode("utf-8")

    def texts(self) -> list[str]:
        return [self.text(i) for i in range(len(self.documents))]

    def tokens(self, tokenizer: Tokenizer) -> TokenizedSplit:
        """The split tokenized, cached per tokenizer.

        Byte-level tokens are the stored UTF-8 bytes themselves (memory-mapped, no copy).
        """
        if tokenizer.name == "byte":
            return TokenizedSplit(self._bytes, self.offsets())
        folder = self.prepared.directory / "tokens" / tokenizer.fingerprint
        tokens_path, offsets_path = folder / f"{self.name}.npy", folder / f"{self.name}.offsets.npy"
        if not (tokens_path.exists() and offsets_path.exists()):
            encoded = tokenizer.encode_batch(self.texts())
            lengths = np.array([len(e) for e in encoded], dtype=np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            tokens = np.concatenate(encoded).astype(tokenizer.dtype) if encoded else np.zeros(0, tokenizer.dtype)
            for path, array in ((tokens_path, tokens), (offsets_path, offsets)):
                buffer = io.BytesIO()
                np.save(buffer, array)
                atomic_write_bytes(path, buffer.getvalue())
        return TokenizedSplit(np.load(tokens_path, mmap_mode="r"), np.load(offsets_path))


@dataclass(frozen=True)
class Prepared:
    """A prepared corpus on disk: its manifest and its splits."""

    directory: Path
    manifest: dict[str, Any]

    @property
    def dataset(self) -> str:
        return self.manifest["dataset"]

    def split(self, name: str) -> Split:
        if name not in self.manifest["splits"]:
            raise ValueError(f"split must be one of {list(self.manifest['splits'])}, got {name!r}")
        return Split(self, name)

    def summary(self) -> str:
        lines = [f"{self.dataset}: {self.directory}"]
        for name, info in self.manifest["splits"].items():
            lines.append(
                f"  {name:<10} {len(info['files']):>5} documents {info['bytes'] / 1e6:>8.2f} MB  sha256 {info['hash'][:16]}"
            )
        dropped = self.manifest["dropped"]
        lines.append(f"  dropped: {dropped['duplicates']} exact duplicates, {dropped['empty']} empty documents")
        return "\n".join(lines)


def _key(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def prepare(
    dataset: str | Dataset,
    *,
    validation: float = 0.05,
    test: float = 0.05,
    seed: int = 0,
    force: bool = False,
    cache: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> Prepared:
    """Build (or reuse) the document-level splits of ``dataset``.

    ``validation`` and ``test`` are fractions of the groups; ``seed`` picks the partition;
    ``options`` go to the dataset (a source path override). ``progress`` receives the status
    messages (default: this module's logger, at INFO). Raises
    :class:`memplug.data.SourceMissingError` with the fetch command when the source is missing.
    """
    check_fractions(validation, test)
    ds = get_dataset(dataset, **options)
    fields = {
        "format": FORMAT,
        "dataset": ds.name,
        "options": ds.options(),
        "source": ds.source(),
        "validation": validation,
        "test": test,
        "seed": seed,
    }
    root = Path(cache) if cache is not None else cache_dir("data")
    directory = root / f"{ds.name}-{_key(fields)}"
    manifest_path = directory / "manifest.json"
    if manifest_path.exists() and not force:
        return Prepared(directory, json.loads(manifest_path.read_text()))

    say = progress or log.info
    say(f"reading {ds.name} from {fields['source']}")
    docs, seen, dropped = [], set(), {"duplicates": 0, "empty": 0}
    for doc in ds.documents():
        raw = doc.text.encode("utf-8")
        if not raw:
            dropped["empty"] += 1
            continue
        digest = hashlib.sha256(raw).hexdigest()
        if digest in seen:
            dropped["duplicates"] += 1
            continue
        seen.add(digest)
        docs.append((doc, raw, digest))
    if not docs:
        raise ValueError(f"dataset {ds.name!r} has no usable document ({dropped['empty']} empty, "
                         f"{dropped['duplicates']} duplicates) in {fields['source']}")
    names = [d.name for d, _, _ in docs]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset {ds.name!r} yields duplicate document names")
    where = assign_splits([d.group for d, _, _ in docs], validation, test, seed)

    splits: dict[str, dict[str, Any]] = {}
    with atomic_directory(directory) as tmp:
        for split in SPLITS:
            files, position = [], 0
            with open(tmp / f"{split}.bin", "wb") as out:
                for doc, raw, digest in docs:
                    if where[doc.group] != split:
                        continue
                    out.write(raw)
                    files.append({"name": doc.name, "group": doc.group, "sha256": digest,
                                  "start": position, "end": position + len(raw)})
                    position += len(raw)
            splits[split] = {"hash": split_hash((f["name"], f["sha256"]) for f in files), "bytes": position,
                             "files": files}
            say(f"{split}: {len(files)} documents, {position / 1e6:.2f} MB")
        manifest = {**fields, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "dropped": dropped, "splits": splits}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return Prepared(directory, manifest)


def train_bpe(prepared: Prepared, vocab_size: int = 8192) -> BPETokenizer:
    """The BPE of a prepared corpus, trained on its train split once and cached beside it."""
    path = prepared.directory / "tokenizers" / f"bpe-{vocab_size}.json"
    if path.exists():
        return BPETokenizer.load(path)
    tok = BPETokenizer.train(prepared.split("train").texts(), vocab_size)
    tok.save(path)
    return tok


def make_tokenizer(name: str, *, prepared: Prepared | None = None, vocab_size: int = 8192,
                   hf_tokenizer: Any = None, **hf_options: Any) -> Tokenizer:
    """A tokenizer by name.

    - ``"byte"``: :class:`ByteTokenizer`.
    - ``"bpe"``: :func:`train_bpe` on ``prepared``'s train split (needs ``prepared``).
    - ``"hf"``: the backbone's tokenizer: ``hf_tokenizer`` (a transformers tokenizer object), or
      ``HFTokenizer.from_pretrained(**hf_options)`` with ``path`` and loader keywords.
    """
    if name == "byte":
        return ByteTokenizer()
    if name == "bpe":
        if prepared is None:
            raise ValueError("the bpe tokenizer is trained on a corpus: pass prepared=memplug.data.prepare(NAME)")
        return train_bpe(prepared, vocab_size)
    if name == "hf":
        if hf_tokenizer is not None:
            return HFTokenizer(hf_tokenizer)
        if "path" not in hf_options:
            raise ValueError("the hf tokenizer needs hf_tokenizer=<transformers tokenizer> or path=<model folder>")
        return HFTokenizer.from_pretrained(hf_options.pop("path"), **hf_options)
    raise ValueError(f"tokenizer must be one of {list(TOKENIZERS)}, got {name!r}")
