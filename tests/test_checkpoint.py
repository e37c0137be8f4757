"""Atomic, verified checkpoints (memplug.app.checkpoint, memplug.util.atomic)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from memplug.app import checkpoint as ckpt
from memplug.util import atomic as atomic_module
from memplug.util.atomic import atomic_directory, atomic_write_bytes
from memplug.app.checkpoint import (
    CheckpointError,
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    recover_checkpoints,
    restore_rng,
    save_checkpoint,
)


class Tied(nn.Module):
    """Tied input and output embeddings, as the tiny backbone has."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.mid = nn.Linear(8, 8)
        self.out = nn.Linear(8, 16, bias=False)
        self.out.weight = self.emb.weight


def _trained() -> tuple[Tied, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        loss = model.out(model.mid(model.emb(torch.arange(16)))).logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_round_trip_weights_optimizer_rng_and_extra_files(tmp_path):
    model, opt = _trained()
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    rng = capture_rng()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    path = save_checkpoint(tmp_path / "step_0000002", model, step=2, config={"a": 1}, optimizer=opt, rng=rng,
                           files={"tokenizer.json": b"{}"}, meta={"tokens": 10})
    got = read_checkpoint(path)
    assert got.step == 2 and got.config == {"a": 1} and got.meta["tokens"] == 10
    assert got.file("tokenizer.json").read_bytes() == b"{}"
    fresh = Tied()
    got.load_model(fresh)
    assert fresh.out.weight is fresh.emb.weight  # still tied after loading
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    opt2 = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    got.load_optimizer(opt2)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng(got.rng())
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_corrupted_truncated_and_incomplete_checkpoints_are_refused(tmp_path):
    model, _ = _trained()
    path = save_checkpoint(tmp_path / "step_0000001", model, step=1)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit pattern in the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted: the SHA-256 of model.safetensors"):
        read_checkpoint(path)
    weights.write_bytes(bytes(data[:-100]))
    with pytest.raises(CheckpointError, match="truncated or corrupted: model.safetensors has"):
        read_checkpoint(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta.json is corrupted"):
        read_checkpoint(path)
    (path / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="no meta.json: it is incomplete"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "nothing")


def test_wrong_model_is_refused(tmp_path):
    model, _ = _trained()
    path = save_checkpoint(tmp_path / "step_0000001", model, step=1)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        read_checkpoint(path).load_model(nn.Linear(3, 3))


def test_full_disk_during_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = _trained()
    first = save_checkpoint(tmp_path / "step_0000001", model, step=1, optimizer=opt)

    def full(obj):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "_torch_bytes", full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path / "step_0000002", model, step=2, optimizer=opt)
    with pytest.raises(OSError, match="No space left"):  # overwriting an existing step fails cleanly too
        save_checkpoint(first, model, step=1, optimizer=opt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000001"]  # nothing partial, nothing hidden
    assert read_checkpoint(first).step == 1


def test_keyboard_interrupt_inside_atomic_directory(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_directory(tmp_path / "x") as tmp:
        (tmp / "a").write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    atomic_write_bytes(tmp_path / "f.bin", b"abc")
    assert (tmp_path / "f.bin").read_bytes() == b"abc" and len(list(tmp_path.iterdir())) == 1


def test_listing_pruning_and_temporaries(tmp_path):
    model, _ = _trained()
    for step in (3, 10, 7):
        save_checkpoint(tmp_path / f"step_{step:07d}", model, step=step)
    (tmp_path / ".step_0000011.tmp-dead").mkdir()  # what a killed writer leaves
    (tmp_path / "step_0000012").mkdir()  # no meta.json: not listed
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000003", "step_0000007", "step_0000010"]
    assert latest_checkpoint(tmp_path).name == "step_0000010"
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000007", "step_0000010"]
    assert [p.name for p in recover_checkpoints(tmp_path)] == [".step_0000011.tmp-dead"]
    assert latest_checkpoint(tmp_path / "none") is None


# --- nothing in a checkpoint runs code --------------------------------------------------------------


class Payload:
    """A pickle that creates ``marker`` when it is unpickled: what a planted checkpoint file does."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(checkpoint: Path, name: str, data: bytes) -> None:
    """Replace file ``name`` of ``checkpoint`` by ``data`` and fix meta.json's size and hash, as
    someone who can write the folder would: the hash check then passes."""
    (checkpoint / name).write_bytes(data)
    meta = json.loads((checkpoint / "meta.json").read_text())
    meta["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (checkpoint / "meta.json").write_text(json.dumps(meta))


def payload_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"state": Payload(marker)}, buffer)
    return buffer.getvalue()


def test_rng_state_is_plain_data_and_loads_with_weights_only(tmp_path):
    model, opt = _trained()
    path = save_checkpoint(tmp_path / "step_0000001", model, step=1, optimizer=opt, rng=capture_rng())
    rng = torch.load(path / "rng.pt", weights_only=True)
    assert isinstance(rng["python"][1], list) and isinstance(rng["numpy"]["key"], list)
    assert isinstance(rng["torch"], torch.Tensor)


@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt"])
def test_planted_pickle_is_refused_without_running(tmp_path, name):
    model, opt = _trained()
    path = save_checkpoint(tmp_path / "step_0000001", model, step=1, optimizer=opt, rng=capture_rng())
    marker = tmp_path / "payload-ran"
    plant(path, name, payload_bytes(marker))
    ckpt = read_checkpoint(path)  # the hashes match: meta.json cannot vouch for the files
    with pytest.raises(CheckpointError, match=f"refused to load {name}: it holds something other than tensors"):
        ckpt.load_optimizer(torch.optim.AdamW(Tied().parameters())) if name == "optimizer.pt" else ckpt.rng()
    assert not marker.exists()


# --- replacing a checkpoint, killed or failing half-way ----------------------------------------------


def test_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
    model, _ = _trained()
    first = save_checkpoint(tmp_path / "step_0000001", model, step=1, meta={"run": "old"})
    real = os.replace
    calls = []

    def second_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder into place
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(atomic_module.os, "replace", second_fails)
    with pytest.raises(OSError, match="Input/output error"):
        save_checkpoint(first, model, step=1, meta={"run": "new"})
    monkeypatch.undo()
    assert read_checkpoint(first).meta["run"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000001"]


KILL_BETWEEN_RENAMES = """
import os, sys, torch
from memplug.app.checkpoint import save_checkpoint
from memplug.util import atomic
root = sys.argv[1]
model = torch.nn.Linear(4, 4)
save_checkpoint(root + "/step_0000001", model, step=1, meta={"run": "old"})
real = os.replace
def replace(src, dst):
    real(src, dst)
    if ".old-" in str(dst):  # the old folder is now aside and the new one not yet in place
        os._exit(9)
atomic.os.replace = replace
save_checkpoint(root + "/step_0000001", model, step=1, meta={"run": "new"})
"""


def test_kill_between_the_renames_keeps_the_only_complete_copy(tmp_path):
    done = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    assert not (tmp_path / "step_0000001").exists()  # the only complete copy is the one moved aside
    removed = recover_checkpoints(tmp_path)
    assert sorted(p.name.split("-")[0] for p in removed) == [".step_0000001.old", ".step_0000001.tmp"]
    assert read_checkpoint(tmp_path / "step_0000001").meta["run"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000001"]


# --- permissions and full disks --------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_created_files_follow_the_umask(tmp_path, umask):
    model, opt = _trained()
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "step_0000001", model, step=1, optimizer=opt, rng=capture_rng())
        atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
    for file in [*path.iterdir(), tmp_path / "f.bin"]:
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~umask, file.name


FILE_SIZE_LIMIT = """
import resource, signal, sys, torch
from memplug.app.checkpoint import save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, resource.RLIM_INFINITY))
try:
    save_checkpoint(sys.argv[1], torch.nn.Linear(200, 200), step=1)  # 160 kB of weights
except OSError as exc:
    print(type(exc).__name__, exc.errno, exc.strerror)
"""


def test_a_failed_weights_write_is_an_oserror_with_its_errno(tmp_path):
    done = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMIT, str(tmp_path / "step_0000001")],
                          capture_output=True, text=True, check=True)
    assert done.stdout.split(maxsplit=2) == ["OSError", str(errno.EFBIG), "File too large\n"]
    assert list(tmp_path.iterdir()) == []
