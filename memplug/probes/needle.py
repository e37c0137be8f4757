"""Needle in a haystack, as in RULER: one needle, several keys, or several values for one key.

A needle reads "One of the special magic numbers for KEY is: VALUE." (VALUE has 7 digits).

- ``needle``: one needle; the question asks for its number.
- ``multikey``: ``keys`` needles with different keys at random depths; the asked one at ``depth``.
- ``multivalue``: ``values`` needles for the same key; the question asks for every number, in
  the order they appear.

Distractor candidates are numbers of the same shape (for ``multikey``, the other keys' numbers
first: a model that retrieves a needle but not the right one picks those).
"""

from __future__ import annotations

import random

from .base import Needle, Probe, ProbeSample, digits, word_key

__all__ = ["MultiKeyNeedle", "MultiValueNeedle", "SingleNeedle"]

STATEMENT = "One of the special magic numbers for {key} is: {value}."
QUESTION = ("What is the special magic number for {key} mentioned in the provided text? "
            "The special magic number for {key} mentioned in the provided text is")
QUESTION_ALL = ("What are all the special magic numbers for {key} mentioned in the provided text? "
                "The special magic numbers for {key} mentioned in the provided text are")
DIGITS = 7


def _distractors(rng: random.Random, exclude: set[str], count: int) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        value = digits(rng, DIGITS)
        if value not in exclude and value not in out:
            out.append(value)
    return out


def _shuffled(right: str, wrong: list[str], rng: random.Random) -> tuple[tuple[str, ...], int]:
    options = [right, *wrong]
    rng.shuffle(options)
    return tuple(" " + o for o in options), options.index(right)


class SingleNeedle(Probe):
    name = "needle"
    description = "one 7-digit number stated once, asked for by its key"

    def sample(self, depth: float, rng: random.Random) -> ProbeSample:
        key, value = word_key(rng), digits(rng, DIGITS)
        candidates, answer = _shuffled(value, _distractors(rng, {value}, self.choices - 1), rng)
        return ProbeSample((Needle(STATEMENT.format(key=key, value=value), depth),), QUESTION.format(key=key),
                           candidates, answer)


class MultiKeyNeedle(Probe):
    name = "multikey"
    description = "several keys, each with a number; one key asked for"

    def __init__(self, candidates: int = 4, keys: int = 4) -> None:
        super().__init__(candidates)
        if isinstance(keys, bool) or not isinstance(keys, int) or keys < 2:
            raise ValueError(f"keys must be an int >= 2, got {keys!r}")
        self.keys = keys

    def sample(self, depth: float, rng: random.Random) -> ProbeSample:
        keys: list[str] = []
        while len(keys) < self.keys:
            key = word_key(rng)
            if key not in keys:
                keys.append(key)
        values = _distractors(rng, set(), self.keys)
        needles = [Needle(STATEMENT.format(key=keys[0], value=values[0]), depth)]
        needles += [Needle(STATEMENT.format(key=k, value=v), rng.random()) for k, v in zip(keys[1:], values[1:])]
        wrong = values[1 : self.choices] + _distractors(rng, set(values), max(0, self.choices - self.keys))
        candidates, answer = _shuffled(values[0], wrong[: self.choices - 1], rng)
        return ProbeSample(tuple(needles), QUESTION.format(key=keys[0]), candidates, answer)


class MultiValueNeedle(Probe):
    name = "multivalue"
    description = "one key stated with several numbers; all of them asked for, in order"

    def __init__(self, candidates: int = 4, values: int = 4) -> None:
        super().__init__(candidates)
        if isinstance(values, bool) or not isinstance(values, int) or values < 2:
            raise ValueError(f"values must be an int >= 2, got {values!r}")
        self.values = values

    def sample(self, depth: float, rng: random.Random) -> ProbeSample:
        key = word_key(rng)
        values = _distractors(rng, set(), self.values)
        # the first value at the asked depth, the others spread after it, in order
        depths = [depth] + sorted(depth + (1 - depth) * rng.random() for _ in values[1:])
        needles = tuple(Needle(STATEMENT.format(key=key, value=v), d) for v, d in zip(values, depths))
        right = ", ".join(values)
        # distractors: the same numbers in another order, then lists with one number replaced
        wrong: list[str] = []
        while len(wrong) < self.choices - 1:
            if len(wrong) % 2 == 0:
                option = values[:]
                rng.shuffle(option)
            else:
                option = values[:]
                option[rng.randrange(len(option))] = _distractors(rng, set(values), 1)[0]
            text = ", ".join(option)
            if text != right and text not in wrong:
                wrong.append(text)
        candidates, answer = _shuffled(right, wrong, rng)
        return ProbeSample(needles, QUESTION_ALL.format(key=key), candidates, answer)
