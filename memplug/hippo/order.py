"""The one check of a measure's order N, shared by every HiPPO measure.

A measure builds (N, N) transition matrices in float64 and caches them per block, so N sets the
memory a measure needs before it sees a token: N = 4096 already means 128 MiB per matrix. An
order above :data:`MAX_ORDER` is refused at construction, before anything is allocated.
"""

from __future__ import annotations

from ..util.checks import positive_int

__all__ = ["MAX_ORDER", "check_order"]

#: Far above any order a memory uses (the paper's go up to a few hundred).
MAX_ORDER = 4096


def check_order(order: object) -> int:
    """``order`` if it is an int in [1, MAX_ORDER], else a ValueError naming it."""
    positive_int("order", order)
    if order > MAX_ORDER:
        raise ValueError(f"order must be at most {MAX_ORDER} (each (N, N) transition matrix alone takes "
                         f"{8 * order * order / 2**30:.3g} GiB at order={order}), got {order!r}")
    return order
