"""The example experiment configs shipped with the package, and ``memplug init``, which writes them.

The configs live in the source tree's ``configs/`` folder and install as the package data of
``memplug.configs``; ``memplug init`` copies them (all, or those named) into ``configs/`` of the
current folder, so ``memplug train configs/default.toml`` works from a wheel install too.
Existing files are kept unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path

from ..core.hookspecs import hookimpl
from ..util.atomic import atomic_write_bytes

__all__ = ["example_configs", "write_examples"]


def example_configs() -> dict[str, str]:
    """The example configs by name (the file name without ``.toml``) -> TOML text."""
    folder = files("memplug.configs")
    return {entry.name[: -len(".toml")]: entry.read_text(encoding="utf-8")
            for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".toml")}


def write_examples(directory: str | Path, names: list[str] | None = None, *, force: bool = False) -> list[Path]:
    """Write the example configs ``names`` (default: all) into ``directory`` as ``NAME.toml``.

    Raises ``ValueError`` for an unknown name and ``FileExistsError`` when a file is already there
    (unless ``force``); either way nothing is written.
    """
    examples = example_configs()
    names = list(examples) if not names else names
    unknown = [n for n in names if n not in examples]
    if unknown:
        raise ValueError(f"unknown example config {', '.join(map(repr, unknown))}; available: {', '.join(examples)}")
    directory = Path(directory)
    targets = {name: directory / f"{name}.toml" for name in names}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                              "pass --force to overwrite")
    for name, path in targets.items():
        atomic_write_bytes(path, examples[name].encode("utf-8"))
    return list(targets.values())


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("names", nargs="*", metavar="NAME", help="example configs to write (default: all)")
    parser.add_argument("--dir", default="configs", help="folder to write them into")
    parser.add_argument("--force", action="store_true", help="overwrite files that exist")
    parser.add_argument("--list", action="store_true", help="list the example configs and write nothing")


def _run(args: argparse.Namespace) -> int:
    if args.list:
        for name, text in example_configs().items():
            first = text.splitlines()[0].lstrip("# ") if text else ""
            print(f"{name:24s} {first}")
        return 0
    try:
        written = write_examples(args.dir, args.names, force=args.force)
    except (ValueError, FileExistsError) as exc:
        print(f"memplug init: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


@hookimpl
def memplug_add_commands(registry) -> None:
    registry.add("init", "write the example experiment configs (configs/*.toml) into a folder", _add_arguments, _run)
