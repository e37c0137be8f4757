"""Command-line input: argparse types that check a value and say what is allowed in one line
(argparse then prints ``memplug CMD: error: argument --x: ...`` and exits with status 2), and
:func:`one_line` for the errors a command prints itself."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from ..util.checks import non_negative_int, positive_int

__all__ = ["fraction", "non_negative_int_arg", "one_line", "positive_float", "positive_int_arg"]


def one_line(error: BaseException | str) -> str:
    """An error message on one line (a multi-line message's lines joined by single spaces)."""
    return " ".join(str(error).split())


def _int_arg(check: Callable[[str, int], int]) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        try:
            return check("value", value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


#: An integer >= 1.
positive_int_arg = _int_arg(positive_int)
#: An integer >= 0.
non_negative_int_arg = _int_arg(non_negative_int)


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1)."""
    value = _finite(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {text!r}")
    return value
