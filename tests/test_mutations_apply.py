"""tools/mutate.py's curated mutations still fit the code.

Running them takes minutes (each one is its own pytest run), so it is done before a release, not
in CI; but a mutation whose snippet has moved reports "not applied" and silently guards nothing.
This checks, in a second, that every snippet occurs exactly once where the mutation says, that the
mutant differs from it, and that every test it names exists.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_mutate():
    spec = importlib.util.spec_from_file_location("memplug_tools_mutate", ROOT / "tools" / "mutate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


MUTATE = _load_mutate()


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_mutation_ids_are_unique():
    ids = [mutation.id for mutation in MUTATE.MUTATIONS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("mutation", MUTATE.MUTATIONS, ids=lambda mutation: mutation.id)
def test_mutation_applies_once_and_names_existing_tests(mutation):
    text = (ROOT / mutation.file).read_text()
    assert MUTATE.occurrences(text, mutation.old) == 1, f"{mutation.id}: the snippet moved in {mutation.file}"
    assert mutation.new != mutation.old
    assert mutation.tests
    for node in mutation.tests:
        file, _, rest = node.partition("::")
        assert (ROOT / file).is_file(), f"{mutation.id}: no test file {file}"
        if rest:
            name = rest.split("[")[0]
            assert name in _test_names(ROOT / file), f"{mutation.id}: no test {name} in {file}"
