"""The pytest11 plugin loads in every pytest session of an environment with memplug installed,
so importing it must cost nothing heavy: no torch until a memplug name or fixture is used."""

from __future__ import annotations

import subprocess
import sys


def test_loading_the_pytest_plugin_imports_no_torch():
    code = (
        "import sys, importlib.metadata as m\n"
        "(ep,) = [e for e in m.entry_points(group='pytest11') if e.name == 'memplug']\n"
        "ep.load()\n"
        "heavy = [n for n in ('torch', 'numpy', 'scipy', 'hypothesis') if n in sys.modules]\n"
        "print(' '.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == []


def test_the_public_names_load_on_first_use():
    code = (
        "import sys, memplug\n"
        "before = 'torch' in sys.modules\n"
        "model = memplug.build_model('tiny', memory=None, block=4, backbone_options=dict(d_model=8, n_layers=1, n_heads=1, vocab_size=16))\n"
        "print(before, 'torch' in sys.modules, type(model).__name__, sorted(set(memplug.__all__) - set(dir(memplug))))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().split(maxsplit=3) == ["False", "True", "MemoryModel", "[]"]
