"""Byte, BPE and Hugging Face tokenizers (memplug.data.tokenizers)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from memplug.data import Dataset, Document, prepare
from memplug.data.prepare import make_tokenizer, train_bpe
from memplug.data.tokenizers import BPETokenizer, ByteTokenizer, HFTokenizer

TEXTS = [
    "def f(x):\n    return x + 1\n" * 20,
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 10,
    "Ünïcödé — ½ 🙂 text " * 15,
] * 2


class Small(Dataset):
    name = "small-test"

    def source(self) -> str:
        return "small"

    def documents(self):
        for i, text in enumerate(TEXTS * 2):
            yield Document(f"d{i}", f"d{i}", text + str(i))


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer.train(TEXTS, vocab_size=320)


@given(st.text(max_size=200))
def test_byte_round_trip_and_counts(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.uint8 and tok.vocab_size == 256
    assert tok.decode(ids) == text
    assert tok.count_bytes(ids) == len(text.encode("utf-8"))


@given(st.text(max_size=200))
def test_bpe_round_trip_and_byte_counts(bpe, text):
    ids = bpe.encode(text)
    assert ids.max(initial=0) < bpe.vocab_size
    assert bpe.decode(ids) == text  # byte level: every string encodes, no unknown token
    assert bpe.count_bytes(ids) == len(text.encode("utf-8"))


def test_bpe_compresses_and_rejects_tiny_vocab(bpe):
    assert bpe.vocab_size == 320 and bpe.dtype == np.uint16
    assert len(bpe.encode(TEXTS[0])) < len(TEXTS[0]) / 2
    with pytest.raises(ValueError, match="vocab_size must exceed the 256 byte tokens"):
        BPETokenizer.train(TEXTS, vocab_size=100)


def test_bpe_is_cached_with_the_corpus_and_tokens_too(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMPLUG_CACHE", str(tmp_path))
    prepared = prepare(Small(), validation=0.2, test=0.2)
    tok = train_bpe(prepared, 300)
    assert (prepared.directory / "tokenizers" / "bpe-300.json").exists()
    again = make_tokenizer("bpe", prepared=prepared, vocab_size=300)
    assert again.fingerprint == tok.fingerprint
    split = prepared.split("validation")
    data = split.tokens(tok)
    assert data.tokens.dtype == np.uint16 and len(data.offsets) == len(split.documents) + 1
    for i in range(len(split.documents)):
        assert tok.decode(data.tokens[data.offsets[i] : data.offsets[i + 1]]) == split.text(i)
    assert (prepared.directory / "tokens" / tok.fingerprint / "validation.npy").exists()
    byte = split.tokens(ByteTokenizer())
    assert bytes(byte.tokens) == "".join(split.texts()).encode()


def test_hf_adapter_wraps_a_transformers_tokenizer(bpe):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tok)
    tok = make_tokenizer("hf", hf_tokenizer=hf)
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 320
    text = TEXTS[1]
    assert tok.encode(text).tolist() == bpe.encode(text).tolist()
    assert [a.tolist() for a in tok.encode_batch([text, "x"])] == [bpe.encode(text).tolist(), [bpe.encode("x")[0]]]
    assert tok.decode(tok.encode(text)) == text
    assert tok.count_bytes(tok.encode(text)) == len(text.encode())
    assert tok.fingerprint.startswith("hf-320-")


def test_make_tokenizer_errors():
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        make_tokenizer("words")
    with pytest.raises(ValueError, match="prepared="):
        make_tokenizer("bpe")
    with pytest.raises(ValueError, match="path=<model folder>"):
        make_tokenizer("hf")
