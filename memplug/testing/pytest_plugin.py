"""pytest plugin: the memplug contract checks as fixtures.

Registered through pytest's own entry point (``pytest11``), so any project with memplug
installed can write::

    def test_my_measure(memplug_check_encoder):
        memplug_check_encoder(MyMeasure(order=16))

Fixtures: ``memplug_check_encoder``, ``memplug_check_retriever``, ``memplug_check_memory``
(the functions of :mod:`memplug.testing`) and ``memplug_strategies``
(:mod:`memplug.testing.strategies`). Each returns the function or module, so options are
passed as usual (``memplug_check_encoder(enc, max_length=16)``).

pytest loads this plugin in every session of an environment where memplug is installed, so it
imports nothing heavy: no torch, NumPy, SciPy or hypothesis until a fixture is used (``memplug``
itself loads its public names on first use). Disable the plugin with ``-p no:memplug``.
"""

from __future__ import annotations

from types import ModuleType
from collections.abc import Callable

import pytest


@pytest.fixture
def memplug_check_encoder() -> Callable[..., None]:
    """:func:`memplug.testing.check_encoder`."""
    from memplug.testing.encoders import check_encoder

    return check_encoder


@pytest.fixture
def memplug_check_retriever() -> Callable[..., None]:
    """:func:`memplug.testing.check_retriever`."""
    from memplug.testing.retrievers import check_retriever

    return check_retriever


@pytest.fixture
def memplug_check_memory() -> Callable[..., None]:
    """:func:`memplug.testing.check_memory`."""
    from memplug.testing.memories import check_memory

    return check_memory


@pytest.fixture
def memplug_strategies() -> ModuleType:
    """:mod:`memplug.testing.strategies`: hypothesis strategies for streams, chunkings, ..."""
    from memplug.testing import strategies

    return strategies

