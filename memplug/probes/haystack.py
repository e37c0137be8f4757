"""The haystack: held-out text of a registered corpus, in the model's own tokens, with needles in it.

:class:`Haystack` tokenizes a corpus split once (cached on disk per tokenizer by
:mod:`memplug.data`) and :meth:`Haystack.context` builds one probe context of an exact length:
a window of the text at a random offset, the needles' token sequences inserted at their depths,
and the question at the end.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from ..data.prepare import prepare
from ..data.tokenizers import Tokenizer
from .base import ProbeSample

__all__ = ["Haystack"]

#: between the context and the question
SEPARATOR = "\n\n"


class Haystack:
    """The text of ``split`` of corpus ``dataset`` (``literature`` by default: Shakespeare and
    Milton, documents held out of training) as one token stream of ``tokenizer``."""

    def __init__(self, tokenizer: Tokenizer, dataset: str = "literature", split: str = "test",
                 options: dict | None = None) -> None:
        self.tokenizer, self.dataset, self.split = tokenizer, dataset, split
        self.tokens = prepare(dataset, **(options or {})).split(split).tokens(tokenizer).tokens  # (N,)

    def encode(self, text: str) -> np.ndarray:
        return self.tokenizer.encode(text).astype(np.int64)

    def context(self, sample: ProbeSample, length: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
        """(context ids, question ids) with ``len(context) + len(question) == length``.

        The needles sit at their depths of the haystack text, each as its own sentence; the
        question ids start with a blank line. Raises ``ValueError`` when ``length`` cannot hold
        the needles and the question, or needs more haystack than the split has.
        """
        question = self.encode(SEPARATOR + sample.question)
        needles = [(n.depth, self.encode(" " + n.text + " ")) for n in sample.needles]
        room = length - len(question) - sum(len(ids) for _, ids in needles)
        if room < 1:
            raise ValueError(f"length {length} is too short for this probe's needles and question "
                             f"({length - room} tokens); use a longer length")
        if room > len(self.tokens):
            raise ValueError(f"length {length} needs {room:,} haystack tokens, more than the {self.split} split of "
                             f"{self.dataset} has ({len(self.tokens):,}); use shorter lengths or a larger corpus/split")
        start = rng.randrange(len(self.tokens) - room + 1)
        hay = self.tokens[start : start + room].astype(np.int64)
        return self._insert(hay, needles), question

    @staticmethod
    def _insert(hay: np.ndarray, needles: Sequence[tuple[float, np.ndarray]]) -> np.ndarray:
        """``hay`` with each needle's ids inserted at ``depth * len(hay)`` (stable in depth order)."""
        parts, at = [], 0
        for depth, ids in sorted(needles, key=lambda n: n[0]):
            cut = min(len(hay), max(at, round(min(max(depth, 0.0), 1.0) * len(hay))))
            parts += [hay[at:cut], ids]
            at = cut
        parts.append(hay[at:])
        return np.concatenate(parts)
