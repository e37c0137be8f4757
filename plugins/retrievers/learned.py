"""Learned polynomial sampling: P trainable positions, kept sorted and strictly inside the support.

The positions are parameterised by P + 1 unconstrained logits ``w``: the gaps between
consecutive samples (and the two ends) are ``softmax(w)`` of the support's length, so the
fractions ``cumsum(softmax(w))[:P]`` are strictly increasing and strictly inside (0, 1) for any
``w``, and an optimizer can move them freely. They start at the uniform retriever's cell
midpoints. Gradients reach ``w`` through ``encoder.basis``, which is differentiable in the
positions (Legendre polynomials evaluated by their three-term recurrence).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import memplug
from memplug.core.contracts import Encoder, Retriever, TimeLike
from memplug.ops.sampling import check_samples, place


class Learned(Retriever):
    """``samples`` = P trainable positions over ``encoder.support(t)`` (fractions of its length).

    Args:
        samples: P, the number of positions read (>= 1); they start evenly spaced and are trained.
    """

    name = "learned"

    def __init__(self, samples: int = 64) -> None:
        super().__init__()
        self.samples = check_samples(samples)
        # gaps of the cell midpoints: half a cell at each end, whole cells between
        gaps = torch.full((self.samples + 1,), 1.0 / self.samples, dtype=torch.float64)
        gaps[0] = gaps[-1] = 0.5 / self.samples
        self.logits = nn.Parameter(gaps.log().to(torch.get_default_dtype()))  # (P + 1,)

    def extra_repr(self) -> str:
        return f"samples={self.samples}"

    def fractions(self) -> Tensor:
        """Sorted fractions of the support in (0, 1), (P,), float64 (differentiable in ``logits``)."""
        return torch.softmax(self.logits.to(torch.float64), dim=0).cumsum(0)[:-1]

    def positions(self, t: TimeLike, encoder: Encoder) -> Tensor:
        return place(self.fractions(), *encoder.support(t))


@memplug.hookimpl
def memplug_add_retrievers(registry) -> None:
    registry.add(Learned)
