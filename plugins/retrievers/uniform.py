"""Uniform polynomial sampling: P evenly spaced positions over the encoder's support.

The positions are the midpoints of P equal cells of ``encoder.support(t)``; every part of the
compressed history is read with the same resolution (the paper's default sampler).
"""

from __future__ import annotations

from torch import Tensor

import memplug
from memplug.core.contracts import Encoder, Retriever, TimeLike
from memplug.ops.sampling import check_samples, midpoints, place


class Uniform(Retriever):
    """``samples`` = P evenly spaced positions (cell midpoints) over ``encoder.support(t)``.

    Args:
        samples: P, the number of positions read (>= 1).
    """

    name = "uniform"
    fixed = True

    def __init__(self, samples: int = 64) -> None:
        super().__init__()
        self.samples = check_samples(samples)
        self.register_buffer("fractions", midpoints(self.samples), persistent=False)  # (P,)

    def extra_repr(self) -> str:
        return f"samples={self.samples}"

    def positions(self, t: TimeLike, encoder: Encoder) -> Tensor:
        return place(self.fractions, *encoder.support(t))


@memplug.hookimpl
def memplug_add_retrievers(registry) -> None:
    registry.add(Uniform)
