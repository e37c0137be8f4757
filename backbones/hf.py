"""Hugging Face causal LMs as memplug backbones: attach memory to a pretrained model.

:class:`HFBackbone` exposes a ``transformers`` ``*ForCausalLM`` layer by layer through the
:class:`memplug.Backbone` contract, calling the model's own modules: its token embedding, its
q/k/v/o projections (biases included), its norms, its MLP and its output head, and its rotary
embedding's frequencies (any RoPE scaling the config set up is already in them). The HF module is
*held*, not copied: ``attach`` adds no parameters for elastic memory and leaves every weight as
it was, and training the MemoryModel trains the HF model in place.

Supported families (``config.model_type``): the Llama family (``llama``, ``mistral``, ``qwen2``,
``qwen3``; SmolLM is a Llama) in :mod:`memplug.backbones.hf_llama`, and GPT-NeoX (``gpt_neox``)
in :mod:`memplug.backbones.hf_neox`. Anything else raises a ``ValueError`` naming these.

Positions. Like every memplug backbone, the MemoryModel rotates queries and keys at positions
local to each attention window, so a pretrained model only ever sees distances inside its trained
range however long the stream is. Memory samples are rotated per the ``rope`` option of
:func:`attach` (see there); :func:`attach` also clips memory-key positions so that no
query-key distance leaves the trained range.

This module imports ``transformers`` only inside the functions that load weights, so it imports
(and registers the ``hf`` backbone) without it; ``pip install "memplug[hf]"`` adds it.
"""

from __future__ import annotations

import json
import warnings
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import memplug
from memplug.core.contracts import Backbone
from memplug.core.model import MemoryModel
from memplug.core.pretrained import tensor_digests

from memplug.backbones.hf_files import HUB_NAME, as_dtype, load_pretrained, model_from_config
from memplug.backbones.hf_llama import LlamaWiring
from memplug.backbones.hf_neox import NeoXWiring

__all__ = [
    "HFBackbone",
    "attach",
    "rotary",
    "SUPPORTED_MODEL_TYPES",
]

_WIRINGS = (LlamaWiring(), NeoXWiring())
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for w in _WIRINGS for t in w.model_types)


def rotary(x: Tensor, positions: Tensor, inv_freq: Tensor, scaling: float = 1.0) -> Tensor:
    """Rotate ``x`` (..., T, D) at float ``positions`` (..., T) the way HF's Llama/NeoX do.

    ``inv_freq`` (R/2,) are the rotary frequencies; the first R channels of each vector rotate
    (R < D is NeoX's partial rotary) in the "rotate half" layout: channel ``i`` pairs with
    ``i + R/2``. ``scaling`` multiplies cos and sin (YaRN's attention factor; 1 otherwise).
    As in ``transformers``, the angles are computed in float32 and cast to ``x``'s dtype.
    """
    rot = 2 * inv_freq.shape[-1]
    if rot > x.shape[-1]:
        raise ValueError(f"rotary width {rot} exceeds the head dimension {x.shape[-1]}")
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(device=x.device, dtype=torch.float32)  # (..., T, R/2)
    angles = torch.cat((freqs, freqs), dim=-1)  # (..., T, R)
    cos, sin = angles.cos(), angles.sin()
    if scaling != 1.0:
        cos, sin = cos * scaling, sin * scaling
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    half = rot // 2
    # Every step below is a kernel on a GPU (and these run twice per layer): a full-width rotary
    # (most models) skips the slicing and the concatenation with an empty pass-through part.
    x_rot = x if rot == x.shape[-1] else x[..., :rot]
    rotated = x_rot * cos + torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1) * sin  # (..., T, R)
    return rotated if rot == x.shape[-1] else torch.cat((rotated, x[..., rot:]), dim=-1)


class HFBackbone(Backbone):
    """A Hugging Face causal LM seen through the :class:`memplug.Backbone` contract.

    ``model`` is a loaded ``*ForCausalLM`` module (held, not copied), ``"smollm2"`` (the packaged
    SmolLM2-135M, :func:`memplug.backbones.smollm2.load_smollm2`) or a path: a directory saved
    with ``save_pretrained`` or a ``.gguf`` file (see :func:`memplug.backbones.hf_files.load_pretrained`); ``dtype`` applies
    when loading. So ``build_model("hf", backbone_options=dict(model="smollm2"), block=1024)`` works,
    though :func:`attach` is the way that also checks the window and clips memory positions.
    A hub name (``"org/name"``, not a local path) is loaded by ``transformers`` from its cache or
    the hub; a dict (a ``config.to_dict()``) builds a random-weight model of that configuration.
    When loaded here, ``self.tokenizer`` is the model's tokenizer (``None`` when a module is
    passed, or when a model directory holds no tokenizer files).

    Saving and loading (:meth:`memplug.core.model.MemoryModel.save_pretrained`): ``source`` is
    where the weights can be loaded again (the path or name given, or the module's
    ``name_or_path``; ``None`` for a model built from a config), and ``base_digests`` the SHA-256
    of every weight as it was when first wrapped (``None`` without a source), so a save can store
    only what changed and a load can check the base. Hashing reads every weight once per HF
    module (about a second per GB).

    Attributes beyond the contract: ``hf`` (the model), ``family`` (``"llama"`` or
    ``"gpt_neox"``), ``max_positions`` (the trained context, ``max_position_embeddings``),
    ``sliding_window`` (Mistral-style local attention of the original model, or ``None``),
    ``attention_scale`` (the model's softmax scale, read by the MemoryModel) and
    ``min_position`` (``None``, or the lowest position :meth:`rotate` uses: set by :func:`attach`
    so that memory keys, which sit before the window, stay within the trained distance).
    """

    name = "hf"

    def __init__(
        self,
        model: nn.Module | str | Path | dict[str, Any],
        *,
        dtype: torch.dtype | str | None = None,
        min_position: float | None = None,
    ) -> None:
        super().__init__()
        self.tokenizer: Any = None
        self.source: str | None = None
        if isinstance(model, str) and model == "smollm2":
            from memplug.backbones.smollm2 import load_smollm2

            model, self.tokenizer = load_smollm2(dtype=as_dtype(dtype))
            self.source = "smollm2"
        elif isinstance(model, (str, Path)):
            self.source = _reference(str(model))
            model, self.tokenizer = load_pretrained(str(model), dtype=dtype)
        elif isinstance(model, dict):
            model = model_from_config(model, dtype=dtype)
        else:
            if dtype is not None and as_dtype(dtype) != _dtype_of(model):
                raise ValueError(f"dtype={dtype!r} is only used when loading from a path, and this module holds "
                                 f"{_dtype_of(model)}; cast the module with .to(dtype) instead")
            self.source = _reference(getattr(model, "name_or_path", "") or "")
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        wiring = next((w for w in _WIRINGS if model_type in w.model_types), None)
        if wiring is None:
            raise ValueError(
                f"model_type {model_type!r} ({type(model).__name__}) is not supported by the hf backbone; "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)} (Llama family and GPT-NeoX)"
            )
        if model.get_output_embeddings() is None:
            raise ValueError(f"{type(model).__name__} has no output head; pass the *ForCausalLM model, not the base model")
        self.hf = model
        self.wiring = wiring
        self.family = wiring.family
        self.attention_projections = wiring.attention_projections
        self.num_layers = config.num_hidden_layers
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.d_model = config.hidden_size
        self.vocab_size = model.get_output_embeddings().out_features
        self.max_positions = int(config.max_position_embeddings)
        self.sliding_window = _sliding_window(config)
        self.attention_scale = wiring.attention_scale(model)
        self.min_position = None if min_position is None else float(min_position)
        rope = self._rope_module()
        if 2 * rope.inv_freq.shape[-1] > self.head_dim:
            raise ValueError(f"rotary width {2 * rope.inv_freq.shape[-1]} exceeds head_dim {self.head_dim}")
        self.base_digests = None if self.source is None else _base_digests(model)

    def rebuild_options(self) -> dict[str, Any]:
        """The options that rebuild this backbone with ``make_backbone("hf", **options)``: the
        weights' ``source`` (or the model's configuration when it has none), their dtype and the
        position clip."""
        if self.source is not None:
            model: str | dict[str, Any] = self.source
        else:
            model = json.loads(self.hf.config.to_json_string(use_diff=False))
        dtype = str(_dtype_of(self.hf)).removeprefix("torch.")
        return {"model": model, "dtype": dtype, "min_position": self.min_position}

    def _rope_module(self) -> nn.Module:
        """The model's rotary embedding (one per model in transformers >= 4.45)."""
        rope = getattr(self.wiring.decoder(self.hf), "rotary_emb", None)
        if rope is None or not hasattr(rope, "inv_freq"):
            raise ValueError(
                f"{type(self.hf).__name__} has no model-level rotary_emb with inv_freq; "
                "memplug's hf backbone needs transformers >= 4.45"
            )
        return rope

    def embed(self, input_ids: Tensor) -> Tensor:
        """(B, T) token ids -> (B, T, d) with the model's own embedding."""
        return self.wiring.embed(self.hf, input_ids)

    def attention_inputs(self, layer: int, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T, d) -> raw q (B, H, T, D), k and v (B, Hkv, T, D) from the layer's own projections."""
        return self.wiring.attention_inputs(self.hf, layer, h)

    def attention_output(self, layer: int, h: Tensor, attn: Tensor) -> Tensor:
        """Residual stream after layer ``layer`` from its input ``h`` and attention ``attn`` (B, H, T, D)."""
        return self.wiring.attention_output(self.hf, layer, h, attn)

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate ``x`` (..., T, D) at float ``positions`` (..., T) with the model's RoPE.

        Uses the frequencies the model was built with (``original_inv_freq``: dynamic RoPE
        variants only change them beyond the trained context, which window-local positions never
        reach) and its attention factor (YaRN), on the model's rotary width (partial for NeoX).
        Positions below ``min_position`` (memory keys far before the window) are clipped to it.
        """
        if self.min_position is not None:
            positions = positions.clamp(min=self.min_position)
        rope = self._rope_module()
        inv_freq = getattr(rope, "original_inv_freq", None)
        inv_freq = rope.inv_freq if inv_freq is None else inv_freq
        return rotary(x, positions, inv_freq, float(getattr(rope, "attention_scaling", 1.0)))

    def head(self, h: Tensor) -> Tensor:
        """(B, T, d) -> (B, T, vocab) with the model's final norm and output head."""
        return self.wiring.head(self.hf, h)


ROPE_MODES = ("none", "sample")


def attach(
    model: nn.Module | HFBackbone,
    memory: Any = "elastic",
    block: int | None = None,
    layers: Sequence[int] | None = None,
    rope: str = "none",
    *,
    memory_options: Mapping[str, Any] | None = None,
    span: str = "block",
    attention: str = "auto",
    gate: bool = False,
    sink: int = 0,
) -> MemoryModel:
    """Turn a Hugging Face causal LM into a :class:`memplug.core.model.MemoryModel`.

    ``model``: a Llama-family or GPT-NeoX ``*ForCausalLM`` (or an :class:`HFBackbone`). It is
    held, not copied: the MemoryModel's parameters are the HF model's (plus any a memory adds:
    elastic adds none, ``gate=True`` one weight per head per memory layer) and no weight changes.
    The result is in the HF model's mode (``eval()`` after ``from_pretrained``).

    ``memory``, ``block``, ``layers``, ``memory_options``, ``span``, ``attention``, ``gate`` and
    ``sink`` are those of :class:`~memplug.core.model.MemoryModel`; ``memory=None`` gives the
    local window only. ``block`` defaults to ``min(1024, max_position_embeddings // 4)``.
    ``gate=True`` starts the memory closed, so the attached model gives the local-window model's
    logits until training opens it; ``sink=1`` keeps the first token visible to every window
    (most pretrained models park attention there).

    ``rope`` says how memory samples are positioned for the model's rotary embedding:

    - ``"none"`` (the paper's choice): samples are not rotated, so their logits carry no
      distance; rotated queries meet them as keys at position 0.
    - ``"sample"``: each sample is rotated at the position where it reads the history, relative
      to the block (Elastic's ``positions="sample"``), so distant samples look distant; its
      ``max_distance`` defaults to ``max_position_embeddings - block``.

    For any memory, the backbone also clips memory-key positions at
    ``window - max_position_embeddings`` (``window`` = ``sink + block``, or ``sink + 2 * block``
    with ``span="previous"``), so no query-key distance exceeds what the model was trained on.
    The local window itself must fit the trained context: a larger one raises ``ValueError``
    naming a block that fits; one wider than a Mistral-style sliding window warns, since the
    original model never attended that far.
    """
    if rope not in ROPE_MODES:
        raise ValueError(f"rope must be one of {ROPE_MODES}, got {rope!r}")
    # A fresh wrapper per call (around the same HF module) keeps each model's position clip its own.
    backbone = HFBackbone(model.hf if isinstance(model, HFBackbone) else model)
    if isinstance(model, HFBackbone):
        backbone.tokenizer, backbone.source, backbone.base_digests = model.tokenizer, model.source, model.base_digests
    if block is None:
        block = max(1, min(1024, backbone.max_positions // 4))
    spans = 2 if span == "previous" else 1
    window = sink + block * spans
    if window > backbone.max_positions:
        fits = (backbone.max_positions - sink) // spans
        raise ValueError(
            f"block={block} with span={span!r} and sink={sink} gives a local window of {window} positions, more "
            f"than the {backbone.max_positions} this model was trained on; use block={min(1024, fits)} or less"
        )
    if backbone.sliding_window is not None and window > backbone.sliding_window:
        warnings.warn(
            f"local window of {window} tokens exceeds the model's sliding window of {backbone.sliding_window}",
            stacklevel=2,
        )
    options = dict(memory_options or {})
    if rope == "sample":
        if memory != "elastic":
            raise ValueError(f"rope='sample' positions Elastic's samples; it needs memory='elastic', got {memory!r}")
        options["positions"] = "sample"
        # Queries sit up to block - 1 after the block start, so this keeps every distance trained.
        options.setdefault("max_distance", backbone.max_positions - block)
    backbone.min_position = float(window - backbone.max_positions)
    attached = MemoryModel(backbone, memory, block, memory_options=options, layers=layers, span=span,
                           attention=attention, gate=gate, sink=sink)
    return attached.train(backbone.hf.training)


#: The digests of each HF module's weights when first wrapped (a module attached twice, after
#: training in between, keeps the digests of the weights it was loaded with).
_DIGESTS: weakref.WeakKeyDictionary[nn.Module, dict[str, str]] = weakref.WeakKeyDictionary()


def _base_digests(model: nn.Module) -> dict[str, str]:
    """``{"hf.<name>": SHA-256}`` of ``model``'s weights as first seen (names as in the backbone)."""
    if model not in _DIGESTS:
        _DIGESTS[model] = tensor_digests(model.state_dict())
    return {f"hf.{name}": digest for name, digest in _DIGESTS[model].items()}


def _reference(name_or_path: str) -> str | None:
    """Where weights can be loaded again: an existing local path (made absolute), a hub name
    (``org/name``), or ``None``."""
    if not name_or_path:
        return None
    path = Path(name_or_path)
    if path.exists():
        return str(path.resolve())
    return name_or_path if HUB_NAME.fullmatch(name_or_path) else None


def _dtype_of(model: nn.Module) -> torch.dtype:
    """The dtype of the model's token embedding (the dtype its weights were loaded in)."""
    return model.get_input_embeddings().weight.dtype


def _sliding_window(config: Any) -> int | None:
    """The original model's local-attention width, if it uses one (Mistral, some Qwen2)."""
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    return int(window)


@memplug.hookimpl
def memplug_add_backbones(registry: Any) -> None:
    registry.add(HFBackbone)
