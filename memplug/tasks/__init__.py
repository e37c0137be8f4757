"""Synthetic long-range tasks with exact oracles.

Each task draws batches of token sequences whose scored tokens depend on history far beyond
one block, and knows the best achievable loss given a chosen context (whole history, the
block alone, ...), so a model's score can be placed between "sees only its block" and "sees
everything".

- :class:`RegimeTask` (gist): a hidden regime that only the whole history reveals.
- :class:`PasskeyTask`: a key stated once, recalled verbatim some blocks later.
- :class:`RecallTask`: several key -> value pairs stated early, queried later.
"""

from .base import Batch, Mixture, ScoredOnly, Task
from .passkey import PasskeyTask
from .recall import RecallTask
from .regime import RegimeTask

TASKS: dict[str, type[Task]] = {"regime": RegimeTask, "passkey": PasskeyTask, "recall": RecallTask}


def make_task(name: str, **cfg) -> Task:
    """A task by name: ``make_task("regime", symbols=16)``."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](**cfg)


__all__ = ["Batch", "Mixture", "ScoredOnly", "Task", "RegimeTask", "PasskeyTask", "RecallTask", "TASKS", "make_task"]
