"""Two DDP processes (torchrun, gloo on CPU) train like one process on the same global batch."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import pytest
from train_helpers import make_corpus, set_args, tiny_config, tiny_overrides

from memplug.app.train import train


TEARDOWN_ABORT = "terminate called without an active exception"


def _train_losses(path) -> dict[int, float]:
    with open(path, newline="") as handle:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(handle) if r["split"] == "train"}


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
                    reason="torchrun not installed")
def test_two_processes_match_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMPLUG_CACHE", str(tmp_path / "cache"))
    make_corpus(tmp_path / "src")
    extra = ["train.steps=3", "train.warmup=1", "train.micro_batch=1"]
    one = train(tiny_config(tmp_path, "name=one", *extra))
    sets = set_args([*tiny_overrides(tmp_path), "name=two", *extra])
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(2):
        proc = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "memplug", "train", *sets],
                              env=env, capture_output=True, text=True, timeout=300, check=False)
        # with torch 2.14 a rank sometimes aborts on its way out, after rank 0 finished training
        # (seen on a loaded 2-core machine, not with torch 2.13); one fresh retry for that crash
        # alone, any other failure fails at once
        finished_then_aborted = TEARDOWN_ABORT in proc.stderr and "trained to step 3" in proc.stderr
        if proc.returncode == 0 or attempt or not finished_then_aborted:
            break
        shutil.rmtree(tmp_path / "runs" / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = _train_losses(tmp_path / "runs" / "two" / "log.csv")
    assert sorted(two) == [1, 2, 3]
    for step, loss in two.items():
        assert loss == pytest.approx(one.losses[step], abs=1e-5)  # the log keeps 6 decimals
    meta = (tmp_path / "runs" / "two" / "checkpoints" / "step_0000003" / "meta.json").read_text()
    assert '"world_size": 2' in meta
