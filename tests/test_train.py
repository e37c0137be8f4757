"""Training loop: schedule, exact resume, truncated BPTT, faults (memplug.app.train)."""

from __future__ import annotations

import csv
import errno
import itertools
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from train_helpers import make_corpus, set_args, tiny_config, tiny_overrides

from memplug.app import checkpoint as ckpt_module
from memplug.app.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    read_checkpoint,
)
from memplug.app.cli import main
from memplug.app.config import ConfigError
from memplug.app.build import load_trained
from memplug.app.train import OutputError, lr_at, train


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMPLUG_CACHE", str(tmp_path / "cache"))


def _log(config) -> list[dict[str, str]]:
    with open(config.out_dir / "log.csv", newline="") as handle:
        return list(csv.DictReader(handle))


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

    monkeypatch.setattr("memplug.app.train.atomic_write_bytes", read_only)
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


def test_full_disk_is_reported_and_the_last_checkpoint_survives(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, "log.save_every=2", "train.steps=4", "train.warmup=1")
    config.out_dir.mkdir(parents=True)
    os.symlink("/dev/full", config.out_dir / "log.csv")  # every write there fails with ENOSPC, for real
    with pytest.raises(OutputError, match="cannot write the training log .*No space left on device"):
        train(config)
    os.unlink(config.out_dir / "log.csv")

    saves = []
    real = ckpt_module._torch_bytes

    def fill_up(obj):
        saves.append(1)
        if len(saves) > 2:  # the first checkpoint (optimizer + rng) fits, the second does not
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj)

    monkeypatch.setattr(ckpt_module, "_torch_bytes", fill_up)
    with pytest.raises(OutputError, match="step_0000004: No space left on device; the last complete checkpoint is .*step_0000002"):
        train(config)
    assert read_checkpoint(latest_checkpoint(config.out_dir / "checkpoints")).step == 2


def test_kill_during_training_leaves_a_loadable_checkpoint(tmp_path):
    make_corpus(tmp_path / "src")
    sets = set_args(tiny_overrides(tmp_path))
    sets += ["--set", "train.steps=500", "--set", "log.save_every=1"]
    env = {**os.environ, "MEMPLUG_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "memplug", "train", *sets], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    root = tmp_path / "runs" / "t" / "checkpoints"
    try:
        deadline = time.time() + 120
        while len(list_checkpoints(root)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.1)  # into later steps and saves
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    last = latest_checkpoint(root)
    assert last is not None, proc.stderr.read().decode()
    step = read_checkpoint(last).step
    config = tiny_config(tmp_path, f"train.steps={step + 1}")
    result = train(config, resume=True)  # the run picks up where the kill left it
    assert result.start_step == step and sorted(result.losses) == [step + 1]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MEMPLUG_SLOW_TESTS") != "1", reason="torch.compile takes ~20-90 s on 2 CPU cores; "
                    "set MEMPLUG_SLOW_TESTS=1")
def test_compiled_training_matches_eager(tmp_path):
    eager = train(tiny_config(tmp_path, "name=eager", "train.steps=2", "train.warmup=1"))
    compiled = train(tiny_config(tmp_path, "name=compiled", "train.steps=2", "train.warmup=1", "train.compile=true"))
    for step in (1, 2):
        assert compiled.losses[step] == pytest.approx(eager.losses[step], abs=1e-4)


def test_hf_backbone_trains_with_its_own_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    from memplug.app.config import load_config
    from memplug.data.tokenizers import BPETokenizer
    from memplug.app.train import backbone_overrides

    src = make_corpus(tmp_path / "src")
    bpe = BPETokenizer.train([p.read_text() for p in sorted(src.glob("*.py"))], 300)
    llama = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    folder = tmp_path / "llama"
    transformers.LlamaForCausalLM(llama).save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tok).save_pretrained(folder)
    config = load_config(None, [*tiny_overrides(tmp_path), *backbone_overrides(f"hf:{folder}"), "train.steps=2",
                                "train.warmup=1"])
    assert config.model.backbone == {"name": "hf", "model": str(folder)} and config.data.tokenizer == "hf"
    result = train(config)
    assert result.losses[2] < math.log(300) + 1
    _, tokenizer, _ = load_trained(result.checkpoint)
    assert tokenizer.name == "hf" and tokenizer.vocab_size == 300


def test_backbone_flag_names_what_is_allowed():
    from memplug.app.train import backbone_overrides

    with pytest.raises(ConfigError, match="hf: needs a model"):
        backbone_overrides("hf:")
    assert backbone_overrides("tiny") == ['model.backbone.name="tiny"']
