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

Hugging Face habits hold: ``labels`` align with ``input_ids`` (the loss shifts them, -100 is
ignored), the output reads as ``out.loss``, ``out["loss"]`` or ``out[0]``, ``past_key_values=``
is another name of ``state=``, ``generate`` takes ``transformers``' arguments and defaults, and
``save_pretrained(dir)`` / :func:`from_pretrained` write and read a folder (see
:mod:`memplug.core.pretrained`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..ops.loss import causal_lm_loss
from ..util.checks import positive_int
from . import generation
from .contracts import AttentionBackend, Backbone, Memory, Retriever
from .layer import SPANS, MemoryAttention
from .manager import VERSION, make_backbone, make_memory, make_retriever
from .pretrained import (
    FORMAT,
    backbone_table,
    check_json,
    read_pretrained,
    read_tensors,
    select_tensors,
    weights_sha256,
    write_pretrained,
)
from .state import ModelOutput, ModelState, config_mismatch
from .trainable import has_lora

__all__ = ["MemoryModel", "MemorySpec", "RetrieverSwap", "build_model", "from_pretrained"]

#: Keyword arguments of ``forward`` that only the loss reads (as in ``transformers``).
LOSS_KWARGS = ("shift_labels", "num_items_in_batch")
INTEGER_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16, torch.uint32)


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
        gate: open each memory layer through a zero-initialised per-head gate (layers with a memory only);
            for attaching to a model that works without the memory: from scratch it slows or stops
            the memory's learning, since a closed gate passes it no gradient at first.
        sink: how many of the stream's first tokens every layer keeps visible.
    """

    #: Read by ``transformers.Trainer``: the loss shifts ``labels`` as its causal-LM loss does
    #: (so it counts the scored tokens of a batch as ``labels[:, 1:]``), and the input's name.
    loss_type = "ForCausalLM"
    main_input_name = "input_ids"

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
        positive_int("block", block)
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
        # how the model was built, for spec() and save_pretrained()
        self._memory_spec = (memory, dict(memory_options or {}))
        self._layer_options = {"layers": None if layers is None else list(layers), "span": span,
                               "attention": attention if isinstance(attention, str) else attention.name,
                               "gate": gate, "sink": sink}
        self._state_config = self._describe_state()
        #: recompute each layer in the backward pass instead of keeping its activations
        self.gradient_checkpointing = False

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

    # --- streams -------------------------------------------------------------------------------

    def _describe_state(self) -> dict[str, Any]:
        """What gives a state its meaning: the layers' geometry, block, span and sink, and per
        layer the memory and every module of it but the retriever (which may be swapped over a
        live state), each as its class and ``extra_repr`` (an encoder's order and measure)."""
        memories = []
        for layer in self.attn:
            memory = layer.memory
            if memory is None:
                memories.append(None)
                continue
            swappable = {id(m) for m in memory.retriever.modules()} if memory.retriever is not None else set()
            memories.append({name or ".": f"{type(m).__qualname__}({m.extra_repr()})"
                             for name, m in memory.named_modules() if id(m) not in swappable})
        described = {"backbone": self.backbone.name, "block": self.block, "span": self._layer_options["span"],
                     "sink": self._layer_options["sink"],
                     "geometry": [self.backbone.heads, self.backbone.kv_heads, self.backbone.head_dim],
                     "memories": memories}
        return json.loads(json.dumps(described))

    def state_config(self) -> dict[str, Any]:
        """The configuration every :class:`ModelState` of this model records (JSON-ready)."""
        return self._state_config

    def init_state(self) -> ModelState:
        """The state at the start of a stream."""
        return ModelState(0, [{} for _ in self.attn], self._state_config)

    def _check_state(self, state: Any) -> ModelState:
        if not isinstance(state, ModelState):
            raise ValueError(f"state must be a ModelState (out.state of an earlier call) or None, got {type(state).__name__}")
        if len(state.layers) != len(self.attn):
            raise ValueError(f"state has {len(state.layers)} layers, the model {len(self.attn)}")
        if state.config is not None and state.config is not self._state_config:
            differs = config_mismatch(state.config, self._state_config)
            if differs:
                raise ValueError(f"this state was made by a model of another configuration ({differs}; the state's "
                                 "first): continue it with the model that made it, or start a new stream (state=None)")
        return state

    def _check_input_ids(self, input_ids: Any) -> Tensor:
        """``input_ids`` as a (B, T) integer tensor of ids in [0, vocab), else a ValueError naming the
        problem (the range is checked in eager mode only)."""
        if not isinstance(input_ids, Tensor):
            raise ValueError(f"input_ids must be a (batch, tokens) tensor of token ids, got {type(input_ids).__name__}")
        if input_ids.dtype not in INTEGER_DTYPES:
            raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
        if input_ids.ndim != 2:
            hint = "; add a batch axis: input_ids[None]" if input_ids.ndim == 1 else ""
            raise ValueError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}{hint}")
        # the range reads the data: one host sync in eager mode; a compiled graph skips it (it would
        # split the graph) and leaves the error to the embedding
        if input_ids.numel() and not torch.compiler.is_compiling():
            lo, hi = torch.stack(torch.aminmax(input_ids)).tolist()
            vocab = self.backbone.vocab_size
            if lo < 0 or hi >= vocab:
                raise ValueError(f"input_ids holds token id {lo if lo < 0 else hi}, outside the vocabulary [0, {vocab})")
        return input_ids if input_ids.dtype in (torch.int64, torch.int32) else input_ids.long()

    def forward(
        self,
        input_ids: Tensor,
        state: ModelState | None = None,
        labels: Tensor | None = None,
        *,
        attention_mask: Tensor | None = None,
        past_key_values: ModelState | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **loss_kwargs: Any,
    ) -> ModelOutput | tuple[Any, ...]:
        """(B, T) token ids, continuing ``state`` -> logits (B, T, vocab), loss and the new state.

        ``labels`` (B, T) are aligned with ``input_ids``, as in ``transformers``: the logits at
        position ``i`` are scored against ``labels[:, i + 1]``, -100 is ignored, and the loss is
        the mean cross-entropy (``labels=input_ids`` is next-token prediction). Keyword-only, as
        ``transformers`` takes them: ``shift_labels`` (B, T), targets already shifted
        (``shift_labels[:, i]`` follows position ``i``; what a loop feeding a sequence in
        segments gives, since a segment's last target is in the next one), and
        ``num_items_in_batch`` (the loss is then a sum divided by it).

        ``attention_mask`` may be given but only all ones: a row of padding would shift that
        row's blocks and positions, which one stream state cannot hold. ``past_key_values`` is
        another name of ``state`` (a :class:`ModelState`, not a Hugging Face cache);
        ``use_cache=False`` returns no state; ``return_dict=False`` returns ``to_tuple()``.
        """
        unknown = sorted(set(loss_kwargs) - set(LOSS_KWARGS))
        if unknown:
            raise TypeError(f"forward() got unexpected keyword arguments {unknown}; it takes labels, shift_labels, "
                            "num_items_in_batch, attention_mask, past_key_values (or state), use_cache, return_dict")
        input_ids = self._check_input_ids(input_ids)
        if past_key_values is not None:
            if state is not None:
                raise ValueError("give the stream state as state= or as past_key_values=, not both")
            state = past_key_values
        if attention_mask is not None:
            self._check_attention_mask(attention_mask, input_ids)
        state = self.init_state() if state is None else self._check_state(state)
        h = self.backbone.embed(input_ids)  # (B, T, d)
        if input_ids.shape[0]:
            caches = []
            recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
            for i in range(len(self.attn)):
                if recompute:  # the layer runs again in the backward pass (same dropout draws)
                    h, cache = checkpoint(self._layer, i, h, state.layers[i], state.position, use_reentrant=False)
                else:
                    h, cache = self._layer(i, h, state.layers[i], state.position)
                caches.append(cache)
        else:  # no rows: nothing to attend to, and the layers cannot cut zero rows into blocks
            caches = [dict(layer) for layer in state.layers]
        logits = self.backbone.head(h)  # (B, T, vocab)
        loss = None
        if labels is not None or loss_kwargs.get("shift_labels") is not None:
            loss = causal_lm_loss(logits, labels, **loss_kwargs)
        new_state = None if use_cache is False else ModelState(state.position + input_ids.shape[1], caches,
                                                                 self._state_config)
        output = ModelOutput(logits, loss, new_state)
        return output.to_tuple() if return_dict is False else output

    def _layer(self, i: int, h: Tensor, layer_state: dict[str, Tensor], position: int) -> tuple[Tensor, dict]:
        """Layer ``i``: hidden states (B, T, d) and its stream state -> (B, T, d) and its new state."""
        q, k, v = self.backbone.attention_inputs(i, h)  # (B, H, T, D), (B, Hkv, T, D) x2
        out, cache = self.attn[i](q, k, v, layer_state, position, self.backbone.rotate)
        return self.backbone.attention_output(i, h, out), cache  # (B, T, d)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Recompute each layer during the backward pass (activation memory of one layer instead of
        all, for about a third more compute), as ``transformers`` models do. Only
        ``use_reentrant=False`` is supported (the only kind that passes the stream state through)."""
        if (gradient_checkpointing_kwargs or {}).get("use_reentrant", False):
            raise ValueError("gradient_checkpointing_kwargs: use_reentrant=True is not supported; memplug recomputes "
                             "layers with use_reentrant=False")
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        """Keep every layer's activations again (the default)."""
        self.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.gradient_checkpointing

    @staticmethod
    def _check_attention_mask(attention_mask: Any, input_ids: Tensor) -> None:
        if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
            shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else type(attention_mask).__name__
            raise ValueError(f"attention_mask must be a tensor of the shape of input_ids {tuple(input_ids.shape)}, "
                             f"got {shape}")
        if not bool(attention_mask.bool().all()):
            raise ValueError("attention_mask has zeros (padding), which memplug does not support: a padded row would "
                             "shift its blocks and positions; give rows of equal length (e.g. texts grouped into "
                             "blocks of N tokens) with no mask or an all-ones mask, or one row per call")

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

    def generate(self, input_ids: Tensor, max_new_tokens: int | None = None, **options: Any) -> Tensor:
        """The prompt (B, T) and up to ``max_new_tokens`` new tokens, with ``transformers``'
        arguments and defaults: greedy unless ``do_sample=True`` (then ``temperature``,
        ``top_k=50``, ``top_p``), ``eos_token_id``, ``pad_token_id``, ``max_length``,
        ``streamer``; also ``state`` (continue a stream) and ``generator``. The prompt is streamed
        once, then one token per call through the same state. See
        :func:`memplug.core.generation.generate`."""
        return generation.generate(self, input_ids, max_new_tokens, **options)

    # --- saving and loading --------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """The JSON-ready ``[model]`` table that rebuilds this model: ``backbone`` (name and
        options), ``memory`` (name and options, or ``None``), ``block``, ``layers``, ``span``,
        ``attention``, ``gate`` and ``sink``. A memory given as an object or a factory cannot be
        recorded (its options are unknown): build with its name and ``memory_options``."""
        memory, options = self._memory_spec
        if memory is not None and not isinstance(memory, str):
            raise ValueError(f"the memory of this model was given as a {type(memory).__name__}, whose options cannot "
                             "be recorded: build the model with memory=<registered name> and memory_options={...}")
        table = {"backbone": backbone_table(self.backbone),
                 "memory": None if memory is None else {"name": memory, **options},
                 "block": self.block, **self._layer_options}
        return check_json("the model's options", table)

    def _base_digests(self) -> dict[str, str] | None:
        """``{state-dict name: SHA-256}`` of the base weights the backbone was loaded with, if any."""
        base = getattr(self.backbone, "base_digests", None)
        return None if base is None else {f"backbone.{name}": digest for name, digest in base.items()}

    def save_pretrained(
        self,
        directory: str | Path,
        *,
        tensors: str | Iterable[str] = "auto",
        tokenizer: Any = None,
        overwrite: bool = False,
    ) -> Path:
        """Write this model to ``directory``: its :meth:`spec` as JSON and tensors as safetensors.

        ``tensors``: ``"auto"`` (default) stores what differs from the base model when the
        backbone has one that can be loaded again (a Hugging Face model loaded by name or path:
        the tensors memplug added, such as gates, and those whose bytes changed, with the base's
        SHA-256 to check it on loading), else every tensor; ``"all"``; ``"changed"``; or a list
        of state-dict names (e.g. only the trained ones), stored relative to the base likewise.
        ``tokenizer`` (default: the backbone's own, if any) is saved beside them. A folder saved
        before is replaced; any other non-empty folder is refused unless ``overwrite=True``.
        Read it back with :func:`from_pretrained`.
        """
        if has_lora(self):
            raise ValueError("this model holds LoRA adapters, which its options do not record: fold them into the "
                             "weights first with memplug.core.trainable.merge_lora(model), then save")
        table = self.spec()
        state = self.state_dict()
        base = self._base_digests()
        names, how = select_tensors(state, tensors, base)
        record: dict[str, Any] = {"format": FORMAT, "memplug": VERSION, "model": table, "tensors": how}
        if base is not None and how != "all":
            record["base_sha256"] = weights_sha256(self.backbone.base_digests)
        tokenizer = tokenizer if tokenizer is not None else self.backbone.tokenizer
        return write_pretrained(directory, record, {n: state[n] for n in names}, tokenizer=tokenizer,
                                overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, base_model: Any = None) -> MemoryModel:
        """The model saved in ``directory`` by :meth:`save_pretrained`, in eval mode.

        The model is built from the recorded options (a Hugging Face base is loaded by its
        recorded name or path, or ``base_model``: a loaded model, name or path to use instead),
        the base's weights are checked against the recorded SHA-256 when only some tensors were
        stored, and the stored tensors are loaded over it.
        """
        record = read_pretrained(directory)
        table = dict(record["model"])
        backbone = dict(table.pop("backbone"))
        name = backbone.pop("name")
        if base_model is not None:
            backbone["model"] = base_model
        memory = table.pop("memory")
        memory_name = None if memory is None else memory.pop("name")
        model = build_model(name, memory_name, table.pop("block"), backbone_options=backbone, memory_options=memory,
                            **table)
        expected = record.get("base_sha256")
        if expected is not None:
            base = getattr(model.backbone, "base_digests", None)
            found = None if base is None else weights_sha256(base)
            if found != expected:
                raise ValueError(f"{directory} stores tensors relative to a base model whose weights have SHA-256 "
                                 f"{expected[:12]}..., but the base loaded from {backbone.get('model')!r} has "
                                 f"{found and found[:12] + '...'}: load the same base (base_model=...)")
        tensors = read_tensors(directory, record)
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if unexpected:
            raise ValueError(f"{directory} holds tensors this model does not have: {sorted(unexpected)[:5]}")
        if record["tensors"] == "all" and missing:
            raise ValueError(f"{directory} lacks tensors of this model: {sorted(missing)[:5]}")
        return model.eval()


def from_pretrained(directory: str | Path, *, base_model: Any = None) -> MemoryModel:
    """:meth:`MemoryModel.from_pretrained`: the model saved in ``directory``, in eval mode."""
    return MemoryModel.from_pretrained(directory, base_model=base_model)


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
