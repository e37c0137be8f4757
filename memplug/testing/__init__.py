"""memplug.testing: property checks of the component contracts, for plugin authors.

Like scikit-learn's ``check_estimator``, each check runs the contract of one kind of component
(:mod:`memplug.core.contracts`: streaming equals one call, the block form equals the step form,
linearity, ...) with hypothesis and raises an ``AssertionError`` naming the broken invariant,
the shrunk failing example and the error found::

    from memplug.testing import check_encoder, check_retriever, check_memory

    check_encoder(MyMeasure(order=16))
    check_retriever(MySampler(samples=8))
    check_memory(lambda layer: MyMemory())

The number of examples comes from the active hypothesis settings profile.
:mod:`memplug.testing.strategies` holds the strategies the checks draw from, and the pytest
plugin (:mod:`memplug.testing.pytest_plugin`, registered through pytest's entry point) offers
them as fixtures. The checks are imported on first use, so loading the pytest plugin costs
nothing beyond ``import memplug``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__all__ = ["check_encoder", "check_retriever", "check_memory", "InvariantViolation"]

_HOMES = {
    "check_encoder": "memplug.testing.encoders",
    "check_retriever": "memplug.testing.retrievers",
    "check_memory": "memplug.testing.memories",
    "InvariantViolation": "memplug.testing.runner",
}

if TYPE_CHECKING:
    from .encoders import check_encoder
    from .memories import check_memory
    from .retrievers import check_retriever
    from .runner import InvariantViolation


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        try:
            module = import_module(_HOMES[name])
        except ModuleNotFoundError as exc:
            if exc.name != "hypothesis":
                raise
            raise ModuleNotFoundError(
                "memplug.testing needs hypothesis: pip install 'memplug[testing]'", name="hypothesis"
            ) from exc
        return getattr(module, name)
    raise AttributeError(f"module 'memplug.testing' has no attribute {name!r}")
