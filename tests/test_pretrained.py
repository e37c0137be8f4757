"""save_pretrained / from_pretrained on built-in backbones, and loading such folders in
``load_trained`` and ``memplug eval`` (the Hugging Face side is in tests/test_hf.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from train_helpers import make_corpus

import memplug
from memplug.app.build import load_trained
from memplug.app.cli import main
from memplug.core.pretrained import CONFIG_NAME, WEIGHTS_NAME, tensor_digest, tensor_digests, weights_sha256
from memplug.data.tokenizers import BPETokenizer

SMALL = dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1)


def model_with_everything(seed=0):
    """Elastic on the last layer with gate and sink, span previous, a 4-head tiny backbone; the
    gate opened so that a reload that dropped it would show."""
    torch.manual_seed(seed)
    model = memplug.build_model("tiny", "elastic", 16, backbone_options=SMALL, layers=[-1], span="previous",
                                gate=True, sink=1, memory_options=dict(encoder="legt", order=8, samples=8,
                                                                       encoder_options=dict(window=64.0)))
    with torch.no_grad():
        model.attn[1].gate.fill_(0.8)
    return model


def test_round_trip_to_identical_logits(tmp_path):
    model = model_with_everything()
    out = model.save_pretrained(tmp_path / "m")
    record = json.loads((out / CONFIG_NAME).read_text())
    assert record["model"] == {
        "backbone": {"name": "tiny", "vocab_size": 256, "d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1,
                     "ffn_hidden": 128, "ffn_mult": 8 / 3, "rope_theta": 10000.0, "tie_embeddings": True,
                     "norm_eps": 1e-5, "init_std": 0.02},
        "memory": {"name": "elastic", "encoder": "legt", "order": 8, "samples": 8, "encoder_options": {"window": 64.0}},
        "block": 16, "layers": [-1], "span": "previous", "attention": "auto", "gate": True, "sink": 1}
    assert record["tensors"] == "all" and "base_sha256" not in record
    with safe_open(str(out / WEIGHTS_NAME), "pt") as f:
        assert len(f.keys()) == len(model.state_dict()) - 1  # the tied head stored once
    ids = torch.randint(0, 256, (2, 90), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(123)  # another initialisation: everything must come from the folder
    loaded = memplug.from_pretrained(out)
    assert not loaded.training and loaded.attn[1].memory.encoder.window == 64.0
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)
    assert loaded.state_config() == model.state_config()


def test_what_cannot_be_saved_or_loaded_is_refused(tmp_path):
    model = model_with_everything()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a memplug pretrained folder; saving would replace it"):
        model.save_pretrained(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    model.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")  # a save replaces a save
    with pytest.raises(ValueError, match="tensors='changed' stores what differs from a base model"):
        model.save_pretrained(tmp_path / "x", tensors="changed")
    with pytest.raises(ValueError, match="a chosen subset of tensors is stored over a base model"):
        model.save_pretrained(tmp_path / "x", tensors=["attn.1.gate"])
    with pytest.raises(ValueError, match="tensors must be one of"):
        model.save_pretrained(tmp_path / "x", tensors="some")
    factory = memplug.MemoryModel(model.backbone, memory=memplug.make_memory("xl"), block=16)
    with pytest.raises(ValueError, match="given as a XLMemory, whose options cannot be recorded"):
        factory.save_pretrained(tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="is not a memplug pretrained folder"):
        memplug.from_pretrained(tmp_path / "mine")
    weights = tmp_path / "m" / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is corrupted: its SHA-256 does not match"):
        memplug.from_pretrained(tmp_path / "m")


def test_digests_see_bytes_dtype_and_shape():
    t = torch.arange(6, dtype=torch.float32)
    assert tensor_digest(t) == tensor_digest(t.clone())
    view = t.reshape(3, 2).t()  # non-contiguous: hashed by its values, as a copy would be
    assert tensor_digest(view) == tensor_digest(view.contiguous())
    assert tensor_digest(t) != tensor_digest(t.reshape(2, 3))
    assert tensor_digest(t) != tensor_digest(t.double())
    bumped = t.clone()
    bumped[3] += 1e-6
    assert tensor_digest(t) != tensor_digest(bumped)
    tied = torch.zeros(3)
    assert tensor_digests({"a": tied, "b": tied}) == {"a": tensor_digest(tied), "b": tensor_digest(tied)}
    assert weights_sha256({"a": "1", "b": "2"}) != weights_sha256({"a": "2", "b": "1"})


def test_load_trained_and_eval_accept_a_pretrained_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEMPLUG_CACHE", str(tmp_path / "cache"))
    src = make_corpus(tmp_path / "src")
    bpe = BPETokenizer.train([p.read_text() for p in sorted(src.glob("*.py"))], 300)
    torch.manual_seed(0)
    model = memplug.build_model("tiny", "xl", 16, backbone_options=dict(SMALL, vocab_size=300))
    out = model.save_pretrained(tmp_path / "m", tokenizer=bpe)
    loaded, tokenizer, config = load_trained(out)
    assert tokenizer.name == "bpe" and tokenizer.fingerprint == bpe.fingerprint
    assert config.name == "m" and config.model.block == 16 and config.model.memory == {"name": "xl"}
    assert config.data.tokenizer == "bpe"
    ids = torch.randint(0, 300, (1, 40), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)
    byte_level = memplug.build_model("tiny", None, 16, backbone_options=SMALL).save_pretrained(tmp_path / "b")
    assert load_trained(byte_level)[1].name == "byte"  # no tokenizer saved: bytes for a 256-token vocabulary
    args = ["eval", str(out), "--data", "code", "--option", f"root={src}", "--windows", "2", "--seq-len", "64",
            "--out", str(tmp_path / "eval")]
    assert main(args) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "eval" / "m-code-validation.json").read_text())
    assert result["seq_len"] == 64 and result["memory"]["bpb"] > 0
