"""Warped polynomial sampling: more samples near the present (a recency bias at test time).

P cell midpoints ``u`` of [0, 1] are mapped to a distance back from ``t``, as a fraction ``d(u)``
of the support's length, by a convex warp:

- ``warp="exponential"``: ``d(u) = (e^(r u) - 1) / (e^r - 1)``, r = ``rate`` > 0;
- ``warp="power"``: ``d(u) = u^r``, r = ``rate`` > 0 (r > 1 favours the recent past, r = 1 is
  uniform, r < 1 the distant past).

Alternatively ``distances=[...]`` gives the distances back from ``t`` in tokens; each position
``t - d`` is clipped into the support (so early in a stream several may sit at its start).
Positions are returned sorted (oldest first).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

import memplug
from memplug.core.contracts import Encoder, Retriever, TimeLike
from memplug.ops.sampling import check_samples, midpoints, place

#: warp -> default rate
WARPS = {"exponential": 4.0, "power": 2.0}
#: The largest exponential rate: e^rate must stay a finite float64 (e^709.78 is the largest).
MAX_EXPONENTIAL_RATE = 700.0


def warp_distances(u: Tensor, warp: str, rate: float) -> Tensor:
    """Fractional distances back from ``t``, ``d(u)`` in [0, 1], for cell midpoints ``u`` (P,)."""
    if warp == "exponential":
        return torch.expm1(rate * u) / math.expm1(rate)
    return u**rate


class Warped(Retriever):
    """Recency-warped sampling: ``samples`` positions, denser near ``t``.

    Args:
        samples: P (>= 1); with ``distances`` it may be left out (it is ``len(distances)``).
        warp: ``"exponential"`` or ``"power"``.
        rate: the warp's rate (> 0); defaults: 4 for exponential, 2 for power.
        distances: fixed distances back from ``t`` in tokens (>= 0), instead of a warp.
    """

    name = "warped"
    fixed = True

    def __init__(
        self,
        samples: int | None = None,
        warp: str = "exponential",
        rate: float | None = None,
        distances: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if warp not in WARPS:
            raise ValueError(f"warp must be one of {sorted(WARPS)}, got {warp!r}")
        self.warp = warp
        if distances is not None:
            if rate is not None:
                raise ValueError(f"give either rate or distances, not both (rate={rate!r})")
            dist = torch.as_tensor(distances, dtype=torch.float64).flatten()
            if dist.numel() == 0 or not torch.isfinite(dist).all() or (dist < 0).any():
                raise ValueError(f"distances must be a non-empty list of finite values >= 0, got {distances!r}")
            if samples is not None and check_samples(samples) != dist.numel():
                raise ValueError(f"samples={samples} but {dist.numel()} distances were given")
            self.samples, self.rate = dist.numel(), None
            # oldest first: the largest distance gives the earliest position
            self.register_buffer("distances", dist.sort(descending=True).values, persistent=False)  # (P,)
            return
        self.samples = check_samples(64 if samples is None else samples)
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float))
                                 or not math.isfinite(rate) or not rate > 0):
            raise ValueError(f"rate must be a finite number > 0 for warp={warp!r}, got {rate!r}")
        self.rate = WARPS[warp] if rate is None else float(rate)
        if warp == "exponential" and self.rate > MAX_EXPONENTIAL_RATE:
            raise ValueError(f"rate must be at most {MAX_EXPONENTIAL_RATE:g} for warp='exponential' (e^rate overflows "
                             f"a float64 beyond 709), got {rate!r}")
        self.distances = None
        # fraction of the support from its oldest end, ascending: 1 - d(u) for u descending
        far_to_near = 1 - warp_distances(midpoints(self.samples).flip(0), warp, self.rate)
        self.register_buffer("fractions", far_to_near, persistent=False)  # (P,)

    def extra_repr(self) -> str:
        if self.distances is not None:
            return f"samples={self.samples}, distances={self.distances.tolist()}"
        return f"samples={self.samples}, warp={self.warp!r}, rate={self.rate:g}"

    def positions(self, t: TimeLike, encoder: Encoder) -> Tensor:
        lo, hi = encoder.support(t)
        if self.distances is None:
            return place(self.fractions, lo, hi)
        # t and the support's start, shaped like the positions ((P,) or (nb, P)), by place()'s rules
        end = place(torch.ones_like(self.distances), lo, hi)
        start = place(torch.zeros_like(self.distances), lo, hi)
        return torch.maximum(end - self.distances.to(end), start)


@memplug.hookimpl
def memplug_add_retrievers(registry) -> None:
    registry.add(Warped)
