"""The tutorials under docs/tutorials run as written: each page's ```python blocks in order, in a
fresh process (```py and ```bash blocks are shown, not run). Their assertions are part of the
page: the custom sampler's recovers the state through Gauss quadrature."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs" / "tutorials"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def run_page(page: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    blocks = BLOCK.findall(page.read_text())
    assert blocks, f"{page.name} has no python blocks"
    script = tmp_path / "tutorial.py"
    script.write_text("\n\n".join(blocks))
    env = {**os.environ, "MEMPLUG_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=900)


def test_custom_sampler_tutorial_runs(tmp_path):
    result = run_page(DOCS / "custom-sampler.md", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    conditions = dict(re.findall(r"^(\w+)\s+condition number\s+([\d.]+)$", result.stdout, re.M))
    assert float(conditions["gauss"]) < 10 < 1000 < float(conditions["uniform"])  # what the page says


@pytest.mark.slow  # trains four small models
def test_compare_memories_tutorial_runs(tmp_path):
    result = run_page(DOCS / "compare-memories.md", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+) \| (\S+) \|$", result.stdout, re.M)
    assert [r[0] for r in rows] == ["none", "xl", "knn", "elastic"]
    assert rows[0][3] in ("+0.000", "-0.000")  # masking "none", which holds nothing, changes nothing


def test_attach_and_finetune_tutorial_runs(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    result = run_page(DOCS / "attach-and-finetune.md", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    gap = float(re.search(r"local window at initialisation: (\S+)", result.stdout).group(1))
    assert gap < 1e-5  # what the page says
    stored = re.search(r"^stored: (.*)$", result.stdout, re.M).group(1)
    assert stored == "['attn.0.gate', 'attn.1.gate']"


def test_every_tutorial_is_tested():
    assert sorted(p.name for p in DOCS.glob("*.md")) == ["attach-and-finetune.md", "compare-memories.md",
                                                          "custom-sampler.md"]
