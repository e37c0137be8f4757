"""How a probe reads a long context with a model: stream it once, then branch from the state.

A :class:`Reader` streams the context in chunks (constant memory for a MemoryModel) and returns
a state; from that state it scores or generates several continuations without reading the
context again. :class:`MemoryModelReader` works with any :class:`~memplug.core.model.MemoryModel`
(its :class:`~memplug.core.state.ModelState` is never changed in place, so branches share it);
:class:`HFCausalLMReader` reads with a plain Hugging Face causal LM and its KV cache, the
full-attention reference, which cannot take a context past its trained positions.
"""

from __future__ import annotations

import abc
import inspect
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["HFCausalLMReader", "MemoryModelReader", "Reader"]


class Reader(abc.ABC):
    """Reads token ids with a model; ``limit`` is the longest context it can take (None: any)."""

    limit: int | None = None

    @abc.abstractmethod
    def read(self, ids: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Logits (T, vocab) of ``ids`` (T,) after ``state`` (None: the start), and the state
        after them. ``state`` itself stays usable for another branch."""


class MemoryModelReader(Reader):
    """A MemoryModel, fed ``chunk`` tokens per call."""

    def __init__(self, model: nn.Module, chunk: int = 2048) -> None:
        self.model, self.chunk = model, chunk
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def read(self, ids: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        logits = []
        for part in ids.to(self.device).split(self.chunk):
            out = self.model(part[None], state=state)
            state = out.state
            logits.append(out.logits[0].float())
        return torch.cat(logits), state


class HFCausalLMReader(Reader):
    """A Hugging Face ``*ForCausalLM`` with full attention over its KV cache. The state is
    ``(cache, length)``: a branch crops the shared cache back to ``length`` before extending it."""

    def __init__(self, model: nn.Module, chunk: int = 2048) -> None:
        self.model, self.chunk = model, chunk
        self.device = next(model.parameters()).device
        self.limit = int(model.config.max_position_embeddings)
        # transformers 5 renamed `past_key_values` to `cache`; older releases know only the first
        self._cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    @torch.no_grad()
    def read(self, ids: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        from transformers import DynamicCache

        cache, length = state if state is not None else (DynamicCache(), 0)
        extra = cache.get_seq_length() - length
        if extra > 0:  # another branch extended the shared cache: drop its tokens
            cache.crop(-extra)
        logits = []
        for part in ids.to(self.device).split(self.chunk):
            out = self.model(part[None], **{self._cache_argument: cache}, use_cache=True)
            logits.append(out.logits[0].float())
        return torch.cat(logits), (cache, length + ids.shape[0])
