"""Shared set-up of the training, evaluation and distributed tests: a tiny corpus and config."""

from __future__ import annotations

import random
from pathlib import Path

from memplug.app.config import Config, load_config

WORDS = ["def", "return", "x", "y", "import", "class", "self", "(", ")", ":", "=", "+", "\n", "    ", "if", "else"]


def make_corpus(root: Path, files: int = 10, words: int = 500) -> Path:
    """``files`` small .py files of pseudo-code (a code-dataset root)."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"m{i}.py").write_text(" ".join(rng.choice(WORDS) for _ in range(words)))
    return root


def tiny_overrides(tmp: Path, memory: str = "xl") -> list[str]:
    """A two-layer model with a memory on 128-token windows of the tiny corpus, 6 steps."""
    return [
        "name=t", f"out='{tmp / 'runs' / '{name}'}'",
        "model.backbone.name=tiny", "model.backbone.d_model=32", "model.backbone.n_layers=2",
        "model.backbone.n_heads=2", "model.block=16", f"model.memory.name={memory}",
        "data.dataset=code", f"data.options.root='{tmp / 'src'}'", "data.seq_len=128",
        "data.validation=0.2", "data.test=0.2",
        "train.steps=6", "train.batch_size=4", "train.warmup=2", "train.precision=fp32",
        "log.log_every=1", "log.save_every=3", "log.eval_windows=2", "log.progress=false", "log.tensorboard=false",
    ]


def set_args(overrides: list[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]`` for the command line."""
    return [arg for item in overrides for arg in ("--set", item)]


def tiny_config(tmp: Path, *extra: str, memory: str = "xl") -> Config:
    if not (tmp / "src").exists():
        make_corpus(tmp / "src")
    return load_config(None, tiny_overrides(tmp, memory) + list(extra))
