"""Hypothesis settings for this package's tests: the memplug checks take their number of
examples from the active profile (derandomized here, so a failure reproduces)."""

from hypothesis import settings

settings.register_profile("example", derandomize=True, max_examples=20, deadline=None)
settings.load_profile("example")
