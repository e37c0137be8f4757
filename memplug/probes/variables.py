"""Variable tracking, as in RULER: follow a chain of assignments through a long text.

"VAR QXKRT = 52931." starts a chain; "VAR BWYLE = VAR QXKRT." and so on pass the value along,
``hops`` times, the links spread over the text from ``depth`` on. A second chain with another
value runs beside it. The question asks for every variable that holds the first chain's value;
the candidates are that chain's names (in order), the other chain's names, and random names.
"""

from __future__ import annotations

import random
import string

from ..util.checks import positive_int
from .base import Needle, Probe, ProbeSample, digits

__all__ = ["VariableTracking"]

QUESTION = ("Question: Find all variables that are assigned the value {value} in the text above. "
            "Answer: According to the chain of variable assignments in the text above, {count} variables are "
            "assigned the value {value}, they are:")


def _names(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    while len(out) < count:
        name = "".join(rng.choice(string.ascii_uppercase) for _ in range(5))
        if name not in taken and name not in out:
            out.append(name)
    return out


class VariableTracking(Probe):
    name = "variables"
    description = "a chain of variable assignments to follow (and a second chain beside it)"

    def __init__(self, candidates: int = 4, hops: int = 4) -> None:
        super().__init__(candidates)
        positive_int("hops", hops)
        self.hops = hops

    def _chain(self, names: list[str], value: str, start: float, rng: random.Random) -> list[Needle]:
        depths = [start] + sorted(start + (1 - start) * rng.random() for _ in names[1:])
        statements = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in zip(names, names[1:])]
        return [Needle(text, d) for text, d in zip(statements, depths)]

    def sample(self, depth: float, rng: random.Random) -> ProbeSample:
        value, other_value = digits(rng, 5), digits(rng, 5)
        while other_value == value:
            other_value = digits(rng, 5)
        chain = _names(rng, self.hops + 1, set())
        other = _names(rng, self.hops + 1, set(chain))
        needles = self._chain(chain, value, depth, rng) + self._chain(other, other_value, rng.random(), rng)
        options = [" ".join(chain), " ".join(other)]
        taken = set(chain) | set(other)
        while len(options) < self.choices:
            fake = _names(rng, self.hops + 1, taken)
            taken |= set(fake)
            options.append(" ".join(fake))
        options = options[: self.choices]
        right = options[0]
        rng.shuffle(options)
        question = QUESTION.format(value=value, count=self.hops + 1)
        return ProbeSample(tuple(needles), question, tuple(" " + o for o in options), options.index(right))
