"""``chebyshev``: read the compressed history at Chebyshev points of the support.

A state of N coefficients is a polynomial of degree < N over the support. Sampling a
polynomial at the P Chebyshev points ``u_i = (1 - cos(π (2i + 1) / (2P))) / 2`` of ``[0, 1]``
(denser at both ends) is the well-conditioned way to represent it by samples: interpolation
at these points is near-optimal, while equispaced points are not (the Runge phenomenon). The
queries then see both the oldest and the most recent history at a finer spacing.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import memplug
from memplug.core.contracts import Encoder, Retriever, TimeLike
from memplug.ops.sampling import check_samples, place


class Chebyshev(Retriever):
    """``samples`` = P positions at the Chebyshev points of ``encoder.support(t)``, oldest first."""

    name = "chebyshev"

    def __init__(self, samples: int = 64) -> None:
        super().__init__()
        self.samples = check_samples(samples)
        i = torch.arange(self.samples, dtype=torch.float64)
        fractions = (1 - torch.cos(math.pi * (2 * i + 1) / (2 * self.samples))) / 2  # (P,), increasing
        self.register_buffer("fractions", fractions, persistent=False)

    def extra_repr(self) -> str:
        return f"samples={self.samples}"

    def positions(self, t: TimeLike, encoder: Encoder) -> Tensor:
        return place(self.fractions, *encoder.support(t))


@memplug.hookimpl
def memplug_add_retrievers(registry) -> None:
    registry.add(Chebyshev)
