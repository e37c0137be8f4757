"""MemoryModel: a backbone with a memory in (some of) its attention layers.

``model(input_ids, state)`` runs block-parallel: per layer, the backbone gives raw q/k/v for all
new tokens, :class:`memplug.core.layer.MemoryAttention` asks the memory for every block's read at
once and runs one batched attention call. The returned :class:`~memplug.core.state.ModelState`
holds everything needed to continue, so any chunking of a sequence gives the logits of one call.

    model = memplug.build_model("tiny", memory="elastic", block=256,
                                backbone_options=dict(d_model=128, n_layers=2, n_heads=4),
                                memory_options=dict(order=64, samples=64))
    out = model(ids)                          # out.logits (B, T, V), out.state
    out = model(more_ids, state=out.state)    # streaming
    with model.swap_retriever("warped", samples=64, warp="exponential", rate=4.0):
        ...                                   # test-time sampling change, weights untouched
    with model.memory_masked():
        ...                                   # the block-local model with the same weights
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .contracts import AttentionBackend, Backbone, Memory, Retriever
from .layer import SPANS, MemoryAttention
from .manager import make_backbone, make_memory, make_retriever
from .state import ModelOutput, ModelState

__all__ = ["MemoryModel", "MemorySpec", "RetrieverSwap", "build_model"]


class RetrieverSwap:
    """The retrievers replaced by :meth:`MemoryModel.swap_retriever`; ``restore()`` puts them back.

    Also a context manager: the swap is already in effect, and leaving the block restores.
    """

    def __init__(self, previous: list[tuple[Memory, Retriever]]) -> None:
        self.previous = previous

    def restore(self) -> None:
        for memory, retriever in self.previous:
            memory.set_retriever(retriever)
        self.previous = []

    def __enter__(self) -> RetrieverSwap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()


MemorySpec = str | Memory | Callable[[int], Memory] | None


class MemoryModel(nn.Module):
    """A backbone whose attention layers run through :class:`MemoryAttention`.

    Args:
        backbone: the :class:`~memplug.core.contracts.Backbone` (held, not copied).
        memory: a registered name (built per layer with ``make_memory(name, **memory_options)``),
            a :class:`~memplug.core.contracts.Memory` (deep-copied per layer), a callable
            ``layer_index -> Memory``, or ``None`` (block-local attention only).
        block: block length L; every memory learns it through ``Memory.setup``.
        memory_options: options of a memory given by name.
        layers: indices of the layers that get a memory (``None``: all; negative ones count
            from the end).
        span: ``"block"`` or ``"previous"``, the local keys of every layer (see :class:`MemoryAttention`).
        attention: ``"auto"``, a backend name or an ``AttentionBackend``, for every layer.
        gate: open each memory layer through a zero-initialised per-head gate (layers with a memory only).
        sink: how many of the stream's first tokens every layer keeps visible.
    """

    def __init__(
        self,
        backbone: Backbone,
        memory: MemorySpec = "elastic",
        block: int = 256,
        *,
        memory_options: Mapping[str, Any] | None = None,
        layers: Sequence[int] | None = None,
        span: str = "block",
        attention: str | AttentionBackend = "auto",
        gate: bool = False,
        sink: int = 0,
    ) -> None:
        super().__init__()
        if span not in SPANS:
            raise ValueError(f"span must be one of {SPANS}, got {span!r}")
        if memory_options and not isinstance(memory, str):
            raise ValueError(f"memory_options {sorted(memory_options)} need memory given by name, got {memory!r}")
        self.backbone, self.block = backbone, block
        n = backbone.num_layers
        with_memory = set(range(n)) if layers is None else {self._layer_index(i, n) for i in layers}
        self.attn = nn.ModuleList()
        for i in range(n):
            mem = self._memory_for(memory, i, dict(memory_options or {})) if i in with_memory else None
            layer = MemoryAttention(mem, block, span, attention, scale=backbone.attention_scale,
                                    gate=gate and mem is not None, sink=sink)
            layer.setup(backbone.heads, backbone.kv_heads, backbone.head_dim)
            self.attn.append(layer)

    @staticmethod
    def _layer_index(i: int, n: int) -> int:
        if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n:
            raise ValueError(f"layers contains {i!r}, not a layer index of the backbone's {n} layers")
        return i % n

    @staticmethod
    def _memory_for(memory: MemorySpec, index: int, options: dict[str, Any]) -> Memory | None:
        if memory is None:
            return None
        if isinstance(memory, str):
            return make_memory(memory, **options)
        if isinstance(memory, Memory):
            return copy.deepcopy(memory)
        if callable(memory):
            return memory(index)
        raise TypeError(f"memory must be a name, a Memory, a callable or None, got {type(memory).__name__}")

    @property
    def memories(self) -> list[Memory]:
        return [layer.memory for layer in self.attn if layer.memory is not None]

    def init_state(self) -> ModelState:
        """The state at the start of a stream."""
        return ModelState(0, [{} for _ in self.attn])

    def forward(self, input_ids: Tensor, state: ModelState | None = None, labels: Tensor | None = None) -> ModelOutput:
        """(B, T) token ids, continuing ``state`` -> logits (B, T, vocab), loss and the new state.

        ``labels`` (B, T) are the next-token targets aligned with ``input_ids`` (-100 ignored);
        the loss is their mean cross-entropy.
        """
        if state is None:
            state = self.init_state()
        if len(state.layers) != len(self.attn):
            raise ValueError(f"state has {len(state.layers)} layers, the model {len(self.attn)}")
        h = self.backbone.embed(input_ids)  # (B, T, d)
        caches = []
        for i, layer in enumerate(self.attn):
            q, k, v = self.backbone.attention_inputs(i, h)  # (B, H, T, D), (B, Hkv, T, D) x2
            out, cache = layer(q, k, v, state.layers[i], state.position, self.backbone.rotate)
            h = self.backbone.attention_output(i, h, out)  # (B, T, d)
            caches.append(cache)
        logits = self.backbone.head(h)  # (B, T, vocab)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return ModelOutput(logits, loss, ModelState(state.position + input_ids.shape[1], caches))

    def swap_retriever(self, retriever: str | Retriever, **cfg: Any) -> RetrieverSwap:
        """Replace the retriever of every memory that has one (Elastic) without touching weights.

        ``retriever`` is a registered name (built per layer with ``cfg``) or a Retriever object
        (deep-copied per layer). Returns a handle whose ``restore()`` (or the end of a ``with``
        block) puts the previous retrievers back.
        """
        swappable = [m for m in self.memories if m.retriever is not None]
        if not swappable:
            raise ValueError("no layer of this model has a memory that reads through a retriever (Elastic) to swap")
        previous = []
        for memory in swappable:
            new = make_retriever(retriever, **cfg)
            if new is retriever:
                new = copy.deepcopy(retriever)
            previous.append((memory, memory.retriever))
            memory.set_retriever(new)
        return RetrieverSwap(previous)

    @contextmanager
    def memory_masked(self) -> Iterator[MemoryModel]:
        """Within the block, every memory layer attends only locally (to its sink and local
        window), reading and writing no memory; weights are untouched, so this is the block-local
        model with the same parameters. A stream begun inside continues without memory state."""
        saved = [layer.masked for layer in self.attn]
        try:
            for layer in self.attn:
                layer.masked = True
            yield self
        finally:
            for layer, masked in zip(self.attn, saved):
                layer.masked = masked

    @torch.no_grad()
    def generate(
        self, input_ids: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None
    ) -> Tensor:
        """Sample ``max_new_tokens`` after the prompt (B, T); returns (B, T + max_new_tokens).

        The prompt is streamed once, then one token per call through the same state.
        ``temperature=0`` is greedy.
        """
        out = self(input_ids)
        tokens = [input_ids]
        for step in range(max_new_tokens):
            logits = out.logits[:, -1, :].float()  # (B, vocab)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]  # (B, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(torch.softmax(logits, dim=-1), 1)  # (B, 1)
            tokens.append(nxt)
            if step + 1 < max_new_tokens:
                out = self(nxt, state=out.state)
        return torch.cat(tokens, dim=1)


def build_model(
    backbone: str | Backbone = "tiny",
    memory: MemorySpec = "elastic",
    block: int = 256,
    *,
    backbone_options: Mapping[str, Any] | None = None,
    memory_options: Mapping[str, Any] | None = None,
    layers: Sequence[int] | None = None,
    span: str = "block",
    attention: str | AttentionBackend = "auto",
    gate: bool = False,
    sink: int = 0,
    **unexpected: Any,
) -> MemoryModel:
    """A :class:`MemoryModel` from names, with each component's options passed to it explicitly::

        build_model("tiny", memory="elastic", block=64,
                    backbone_options=dict(d_model=128, n_layers=2, n_heads=4),
                    memory_options=dict(order=64, samples=32), layers=[-1], gate=True)

    ``backbone_options`` build a backbone given by name (``make_backbone(backbone, **options)``);
    ``memory_options`` a memory given by name. The rest are :class:`MemoryModel`'s.
    """
    if unexpected:
        raise TypeError(f"build_model got {', '.join(sorted(unexpected))}: options of the backbone go in "
                        "backbone_options={...}, options of the memory in memory_options={...}")
    if isinstance(backbone, str):
        backbone = make_backbone(backbone, **dict(backbone_options or {}))
    elif backbone_options:
        raise ValueError(f"backbone_options {sorted(backbone_options)} need a backbone given by name")
    return MemoryModel(backbone, memory, block, memory_options=memory_options, layers=layers, span=span,
                       attention=attention, gate=gate, sink=sink)
