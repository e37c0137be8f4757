"""memplug demo: fixed steps, a time estimate after the first steps, an optional cap, and a verdict."""

import json

import pytest

from memplug.app import demo
from memplug.app.cli import main
from single_thread import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = demo.Setup(d_model=16, n_layers=2, n_heads=2, block=16, length=128, batch=2, steps=8, order=8, samples=8)


def rows(elastic, masked, oracle):
    return [{"part": "regime", "model": "elastic", "bits": elastic},
            {"part": "regime", "model": "elastic, memory masked at test", "bits": masked},
            {"part": "regime", "model": "oracle: block of 64 alone", "bits": oracle}]


def test_the_verdict_needs_both_margins():
    assert demo.effect(rows(1.7, 3.9, 2.7)).startswith("**Memory effect shown**")
    assert "NOT shown" in demo.effect(rows(2.4, 3.9, 2.7))  # only 0.3 below the block-alone oracle
    assert "NOT shown" in demo.effect(rows(1.7, 2.0, 2.7))  # masking costs only 0.3 bits
    assert demo.effect([{"part": "code", "model": "elastic", "bits": 2.0}]) is None


def test_demo_trains_its_fixed_steps_and_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "REGIME", TINY)
    assert main(["demo", "--parts", "regime", "--out", str(tmp_path), "--no-progress", "--precision", "fp32"]) == 0
    err = capsys.readouterr().err
    assert "precision fp32 (as requested)" in err
    assert "s per step here, about" in err and "min for the rest of the demo" in err
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["precision"]["name"] == "fp32"
    trained = [r for r in report["data"]["rows"] if r.get("steps")]
    assert [r["steps"] for r in trained] == [8, 8]  # both arms, the same fixed steps
    markdown = (tmp_path / "demo.md").read_text()
    assert "Memory effect" in markdown and "8 steps of 2 x 128 tokens" in markdown
    assert (tmp_path / "demo.png").exists()


def test_seconds_caps_training(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "REGIME", demo.Setup(**{**TINY.__dict__, "steps": 10_000}))
    result = demo.run_demo(tmp_path, parts=("regime",), seconds=1.0, progress=False, precision="fp32")
    assert all(r["steps"] < 10_000 for r in result["rows"] if r.get("steps"))


def test_bad_options_are_one_line(capsys, tmp_path):
    assert main(["demo", "--parts", "regime,plots", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "memplug demo: parts must be among regime, code, reconstruct; got ['plots']"
    assert main(["demo", "--seconds", "0", "--out", str(tmp_path)]) == 2
