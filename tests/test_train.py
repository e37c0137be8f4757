"""Training loop: schedule, exact resume, truncated BPTT, faults (memplug.app.train)."""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import itertools
import json
import math
import os
import pathlib
import re
import shutil
import stat
import signal
import subprocess
import sys

import pytest
import safetensors.torch
import torch
from train_helpers import (make_corpus, set_args, start_training, tiny_config, tiny_llama_folder, tiny_overrides,
                           wait_for)

from memplug.app.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
)
from memplug.app.cli import main
from memplug.app.config import ConfigError
from memplug.app.build import load_trained
from memplug.app.train import DivergedError, OutputError, RunFolderError, lr_at, train
from memplug.app.train_log import TrainLog


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMPLUG_CACHE", str(tmp_path / "cache"))


def _log(config) -> list[dict[str, str]]:
    with open(config.out_dir / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_gate_that_cannot_open_in_the_run_is_warned_about(tmp_path, caplog):
    """The gate's reach is the sum of the memory's learning rates over the schedule; under 3 the
    run warns once, naming train.memory_lr and a value that reaches 3; the shipped SmolLM2 recipe
    does not warn, and neither does a model without a gate."""
    from memplug.app.config import load_config
    from memplug.app.train import GATE_REACH, gate_reach, gate_warning

    flat = ["model.gate=true", "train.steps=100", "train.lr=0.01", "train.warmup=0", "train.min_lr_ratio=1"]
    assert gate_reach(load_config(None, flat)) == pytest.approx(1.0)  # 100 steps at 0.01
    message = gate_warning(load_config(None, flat))
    assert "train.memory_lr to 0.03 or more" in message and "train.lr=0.01" in message
    assert gate_warning(load_config(None, [*flat, "train.memory_lr=0.03"])) is None  # reach 3: enough
    assert gate_reach(load_config(None, [*flat, "model.gate=false"])) is None
    cosine = load_config(None, ["model.gate=true", "train.steps=100", "train.lr=0.01", "train.warmup=10",
                                "train.min_lr_ratio=0.1"])
    assert 0.5 < gate_reach(cosine) < 0.6  # warm-up and decay: about 0.55 of the peak rate on average
    recipe = load_config(pathlib.Path(__file__).parent.parent / "configs" / "smollm2-retrofit.toml")
    assert gate_reach(recipe) >= GATE_REACH and gate_warning(recipe) is None

    with caplog.at_level("WARNING", logger="memplug.app.train"):
        train(tiny_config(tmp_path, "model.gate=true", "train.steps=2", "train.warmup=1", memory="elastic"))
    warned = [r.getMessage() for r in caplog.records if "model.gate starts closed" in r.getMessage()]
    assert len(warned) == 1 and "train.memory_lr" in warned[0]


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s, 100, 1.0, 10, 0.1) for s in range(1, 101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] == pytest.approx(0.1)
    assert lr_at(55, 100, 1.0, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine


def test_training_lowers_the_loss_and_writes_logs_and_checkpoints(tmp_path):
    config = tiny_config(tmp_path)
    result = train(config)
    assert sorted(result.losses) == [1, 2, 3, 4, 5, 6]
    assert result.losses[6] < result.losses[1]
    rows = _log(config)
    assert [r["step"] for r in rows if r["split"] == "train"] == ["1", "2", "3", "4", "5", "6"]
    assert float(rows[-1]["bpb"]) > 0 and rows[-1]["split"] == "validation"
    assert [p.name for p in list_checkpoints(config.out_dir / "checkpoints")] == ["step_0000003", "step_0000006"]
    meta = read_checkpoint(result.checkpoint).meta
    assert meta["step"] == 6 and meta["dataset"] == "code" and len(meta["splits"]["train"]) == 64
    _, tokenizer, saved = load_trained(result.checkpoint)
    assert saved == config and tokenizer.name == "byte"


def test_resume_after_ctrl_c_gives_the_losses_of_an_uninterrupted_run(tmp_path):
    full = train(tiny_config(tmp_path, "name=full"))

    def ctrl_c(step, loss):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # the handler lets step 4 finish and checkpoint it

    config = tiny_config(tmp_path, "name=cut", "log.save_every=100")
    cut = train(config, on_step=ctrl_c)
    assert cut.interrupted and cut.step == 4 and cut.checkpoint.name == "step_0000004"
    assert read_checkpoint(cut.checkpoint).step == 4
    rest = train(config, resume=True)
    assert rest.start_step == 4 and sorted(rest.losses) == [5, 6]
    for step in (1, 2, 3, 4):
        assert cut.losses[step] == full.losses[step]
    for step in (5, 6):
        assert rest.losses[step] == full.losses[step]  # bit for bit: data order, weights, Adam moments
    assert [r["step"] for r in _log(config) if r["split"] == "train"] == ["1", "2", "3", "4", "5", "6"]


def test_second_ctrl_c_stops_at_once(tmp_path):
    def twice(step, loss):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    config = tiny_config(tmp_path, "log.save_every=100")
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run in a background job
    with pytest.raises(KeyboardInterrupt):
        train(config, on_step=twice)
    assert latest_checkpoint(config.out_dir / "checkpoints") is None  # stopped before any save
    assert signal.getsignal(signal.SIGINT) is before  # handler restored


def test_resume_refuses_a_different_model_or_no_checkpoint(tmp_path):
    config = tiny_config(tmp_path, "train.steps=1", "train.warmup=1")
    with pytest.raises(CheckpointError, match="no checkpoint under"):
        train(config, resume=True)
    train(config)
    with pytest.raises(CheckpointError, match=r"\[model\] differs from the config \(model.backbone.d_model\)"):
        train(tiny_config(tmp_path, "train.steps=1", "train.warmup=1", "model.backbone.d_model=16"), resume=True)
    with pytest.raises(CheckpointError, match=r"train.batch_size was 4, the config says 2"):
        train(tiny_config(tmp_path, "train.steps=1", "train.warmup=1", "train.batch_size=2"), resume=True)


def test_truncated_bptt_carries_the_state_between_segments(tmp_path):
    whole = train(tiny_config(tmp_path, "name=whole", "train.steps=2", "train.warmup=1"))
    segments = train(tiny_config(tmp_path, "name=seg", "train.steps=1", "train.warmup=1", "train.bptt=32"))
    # The xl memory is chunking-invariant: with its state carried, four 32-token segments give the
    # loss of one 128-token pass (step 1: the same initial weights); resetting it per segment
    # would lose the cached previous block at every segment start.
    assert segments.losses[1] == pytest.approx(whole.losses[1], abs=1e-5)
    micro = train(tiny_config(tmp_path, "name=micro", "train.steps=2", "train.warmup=1", "train.micro_batch=1"))
    assert micro.losses[2] == pytest.approx(whole.losses[2], abs=1e-5)  # accumulated gradients == one pass


def test_bf16_autocast_trains(tmp_path):
    result = train(tiny_config(tmp_path, "train.steps=2", "train.warmup=1", "train.precision=bf16"))
    assert all(torch.isfinite(torch.tensor(v)) for v in result.losses.values())


def test_bad_model_options_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="model: .*d_modle"):
        train(tiny_config(tmp_path, "model.backbone.d_modle=3"))
    with pytest.raises(ConfigError, match="model: .*ordr"):
        train(tiny_config(tmp_path, "model.memory.ordr=3", memory="elastic"))
    with pytest.raises(ConfigError, match="model.backbone.vocab_size: must equal the byte tokenizer's 256"):
        train(tiny_config(tmp_path, "model.backbone.vocab_size=100"))
    with pytest.raises(ConfigError, match="train.micro_batch: must divide the 4 sequences"):
        train(tiny_config(tmp_path, "train.micro_batch=3"))


def test_read_only_or_invalid_output_is_reported(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="is not writable: Not a directory"):
        train(tiny_config(tmp_path, f"out='{blocker / 'run'}'"))

    def read_only(path, data):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("memplug.app.run_folder.atomic_write_bytes", read_only)
    with pytest.raises(OutputError, match="is not writable: Read-only file system"):
        train(tiny_config(tmp_path))
    assert main(["train", *set_args(tiny_overrides(tmp_path))]) == 1
    assert "memplug train: error: output directory" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_for_real(tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o500)
    with pytest.raises(OutputError, match="not writable"):
        train(tiny_config(tmp_path, f"out='{tmp_path / 'ro' / 'run'}'"))


def test_full_disk_while_writing_the_log_is_reported(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    os.symlink("/dev/full", out / "log.csv")  # every write there fails with ENOSPC, for real
    with pytest.raises(OutputError, match="cannot write the training log .*No space left on device"):
        TrainLog(out, None, tensorboard=False)


FULL_DISK_AT_STEP_4 = """
import resource, signal, sys
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from train_helpers import tiny_config
from memplug.app.train import OutputError, train

def fill_up(step, loss):
    if step == 3:  # checkpoint 2 is written; from now on no file may grow past 4 kB (a tiny model's weights are ~100 kB)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))

try:
    train(tiny_config(Path(sys.argv[1]), "log.save_every=2", "train.steps=4", "train.warmup=1"), on_step=fill_up)
except OutputError as exc:
    print(exc)
"""


def test_full_disk_while_writing_the_weights_names_the_last_complete_checkpoint(tmp_path):
    make_corpus(tmp_path / "src")
    done = subprocess.run([sys.executable, "-c", FULL_DISK_AT_STEP_4, str(tmp_path), os.path.dirname(__file__)],
                          capture_output=True, text=True, env={**os.environ, "MEMPLUG_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"cannot write checkpoint \S+step_0000004: File too large; the last complete checkpoint is "
                        r"\S+step_0000002\n", done.stdout), done.stdout
    root = tmp_path / "runs" / "t" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step_0000002"]  # nothing half-written left
    assert read_checkpoint(root / "step_0000002").step == 2


def test_kill_while_writing_a_checkpoint_leaves_the_last_one_loadable(tmp_path):
    make_corpus(tmp_path / "src")
    proc = start_training(tmp_path, "train.steps=6", "log.save_every=1", pause_in_save=3,
                          env={"MEMPLUG_CACHE": str(tmp_path / "cache")})
    try:
        wait_for(proc, "saving 3")  # checkpoint 3 is written but not yet in place
    finally:
        proc.kill()
        proc.communicate()
    root = tmp_path / "runs" / "t" / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step_0000001", "step_0000002"]
    assert [p.name.split("-")[0] for p in root.glob(".*")] == [".step_0000003.tmp"]
    result = train(tiny_config(tmp_path), resume=True)  # the run picks up where the kill left it
    assert result.start_step == 2 and sorted(result.losses) == [3, 4, 5, 6]
    assert not list(root.glob(".*"))  # the half-written folder was removed at start-up


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MEMPLUG_SLOW_TESTS") != "1", reason="torch.compile takes ~20-90 s on 2 CPU cores; "
                    "set MEMPLUG_SLOW_TESTS=1")
def test_compiled_training_matches_eager(tmp_path):
    eager = train(tiny_config(tmp_path, "name=eager", "train.steps=2", "train.warmup=1"))
    compiled = train(tiny_config(tmp_path, "name=compiled", "train.steps=2", "train.warmup=1", "train.compile=true"))
    for step in (1, 2):
        assert compiled.losses[step] == pytest.approx(eager.losses[step], abs=1e-4)


def test_hf_backbone_trains_with_its_own_tokenizer(tmp_path):
    pytest.importorskip("transformers")
    from memplug.app.config import load_config
    from memplug.app.train import backbone_overrides

    folder = tiny_llama_folder(tmp_path)
    config = load_config(None, [*tiny_overrides(tmp_path), *backbone_overrides(f"hf:{folder}"), "train.steps=2",
                                "train.warmup=1"])
    assert config.model.backbone == {"name": "hf", "model": str(folder)} and config.data.tokenizer == "hf"
    result = train(config)
    assert abs(result.losses[1] - math.log(300)) < 0.1  # the random model's guess over the HF tokenizer's 300 ids
    _, tokenizer, _ = load_trained(result.checkpoint)
    assert tokenizer.name == "hf" and tokenizer.vocab_size == 300


def test_backbone_flag_names_what_is_allowed():
    from memplug.app.train import backbone_overrides

    with pytest.raises(ConfigError, match="hf: needs a model"):
        backbone_overrides("hf:")
    assert backbone_overrides("tiny") == ['model.backbone.name="tiny"']


# --- nothing lost: the run folder ----------------------------------------------------------------------


def _tree(root) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (what "nothing changed" compares)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused_and_changes_nothing(tmp_path, capsys):
    config = tiny_config(tmp_path, "train.steps=4", "log.save_every=2")
    train(config)
    before = _tree(config.out_dir)
    with pytest.raises(RunFolderError, match=r"runs/t already holds a run \(checkpoints, log.csv\): continue it "
                                             r"with --resume, discard it with --overwrite"):
        train(tiny_config(tmp_path, "train.steps=2", "train.warmup=1", "model.backbone.d_model=16"))
    capsys.readouterr()
    assert main(["train", *set_args(tiny_overrides(tmp_path)), "--set", "train.steps=2", "--set", "train.warmup=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a run" in err
    assert _tree(config.out_dir) == before


def test_overwrite_discards_the_old_run(tmp_path):
    train(tiny_config(tmp_path, "train.steps=6", "log.save_every=2"))
    (tmp_path / "runs" / "t" / "notes.txt").write_text("mine")  # not a run file: kept
    new = train(tiny_config(tmp_path, "train.steps=2", "train.warmup=1", "model.backbone.d_model=16"), overwrite=True)
    root = tmp_path / "runs" / "t" / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step_0000002"] and new.checkpoint == root / "step_0000002"
    assert [r["step"] for r in _log(tiny_config(tmp_path)) if r["split"] == "train"] == ["1", "2"]
    assert (tmp_path / "runs" / "t" / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="--resume continues the run in the folder and --overwrite discards it"):
        train(tiny_config(tmp_path), resume=True, overwrite=True)


def test_a_second_training_in_the_same_folder_stops_and_leaves_the_first_untouched(tmp_path, capsys):
    make_corpus(tmp_path / "src")
    first = start_training(tmp_path, "train.steps=3", "log.save_every=1", pause_after_step=1,
                           env={"MEMPLUG_CACHE": str(tmp_path / "cache")})
    try:
        wait_for(first, "step 1")  # the first training holds the folder and waits
        for flag in ("--resume", "--overwrite"):
            assert main(["train", *set_args(tiny_overrides(tmp_path)), flag]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "is in use by another training" in err, err
        first.stdin.write("\n")
        first.stdin.flush()
        wait_for(first, "done 3")
    finally:
        first.kill()
        first.communicate()
    root = tmp_path / "runs" / "t" / "checkpoints"
    assert [read_checkpoint(p).step for p in list_checkpoints(root)] == [2, 3]
    assert [r["step"] for r in _log(tiny_config(tmp_path)) if r["split"] == "train"] == ["1", "2", "3"]


def test_a_refused_start_leaves_no_folder_behind(tmp_path):
    with pytest.raises(ConfigError, match="model: n_heads must be a positive int, got 0"):
        train(tiny_config(tmp_path, "model.backbone.n_heads=0"))  # refused once the folder is claimed
    assert not (tmp_path / "runs").exists()


def test_created_files_and_folders_follow_the_umask(tmp_path):
    make_corpus(tmp_path / "src")
    old = os.umask(0o022)
    try:
        train(tiny_config(tmp_path, "train.steps=1", "train.warmup=1"))
    finally:
        os.umask(old)
    run = tmp_path / "runs" / "t"
    modes = {str(p.relative_to(run)): stat.S_IMODE(p.stat().st_mode) for p in [run, *run.rglob("*")]}
    assert {k for k, m in modes.items() if m != (0o755 if (run / k).is_dir() else 0o644)} == set(), modes


# --- resuming ------------------------------------------------------------------------------------------


def test_resume_skips_unreadable_rows_of_a_damaged_log(tmp_path, capsys):
    config = tiny_config(tmp_path, "train.steps=4", "log.save_every=2")
    train(config)
    with open(config.out_dir / "log.csv", "ab") as log:
        log.write(b"3,train,nan-ish\n\xff\xfe\x00garbage\n7,train,1.0,,,,,\n4,bogus,1,,,,,,\n5,train,1.0,,0.1,1.0,")
    capsys.readouterr()
    result = train(tiny_config(tmp_path, "train.steps=6", "log.save_every=2"), resume=True)
    assert sorted(result.losses) == [5, 6]
    assert "skipped 5 unreadable lines of the old log" in capsys.readouterr().err
    assert [r["step"] for r in _log(config) if r["split"] == "train"] == ["1", "2", "3", "4", "5", "6"]


def test_a_corrupt_latest_checkpoint_names_the_older_complete_one(tmp_path, capsys):
    config = tiny_config(tmp_path, "train.steps=4", "log.save_every=2")
    train(config)
    root = config.out_dir / "checkpoints"
    weights = root / "step_0000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"step_0000004 is truncated or corrupted: .*; the newest complete "
                                              r"checkpoint before it is \S+step_0000002: resume from it with "
                                              r"--resume \S+step_0000002$"):
        train(config, resume=True)
    capsys.readouterr()
    assert main(["train", *set_args(tiny_overrides(tmp_path)), "--set", "log.save_every=2", "--resume"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    # resuming from the older one while the damaged later one is there mixes two histories: refused
    with pytest.raises(CheckpointError, match=r"holds later checkpoints \(step_0000004\); delete them"):
        train(config, resume=root / "step_0000002")
    shutil.rmtree(root / "step_0000004")
    assert train(tiny_config(tmp_path, "train.steps=4", "log.save_every=2"), resume=root / "step_0000002").step == 4


class Payload:
    """Unpickling it creates ``marker``: what a planted checkpoint file would do with more harmful code."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_resume_refuses_a_planted_payload_in_every_file_without_running_it(tmp_path, capsys):
    config = tiny_config(tmp_path, "train.steps=2", "train.warmup=1", "data.tokenizer=bpe", "data.vocab_size=300")
    checkpoint = train(config).checkpoint
    pristine = _tree(checkpoint)
    marker = tmp_path / "payload-ran"
    buffer = io.BytesIO()
    torch.save({"state": Payload(marker)}, buffer)
    payload = buffer.getvalue()
    assert sorted(pristine) == ["meta.json", "model.safetensors", "optimizer.pt", "rng.pt", "tokenizer.json"]
    for name in pristine:
        for file, data in pristine.items():
            (checkpoint / file).write_bytes(data)
        (checkpoint / name).write_bytes(payload)
        if name != "meta.json":  # whoever can write the folder can fix the hashes too
            meta = json.loads(pristine["meta.json"])
            meta["files"][name] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}
            (checkpoint / "meta.json").write_text(json.dumps(meta))
        with pytest.raises(CheckpointError):
            train(tiny_config(tmp_path, "train.steps=3", "train.warmup=1", "data.tokenizer=bpe",
                              "data.vocab_size=300"), resume=True)
        assert not marker.exists(), name
        capsys.readouterr()
        assert main(["train", *set_args(tiny_overrides(tmp_path)), "--set", "data.tokenizer=bpe", "--set",
                     "data.vocab_size=300", "--resume"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "memplug train: error: " in err and not marker.exists(), (name, err)
    for file, data in pristine.items():
        (checkpoint / file).write_bytes(data)
    resumed = train(tiny_config(tmp_path, "train.steps=3", "train.warmup=1", "data.tokenizer=bpe", "data.vocab_size=300"),
                    resume=True)  # the untouched checkpoint, BPE and all, resumes
    assert sorted(resumed.losses) == [3]


# --- a diverging run -------------------------------------------------------------------------------------


def test_a_diverging_run_stops_and_saves_nothing_of_it(tmp_path, capsys):
    config = tiny_config(tmp_path, "train.lr=1e30", "train.warmup=1", "log.save_every=1")
    with pytest.raises(DivergedError, match=r"training diverged: the loss is \S+ and the gradient norm nan at step "
                                            r"2 .*; stopped without applying or saving it; the last checkpoint is "
                                            r"\S+step_0000001$"):
        train(config)
    root = config.out_dir / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step_0000001"]
    weights = safetensors.torch.load_file(root / "step_0000001" / "model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    capsys.readouterr()
    assert main(["train", *set_args(tiny_overrides(tmp_path)), "--set", "train.lr=1e30", "--set", "train.warmup=1",
                 "--overwrite"]) == 1
    precision, trainable, error = capsys.readouterr().err.splitlines()
    assert precision.startswith("memplug: train: precision") and "parameters trainable (" in trainable
    assert error.startswith("memplug train: error: training diverged")


def test_weights_that_stopped_being_finite_are_never_saved(tmp_path, monkeypatch):
    class Overflowing(torch.optim.AdamW):
        """AdamW whose second update overflows float32 (as a learning rate near its limit can)."""

        updates = 0

        def step(self, closure=None):
            super().step(closure)
            type(self).updates += 1
            if type(self).updates == 2:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].fill_(float("inf"))

    monkeypatch.setattr(torch.optim, "AdamW", Overflowing)
    config = tiny_config(tmp_path, "train.warmup=1", "log.save_every=1")
    with pytest.raises(DivergedError, match="the weights after step 2 are not finite.*the last checkpoint is "
                                            r"\S+step_0000001$"):
        train(config)
    assert [p.name for p in list_checkpoints(config.out_dir / "checkpoints")] == ["step_0000001"]
