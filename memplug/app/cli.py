"""The ``memplug`` command line: a dispatcher over sub-commands that plugins contribute.

Every sub-command comes from a ``memplug_add_commands(commands)`` hook. The built-in ones are
those of the modules in :data:`BUILTIN_COMMANDS` (registered with the plugin manager only when
the command line runs, so library code never imports them); an installed package adds its own
through the same hook and the ``memplug`` entry-point group. ``MEMPLUG_TRACE=1`` prints every
hook call (pluggy's tracing).

``memplug --no-plugins CMD ...`` loads no third-party plugin (as ``MEMPLUG_DISABLE_PLUGIN_AUTOLOAD=1``
does): under ``python -m memplug`` the working directory is on ``sys.path``, and a ``*.dist-info``
folder there would otherwise be imported as an installed plugin.

A wrong argument is one line on stderr (``memplug eval: error: argument --windows: ...``) and
exit status 2, never a usage dump or a traceback.
"""

from __future__ import annotations

import argparse
import os
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import import_module

from ..core.hookspecs import hookimpl
from ..core.manager import (
    BUILTIN_PROVIDER,
    DISABLE_ENV,
    KINDS,
    VERSION,
    call_each,
    get_plugin_manager,
    reset_plugin_manager,
)
from ..core.registry import PluginError

__all__ = ["BUILTIN_COMMANDS", "Command", "Commands", "load_commands", "main"]

#: Modules whose ``memplug_add_commands`` hook adds the built-in sub-commands.
BUILTIN_COMMANDS: tuple[str, ...] = (
    "memplug.app.cli",
    "memplug.app.train",
    "memplug.app.evaluate",
    "memplug.data.cli",
    "memplug.tasks.cli",
    "memplug.app.demo",
    "memplug.app.reconstruct",
    "memplug.probes.cli",
    "memplug.app.examples",
)


@dataclass(frozen=True)
class Command:
    """One sub-command: its ``name``, one line of ``help``, how it reads its arguments and what it runs."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    provider: str


class Commands:
    """The sub-commands, by unique name; what ``memplug_add_commands`` hooks receive."""

    def __init__(self) -> None:
        self.provider = "code"  # set by call_each while a plugin's hook runs
        self._commands: dict[str, Command] = {}

    def add(self, name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None],
            run: Callable[[argparse.Namespace], int | None]) -> None:
        """Add sub-command ``name``; a name already taken is a :class:`PluginError` naming both providers."""
        old = self._commands.get(name)
        if old is not None:
            raise PluginError(f"duplicate memplug sub-command {name!r}: provided by {old.provider} and by {self.provider}")
        self._commands[name] = Command(name, help, add_arguments, run, self.provider)

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())

    def __getitem__(self, name: str) -> Command:
        return self._commands[name]


def load_commands() -> Commands:
    """Every sub-command: the built-in command modules' and those of installed plugins."""
    plugins = get_plugin_manager()
    for module in BUILTIN_COMMANDS:
        if not plugins.pm.has_plugin(module):
            plugins.pm.register(import_module(module), name=module)
            plugins.providers[module] = BUILTIN_PROVIDER
    commands = Commands()
    call_each(plugins.pm, "memplug_add_commands", commands, plugins.providers)
    return commands


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


@hookimpl
def memplug_add_commands(registry: Commands) -> None:
    registry.add("plugins", "list every plugin by kind, name and providing distribution", _plugins_args, _plugins_run)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``PROG: error: MESSAGE (see PROG --help)``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


NO_PLUGINS = "--no-plugins"


def _skip_plugins(argv: list[str]) -> bool:
    """Whether ``--no-plugins`` comes before the sub-command (it decides which sub-commands exist,
    so it is read before the arguments are parsed)."""
    for arg in argv:
        if arg == NO_PLUGINS:
            return True
        if not arg.startswith("-"):
            return False
    return False


class _Stderr(logging.StreamHandler):
    """Writes each record to ``sys.stderr`` as it is at that moment, so a later redirection (a
    test's captured stderr) still applies."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def show_log_messages() -> None:
    """Show the library's log messages (the ``memplug`` logger, INFO and above) on stderr, once.

    The command line calls this; as a library memplug adds no handler (configure
    ``logging.getLogger("memplug")`` as you like).
    """
    log = logging.getLogger("memplug")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("memplug: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action) or ""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if _skip_plugins(argv):
        os.environ[DISABLE_ENV] = "1"  # this process loads no third-party plugin from here on
        reset_plugin_manager()
    show_log_messages()
    commands = load_commands()
    parser = _Parser(prog="memplug", description="memplug: memory plugins for transformers")
    parser.add_argument("--version", action="version", version=f"memplug {VERSION}")
    parser.add_argument(NO_PLUGINS, action="store_true",
                        help=f"load no third-party plugin (entry points), as {DISABLE_ENV}=1 does")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        command.add_arguments(sub.add_parser(command.name, help=command.help, description=command.help,
                                             formatter_class=_HelpFormatter))
    args = parser.parse_args(argv)
    return int(commands[args.command].run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
