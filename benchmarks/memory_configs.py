"""Which memory a benchmark builds for a name and a budget scale: one registry for all scripts.

``model_options(name, scale, block)`` gives the memory and its options for memory ``name`` at
``scale`` x the memory budget (:mod:`memplug.core.budget`), as one flat dict
``{"memory": name, **options}``. ``"none"`` is the bare model
(``memory=None``: block-local attention only). Any memory that :func:`memplug.core.budget.memory_options`
knows works without an entry here; :data:`CONFIGS` holds the exceptions (add one with
:func:`register` to give a memory options the budget does not cover).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memplug.core import budget

#: name -> (scale, block) -> {"memory": ..., **memory options}
CONFIGS: dict[str, Callable[[int, int], dict[str, Any]]] = {
    "none": lambda scale, block: {"memory": None},
}


def register(name: str, options: Callable[[int, int], dict[str, Any]]) -> None:
    """Add or replace the configuration a benchmark uses for ``name``."""
    CONFIGS[name] = options


def model_options(name: str, scale: int, block: int) -> dict[str, Any]:
    if name in CONFIGS:
        return CONFIGS[name](scale, block)
    return {"memory": name, **budget.memory_options(name, scale, block)}


def build_options(name: str, scale: int, block: int) -> dict[str, Any]:
    """``build_model`` keywords for ``name`` at ``scale``: ``memory`` and ``memory_options``."""
    options = model_options(name, scale, block)
    return {"memory": options.pop("memory"), "memory_options": options}


def parse_scales(text: str) -> list[int]:
    """``"1x,16x"`` -> ``[1, 16]``."""
    scales = []
    for item in text.split(","):
        item = item.strip().lower().removesuffix("x")
        if not item.isdigit() or int(item) < 1:
            raise ValueError(f"--scale takes positive multiples like 1x,16x; got {text!r}")
        scales.append(int(item))
    return scales
