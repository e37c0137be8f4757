"""Document-level train / validation / test splits, by group, reproducible from a seed."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

__all__ = ["SPLITS", "assign_splits", "check_fractions", "split_hash"]

SPLITS = ("train", "validation", "test")


def _rank(seed: int, group: str) -> str:
    return hashlib.sha256(f"{seed}\0{group}".encode()).hexdigest()


def check_fractions(validation: float, test: float) -> None:
    """Refuse fractions outside [0, 1), or that leave no training split."""
    for arg, value in (("validation", validation), ("test", test)):
        if not 0 <= value < 1:
            raise ValueError(f"{arg} must be a fraction in [0, 1), got {value!r}")
    if validation + test >= 1:
        raise ValueError(f"validation + test must be < 1 to leave a training split, got {validation} + {test}")


def assign_splits(groups: Iterable[str], validation: float, test: float, seed: int = 0) -> dict[str, str]:
    """Map every group to ``"train"``, ``"validation"`` or ``"test"``.

    Groups are ordered by a hash of ``(seed, group)`` (stable when groups are added elsewhere in
    the corpus) and the first ``ceil(test * n)`` go to test, the next ``ceil(validation * n)`` to
    validation, the rest to train; a positive fraction always gets at least one group.
    """
    check_fractions(validation, test)
    order = sorted(set(groups), key=lambda g: _rank(seed, g))
    n_test, n_val = math.ceil(test * len(order)), math.ceil(validation * len(order))
    if n_test + n_val >= len(order):
        raise ValueError(
            f"{len(order)} groups cannot fill validation={validation} and test={test} and keep a training split"
        )
    out = {g: "test" for g in order[:n_test]}
    out.update({g: "validation" for g in order[n_test : n_test + n_val]})
    out.update({g: "train" for g in order[n_test + n_val :]})
    return out


def split_hash(files: Iterable[tuple[str, str]]) -> str:
    """SHA-256 of a split's file list: sorted ``name<TAB>content-sha256`` lines."""
    digest = hashlib.sha256()
    for name, content in sorted(files):
        digest.update(f"{name}\t{content}\n".encode())
    return digest.hexdigest()
