"""Loading Hugging Face causal LMs: a ``save_pretrained`` folder, a GGUF file, a hub name, or a
configuration (random weights).

Local paths never reach the network. A hub name (``org/name``, when no such local path exists)
is loaded the way ``transformers`` loads it (its cache, or the hub unless ``HF_HUB_OFFLINE=1``).
``transformers`` (the ``memplug[hf]`` extra) is imported only inside the loading functions, so
the hf backbone registers without it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["HF_HINT", "HUB_NAME", "TOKENIZER_FILES", "as_dtype", "load_pretrained", "model_from_config"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
HF_HINT = 'pip install "memplug[hf]"  (transformers, gguf, accelerate, tokenizers)'
#: A Hugging Face hub model name: ``org/name`` (letters, digits, ``-``, ``_``, ``.``).
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _require_transformers() -> Any:
    try:
        import transformers
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(f"Hugging Face backbones need transformers: {HF_HINT}", name="transformers") from exc
    return transformers


def as_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``dtype`` as a torch dtype: a torch.dtype passes through, names such as ``"bf16"`` map."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "float64": torch.float64}
    if dtype not in names:
        raise ValueError(f"dtype must be a torch.dtype or one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


def load_pretrained(path: str, dtype: torch.dtype | str | None = None) -> tuple[nn.Module, Any]:
    """``(model, tokenizer)`` from a local path, or from a hub name.

    ``path`` is a directory written by ``save_pretrained`` (config + weights, and a tokenizer if
    saved; ``tokenizer`` is ``None`` when there is none), a ``.gguf`` file, which
    ``transformers`` dequantises (it needs the ``gguf`` package), or a hub name ``org/name``
    that is not a local path. The model is put in eval mode; its ``name_or_path`` is what loads
    it again (the GGUF file itself for a GGUF).
    """
    transformers = _require_transformers()
    p = Path(path)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"no GGUF file at {p}")
        folder, kwargs["gguf_file"] = str(p.parent), p.name
    elif p.is_dir():
        folder = str(p)
    elif HUB_NAME.fullmatch(path) and not p.exists():
        folder, kwargs = path, {}
    else:
        raise FileNotFoundError(f"hf backbone path must be a model directory, a .gguf file or a hub name "
                                f"(org/name), got {path!r}")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if (dt := as_dtype(dtype)) is not None:
        model = model.to(dt)
    if "gguf_file" in kwargs:
        model.config._name_or_path = str(p.resolve())
    # A GGUF file embeds its tokenizer; a directory has one only if its files were saved
    # (transformers would otherwise build an empty placeholder tokenizer).
    has_tokenizer = not p.is_dir() or any((p / f).is_file() for f in TOKENIZER_FILES)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs) if has_tokenizer else None
    return model.eval(), tokenizer


def model_from_config(config: dict[str, Any], dtype: torch.dtype | str | None = None) -> nn.Module:
    """A random-weight causal LM of the configuration ``config`` (a ``config.to_dict()``), in
    eval mode (its weights are meant to be loaded over)."""
    transformers = _require_transformers()
    options = dict(config)
    model_type = options.pop("model_type", None)
    if not isinstance(model_type, str):
        raise ValueError(f"a Hugging Face configuration needs its model_type, got {model_type!r}")
    model = transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(model_type, **options))
    if (dt := as_dtype(dtype)) is not None:
        model = model.to(dt)
    return model.eval()
