"""Building a model and its tokenizer from an experiment config, and loading a trained one.

``memplug train`` builds with :func:`build_model_and_tokenizer`; ``memplug eval`` and user code
load a checkpoint with :func:`load_trained`, which rebuilds the model from the config stored in
the checkpoint and loads its verified weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.model import build_model
from ..data.prepare import Prepared, make_tokenizer
from ..data.tokenizers import BPETokenizer, HFTokenizer, Tokenizer
from .checkpoint import CheckpointError, read_checkpoint
from .config import Config, ConfigError

__all__ = ["build_model_and_tokenizer", "load_trained"]


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


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Tokenizer, Any]:
    """A trained model, its tokenizer and its :class:`~memplug.app.config.Config` from a checkpoint
    folder (verified; see :func:`memplug.app.checkpoint.read_checkpoint`)."""
    ckpt = read_checkpoint(path)
    if ckpt.config is None:
        raise CheckpointError(f"checkpoint {ckpt.path} has no experiment config; it was not written by memplug train")
    config = Config.from_dict(ckpt.config)
    model, tokenizer = build_model_and_tokenizer(config, None, tokenizer_json=ckpt.text("tokenizer.json"))
    ckpt.load_model(model)
    return model.to(device), tokenizer, config
