"""The ``memplug`` command line itself: one-line argument errors, and --no-plugins against plugins
found in the working directory (memplug.app.cli)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from memplug.app.cli import main

PLANTED = '''
from pathlib import Path

import memplug
from memplug.plugins.encoders.legs import LegS

Path("plugin-was-imported").touch()


class FromCwd(LegS):
    name = "from-cwd"


@memplug.hookimpl
def memplug_add_encoders(registry):
    registry.add(FromCwd)
'''


def _plant_distribution(folder: Path) -> None:
    """A ``*.dist-info`` and its module in ``folder``: what ``python -m memplug`` finds on sys.path
    when ``folder`` is the working directory."""
    dist = folder / "planted-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: planted\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[memplug]\nplanted = planted_plugin\n")
    (folder / "planted_plugin.py").write_text(PLANTED)


def _memplug(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MEMPLUG_DISABLE_PLUGIN_AUTOLOAD"}
    return subprocess.run([sys.executable, "-m", "memplug", *args], cwd=cwd, env=env, capture_output=True, text=True)


def test_no_plugins_ignores_a_distribution_in_the_working_directory(tmp_path):
    _plant_distribution(tmp_path)
    found = _memplug(tmp_path, "plugins", "--kind", "encoder")
    assert found.returncode == 0 and "from-cwd" in found.stdout  # what the documentation warns about
    assert (tmp_path / "plugin-was-imported").exists()
    (tmp_path / "plugin-was-imported").unlink()
    skipped = _memplug(tmp_path, "--no-plugins", "plugins", "--kind", "encoder")
    assert skipped.returncode == 0, skipped.stderr
    assert "from-cwd" not in skipped.stdout and " legs " in skipped.stdout  # built-ins still load
    assert not (tmp_path / "plugin-was-imported").exists()


def test_no_plugins_is_read_before_the_sub_command_only(monkeypatch):
    from memplug.app.cli import _skip_plugins

    assert _skip_plugins(["--no-plugins", "train"]) and not _skip_plugins(["train", "--no-plugins"])
    assert not _skip_plugins(["train", "cfg.toml"]) and not _skip_plugins([])


def test_argument_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["train", "--no-such-flag"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == "memplug: error: unrecognized arguments: --no-such-flag (see memplug --help)\n"
    with pytest.raises(SystemExit) as exited:
        main(["no-such-command"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("memplug: error: argument command: invalid choice")
