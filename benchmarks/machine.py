"""What a benchmark result records about where and how it was produced."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys

import torch


def machine() -> dict[str, str | int]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def provenance() -> dict:
    """Machine, UTC date and the exact command line."""
    return {
        "machine": machine(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
    }


def provenance_markdown(meta: dict) -> str:
    m = meta["machine"]
    return (f"- machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}, GPU {m['gpu']}; "
            f"Python {m['python']}, torch {m['torch']}\n- date: {meta['date']}\n- command: `{meta['command']}`\n")
