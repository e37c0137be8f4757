"""What a MemoryModel returns and carries between calls: :class:`ModelOutput` and :class:`ModelState`.

A :class:`ModelState` holds everything a stream needs to continue (each layer's partial block,
previous block, sink tokens and memory state, and the absolute position), so a sequence fed in
chunks of any lengths gives the logits of one call, and a state saved mid-stream continues
identically after loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from ..util.atomic import atomic_write_bytes

__all__ = ["ModelOutput", "ModelState"]

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
