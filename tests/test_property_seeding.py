"""Property tests replay: no tensor inside a ``@given`` test comes from an unseeded global generator.

Hypothesis derandomizes what it draws, not torch's global generator: a tensor drawn with
``torch.randn(...)`` inside a property test differs from one run to the next, so a failure
found once may never replay from the example hypothesis prints. Every random tensor there
must come from a generator seeded with a drawn value (``generator=torch.Generator().manual_seed(seed)``),
or after ``torch.manual_seed(seed)`` in the same function.

This reads the test sources: each ``@given`` test or ``@st.composite`` strategy, and the
functions it calls from its own module or from the shared helper modules, transitively.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
#: Helper modules whose functions property tests call.
SHARED = ("streams.py", "reference.py", "train_helpers.py")
#: torch functions that draw from a generator (the global one unless ``generator=`` is given).
DRAWS = {"randn", "rand", "randint", "randn_like", "rand_like", "randint_like", "randperm", "normal", "bernoulli",
         "multinomial", "normal_", "uniform_", "random_", "exponential_", "bernoulli_"}


def functions(path: Path) -> dict[str, ast.FunctionDef]:
    return {node.name: node for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}


SHARED_FUNCTIONS = {name: fn for module in SHARED for name, fn in functions(TESTS / module).items()}


def is_property(fn: ast.FunctionDef) -> bool:
    names = {ast.unparse(d).split("(")[0] for d in fn.decorator_list}
    return bool(names & {"given", "st.composite", "composite"})


def unseeded_draws(fn: ast.FunctionDef, scope: dict[str, ast.FunctionDef], seen: set[str]) -> list[str]:
    """Calls in ``fn`` (and the functions of ``scope`` it calls) that draw from torch's global
    generator without having seeded it, as ``function: source``."""
    calls = [node for node in ast.walk(fn) if isinstance(node, ast.Call)]
    seeds_global = any(ast.unparse(c.func) == "torch.manual_seed" for c in calls)
    found = []
    for call in calls:
        name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
        if isinstance(call.func, ast.Attribute) and name in DRAWS and not seeds_global:
            if not any(k.arg == "generator" for k in call.keywords) and "Generator" not in ast.unparse(call):
                owner = ast.unparse(call.func.value)
                if owner in ("torch", "np.random", "numpy.random") or name.endswith("_") or name.endswith("_like"):
                    found.append(f"{fn.name}: {ast.unparse(call)}")
        if isinstance(call.func, ast.Name) and name in scope and name not in seen:
            seen.add(name)
            found += unseeded_draws(scope[name], scope, seen)
    return found


@pytest.mark.parametrize("path", sorted(TESTS.glob("test_*.py")) + [TESTS / m for m in SHARED], ids=lambda p: p.name)
def test_property_tests_draw_tensors_from_drawn_seeds(path):
    local = functions(path)
    scope = {**SHARED_FUNCTIONS, **local}
    bad = [draw for fn in local.values() if is_property(fn) for draw in unseeded_draws(fn, scope, {fn.name})]
    assert not bad, f"{path.name}: unseeded random draws inside property tests: {bad}"


def test_the_scan_sees_an_unseeded_draw(tmp_path):
    """The check above finds the two ways a draw slips in: directly, and through a helper."""
    source = (
        "from hypothesis import given\n"
        "import torch\n"
        "def helper(n):\n"
        "    return torch.randn(n) + torch.randn(n, generator=torch.Generator().manual_seed(n))\n"
        "@given(st.integers())\n"
        "def test_direct(n):\n"
        "    x = torch.rand(3)\n"
        "@given(st.integers())\n"
        "def test_helper(n):\n"
        "    helper(n)\n"
        "@given(st.integers())\n"
        "def test_seeded(n):\n"
        "    torch.manual_seed(n)\n"
        "    x = torch.rand(3)\n"
    )
    (tmp_path / "test_example.py").write_text(source)
    local = functions(tmp_path / "test_example.py")
    found = {fn.name: unseeded_draws(fn, local, {fn.name}) for fn in local.values() if is_property(fn)}
    assert found == {"test_direct": ["test_direct: torch.rand(3)"], "test_helper": ["helper: torch.randn(n)"],
                     "test_seeded": []}
