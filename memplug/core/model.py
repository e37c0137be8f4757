"""MemoryModel: a backbone with a memory in (some of) its attention layers (DESIGN §3).

``model(input_ids, state)`` runs block-parallel: per layer, the backbone gives raw q/k/v for all
new tokens, :class:`memplug.core.layer.MemoryAttention` asks the memory for every block's read at
once and runs one batched attention call. The returned :class:`ModelState` holds everything
needed to continue (per-layer memory states, the partial block, the absolute position), so a
sequence fed in chunks of any lengths gives the logits of one call, and a state saved mid-stream
continues identically after loading.

    model = memplug.build_model("tiny", memory="elastic", block=256, order=64, samples=64)
    out = model(ids)                          # out.logits (B, T, V), out.state
    out = model(more_ids, state=out.state)    # streaming
    with model.swap_retriever("warped", samples=64, warp="exponential", rate=4.0):
        ...                                   # test-time sampling change, weights untouched
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from ..util.atomic import atomic_write_bytes
from .contracts import AttentionBackend, Backbone, Memory, Retriever
from .layer import SPANS, MemoryAttention
from .manager import make_backbone, make_memory, make_retriever, registry

__all__ = ["MemoryModel", "ModelState", "ModelOutput", "RetrieverSwap", "build_model"]

STATE_FORMAT = "memplug.ModelState/1"


@dataclass
class ModelState:
    """What a stream needs to continue: the absolute position and each layer's cache.

    ``layers[i]`` is layer ``i``'s flat dict of tensors (partial block, previous block, memory
    state under ``"mem."`` keys); empty at the start of a stream.
    """

    position: int
    layers: list[dict[str, Tensor]]

    def detach(self) -> ModelState:
        """The same state cut from the autograd graph (truncated backpropagation through time)."""
        return ModelState(self.position, [{k: t.detach() for k, t in layer.items()} for layer in self.layers])

    def save(self, path: str | Path) -> None:
        """Write to a safetensors file, atomically (a temporary file moved into place)."""
        # clone: a layer's caches may be views of one block (e.g. xl's keys and the previous
        # block), and safetensors refuses tensors that share storage
        tensors = {f"layers.{i}.{k}": t.detach().clone(memory_format=torch.contiguous_format)
                   for i, layer in enumerate(self.layers) for k, t in layer.items()}
        meta = {"format": STATE_FORMAT, "position": str(self.position), "num_layers": str(len(self.layers))}
        atomic_write_bytes(path, safetensors_bytes(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> ModelState:
        """Read a state written by :meth:`save`, onto ``device``."""
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != STATE_FORMAT:
                raise ValueError(f"{path} is not a memplug model state (format={meta.get('format')!r}, "
                                 f"expected {STATE_FORMAT!r})")
            layers: list[dict[str, Tensor]] = [{} for _ in range(int(meta["num_layers"]))]
            for name in f.keys():
                _, i, key = name.split(".", 2)
                layers[int(i)][key] = f.get_tensor(name)
        return cls(int(meta["position"]), layers)


@dataclass
class ModelOutput:
    logits: Tensor  # (B, T, vocab)
    loss: Tensor | None
    state: ModelState


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

    ``memory``: a registered name (built per layer with ``make_memory(name, **memory_options)``,
    plus ``block`` when the memory's constructor takes one),
    a :class:`Memory` (deep-copied per layer), a callable ``layer_index -> Memory``, or ``None``
    (block-local attention only). ``layers``: indices of the layers that get a memory (``None``:
    all). ``block``, ``span`` and ``attention`` are passed to every :class:`MemoryAttention`.
    """

    def __init__(
        self,
        backbone: Backbone,
        memory: MemorySpec = "elastic",
        block: int = 256,
        layers: Sequence[int] | None = None,
        span: str = "block",
        attention: str | AttentionBackend = "auto",
        **memory_options: Any,
    ) -> None:
        super().__init__()
        if span not in SPANS:
            raise ValueError(f"span must be one of {SPANS}, got {span!r}")
        if memory_options and not isinstance(memory, str):
            raise ValueError(f"memory options {sorted(memory_options)} need memory given by name, got {memory!r}")
        self.backbone, self.block = backbone, block
        n = backbone.num_layers
        with_memory = set(range(n)) if layers is None else {self._layer_index(i, n) for i in layers}
        self.attn = nn.ModuleList()
        for i in range(n):
            mem = self._memory_for(memory, i, memory_options, block) if i in with_memory else None
            layer = MemoryAttention(mem, block, span, attention, scale=getattr(backbone, "attention_scale", None))
            layer.setup(backbone.heads, backbone.kv_heads, backbone.head_dim)
            self.attn.append(layer)

    @staticmethod
    def _layer_index(i: int, n: int) -> int:
        if not -n <= i < n:
            raise ValueError(f"layers contains {i}, outside the backbone's {n} layers")
        return i % n

    @staticmethod
    def _memory_for(memory: MemorySpec, index: int, options: dict[str, Any], block: int) -> Memory | None:
        if memory is None:
            return None
        if isinstance(memory, str):
            # Memories whose constructor takes the block length (melodi, xl) get the model's.
            if "block" in inspect.signature(registry("memory").get(memory)).parameters:
                options = {"block": block, **options}
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
        swappable = [m for m in self.memories if hasattr(m, "set_retriever")]
        if not swappable:
            raise ValueError("no layer of this model has a memory with a retriever (set_retriever) to swap")
        previous = []
        for memory in swappable:
            new = make_retriever(retriever, **cfg)
            if new is retriever:
                new = copy.deepcopy(retriever)
            previous.append((memory, memory.retriever))
            memory.set_retriever(new)
        return RetrieverSwap(previous)

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


def _backbone_keys(backbone: str | Backbone) -> set[str]:
    """Option names a registered backbone class takes: its config dataclass fields and
    its ``__init__`` keyword parameters."""
    cls = registry("backbone").get(backbone) if isinstance(backbone, str) else type(backbone)
    keys = set()
    config = getattr(cls, "config_class", None)
    if config is not None and dataclasses.is_dataclass(config):
        keys |= {f.name for f in dataclasses.fields(config)}
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self":
            keys.add(p.name)
    return keys


MODEL_KEYS = ("layers", "span", "attention")


def build_model(
    backbone: str | Backbone = "tiny", memory: MemorySpec = "elastic", block: int = 256, **cfg: Any
) -> MemoryModel:
    """A :class:`MemoryModel` from names: ``build_model("tiny", memory="elastic", block=64, d_model=128,
    order=64, samples=32)``.

    ``cfg`` keys that the backbone takes (its config fields and constructor keywords) build the
    backbone when it is given by name; ``layers``, ``span`` and ``attention`` go to the model;
    the rest are memory options.
    """
    model_cfg = {k: cfg.pop(k) for k in MODEL_KEYS if k in cfg}
    if isinstance(backbone, str):
        keys = _backbone_keys(backbone)
        backbone_cfg = {k: cfg.pop(k) for k in list(cfg) if k in keys}
        backbone = make_backbone(backbone, **backbone_cfg)
    return MemoryModel(backbone, memory=memory, block=block, **model_cfg, **cfg)
