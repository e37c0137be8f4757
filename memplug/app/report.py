"""Results files: every number in docs/results/ comes with the machine, date and command.

``write_report(directory, name, markdown, data)`` writes ``NAME.md`` (a header naming the
machine, the date, the command line and the wall-clock, then the body) and ``NAME.json`` (the
same facts and the raw data), each atomically; :func:`figure_markdown` draws ``NAME.png`` and
gives the Markdown that shows it.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from ..util.atomic import atomic_write_bytes
from .precision import Precision


def machine() -> dict[str, Any]:
    """What ran it: CPU, cores, threads, torch build and accelerator."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def command_line() -> str:
    """The command that is running, as one could type it again."""
    argv = list(sys.argv)
    if argv and argv[0].endswith("__main__.py"):
        argv[0] = "python -m " + Path(argv[0]).parent.name
    elif argv and argv[0].endswith(".py"):
        argv[0] = "python " + argv[0]
    elif argv:
        argv[0] = Path(argv[0]).name  # a console script such as `memplug`
    return " ".join(shlex.quote(a) if i else a for i, a in enumerate(argv))


def write_report(
    directory: str | Path,
    name: str,
    markdown: str,
    data: dict[str, Any],
    *,
    title: str,
    seconds: float | None = None,
    precision: Precision | None = None,
) -> Path:
    """Write ``directory/NAME.md`` and ``directory/NAME.json``; returns the Markdown path.

    ``precision``, when given, is stated in the header with the reason it was chosen."""
    directory = Path(directory)
    facts = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "command": command_line(),
        "machine": machine(),
        "wall_clock_s": None if seconds is None else round(seconds, 1),
    }
    if precision is not None:
        facts["precision"] = {"name": precision.name, "reason": precision.reason}
    m = facts["machine"]
    header = [
        f"# {title}",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads)"
        + (f", {m['gpu']}" if "gpu" in m else "")
        + f"; torch {m['torch']}, Python {m['python']}",
        f"- date: {facts['date']}",
        f"- command: `{facts['command']}`",
    ]
    if precision is not None:
        header.append(f"- precision: {precision}")
    if seconds is not None:
        header.append(f"- wall-clock: {seconds / 60:.1f} min")
    atomic_write_bytes(directory / f"{name}.md", ("\n".join(header) + "\n\n" + markdown.rstrip() + "\n").encode())
    atomic_write_bytes(directory / f"{name}.json", (json.dumps({**facts, "data": data}, indent=1, default=str) + "\n").encode())
    return directory / f"{name}.md"


def plot(path: str | Path, draw: Callable[[Any], None], size: tuple[float, float] = (8, 4.5)) -> None:
    """A PNG at ``path`` drawn by ``draw(plt)`` (matplotlib, headless), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure(figsize=size)
    draw(plt)
    plt.tight_layout()
    png = io.BytesIO()
    plt.savefig(png, format="png", dpi=100)
    plt.close("all")
    atomic_write_bytes(Path(path), png.getvalue())


def figure_markdown(directory: str | Path, name: str, draw: Callable[[Any], None],
                    size: tuple[float, float] = (8, 4.5)) -> str:
    """Draw ``directory/NAME.png`` and return the Markdown that shows it under a report's table."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plot(directory / f"{name}.png", draw, size)
    return f"\n\n![{name}]({name}.png)\n"
