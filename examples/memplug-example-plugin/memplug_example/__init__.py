"""An example memplug plugin package: a custom measure and a custom sampler.

- :class:`memplug_example.measure.Primacy`: a scale-invariant HiPPO measure that weighs the
  beginning of the stream more (weight ``(s/t)^-1/2``), registered as ``"primacy"``;
- :class:`memplug_example.sampler.Chebyshev`: samples the compressed history at Chebyshev
  points, registered as ``"chebyshev"``.

Both register through the ``memplug`` entry-point group in ``pyproject.toml`` and are tested
with :mod:`memplug.testing` (``tests/test_plugins.py``).
"""
