"""Passkey retrieval (Mohtashami and Jaggi, 2023): a 5-digit key stated once in a long text."""

from __future__ import annotations

import random

from .base import Needle, Probe, ProbeSample, digits

__all__ = ["Passkey"]

STATEMENT = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
DIGITS = 5


class Passkey(Probe):
    name = "passkey"
    description = "a 5-digit pass key stated once (with its repetition), asked for at the end"

    def sample(self, depth: float, rng: random.Random) -> ProbeSample:
        key = digits(rng, DIGITS)
        options = [key]
        while len(options) < self.choices:
            other = digits(rng, DIGITS)
            if other not in options:
                options.append(other)
        rng.shuffle(options)
        return ProbeSample((Needle(STATEMENT.format(key=key), depth),), QUESTION,
                           tuple(" " + o for o in options), options.index(key))
