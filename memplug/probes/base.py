"""What every long-context probe builds: a context with facts hidden in a haystack, a question,
and the candidate answers the model chooses among.

A :class:`Probe` draws a :class:`ProbeSample` for a context length and a depth: ``pieces`` are the
haystack text with the probe's facts (needles) inserted, the ``question`` follows the context,
and ``candidates`` are answers of which ``answer`` is right. A probe is answered correctly when
the model ranks the right candidate first (``scoring="loglik"``: the candidates' summed token
log-likelihoods after the question, as in lm-eval's multiple choice) or generates it (``"greedy"``:
the right candidate's text appears in the greedy continuation, as in RULER).
"""

from __future__ import annotations

import abc
import random
from dataclasses import dataclass

__all__ = ["Needle", "Probe", "ProbeSample", "digits", "word_key"]


@dataclass(frozen=True)
class Needle:
    """A sentence to hide at ``depth`` (0: the start of the haystack, 1: its end)."""

    text: str
    depth: float


@dataclass(frozen=True)
class ProbeSample:
    """One probe instance: needles for the haystack, the question, and the candidate answers."""

    needles: tuple[Needle, ...]
    question: str
    candidates: tuple[str, ...]
    answer: int  # index of the right candidate


class Probe(abc.ABC):
    """A kind of long-context question (needle, passkey, variable tracking, ...)."""

    #: the name users type (``memplug probe --probes passkey``)
    name: str = ""
    #: one line for the report
    description: str = ""

    def __init__(self, candidates: int = 4) -> None:
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 2:
            raise ValueError(f"candidates must be an int >= 2 (the right answer and distractors), got {candidates!r}")
        self.choices = candidates

    @abc.abstractmethod
    def sample(self, depth: float, rng: random.Random) -> ProbeSample:
        """A fresh instance whose asked fact sits at ``depth``; randomness from ``rng`` only."""


def digits(rng: random.Random, n: int) -> str:
    """A random ``n``-digit number without a leading zero."""
    return str(rng.randint(10 ** (n - 1), 10**n - 1))


#: Words the keys of needles are made of (short, common, one or two tokens in most vocabularies).
_WORDS = ("amber", "brisk", "cedar", "delta", "ember", "fable", "glade", "harbor", "ivory", "jasper",
          "kettle", "lantern", "meadow", "nectar", "orchid", "pebble", "quartz", "raven", "saffron",
          "thistle", "umber", "velvet", "willow", "yonder", "zephyr")


def word_key(rng: random.Random) -> str:
    """A two-word key such as ``"cedar-raven"``."""
    first, second = rng.sample(_WORDS, 2)
    return f"{first}-{second}"
