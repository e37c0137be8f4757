"""What a MemoryModel returns and carries between calls: :class:`ModelOutput` and :class:`ModelState`.

A :class:`ModelState` holds everything a stream needs to continue (each layer's partial block,
previous block, sink tokens and memory state, and the absolute position), so a sequence fed in
chunks of any lengths gives the logits of one call, and a state saved mid-stream continues
identically after loading. It also records the configuration of the model that made it
(:meth:`memplug.core.model.MemoryModel.state_config`), and a model refuses a state made by
another configuration: a state of the same shapes from another encoder would otherwise continue
silently with the wrong meaning.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from ..util.atomic import atomic_write_bytes

__all__ = ["ModelOutput", "ModelState", "config_mismatch"]

STATE_FORMAT = "memplug.ModelState/1"


def config_mismatch(made_by: Mapping[str, Any], used_with: Mapping[str, Any]) -> str | None:
    """``None`` when two state configurations agree, else one line naming the keys that differ."""
    keys = sorted(k for k in set(made_by) | set(used_with) if made_by.get(k) != used_with.get(k))
    if not keys:
        return None
    parts = [f"{k}: {json.dumps(made_by.get(k))} vs {json.dumps(used_with.get(k))}" for k in keys]
    return "; ".join(parts)


@dataclass
class ModelState:
    """What a stream needs to continue: the absolute position and each layer's cache.

    ``layers[i]`` is layer ``i``'s flat dict of tensors (partial block, previous block, memory
    state under ``"mem."`` keys); empty at the start of a stream. ``config`` is the
    configuration of the model that made the state (JSON-ready), or ``None`` for a state built
    by hand, which is not checked.
    """

    position: int
    layers: list[dict[str, Tensor]]
    config: dict[str, Any] | None = None

    def detach(self) -> ModelState:
        """The same state cut from the autograd graph (truncated backpropagation through time)."""
        return ModelState(self.position, [{k: t.detach() for k, t in layer.items()} for layer in self.layers],
                          self.config)

    def save(self, path: str | Path) -> None:
        """Write to a safetensors file, atomically (a temporary file moved into place)."""
        # clone: a layer's caches may be views of one block (e.g. xl's keys and the previous
        # block), and safetensors refuses tensors that share storage
        tensors = {f"layers.{i}.{k}": t.detach().clone(memory_format=torch.contiguous_format)
                   for i, layer in enumerate(self.layers) for k, t in layer.items()}
        meta = {"format": STATE_FORMAT, "position": str(self.position), "num_layers": str(len(self.layers))}
        if self.config is not None:
            meta["config"] = json.dumps(self.config, sort_keys=True)
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
        config = json.loads(meta["config"]) if "config" in meta else None
        return cls(int(meta["position"]), layers, config)


class ModelOutput(Mapping[str, Any]):
    """What a call returns: ``logits`` (B, T, vocab), ``loss`` (or ``None``) and ``state``.

    Read it by attribute (``out.logits``), by key (``out["loss"]``) or by index, like a Hugging
    Face model output: the fields that are not ``None``, in the order ``loss``, ``logits``,
    ``state``, so ``out[0]`` is the loss when labels were given and the logits otherwise.
    ``to_tuple()`` gives them all; ``past_key_values`` is another name of ``state`` (what to pass
    back as ``past_key_values=`` or ``state=`` to continue the stream). ``state`` is ``None``
    after a call with ``use_cache=False``.
    """

    __slots__ = ("logits", "loss", "state")
    _order = ("loss", "logits", "state")

    def __init__(self, logits: Tensor, loss: Tensor | None = None, state: ModelState | None = None) -> None:
        self.logits, self.loss, self.state = logits, loss, state

    @property
    def past_key_values(self) -> ModelState | None:
        return self.state

    def keys(self) -> list[str]:  # type: ignore[override]
        return [k for k in self._order if getattr(self, k) is not None]

    def to_tuple(self) -> tuple[Any, ...]:
        """The fields that are not ``None``, in the order ``loss``, ``logits``, ``state``."""
        return tuple(getattr(self, k) for k in self.keys())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{key!r}: this output has {self.keys()}")
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __repr__(self) -> str:
        return f"ModelOutput({', '.join(self.keys())})"
