"""Loading Hugging Face causal LMs from local files only: a ``save_pretrained`` folder or a GGUF.

``transformers`` (the ``memplug[hf]`` extra) is imported only inside :func:`load_pretrained`, so
the hf backbone registers without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["HF_HINT", "TOKENIZER_FILES", "as_dtype", "load_pretrained"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
HF_HINT = 'pip install "memplug[hf]"  (transformers, gguf, accelerate, tokenizers)'


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
    """``(model, tokenizer)`` from local files only (no hub access).

    ``path`` is a directory written by ``save_pretrained`` (config + weights, and a tokenizer if
    saved; ``tokenizer`` is ``None`` when there is none) or a ``.gguf`` file, which
    ``transformers`` dequantises (it needs the ``gguf`` package). The model is put in eval mode.
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
    else:
        raise FileNotFoundError(f"hf backbone path must be a model directory or a .gguf file, got {path!r}")
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    if (dt := as_dtype(dtype)) is not None:
        model = model.to(dt)
    # A GGUF file embeds its tokenizer; a directory has one only if its files were saved
    # (transformers would otherwise build an empty placeholder tokenizer).
    has_tokenizer = "gguf_file" in kwargs or any((p / f).is_file() for f in TOKENIZER_FILES)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **kwargs) if has_tokenizer else None
    return model.eval(), tokenizer
