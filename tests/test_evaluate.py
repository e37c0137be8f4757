"""Evaluation metrics, memory masking, retriever swaps and the eval command (memplug.app.evaluate)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_helpers import tiny_config

from memplug.app.cli import main
from memplug.app.evaluate import (
    block_bytes,
    evaluate,
    summarize,
    to_markdown,
    token_losses,
)
from memplug.core.model import build_model
from memplug.data.tokenizers import BPETokenizer
from memplug.app.train import train

LN2 = math.log(2)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMPLUG_CACHE", str(tmp_path / "cache"))


def _model(memory="xl", **options):
    torch.manual_seed(0)
    return build_model("tiny", memory=memory, block=8, backbone_options=dict(d_model=32, n_layers=2, n_heads=2),
                       memory_options=options)


def _windows(n=3, t=40):
    return torch.randint(0, 256, (n, t + 1), generator=torch.Generator().manual_seed(1))


def test_summarize_buckets_by_block():
    nll = torch.tensor([[1.0, 1.0, 2.0, 2.0, 3.0], [1.0, 1.0, 2.0, 2.0, 3.0]])  # (N=2, T=5), block 2
    nbytes = np.array([[2, 4, 1], [2, 4, 1]])  # bytes per block: first block 4, later 10
    out = summarize(nll, nbytes, 2)
    assert out["loss"] == pytest.approx(18 / 10) and out["ppl"] == pytest.approx(math.exp(1.8))
    assert out["bpb"] == pytest.approx(18 / (14 * LN2))
    assert out["first_block"]["bpb"] == pytest.approx(4 / (4 * LN2)) and out["first_block"]["tokens"] == 4
    assert out["later_blocks"]["bpb"] == pytest.approx(14 / (10 * LN2)) and out["later_blocks"]["tokens"] == 6
    assert out["per_block_bpb"] == pytest.approx([1 / LN2, 8 / (8 * LN2), 6 / (2 * LN2)])


def test_block_bytes_counts_bpe_bytes():
    text = "alpha beta gamma delta " * 20
    tok = BPETokenizer.train([text], vocab_size=280)
    ids = torch.from_numpy(tok.encode(text).astype(np.int64))[None]  # (1, n)
    per_block = block_bytes(ids, 4, tok)
    assert per_block.sum() == len(text.encode()) - tok.count_bytes(tok.encode(text)[:1])  # targets skip the first
    assert (block_bytes(ids, 4, None) == [[min(4, ids.shape[1] - 1 - 4 * i) for i in range(per_block.shape[1])]]).all()


def test_token_losses_match_cross_entropy_and_keep_the_mode():
    model = _model().train()
    windows = _windows()
    nll = token_losses(model, windows, batch_size=2)
    with torch.no_grad():
        logits = model.eval()(windows[:, :-1]).logits
    model.train()
    expected = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none")
    torch.testing.assert_close(nll, expected)
    assert model.training
    with pytest.raises(ValueError, match=r"windows must be \(N, T \+ 1\)"):
        token_losses(model, windows[:, :1])


def test_masked_memory_is_the_block_local_model_with_the_same_weights():
    model = _model()
    local = _model(memory=None)
    local.load_state_dict(model.state_dict(), strict=False)
    windows = _windows()
    with model.memory_masked():
        masked = token_losses(model, windows)
    assert all(layer.memory is not None for layer in model.attn)  # put back
    torch.testing.assert_close(masked, token_losses(local, windows))
    assert not torch.allclose(token_losses(model, windows)[:, 8:], masked[:, 8:])  # the memory is used


def test_evaluate_reports_gain_and_first_block_is_unaffected():
    model = _model()
    result = evaluate(model, _windows(), block=8)
    assert set(result) >= {"memory", "masked", "gain"}
    assert result["gain"]["all"] == pytest.approx(result["masked"]["bpb"] - result["memory"]["bpb"])
    # Nothing is in memory during the first block: masking it changes nothing there.
    assert result["gain"]["first_block"] == pytest.approx(0.0, abs=1e-6)
    assert result["memory"]["first_block"]["tokens"] == 3 * 8
    text = to_markdown(result, "t")
    assert "| memory masked |" in text and "gain (masked - memory)" in text
    assert "masked" not in evaluate(_model(memory=None), _windows())


def test_retriever_swap_at_evaluation_without_retraining():
    model = _model(memory="elastic", encoder="legs", order=8, retriever="uniform", samples=8)
    windows = _windows(2, 48)
    before = evaluate(model, windows, compare_masked=False)
    swapped = evaluate(model, windows, compare_masked=False, retriever="warped",
                       retriever_options={"samples": 8, "warp": "exponential", "rate": 4.0})
    after = evaluate(model, windows, compare_masked=False)
    assert swapped["retriever"]["name"] == "warped"
    assert swapped["memory"]["later_blocks"]["bpb"] != before["memory"]["later_blocks"]["bpb"]
    assert after["memory"] == before["memory"]  # the original retriever is back


def test_eval_command_writes_json_and_markdown_and_refuses_corruption(tmp_path, capsys):
    config = tiny_config(tmp_path, "train.steps=2", "train.warmup=1")
    result = train(config)
    src = str(tmp_path / "src")
    assert main(["eval", str(config.out_dir), "--data", "code", "--option", f"root={src}", "--windows", "2"]) == 0
    out = config.out_dir / "eval" / "step_0000002-code-validation.json"
    data = json.loads(out.read_text())
    assert data["split_hash"] and data["memory"]["bpb"] > 0 and "gain" in data
    assert out.with_suffix(".md").read_text().startswith("## t step_0000002")
    weights = result.checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    capsys.readouterr()
    assert main(["eval", str(result.checkpoint), "--data", "code", "--option", f"root={src}"]) == 2
    assert "truncated or corrupted" in capsys.readouterr().err
    assert main(["eval", str(result.checkpoint), "--data", "code", "--set", "samples=3"]) == 2
    assert "name the retriever with --retriever" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--windows", "-3"], "argument --windows: value must be a positive int, got -3"),
        (["--windows", "0"], "argument --windows: value must be a positive int, got 0"),
        (["--batch-size", "0"], "argument --batch-size: value must be a positive int, got 0"),
        (["--seq-len", "0"], "argument --seq-len: value must be a positive int, got 0"),
        (["--seq-len", "x"], "argument --seq-len: must be an integer, got 'x'"),
    ],
)
def test_eval_refuses_bad_numbers_in_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exited:
        main(["eval", str(tmp_path), "--data", "code", *args])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err == f"memplug eval: error: {message} (see memplug eval --help)\n"


def test_eval_takes_the_sequence_length_and_window_count_it_is_given(tmp_path, capsys):
    config = tiny_config(tmp_path, "train.steps=1", "train.warmup=1")
    train(config)
    src = str(tmp_path / "src")
    assert main(["eval", str(config.out_dir), "--data", "code", "--option", f"root={src}", "--seq-len", "32",
                 "--windows", "3", "--no-masked"]) == 0
    data = json.loads((config.out_dir / "eval" / "step_0000001-code-validation.json").read_text())
    assert data["seq_len"] == 32 and data["windows"] == 3
    capsys.readouterr()
    for args, message in ((["--seq-len", "100000"], "seq_len=100000 needs documents of at least 100001 tokens"),
                          (["--device", "cuda:7"], "device 'cuda:7'"), (["--option", "bogus=1"], "bad options")):
        assert main(["eval", str(config.out_dir), "--data", "code", "--option", f"root={src}", *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
