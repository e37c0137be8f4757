"""The import structure: no cycles, every module importable on its own, a light ``import memplug``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: source folder -> the package name it installs as
SOURCES = {"memplug": "memplug", "plugins": "memplug.plugins", "backbones": "memplug.backbones"}


def modules() -> dict[str, Path]:
    """Every module of the distribution by its installed dotted name."""
    found = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The memplug modules ``name`` imports anywhere in its file (function-level and type-only
    imports included: a cycle through them is still a cycle for the reader)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # "from pkg import sub" imports the submodule pkg.sub when there is one
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_graph_has_no_cycle():
    mods = modules()
    graph = {name: imported(name, path, set(mods)) for name, path in mods.items()}
    # the package itself is imported by plugins for `memplug.hookimpl`; its own imports are the public API
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_every_module_imports_on_its_own():
    """Each module imported first in a clean module table, so none relies on another having been
    imported before it. One interpreter: torch and the other third-party modules stay loaded."""
    names = sorted(name for name in modules() if not name.endswith(".__main__"))  # __main__ runs the CLI
    code = (
        "import importlib, sys, torch\n"
        f"names = {names!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 'memplug' or m.startswith('memplug.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {type(exc).__name__}: {exc}')\n"
        "print('\\n'.join(failed))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", result.stdout


def test_import_memplug_loads_no_application_code():
    """``import memplug`` gives the public API without training, evaluation, the CLI or any plugin."""
    code = (
        "import sys, memplug\n"
        # the public names load on first use; attach is the Hugging Face adapter, a backbone plugin
        "api = [getattr(memplug, name) for name in memplug.__all__ if name != 'attach']\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('memplug.'))\n"
        "print('\\n'.join(loaded))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert "memplug.core.model" in loaded  # the public API is there
    heavy = [m for m in loaded if m.startswith(("memplug.app", "memplug.data", "memplug.tasks", "memplug.plugins",
                                                "memplug.backbones", "memplug.testing"))]
    assert heavy == []
