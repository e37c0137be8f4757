"""The HiPPO mathematics: measures (scale-invariant and time-invariant bases) and the pure
functions they are built from (Legendre evaluation, quadrature, discretisations, block scans)."""
