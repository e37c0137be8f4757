"""``memplug data``: list the registered datasets and prepare their splits."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys

from ..core.hookspecs import hookimpl
from ..app.arguments import fraction, non_negative_int_arg, one_line
from ..app.config import ConfigError, parse_pairs
from ..core.manager import registry
from ..core.contracts import SourceMissingError
from .literature import Literature, fetch_command
from .prepare import get_dataset, prepare


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)
    sub.add_parser("list", help="registered datasets and whether their source is here")
    prep = sub.add_parser("prepare", help="build the document-level train/validation/test splits (cached)")
    prep.add_argument("name", help="dataset name (see `memplug data list`)")
    prep.add_argument("--validation", type=fraction, default=0.05, help="fraction of groups for validation")
    prep.add_argument("--test", type=fraction, default=0.05, help="fraction of groups for test")
    prep.add_argument("--seed", type=non_negative_int_arg, default=0, help="seed of the partition")
    prep.add_argument("--force", action="store_true", help="rebuild even when cached")
    prep.add_argument("--fetch", action="store_true", help="download a missing source first (literature)")
    prep.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="dataset option")


def _run(args: argparse.Namespace) -> int:
    if args.data_command == "list":
        for name, entry in registry("dataset").entries().items():
            try:
                status = "ready: " + get_dataset(name).source()
            except SourceMissingError as exc:
                status = "missing: " + str(exc).splitlines()[-1].strip()
            print(f"{name:<12} {entry.cls.description}\n{'':<12} ({entry.provider}) {status}")
        return 0
    try:
        options = parse_pairs(args.option, "--option", typed=False)
        dataset = get_dataset(args.name, **options)
    except (ConfigError, KeyError, ValueError) as exc:
        print(f"memplug data prepare: error: {one_line(exc)}", file=sys.stderr)
        return 2
    if args.fetch and isinstance(dataset, Literature):
        try:
            dataset.source()
        except SourceMissingError:
            command = fetch_command()
            print(f"fetching: {command}", file=sys.stderr)
            if subprocess.run([sys.executable, *shlex.split(command)[1:]], check=False).returncode:
                print(f"memplug data prepare: error: the download failed: {command}", file=sys.stderr)
                return 1
    try:
        prepared = prepare(dataset, validation=args.validation, test=args.test, seed=args.seed,
                           force=args.force, progress=lambda m: print(m, file=sys.stderr))
    except (SourceMissingError, ValueError) as exc:
        print(f"memplug data prepare: error: {one_line(exc)}", file=sys.stderr)
        return 2
    print(prepared.summary())
    return 0


@hookimpl
def memplug_add_commands(registry) -> None:
    registry.add("data", "prepare and list corpora (document-level splits, cached)", _add_arguments, _run)
