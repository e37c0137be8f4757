"""What a run trains: the whole model, only the memory, or LoRA adapters plus the memory.

Attaching a memory to a pretrained model and fine-tuning all of it is expensive and can spoil
what the model knew. :func:`set_trainable` freezes a :class:`~memplug.core.model.MemoryModel`
down to what a retrofit needs:

- ``"all"``: every parameter (training from scratch, full fine-tuning);
- ``"memory"``: only the memory's parameters: what the memory layers hold (the gate of
  ``gate=True``, learned sample positions, a memory plugin's own weights), never the backbone;
- ``"lora"``: LoRA adapters (through the ``peft`` library) on the backbone's attention
  projections (:attr:`memplug.Backbone.attention_projections`), plus the memory's parameters.

It returns a :class:`TrainableSummary` with the trainable and total counts, which ``memplug
train`` prints at the start and stores with the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from ..util.checks import positive_int

__all__ = ["TRAINABLE", "LoraOptions", "TrainableSummary", "add_lora", "has_lora", "is_memory_parameter", "merge_lora",
           "set_trainable"]

#: What ``train.trainable`` accepts.
TRAINABLE = ("all", "memory", "lora")
#: A LoRA weight's name holds this (peft's naming).
LORA_MARK = "lora_"


@dataclass(frozen=True)
class LoraOptions:
    """LoRA adapters: rank ``rank``, scale ``alpha / rank``, ``dropout`` on their input, on the
    backbone modules named ``targets`` (default: its attention projections)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TrainableSummary:
    """What :func:`set_trainable` left trainable: a mode, parameter counts and the LoRA options."""

    mode: str
    trainable: int
    total: int
    lora: LoraOptions | None = None

    def to_dict(self) -> dict:
        return {"mode": self.mode, "trainable": self.trainable, "total": self.total,
                "lora": None if self.lora is None else asdict(self.lora)}

    def __str__(self) -> str:
        share = 100 * self.trainable / max(self.total, 1)
        return f"{self.trainable:,} of {self.total:,} parameters trainable ({share:.4g}%, trainable={self.mode})"


def is_memory_parameter(name: str) -> bool:
    """Whether a MemoryModel parameter name belongs to the memory: the memory layers' own
    parameters (``attn.<i>.gate``, ``attn.<i>.memory.*``), as opposed to the backbone's."""
    return name.startswith("attn.")


def add_lora(model: nn.Module, options: LoraOptions) -> list[str]:
    """Inject LoRA adapters into ``model.backbone`` in place (``peft.inject_adapter_in_model``);
    returns the names of the adapted modules. The adapters start as a no-op (peft zero-initialises
    their B matrices), so the model's outputs do not change."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError('trainable="lora" needs the peft library: pip install "memplug[hf]"',
                                  name="peft") from exc
    positive_int("lora rank", options.rank)
    backbone = model.backbone
    targets = list(options.targets or backbone.attention_projections)
    if not targets:
        raise ValueError(f"backbone {type(backbone).__name__} names no attention projections for LoRA "
                         "(Backbone.attention_projections); give the module names in LoraOptions.targets")
    present = {name.rsplit(".", 1)[-1] for name, module in backbone.named_modules() if isinstance(module, nn.Linear)}
    missing = sorted(set(targets) - present)
    if missing:
        raise ValueError(f"LoRA targets {missing} are not linear modules of the backbone "
                         f"{type(backbone).__name__}; it has {sorted(present)}")
    config = LoraConfig(r=options.rank, lora_alpha=options.alpha, lora_dropout=options.dropout,
                        target_modules=targets)
    inject_adapter_in_model(config, backbone)
    return sorted({name.rsplit(".lora_", 1)[0] for name, _ in backbone.named_parameters() if LORA_MARK in name})


def has_lora(model: nn.Module) -> bool:
    """Whether ``model`` holds LoRA adapters (of :func:`add_lora`)."""
    return any(LORA_MARK in name for name, _ in model.named_parameters())


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter of ``model.backbone`` into the weight it adapts (``W + B A * alpha
    / rank``) and put the plain linear module back, as peft's ``merge_and_unload`` does; returns
    how many modules were merged. The outputs do not change (up to rounding); the model then
    saves and loads like any other (its changed projection weights are stored)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    backbone = model.backbone
    merged = 0
    for name, module in list(backbone.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent) if parent else backbone, child, module.get_base_layer())
            merged += 1
    return merged


def set_trainable(model: nn.Module, mode: str, lora: LoraOptions | None = None) -> TrainableSummary:
    """Freeze ``model`` (a MemoryModel) to ``mode`` in :data:`TRAINABLE`; ``"lora"`` first adds
    adapters with ``lora`` (default :class:`LoraOptions`). Returns the counts."""
    if mode not in TRAINABLE:
        raise ValueError(f"trainable must be one of {', '.join(TRAINABLE)}; got {mode!r}")
    if mode == "lora":
        lora = lora or LoraOptions()
        add_lora(model, lora)
    elif lora is not None:
        raise ValueError(f"LoRA options were given with trainable={mode!r}; they need trainable='lora'")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(mode == "all" or is_memory_parameter(name) or (mode == "lora" and LORA_MARK in name))
    counted = {id(p): p for p in model.parameters()}.values()  # tied weights once
    trainable = sum(p.numel() for p in counted if p.requires_grad)
    total = sum(p.numel() for p in counted)
    if mode != "all" and trainable == 0:
        raise ValueError(f"trainable={mode!r} leaves nothing to train: this model's memory has no parameters "
                         "(elastic has none of its own; attach it with gate=True, or use trainable='lora')")
    return TrainableSummary(mode, trainable, total, lora)
