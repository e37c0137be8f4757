"""Shared test set-up: hypothesis profiles, determinism and float32.

Profiles: ``ci`` (derandomized, so a failure reproduces; the default) and ``dev`` (random,
more examples). Pick one with ``HYPOTHESIS_PROFILE=dev``. The number of examples is set here,
never in the tests.
"""

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from memplug.app.precision import ENV

settings.register_profile(
    "ci",
    deadline=None,
    derandomize=True,
    max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", "25")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: the evidence scripts, run as ``python benchmarks/NAME.py`` (their folder is then on sys.path)
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def benchmarks_on_path():
    """``import throughput`` etc. in a test module that asks for it (``pytestmark``), as the
    scripts import each other when run."""
    sys.path.insert(0, str(BENCHMARKS))
    yield
    sys.path.remove(str(BENCHMARKS))


# Under pytest-xdist each worker gets one thread, so two workers share the two cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _float32_where_auto(monkeypatch):
    """``auto`` precision means float32 in every test: it picks bf16 on CPUs with fast bf16
    matrix instructions and float32 elsewhere, and a test's reference must not depend on the CPU.
    The bf16 path is tested where a test asks for it (``precision="bf16"``, or its own ``ENV``)."""
    monkeypatch.setenv(ENV, "fp32")
