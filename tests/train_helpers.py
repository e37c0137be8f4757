"""Shared set-up of the training, evaluation and distributed tests: a tiny corpus and config."""

from __future__ import annotations

import os
import random
import subprocess
import sys
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


def tiny_llama_folder(tmp: Path, seed: int = 0, positions: int = 256) -> Path:
    """A two-layer random Llama (vocabulary 300, ``positions`` trained positions, 2 heads) saved
    with a BPE tokenizer trained on the tiny corpus (made in ``tmp / "src"`` if absent): a Hugging
    Face model folder, the base that ``backbone_overrides(f"hf:{folder}")`` loads. ``seed`` draws
    other weights."""
    import torch
    import transformers

    from memplug.data.tokenizers import BPETokenizer

    src = tmp / "src" if (tmp / "src").is_dir() else make_corpus(tmp / "src")
    bpe = BPETokenizer.train([p.read_text() for p in sorted(src.glob("*.py"))], 300)
    llama = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=positions)
    folder = tmp / f"llama-{seed}"
    torch.manual_seed(seed)
    transformers.LlamaForCausalLM(llama).save_pretrained(folder)
    transformers.PreTrainedTokenizerFast(tokenizer_object=bpe._tok).save_pretrained(folder)
    return folder


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


# --- a training in a child process, driven by events ---------------------------------------------------


def start_training(tmp: Path, *overrides: str, pause_after_step: int = 0, pause_in_save: int = 0,
                   env: dict[str, str] | None = None) -> subprocess.Popen:
    """``train(tiny_config(tmp, *overrides))`` in a child process that prints ``step N`` after each
    step and ``saving N`` when it starts writing checkpoint N (flushed), and waits for a line on
    its stdin after step ``pause_after_step`` or inside the write of checkpoint ``pause_in_save``.
    A test reads these lines and answers them: it waits on events, never on time."""
    args = [sys.executable, __file__, str(tmp), str(pause_after_step), str(pause_in_save), *overrides]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def wait_for(proc: subprocess.Popen, line: str) -> None:
    """Read the child's stdout until ``line``; fail with its stderr when it ends first."""
    for got in proc.stdout:
        if got.strip() == line:
            return
    raise AssertionError(f"the child ended (status {proc.wait()}) before printing {line!r}:\n{proc.stderr.read()}")


def _child(tmp: str, pause_after_step: str, pause_in_save: str, *overrides: str) -> None:
    from memplug.app.train import train
    from memplug.util import atomic

    real_fsync_tree = atomic.fsync_tree

    def fsync_tree(folder: Path) -> None:  # atomic_directory calls it once every file of the folder is written
        if folder.name.startswith(".step_"):  # .step_0000003.tmp-1a2b3c4d
            step = int(folder.name[len(".step_"):].split(".")[0])
            print(f"saving {step}", flush=True)
            if step == int(pause_in_save):
                sys.stdin.readline()
        real_fsync_tree(folder)

    atomic.fsync_tree = fsync_tree

    def on_step(step: int, loss: float) -> None:
        print(f"step {step}", flush=True)
        if step == int(pause_after_step):
            sys.stdin.readline()

    result = train(tiny_config(Path(tmp), *overrides), on_step=on_step)
    print(f"done {result.step}", flush=True)


if __name__ == "__main__":
    _child(*sys.argv[1:])
