"""Building a model and its tokenizer from an experiment config, and loading a trained one.

``memplug train`` builds with :func:`build_model_and_tokenizer`; ``memplug eval`` and user code
load a checkpoint with :func:`load_trained`, which rebuilds the model from the config stored in
the checkpoint and loads its verified weights, or a folder written by
:meth:`~memplug.core.model.MemoryModel.save_pretrained`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.model import MemoryModel, build_model
from ..core.pretrained import is_pretrained, load_tokenizer, read_pretrained
from ..core.trainable import LoraOptions, TrainableSummary, set_trainable
from ..data.prepare import Prepared, make_tokenizer
from ..data.tokenizers import BPETokenizer, ByteTokenizer, HFTokenizer, Tokenizer
from .checkpoint import CheckpointError, read_checkpoint
from .config import Config, ConfigError

__all__ = ["apply_trainable", "build_model_and_tokenizer", "load_trained"]


def build_model_and_tokenizer(
    config: Config, prepared: Prepared | None, tokenizer_json: str | None = None
) -> tuple[nn.Module, Tokenizer]:
    """The model of ``config.model`` and the tokenizer of ``config.data``.

    The BPE comes from ``tokenizer_json`` (a checkpoint's copy; :class:`CheckpointError` when it is
    not one) or is trained on ``prepared``;
    the ``hf`` tokenizer is the backbone's own. The backbone's ``vocab_size`` defaults to the
    tokenizer's. Errors of the model builder are reported as :class:`ConfigError` on ``model``.
    """
    mc = config.model
    backbone_options = mc.options("backbone")
    tokenizer: Tokenizer | None = None
    if config.data.tokenizer == "bpe" and tokenizer_json is not None:
        try:
            tokenizer = BPETokenizer.from_json(tokenizer_json)
        except Exception as exc:  # noqa: BLE001 - the tokenizers library raises a bare Exception
            raise CheckpointError(f"the checkpoint's tokenizer.json is not a BPE tokenizer ({exc})") from None
    elif config.data.tokenizer != "hf":
        tokenizer = make_tokenizer(config.data.tokenizer, prepared=prepared, vocab_size=config.data.vocab_size)
    if tokenizer is not None:
        given = backbone_options.setdefault("vocab_size", tokenizer.vocab_size)
        if given != tokenizer.vocab_size:
            raise ConfigError(f"model.backbone.vocab_size: must equal the {config.data.tokenizer} tokenizer's "
                              f"{tokenizer.vocab_size}, got {given!r}")
    try:
        model = build_model(mc.backbone["name"], mc.memory["name"], mc.block, backbone_options=backbone_options,
                            memory_options=mc.options("memory"), layers=mc.layers, span=mc.span,
                            attention=mc.attention, gate=mc.gate, sink=mc.sink)
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"model: {exc}") from None
    if tokenizer is None:
        if model.backbone.tokenizer is None:
            raise ConfigError("data.tokenizer: 'hf' needs a backbone loaded from a path, which carries its tokenizer")
        tokenizer = HFTokenizer(model.backbone.tokenizer)
    return model, tokenizer


def apply_trainable(model: nn.Module, config: Config) -> TrainableSummary:
    """Freeze ``model`` to ``config.train.trainable`` (adding LoRA adapters for ``"lora"``): the
    module structure a run trained and its checkpoints hold. Errors are :class:`ConfigError` on
    ``train.trainable``."""
    tc = config.train
    lora = LoraOptions(rank=tc.lora_rank, alpha=tc.lora_alpha) if tc.trainable == "lora" else None
    try:
        return set_trainable(model, tc.trainable, lora)
    except (ValueError, ModuleNotFoundError) as exc:
        raise ConfigError(f"train.trainable: {exc}") from None


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Tokenizer, Any]:
    """A trained model, its tokenizer and its :class:`~memplug.app.config.Config` from a checkpoint
    folder (verified; see :func:`memplug.app.checkpoint.read_checkpoint`) or a pretrained folder
    (:func:`load_pretrained_folder`)."""
    if is_pretrained(path):
        return load_pretrained_folder(path, device)
    ckpt = read_checkpoint(path)
    if ckpt.config is None:
        raise CheckpointError(f"checkpoint {ckpt.path} has no experiment config; it was not written by memplug train "
                              "(a model saved with model.save_pretrained(folder) loads from that folder)")
    config = Config.from_dict(ckpt.config)
    model, tokenizer = build_model_and_tokenizer(config, None, tokenizer_json=ckpt.text("tokenizer.json"))
    apply_trainable(model, config)  # LoRA adapters are part of what was trained
    ckpt.load_model(model)
    return model.to(device), tokenizer, config


def load_pretrained_folder(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Tokenizer, Any]:
    """The model of a ``save_pretrained`` folder, its tokenizer (the one saved there, else the
    backbone's own, else bytes for a 256-token vocabulary) and a :class:`Config` whose ``[model]``
    is the folder's (the rest defaults; ``name`` is the folder's)."""
    record = read_pretrained(path)
    model = MemoryModel.from_pretrained(path)
    tokenizer = load_tokenizer(path, record)
    if tokenizer is None and model.backbone.tokenizer is not None:
        tokenizer = HFTokenizer(model.backbone.tokenizer)
    if tokenizer is None and model.backbone.vocab_size == 256:
        tokenizer = ByteTokenizer()
    if tokenizer is None:
        raise CheckpointError(f"{path} holds no tokenizer and its backbone has none: save it with "
                              "model.save_pretrained(folder, tokenizer=...)")
    table = dict(record["model"])
    table["memory"] = table["memory"] or {"name": "none"}
    table = {k: v for k, v in table.items() if v is not None}
    try:
        config = Config.from_dict({"name": Path(path).resolve().name, "model": table,
                                   "data": {"tokenizer": tokenizer.name}})
    except ConfigError as exc:
        raise CheckpointError(f"{path}: its model options do not form an experiment config ({exc})") from None
    return model.to(device), tokenizer, config
