"""The ``memplug`` command line: one sub-command per job, each in its own module.

Sub-commands register themselves in :data:`COMMANDS` as ``name -> (help, add_arguments, run)``
so this file stays a dispatcher.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ..core.manager import KINDS, get_plugin_manager

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int | None]]


def _plugins_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=sorted(KINDS), help="only this kind")


def _plugins_run(args: argparse.Namespace) -> int:
    plugins = get_plugin_manager()
    rows = []
    for kind, reg in plugins.registries.items():
        if args.kind and kind != args.kind:
            continue
        for name, entry in reg.entries().items():
            rows.append((kind, name, entry.provider))
    width = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("kind", "name", "provider"))]
    print("  ".join(h.ljust(w) for h, w in zip(("kind", "name", "provider"), width)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, width)))
    for name, error in plugins.failures.items():
        print(f"failed to load plugin {name!r}: {error}", file=sys.stderr)
    return 0


COMMANDS: dict[str, Command] = {
    "plugins": ("list every plugin by kind, name and providing distribution", _plugins_args, _plugins_run),
}


def _load_commands() -> None:
    """Import the modules that add sub-commands (kept lazy: torch-heavy imports happen here)."""
    from importlib import import_module

    for module in ("memplug.app.reconstruct", "memplug.app.train", "memplug.app.evaluate", "memplug.data.cli", "memplug.app.demo",
                   "memplug.tasks.cli"):
        try:
            import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def main(argv: Sequence[str] | None = None) -> int:
    _load_commands()
    parser = argparse.ArgumentParser(prog="memplug", description="memplug: memory plugins for transformers")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    args = parser.parse_args(argv)
    return int(COMMANDS[args.command][2](args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
