"""Random bad values for every configuration key and numeric command-line option: each is one line
on stderr naming what is wrong, exit status 2, and no file created or changed."""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from train_helpers import make_corpus, set_args, tiny_overrides

from memplug.app.cli import main
from memplug.app.config import DEVICE_PATTERN, Config, _optional
from memplug.core.manager import available

# --- bad values, by the key's declared type and bounds --------------------------------------------------

TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)
NAME = st.from_regex(r"[a-z][a-z0-9_-]{0,11}", fullmatch=True)
NON_NUMBERS = st.one_of(TEXT, st.booleans(), st.lists(st.integers(), max_size=2))


def _keys(cls: type, prefix: str = "") -> list[tuple[str, typing.Any, dict]]:
    """Every key of the config, dotted, with its type and metadata (tables recursed into)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out += _keys(tp, f"{prefix}{f.name}.")
        else:
            out.append((prefix + f.name, tp, f.metadata))
    return out


KEYS = _keys(Config)

#: What the code behind a key accepts, known independently of the bounds the config declares (so
#: a bound dropped from the config is caught): AdamW's betas, NumPy's seeds, the split fractions.
DOMAINS = {
    "train.betas": {"min": 0, "max": 1, "max_open": True},
    "train.seed": {"min": 0},
    "data.split_seed": {"min": 0},
    "data.validation": {"min": 0, "max": 1, "max_open": True},
    "data.test": {"min": 0, "max": 1, "max_open": True},
    "train.min_lr_ratio": {"min": 0, "max": 1},
    "train.lr": {"min": 0, "open": True},
}


def _numbers(tp: typing.Any, meta: dict) -> st.SearchStrategy:
    """Numbers of type ``tp`` outside the bounds in ``meta``, or of the wrong kind."""
    lo, hi = meta.get("min"), meta.get("max")
    wrong = [st.floats(allow_nan=False).filter(lambda x: not x.is_integer()) if tp is int else st.just(math.nan)]
    if tp is float:
        wrong.append(st.sampled_from([math.inf, -math.inf]))
    make = st.integers if tp is int else (lambda **b: st.floats(allow_nan=False, allow_infinity=False, **b))
    if lo is not None:
        wrong.append(make(max_value=lo) if meta.get("open") else make(max_value=lo - 1 if tp is int else lo)
                     .filter(lambda x: x < lo))
    if hi is not None:
        wrong.append(make(min_value=hi).filter(lambda x: x > hi or (meta.get("max_open") and x == hi)))
    return st.one_of(*wrong)


def bad_values(key: str, tp: typing.Any, meta: dict) -> st.SearchStrategy:
    """Values that ``key`` must refuse."""
    if _optional(tp) is not None:  # model.layers: a list of ints, or absent
        return st.one_of(TEXT, st.integers(), st.lists(st.one_of(TEXT, st.floats(allow_nan=False)), min_size=1))
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return st.one_of(TEXT.filter(lambda s: s not in typing.get_args(tp)), st.integers(), st.booleans())
    if origin is tuple:  # train.betas
        in_range = st.floats(0, 0.99)
        return st.one_of(st.lists(in_range, max_size=1), st.lists(in_range, min_size=3, max_size=4),
                         st.tuples(NON_NUMBERS, in_range).map(list), st.tuples(in_range, _numbers(float, meta)).map(list),
                         TEXT, st.floats(0, 0.99))
    if origin is dict:
        if key == "data.options":  # the code dataset takes root only
            return st.one_of(st.integers(), TEXT, st.dictionaries(NAME.filter(lambda k: k != "root"), st.integers(),
                                                                  min_size=1, max_size=2))
        kind = key.rsplit(".", 1)[1]  # model.backbone, model.memory: a table whose name is registered
        return st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2),
                         NAME.filter(lambda n: n not in available(kind)).map(lambda n: {"name": n}))
    if tp is bool:
        return st.one_of(st.integers(), TEXT)
    if tp in (int, float):
        return st.one_of(NON_NUMBERS, _numbers(tp, meta))
    if key == "data.dataset":
        return st.one_of(st.integers(), NAME.filter(lambda n: n not in available("dataset")))
    if key == "train.device":
        return st.one_of(st.integers(), TEXT.filter(lambda s: not DEVICE_PATTERN.match(s)))
    if key == "model.attention":
        return st.one_of(st.integers(), NAME.filter(lambda n: n != "auto" and n not in available("attention")))
    return st.one_of(st.integers(), st.booleans(), st.lists(st.integers(), max_size=2))  # name, out: any non-string


def toml(value: typing.Any) -> str:
    """``value`` as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml(v)}" for k, v in value.items()) + "}"


# --- the check --------------------------------------------------------------------------------------------


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``root``."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMPLUG_CACHE", str(tmp_path / "cache"))
    make_corpus(tmp_path / "src")
    return tmp_path


def refused_in_one_line(run, capsys, workspace: Path) -> str:
    """Run ``run()``; check exit status 2, one line on stderr and nothing written; return the line."""
    before = snapshot(workspace)
    try:
        code = run()
    except SystemExit as exited:  # argparse's refusal
        code = exited.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.endswith("\n"), err
    assert snapshot(workspace) == before
    return err


@pytest.mark.parametrize(("key", "tp", "meta"), KEYS, ids=[k for k, _, _ in KEYS])
@given(data=st.data())
def test_every_config_key_refuses_bad_values(workspace, capsys, key, tp, meta, data):
    value = data.draw(bad_values(key, tp, {**meta, **DOMAINS.get(key, {})}), label=key)
    base = [*tiny_overrides(workspace), "train.steps=2", "train.warmup=1"]
    if data.draw(st.booleans(), label="in a file"):
        config = workspace / "bad.toml"
        config.write_text(f"{key} = {toml(value)}\n")
        rest = [o for o in base if not o.startswith((f"{key}=", f"{key}."))]  # the file's value is the last word
        run = lambda: main(["train", str(config), *set_args(rest)])  # noqa: E731
    else:
        run = lambda: main(["train", *set_args([*base, f"{key}={toml(value)}"])])  # noqa: E731
    err = refused_in_one_line(run, capsys, workspace)
    assert err.startswith("memplug train: error: ") and key.split(".")[-1] in err, err


NUMERIC_OPTIONS = [
    (["eval", "RUN", "--data", "code"], "--windows", 1),
    (["eval", "RUN", "--data", "code"], "--batch-size", 1),
    (["eval", "RUN", "--data", "code"], "--seq-len", 1),
    (["reconstruct"], "--block", 1),
    (["reconstruct"], "--order", 1),
    (["reconstruct"], "--samples", 1),
    (["reconstruct"], "--length", 1),
    (["reconstruct"], "--channel", 0),
    (["data", "prepare", "code"], "--seed", 0),
]


@pytest.mark.parametrize(("command", "option", "least"), NUMERIC_OPTIONS, ids=[f"{c[0]}{o}" for c, o, _ in NUMERIC_OPTIONS])
@given(value=st.one_of(st.integers(max_value=-1), TEXT.filter(lambda s: not s.strip().lstrip("+-").isdigit())))
def test_numeric_options_refuse_bad_values(workspace, capsys, command, option, least, value):
    if isinstance(value, int):
        value = min(value, least - 1)
    args = [str(workspace / "runs" / "t") if a == "RUN" else a for a in command]
    # "--opt=VALUE": a value that starts with "-" is a value here, not another option
    err = refused_in_one_line(lambda: main([*args, f"{option}={value}", "--out", str(workspace / "x.png")]
                                           if command == ["reconstruct"] else [*args, f"{option}={value}"]),
                              capsys, workspace)
    assert f"argument {option}: " in err, err
