"""``primacy``: a scale-invariant measure that keeps the start of the stream sharper.

Measure: ``ω_t(s) = (s/t)^β / t`` on ``[0, t]`` with ``β = -1/2``: the weight grows towards
``s = 0``, so the projection spends more of its N coefficients on the oldest tokens (a prompt,
a file header, the opening of a story) than LegS does, and less on the recent past (which the
local attention block sees anyway). Basis: the orthonormal Jacobi polynomials for the weight
``u^β`` on ``[0, 1]``. Support: ``[0, t]``.

Everything (exact block update, ``scan``, ``basis``) comes from
:class:`memplug.hippo.scale_invariant.ScaleInvariantMeasure`; a measure of this family only chooses β.
"""

from __future__ import annotations

import memplug
from memplug.hippo.scale_invariant import ScaleInvariantMeasure

PRIMACY_BETA = -0.5


class Primacy(ScaleInvariantMeasure):
    """Scale-invariant measure with weight ``(s/t)^-1/2``: the start of the stream weighs most."""

    name = "primacy"

    def __init__(self, order: int = 64, **kwargs) -> None:
        super().__init__(order, beta=PRIMACY_BETA, **kwargs)


@memplug.hookimpl
def memplug_add_encoders(registry) -> None:
    registry.add(Primacy)
