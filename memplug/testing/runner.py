"""Running one invariant with hypothesis and reporting a violation in words.

Every check in :mod:`memplug.testing` is a list of invariants; each is a function of one drawn
example that raises :class:`Mismatch` (or any exception) when the component breaks it.
:func:`run_invariant` draws examples with hypothesis under the active settings profile,
shrinks a failure to a small example, and raises an :class:`InvariantViolation` (an
``AssertionError``) whose message names the component, the invariant, the example and what
was found.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as Settings
from hypothesis.strategies import SearchStrategy
from torch import Tensor

from memplug.core.contracts import Component

__all__ = [
    "Invariant", "InvariantViolation", "Mismatch", "component", "subject", "kit_settings", "relative_error",
    "expect_close", "expect_gradient", "run_invariant", "run_invariants",
]

Case = TypeVar("Case")
C = TypeVar("C", bound=Component)


class InvariantViolation(AssertionError):
    """A component broke an invariant of its contract; the message says which, where and how."""


class Mismatch(Exception):
    """Raised inside an invariant with what was found (the runner adds the rest)."""


@dataclass(frozen=True)
class Invariant(Generic[Case]):
    """One invariant of a contract: its short ``name``, the property in words (``statement``),
    the examples it is checked on (``cases``) and the check of one example (``check``, which
    raises :class:`Mismatch`, or crashes, when the component breaks the invariant)."""

    name: str
    statement: str
    cases: SearchStrategy[Case]
    check: Callable[[Case], None]


def component(obj_or_factory: C | Callable[[], C], base: type[C], argument: str) -> C:
    """``obj_or_factory`` if it is a ``base``, else what calling it returns (a class, a partial,
    a lambda), checked to be a ``base``."""
    obj = obj_or_factory if isinstance(obj_or_factory, base) else obj_or_factory()
    if not isinstance(obj, base):
        raise TypeError(f"{argument} must be a memplug.{base.__name__} or a callable returning one, "
                        f"got {type(obj).__name__}")
    return obj


def subject(obj: Component) -> str:
    """How messages name a component: ``encoder 'legs' (LegS: order=8, ...)``."""
    extra = obj.extra_repr()
    label = obj.name or type(obj).__name__
    return f"{obj.kind} {label!r} ({type(obj).__name__}{f': {extra}' if extra else ''})"


def kit_settings(base: Settings | None = None) -> Settings:
    """The active hypothesis profile (or ``base``), adapted to contract checks.

    Inherited: the number of examples, derandomisation, database, verbosity, and the phases
    except ``explain``. Changed: no deadline (one example may run whole model forwards), no
    ``too_slow`` / ``data_too_large`` / ``nested_given`` health checks, one reported bug per
    invariant (the checks raise a single kind of error, so several would be the same bug), and
    no ``explain`` phase (a check draws one example object, whose description already says
    what failed; explaining would rerun the failing forwards many times).
    """
    base = Settings() if base is None else base
    suppressed = {*base.suppress_health_check, HealthCheck.too_slow, HealthCheck.data_too_large,
                  HealthCheck.nested_given}
    return Settings(base, deadline=None, suppress_health_check=sorted(suppressed, key=lambda h: h.value),
                    report_multiple_bugs=False, phases=[p for p in base.phases if p != Phase.explain])


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """``max |actual - expected| / max |expected|`` (the absolute error when ``expected`` is 0;
    0 for empty tensors)."""
    if expected.numel() == 0:
        return 0.0
    diff = (actual.detach().to(torch.float64) - expected.detach().to(torch.float64)).abs().max().item()
    scale = expected.detach().to(torch.float64).abs().max().item()
    return diff / scale if scale > 0 else diff


def expect_gradient(name: str, grad: Tensor | None, source: str = "") -> None:
    """Raise :class:`Mismatch` unless parameter ``name`` got a gradient (``source``: from what)
    that is finite and not all zero."""
    if grad is None:
        raise Mismatch(f"parameter {name} got no gradient{source}")
    if not torch.isfinite(grad).all():
        raise Mismatch(f"parameter {name} got a non-finite gradient")
    if not grad.abs().max() > 0:
        raise Mismatch(f"parameter {name} got an all-zero gradient")


def expect_close(actual: Tensor, expected: Tensor, tolerance: float, what: str) -> None:
    """Raise :class:`Mismatch` unless shapes agree and ``relative_error <= tolerance``."""
    if tuple(actual.shape) != tuple(expected.shape):
        raise Mismatch(f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}")
    if not torch.isfinite(actual).all():
        raise Mismatch(f"{what}: non-finite values")
    err = relative_error(actual, expected)
    if not err <= tolerance:
        raise Mismatch(f"{what}: relative error {err:.3g} (allowed {tolerance:.3g})")


def _describe(case: Any) -> str:
    describe = getattr(case, "describe", None)
    return describe() if callable(describe) else repr(case)


def _violation(subject: str, invariant: str, statement: str, case: Any, found: str) -> InvariantViolation:
    return InvariantViolation(
        f"{subject} breaks the invariant {invariant!r}: {statement}\n"
        f"  example: {_describe(case)}\n"
        f"  found: {found}"
    )


def run_invariant(
    subject: str,
    invariant: str,
    statement: str,
    cases: SearchStrategy[Case],
    body: Callable[[Case], None],
    settings: Settings | None = None,
) -> None:
    """Check ``body`` on examples drawn from ``cases``; raise :class:`InvariantViolation` on the
    smallest failing one.

    ``subject`` names the component ("encoder 'legs' (LegS)"), ``invariant`` is the short name
    and ``statement`` the property in words. Any exception ``body`` raises counts as a violation
    (a component that crashes on a valid input breaks its contract too); it is chained as the
    violation's cause.
    """

    def check(case: Case) -> None:
        try:
            body(case)
        except Mismatch as found:
            error = _violation(subject, invariant, statement, case, str(found))
            cause: BaseException | None = None
        except Exception as exc:  # noqa: BLE001 - any crash on a valid input is a violation
            error = _violation(subject, invariant, statement, case, f"{type(exc).__name__}: {exc}")
            cause = exc
        else:
            return
        raise error from cause

    kit_settings(settings)(given(cases)(check))()


def run_invariants(subject: str, invariants: Iterable[Invariant[Any]], settings: Settings | None = None) -> None:
    """:func:`run_invariant` for each of ``invariants`` in turn: the first broken one raises."""
    for invariant in invariants:
        run_invariant(subject, invariant.name, invariant.statement, invariant.cases, invariant.check, settings)
