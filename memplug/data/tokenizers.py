"""Tokenizers: byte level (the default), a byte-level BPE trained and cached per corpus, and an
adapter around a Hugging Face backbone's own tokenizer.

All three share one small interface (:class:`Tokenizer`): ``encode`` / ``encode_batch`` to NumPy
arrays, ``decode``, ``vocab_size``, ``count_bytes`` (for bits per byte) and a ``fingerprint``
that keys cached token arrays.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..util.atomic import atomic_write_bytes


__all__ = ["TOKENIZERS", "BPETokenizer", "ByteTokenizer", "HFTokenizer", "Tokenizer"]

TOKENIZERS = ("byte", "bpe", "hf")


def _require_tokenizers() -> None:
    try:
        import tokenizers  # noqa: F401
    except ImportError as exc:
        raise ImportError("the bpe tokenizer needs the tokenizers package: pip install tokenizers") from exc


class Tokenizer(abc.ABC):
    """Text <-> token ids."""

    #: "byte", "bpe" or "hf".
    name: str
    vocab_size: int

    @property
    def dtype(self) -> np.dtype:
        """The smallest unsigned dtype that holds every id (token arrays are stored in it)."""
        return np.dtype(np.uint8 if self.vocab_size <= 256 else np.uint16 if self.vocab_size <= 65536 else np.int32)

    @property
    @abc.abstractmethod
    def fingerprint(self) -> str:
        """A short string that changes whenever the text -> ids mapping changes."""

    @abc.abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """(n,) token ids of ``text``."""

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(t) for t in texts]

    @abc.abstractmethod
    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text of ``ids``."""

    def count_bytes(self, ids: np.ndarray) -> int:
        """UTF-8 bytes that ``ids`` stand for (the denominator of bits per byte)."""
        return len(self.decode(ids).encode("utf-8"))


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as tokens: vocabulary 256, no files, 1 token = 1 byte."""

    name = "byte"
    vocab_size = 256

    @property
    def fingerprint(self) -> str:
        return "byte"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return bytes(np.asarray(ids, dtype=np.uint8).tolist()).decode("utf-8", errors="replace")

    def count_bytes(self, ids: np.ndarray) -> int:
        return int(np.asarray(ids).size)


class BPETokenizer(Tokenizer):
    """A byte-level BPE (GPT-2 style pre-tokenisation) from the ``tokenizers`` library.

    Byte level means every string is encodable (no unknown token) and every token stands for
    a fixed byte string, so bytes per token come from a table, not from decoding.
    """

    name = "bpe"

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        # Byte-level BPE writes each byte as one character, so a token's length is its byte count.
        self._bytes = np.array([len(tokenizer.id_to_token(i)) for i in range(self.vocab_size)], dtype=np.int64)
        self._fingerprint = f"bpe-{self.vocab_size}-{hashlib.sha256(tokenizer.to_str().encode()).hexdigest()[:12]}"

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int = 8192) -> BPETokenizer:
        """Train on ``texts``; ``vocab_size`` includes the 256 byte tokens."""
        _require_tokenizers()
        from tokenizers import Tokenizer as HFTok
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size <= 256:
            raise ValueError(f"vocab_size must exceed the 256 byte tokens, got {vocab_size}")
        tok = HFTok(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=[], show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
        return cls(tok)

    @classmethod
    def from_json(cls, text: str) -> BPETokenizer:
        _require_tokenizers()
        from tokenizers import Tokenizer as HFTok

        return cls(HFTok.from_str(text))

    def to_json(self) -> str:
        return self._tok.to_str()

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        return cls.from_json(Path(path).read_text())

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(path, self.to_json().encode())

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text).ids, dtype=self.dtype)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=self.dtype) for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._tok.decode(np.asarray(ids).tolist())

    def count_bytes(self, ids: np.ndarray) -> int:
        return int(self._bytes[np.asarray(ids, dtype=np.int64)].sum())


class HFTokenizer(Tokenizer):
    """Adapter around a ``transformers`` tokenizer (a pretrained backbone's own vocabulary).

    ``transformers`` is the optional extra ``memplug[hf]``, imported only here. No special
    tokens are added: the corpora are long documents, not chat turns.
    """

    name = "hf"

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self.vocab_size = len(tokenizer)
        vocab = json.dumps(sorted(tokenizer.get_vocab().items()))
        self._fingerprint = f"hf-{self.vocab_size}-{hashlib.sha256(vocab.encode()).hexdigest()[:12]}"

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> HFTokenizer:
        """``AutoTokenizer.from_pretrained(path, **kwargs)`` (e.g. ``gguf_file=...``)."""
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise ImportError("the hf tokenizer needs transformers: pip install 'memplug[hf]'") from exc
        return cls(AutoTokenizer.from_pretrained(str(path), **kwargs))

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False), dtype=self.dtype)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        out = self._tok(list(texts), add_special_tokens=False)["input_ids"]
        return [np.asarray(ids, dtype=self.dtype) for ids in out]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        return self._tok.decode(np.asarray(ids).tolist())
