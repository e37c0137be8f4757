"""``memplug reconstruct``, run small: the figure, the error table, the Python function."""

from __future__ import annotations

import pytest
import torch

from memplug.app import cli
from memplug.app.reconstruct import ENCODERS, RETRIEVERS, byte_signal, reconstruct, synthetic_signal

SMALL = dict(order=32, samples=8, length=512, block=128)


def test_function_writes_png_and_returns_errors(tmp_path):
    out = tmp_path / "fig" / "r.png"
    results = reconstruct(out=out, **SMALL)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert [(r.signal, r.encoder) for r in results] == [(s, e) for s in ("synthetic", "os.py") for e in ENCODERS]
    by = {(r.signal, r.encoder): r for r in results}
    # measured at this size: legs 5e-4, jacobi 7e-4, legt 3.5e-4, fout 3.2e-2 (Gibbs)
    for name in ("legs", "jacobi", "legt"):
        assert by["synthetic", name].error < 2e-3
        assert all(e < 5e-3 for e in by["synthetic", name].sample_errors.values())
    assert by["synthetic", "fout"].error < 0.1
    assert by["synthetic", "legt"].support == (384.0, 512.0) and by["synthetic", "legs"].support == (0.0, 512.0)
    for r in results:
        assert set(r.sample_errors) == set(RETRIEVERS)
        # raw byte embeddings are rough at every scale: an N = 32 state keeps only their trend
        if r.signal == "os.py":
            assert 0.3 < r.error < 1.5


def test_cli_prints_table_for_a_given_file(tmp_path, capsys):
    source = tmp_path / "source.py"
    source.write_text("def f(x):\n    return x + 1\n" * 40)
    out = tmp_path / "cli.png"
    code = cli.main(["reconstruct", "--file", str(source), "--encoders", "legs,legt", "--retrievers", "uniform",
                     "--order", "16", "--samples", "4", "--length", "300", "--out", str(out)])
    assert code == 0 and out.exists()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["signal", "encoder", "support", "error", "@uniform"]
    assert [line.split()[:2] for line in lines[1:5]] == [
        ["synthetic", "legs"], ["synthetic", "legt"], ["source.py", "legs"], ["source.py", "legt"]]
    assert lines[-1] == f"wrote {out}"


def test_signals():
    x = synthetic_signal(1000, seed=3)
    assert x.shape == (1000,) and x.dtype == torch.float64
    assert torch.equal(x, synthetic_signal(1000, seed=3)) and not torch.equal(x, synthetic_signal(1000, seed=4))


def test_byte_signal(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"abca")
    x = byte_signal(path, length=100, channel=2)
    assert x.shape == (4,) and x[0] == x[3] and x[0] != x[1]
    assert torch.equal(x, byte_signal(path, length=100, channel=2))
    with pytest.raises(ValueError, match="channel"):
        byte_signal(path, length=10, channel=16)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        byte_signal(tmp_path / "empty", length=10)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--block", "0"], "argument --block: value must be a positive int, got 0"),
        (["--order", "-1"], "argument --order: value must be a positive int, got -1"),
        (["--window", "0"], "argument --window: must be a number > 0, got '0'"),
        (["--channel", "16"], "channel must be in [0, 16), got 16"),
        (["--length", "1"], "length must be an int >= 2 (tokens), got 1"),
        (["--file", "/nonexistent/source.py"], "file '/nonexistent/source.py' is not a file"),
        (["--encoders", "legs,nope"], "unknown encoder 'nope'; available: fout"),
        (["--retrievers", "nope"], "unknown retriever 'nope'; available:"),
        (["--encoders", ","], "encoders must name at least one encoder"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "r.png"
    try:
        code = cli.main(["reconstruct", "--length", "64", "--order", "8", "--samples", "4", "--out", str(out), *args])
    except SystemExit as exited:  # argparse refused the value
        code = exited.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_function_refuses_a_zero_block():
    with pytest.raises(ValueError, match="block must be a positive int, got 0"):
        reconstruct(out=None, **{**SMALL, "block": 0})
