"""Redraw reports' figures from their JSON alone, without rerunning what measured them.

    python benchmarks/replot.py docs/results/throughput_memories.json docs/results/gpu/throughput.json

A report's JSON names the command that wrote it; that command's script draws the figure with its
``figure(data)`` from the JSON's ``data``, as it does at the end of a run. ``NAME.png`` is
written beside the JSON, and ``NAME.md`` gets the link to it if it lacks one. It serves reports
written before their script drew a figure (hours of CPU, or a GPU session, to rerun) and
figures whose drawing has changed since.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
from pathlib import Path

import common

from memplug.util.atomic import atomic_write_bytes


def replot(path: Path) -> Path:
    """Draw ``path``'s figure next to it and link it from its Markdown; returns the PNG path."""
    facts = json.loads(path.read_text())
    found = re.search(r"(\w+)\.py\b", facts.get("command", ""))
    if found is None:
        raise SystemExit(f"{path}: its command {facts.get('command')!r} names no benchmarks/*.py script")
    module = importlib.import_module(found.group(1))
    if not hasattr(module, "figure"):
        raise SystemExit(f"{path}: benchmarks/{found.group(1)}.py draws its figure during the run, not from the JSON "
                         "(no figure(data)); rerun its command to redraw it")
    link = common.figure_markdown(path.parent, path.stem, module.figure(facts["data"]))
    markdown = path.with_suffix(".md")
    text = markdown.read_text()
    if link.strip() not in text:
        atomic_write_bytes(markdown, (text.rstrip() + link).encode())
    return path.with_suffix(".png")


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="NAME.json files written by benchmarks/*.py")
    args = parser.parse_args(argv)
    drawn = [replot(path) for path in args.reports]
    for png in drawn:
        print(f"wrote {png}")
    return drawn


if __name__ == "__main__":
    main()
