"""The README's Python examples run as written (each file's blocks in order, in a fresh process).

Blocks fenced as ```python run; blocks fenced as ```py need downloads or optional packages
(the SmolLM2 wheel) and are shown, not run: tests/test_hf.py covers that path.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


@pytest.mark.parametrize("doc", ["README.md"])
def test_examples_run(doc, tmp_path):
    blocks = python_blocks(ROOT / doc)
    assert blocks, f"{doc} has no python examples"
    script = tmp_path / "examples.py"
    script.write_text("\n\n".join(blocks))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
