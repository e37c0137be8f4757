"""Argument checks that name the argument, the value and what is allowed, in one line."""

from __future__ import annotations

from typing import Any

__all__ = ["positive_int", "non_negative_int"]


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 1 (``True`` is not an int here), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def non_negative_int(name: str, value: Any) -> int:
    """``value`` if it is an int >= 0 (``True`` is not an int here), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")
    return value
