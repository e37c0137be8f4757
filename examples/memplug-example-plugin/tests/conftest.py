"""Hypothesis settings for this package's tests: the memplug checks take their number of
examples from the active profile (derandomized here, so a failure reproduces)."""

import os

from hypothesis import settings

settings.register_profile(
    "example", derandomize=True, deadline=None, max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "20"))
)
settings.load_profile("example")
