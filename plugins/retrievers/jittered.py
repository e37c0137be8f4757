"""Jittered polynomial sampling: random positions while training, uniform ones at evaluation.

A training recipe meant to make test-time sampler swaps safe. A model trained with one fixed
set of P positions learns to read *those* reconstructions; a swap then shows it samples it has
never seen. This retriever draws fresh positions at every call in training mode, so the model
learns to read the reconstructed history at any position:

- a random monotone warp of the support, ``d(u) = u^r`` with ``log r`` uniform in
  ``[-log max_rate, log max_rate]`` (``r > 1`` denser near the present, ``r < 1`` near the
  distant past), drawn once per call (one draw per batch: every block and layer of a forward
  pass reads with the same sampler, as at test time);
- stratified jitter: sample i sits uniformly at random inside the i-th of P equal cells of the
  warped axis, so positions stay sorted and cover the whole support.

In eval mode (``model.eval()``) it is the uniform sampler (cell midpoints), so a model trained
with it is evaluated, and swapped, like any other. Randomness comes from torch's global
generator (``torch.manual_seed`` makes a run reproducible). No parameters.

Limitation: every call to ``positions`` draws anew, so with Elastic's ``positions="sample"``
(which asks for the positions a second time to rotate the samples) the rotation would not match
the read in training; use it with the default ``positions="none"``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

import memplug
from memplug.core.contracts import Encoder, Retriever, TimeLike
from memplug.ops.sampling import check_samples, midpoints, place


class Jittered(Retriever):
    """``samples`` = P positions: randomly warped and jittered in training, uniform in eval.

    Args:
        samples: P (>= 1).
        max_rate: the largest power-warp rate drawn (>= 1); 1 means jitter only.
        jitter: whether each sample moves at random inside its cell (else cell midpoints).
    """

    name = "jittered"

    def __init__(self, samples: int = 64, max_rate: float = 4.0, jitter: bool = True) -> None:
        super().__init__()
        self.samples = check_samples(samples)
        if isinstance(max_rate, bool) or not (isinstance(max_rate, (int, float)) and math.isfinite(max_rate)
                                              and max_rate >= 1):
            raise ValueError(f"max_rate must be a finite number >= 1, got {max_rate!r}")
        self.max_rate, self.jitter = float(max_rate), bool(jitter)
        self.register_buffer("fractions", midpoints(self.samples), persistent=False)  # (P,)

    def extra_repr(self) -> str:
        return f"samples={self.samples}, max_rate={self.max_rate}, jitter={self.jitter}"

    def draw(self) -> Tensor:
        """One random set of sorted fractions of the support in [0, 1], (P,) float64."""
        device = self.fractions.device
        cells = torch.arange(self.samples, dtype=torch.float64, device=device)  # (P,)
        offset = torch.rand(self.samples, dtype=torch.float64, device=device) if self.jitter else 0.5
        u = (cells + offset) / self.samples  # (P,) stratified in [0, 1], increasing
        rate = math.exp((2 * torch.rand(()).item() - 1) * math.log(self.max_rate))
        # distance back from t is d = (1 - u)^rate, so the fraction from the oldest end is 1 - d
        return 1 - (1 - u) ** rate

    def positions(self, t: TimeLike, encoder: Encoder) -> Tensor:
        fractions = self.draw() if self.training else self.fractions
        return place(fractions, *encoder.support(t))


@memplug.hookimpl
def memplug_add_retrievers(registry) -> None:
    registry.add(Jittered)
