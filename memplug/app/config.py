"""Experiment configuration: a TOML file per experiment (``configs/*.toml``), ``--set`` overrides,
validated into dataclasses.

Every error names the key and what is allowed::

    train.lr: must be a number > 0, got 'fast' (str)
    train.lrr: unknown key; allowed keys in [train]: batch_size, bptt, ...

The ``[model]`` table holds the layers' options (``block``, ``layers``, ``span``, ``gate``,
``sink``, ...) and two tables passed to their components as they are: ``[model.backbone]``
(``name`` and the backbone's options) and ``[model.memory]`` (``name`` and the memory's options);
the component names a bad option when the model is built. An old flat ``[model]`` table is
migrated with a message.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli is the same parser under its PyPI name
    import tomli as tomllib

logger = logging.getLogger("memplug")

__all__ = [
    "Config",
    "ModelConfig",
    "ConfigError",
    "DataConfig",
    "LogConfig",
    "TrainConfig",
    "DEVICE_PATTERN",
    "apply_overrides",
    "describe_config",
    "load_config",
    "parse_value",
]

#: The largest float32: a learning rate above it overflows in the optimizer's float32 update.
FLOAT32_MAX = 3.4028234663852886e38
#: The spellings of ``train.device`` (whether the device is present is checked when training starts).
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type; the message names the key."""


def _meta(help: str, lo: float | None = None, lo_open: bool = False, hi: float | None = None,
          hi_open: bool = False) -> dict[str, Any]:
    """A field's help and bounds: ``lo`` (exclusive when ``lo_open``) <= value <= ``hi`` (exclusive
    when ``hi_open``); a list or tuple field's bounds apply to each element."""
    return {"help": help, "min": lo, "open": lo_open, "max": hi, "max_open": hi_open}


@dataclass
class DataConfig:
    """What the model reads."""

    dataset: str = field(default="code", metadata=_meta("registered dataset name (memplug data list)"))
    tokenizer: Literal["byte", "bpe", "hf"] = field(default="byte", metadata=_meta("byte, bpe or hf (the backbone's)"))
    vocab_size: int = field(default=8192, metadata=_meta("BPE vocabulary (bpe only)", 257))
    seq_len: int = field(default=8192, metadata=_meta("tokens per training sequence", 2))
    validation: float = field(default=0.05, metadata=_meta("fraction of groups for validation", 0, hi=1, hi_open=True))
    test: float = field(default=0.05, metadata=_meta("fraction of groups for test", 0, hi=1, hi_open=True))
    split_seed: int = field(default=0, metadata=_meta("seed of the document partition", 0))
    options: dict[str, Any] = field(default_factory=dict, metadata=_meta("dataset options (a source path)"))


@dataclass
class TrainConfig:
    """Optimisation."""

    steps: int = field(default=200, metadata=_meta("optimizer steps", 1))
    batch_size: int = field(default=8, metadata=_meta("sequences per step, over all processes", 1))
    micro_batch: int = field(default=0, metadata=_meta("sequences per forward pass (0: a process's whole share)", 0))
    lr: float = field(default=2e-3, metadata=_meta("peak learning rate", 0, True, FLOAT32_MAX))
    min_lr_ratio: float = field(default=0.1, metadata=_meta("final learning rate / peak", 0, hi=1))
    warmup: int = field(default=20, metadata=_meta("linear warm-up steps", 0))
    weight_decay: float = field(default=0.1, metadata=_meta("AdamW decoupled weight decay (matrices only)", 0))
    betas: tuple[float, float] = field(default=(0.9, 0.95), metadata=_meta("AdamW betas", 0, hi=1, hi_open=True))
    grad_clip: float = field(default=1.0, metadata=_meta("gradient norm clip (0: off)", 0))
    precision: Literal["auto", "bf16", "fp32"] = field(
        default="auto", metadata=_meta("bf16 autocast or float32; auto: bf16 where the device computes it fast"))
    compile: bool = field(default=False, metadata=_meta("torch.compile the model"))
    bptt: int = field(default=0, metadata=_meta("truncated-BPTT segment in tokens (0: whole sequence)", 0))
    trainable: Literal["all", "memory", "lora"] = field(
        default="all", metadata=_meta("what trains: all; memory (gates, sample positions, offsets, a memory's own "
                                      "weights); lora (LoRA adapters on the attention projections + memory)"))
    lora_rank: int = field(default=8, metadata=_meta("LoRA rank (trainable = lora)", 1))
    lora_alpha: float = field(default=16.0, metadata=_meta("LoRA alpha; the adapters scale by alpha / rank", 0, True))
    memory_lr: float = field(
        default=0.0, metadata=_meta("peak learning rate of the memory parameters (0: train.lr)", 0, hi=FLOAT32_MAX))
    gradient_checkpointing: bool = field(
        default=False, metadata=_meta("recompute each layer in the backward pass (less memory, ~1/3 more compute)"))
    seed: int = field(default=0, metadata=_meta("seed of initialisation and data order", 0))
    device: str = field(default="auto", metadata=_meta("auto, cpu, cuda or cuda:N"))


@dataclass
class LogConfig:
    """Logging, evaluation and checkpoints."""

    log_every: int = field(default=10, metadata=_meta("steps between log lines", 1))
    eval_every: int = field(default=0, metadata=_meta("steps between validation runs (0: at the end only)", 0))
    eval_windows: int = field(default=8, metadata=_meta("validation windows per evaluation", 1))
    save_every: int = field(default=100, metadata=_meta("steps between checkpoints (the last step always saves)", 1))
    keep: int = field(default=2, metadata=_meta("checkpoints kept", 1))
    tensorboard: bool = field(default=True, metadata=_meta("also log to TensorBoard when it is installed"))
    progress: bool = field(default=True, metadata=_meta("show a progress bar"))


#: The keys of [model] that are the layers' options; everything else in an old flat table is
#: the backbone's or the memory's.
LAYER_KEYS = ("block", "layers", "span", "attention", "gate", "sink")


@dataclass
class ModelConfig:
    """The model: a backbone, a memory, and how the memory layers run them."""

    backbone: dict[str, Any] = field(default_factory=lambda: {"name": "tiny"}, metadata=_meta(
        "name (a registered backbone: tiny, hf) and its options (d_model, preset, model, ...)"))
    memory: dict[str, Any] = field(default_factory=lambda: {"name": "elastic"}, metadata=_meta(
        "name (a registered memory, or none) and its options (order, samples, encoder, ...)"))
    block: int = field(default=256, metadata=_meta("block length: tokens per local attention window", 1))
    layers: list[int] | None = field(default=None, metadata=_meta("indices of the layers with memory (default: all)"))
    span: Literal["block", "previous"] = field(default="block", metadata=_meta("local keys: the block, or the "
                                                                                "previous block and the block"))
    attention: str = field(default="auto", metadata=_meta("attention backend: auto, sdpa, flex, ..."))
    gate: bool = field(default=False, metadata=_meta("let the memory in through a zero-initialised gate per head"))
    sink: int = field(default=0, metadata=_meta("first tokens of the stream kept visible in every window", 0))

    def __post_init__(self) -> None:
        for key in ("backbone", "memory"):
            table = getattr(self, key)
            if not isinstance(table.get("name"), str) or not table["name"]:
                raise ConfigError(f"model.{key}.name: must be a registered {key} name, got {table.get('name')!r}")

    def options(self, key: str) -> dict[str, Any]:
        """The options of the backbone or the memory (their table without ``name``)."""
        return {k: v for k, v in getattr(self, key).items() if k != "name"}


def normalize_model_table(raw: Any) -> tuple[Any, str | None]:
    """``raw`` [model] in the current layout, and a message when it was migrated.

    ``backbone = "tiny"`` and ``memory = "xl"`` are short for ``{name = ...}``. An old flat
    table, whose backbone and memory options sit beside them, is split: keys the backbone takes
    (:meth:`memplug.Backbone.option_names`) go to [model.backbone], the layers' keys stay, the
    rest go to [model.memory]."""
    if not isinstance(raw, dict):
        return raw, None
    raw = dict(raw)
    for key, default in (("backbone", "tiny"), ("memory", "elastic")):
        if isinstance(raw.get(key), str):
            raw[key] = {"name": raw[key]}
        elif isinstance(raw.get(key), dict) and "name" not in raw[key]:  # options given, the name left default
            raw[key] = {"name": default, **raw[key]}
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    flat = sorted(set(raw) - known)
    if not flat:
        return raw, None
    from ..core.manager import registry

    backbone = dict(raw.get("backbone", {"name": "tiny"}))
    memory = dict(raw.get("memory", {"name": "elastic"}))
    try:
        takes = registry("backbone").get(backbone.get("name", "tiny")).option_names()
    except KeyError as exc:
        raise ConfigError(f"model.backbone.name: {exc}") from None
    for key in flat:
        (backbone if key in takes else memory)[key] = raw.pop(key)
    raw["backbone"], raw["memory"] = backbone, memory
    message = (f"[model] holds {', '.join(flat)} beside the layer options, the old flat layout; read as "
               f"[model.backbone] {_inline(backbone)} and [model.memory] {_inline(memory)}: write it that way")
    return raw, message


def _inline(table: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k} = {v!r}" for k, v in table.items()) + "}"


@dataclass
class Config:
    """One experiment."""

    name: str = field(default="run", metadata=_meta("experiment name"))
    out: str = field(default="runs/{name}", metadata=_meta("output directory ({name} is replaced)"))
    model: ModelConfig = field(default_factory=ModelConfig, metadata=_meta("[model] table"))
    data: DataConfig = field(default_factory=DataConfig, metadata=_meta("[data] table"))
    train: TrainConfig = field(default_factory=TrainConfig, metadata=_meta("[train] table"))
    log: LogConfig = field(default_factory=LogConfig, metadata=_meta("[log] table"))

    @property
    def out_dir(self) -> Path:
        return Path(self.out.replace("{name}", self.name))

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["train"]["betas"] = list(self.train.betas)
        if out["model"]["layers"] is None:
            del out["model"]["layers"]  # TOML has no null: absent means every layer
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        if isinstance(raw, dict) and "model" in raw:
            model, message = normalize_model_table(raw["model"])
            if message:
                logger.warning("config: %s", message)
            raw = {**raw, "model": model}
        return _build(cls, raw, "")

    def __post_init__(self) -> None:
        if self.data.validation + self.data.test >= 1:
            raise ConfigError(f"data.validation + data.test must be < 1, got {self.data.validation} + {self.data.test}")
        if self.train.bptt and self.data.seq_len % self.train.bptt:
            raise ConfigError(f"train.bptt must divide data.seq_len={self.data.seq_len}, got {self.train.bptt}")
        if self.train.warmup > self.train.steps:
            raise ConfigError(f"train.warmup must be <= train.steps={self.train.steps}, got {self.train.warmup}")
        if not DEVICE_PATTERN.match(self.train.device):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.train.device!r}")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}s"
    if _optional(tp) is not None:
        return _describe(_optional(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {len(typing.get_args(tp))} numbers"
    if origin is dict:
        return "a table"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _optional(tp: Any) -> Any:
    """``X`` for ``X | None``, else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 2 and type(None) in args:
        return next(a for a in args if a is not type(None))
    return None


def _value(key: str, value: Any, tp: Any, meta: dict[str, Any]) -> Any:
    """``value`` checked against type ``tp`` and the bounds in ``meta``; ConfigError names ``key``."""
    if _optional(tp) is not None:
        return None if value is None else _value(key, value, _optional(tp), meta)
    origin = typing.get_origin(tp)
    ok = True
    if origin is list:
        ok = isinstance(value, list)
        if ok:
            value = [_value(f"{key}[{i}]", v, typing.get_args(tp)[0], meta) for i, v in enumerate(value)]
            return value
    elif origin is Literal:
        ok = value in typing.get_args(tp)
    elif origin is tuple:
        args = typing.get_args(tp)
        ok = isinstance(value, (list, tuple)) and len(value) == len(args)
        if ok:
            return tuple(_value(f"{key}[{i}]", v, a, meta) for i, (v, a) in enumerate(zip(value, args)))
    elif origin is dict:
        ok = isinstance(value, dict)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, tp)
    if not ok:
        raise ConfigError(f"{key}: must be {_describe(tp)}, got {value!r} ({type(value).__name__})")
    lo, hi = meta.get("min"), meta.get("max")
    below = lo is not None and (value <= lo if meta.get("open") else value < lo)
    above = hi is not None and (value >= hi if meta.get("max_open") else value > hi)
    if below or above:
        raise ConfigError(f"{key}: must be {_describe(tp)} {_bounds(meta)}, got {value!r}")
    return value


def _bounds(meta: dict[str, Any]) -> str:
    """``">= 0 and < 1"`` for the bounds in ``meta``."""
    parts = []
    if meta.get("min") is not None:
        parts.append(f"{'>' if meta.get('open') else '>='} {meta['min']}")
    if meta.get("max") is not None:
        parts.append(f"{'<' if meta.get('max_open') else '<='} {meta['max']}")
    return " and ".join(parts)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.')}: must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; allowed keys in {where}: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in raw.items():
        tp, key = hints[name], prefix + name
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, key + ".")
        else:
            kwargs[name] = _value(key, value, tp, known[name].metadata)
    return cls(**kwargs)


def parse_value(text: str) -> Any:
    """A ``--set`` value: TOML syntax when it parses (``3``, ``1e-3``, ``true``, ``[1, 2]``,
    ``"x"``), otherwise the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_pairs(items: list[str], flag: str, typed: bool = True) -> dict[str, Any]:
    """``["rate=4", "warp=power"]`` -> ``{"rate": 4, "warp": "power"}`` for a repeated ``flag``
    option; values parsed by :func:`parse_value` (``typed``) or kept as strings. A pair without
    ``=`` or without a key is a :class:`ConfigError` naming the flag and the pair."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key] = parse_value(value) if typed else value
    return out


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``["train.lr=1e-3", "model.memory=none", ...]`` to a nested dict (copied)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set takes KEY=VALUE with a dotted key (train.lr=1e-3), got {item!r}")
        *tables, last = key.split(".")
        node = out
        for i, part in enumerate(tables):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(tables[: i + 1])}: is a value, not a table; cannot set {key}")
            node = child
        node[last] = parse_value(text.strip())
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a TOML experiment file (``None``: the defaults), apply ``--set`` overrides, validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            data = path.read_bytes()
            raw = tomllib.loads(data.decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ConfigError(f"{path}: not UTF-8 text (line {line}, byte {exc.start}); TOML files are UTF-8") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if isinstance(raw.get("model"), dict):
        raw["model"], message = normalize_model_table(raw["model"])
        if message:
            logger.warning("%s: %s", path, message)
    raw = apply_overrides(raw, overrides or [])
    try:
        return Config.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None



# --- the listing of every key (memplug train --show-config) -------------------------------------


def _toml(value: Any) -> str:
    """``value`` as a TOML literal (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML literal for {value!r}")


def _table_lines(obj: Any, default: Any, prefix: str) -> list[str]:
    """The TOML lines of one config table: its keys (with their help and, where the value is not
    the default, the default), then its sub-tables."""
    lines: list[str] = []
    tables: list[tuple[str, Any, Any, str]] = []
    for f in dataclasses.fields(obj):
        value, base, help_text = getattr(obj, f.name), getattr(default, f.name), f.metadata.get("help", "")
        if dataclasses.is_dataclass(value) or isinstance(value, dict):
            tables.append((f.name, value, base, help_text))
            continue
        if _bounds(f.metadata):
            help_text += f"; {_bounds(f.metadata)}"
        note = "" if value == base or base is None else f" (default: {_toml(base)})"
        if value is None:  # TOML has no null: an absent key means the default
            lines.append(f"# {f.name} = [...]  # {help_text}")
        else:
            lines.append(f"{f.name} = {_toml(value)}  # {help_text}{note}")
    for name, value, base, help_text in tables:
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(value):
            lines += ["", f"[{key}]  # {type(value).__doc__.strip()}", *_table_lines(value, base, key + ".")]
        else:
            note = "" if value == base else f" (default: {_toml(base)})"
            lines += ["", f"[{key}]  # {help_text}{note}", *(f"{k} = {_toml(v)}" for k, v in value.items())]
    return lines


def describe_config(config: Config | None = None) -> str:
    """Every key of ``config`` (default: the defaults) as TOML, each with its help and, where the
    value is not the default, the default; it reads back with :func:`load_config`."""
    config = config or Config()
    header = "# memplug train: every configuration key, its value and its help (`memplug train --show-config`)"
    return "\n".join([header, *_table_lines(config, Config(), "")]) + "\n"
