"""The wheel installs memplug.plugins / memplug.backbones (never top-level packages) and its
plugins register from it, so a wheel install imports the same names as an editable one."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of the sources: setuptools builds in the source tree's build/, where two
    # test workers building at once collide ("File exists").
    src = tmp_path_factory.mktemp("src") / "memplug"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "__pycache__", "results"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)],
        check=True,
    )
    (path,) = out.glob("memplug-*.whl")
    return path


def test_every_source_package_is_declared():
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    mapping = {"memplug": "memplug", "plugins": "memplug.plugins", "backbones": "memplug.backbones",
               "configs": "memplug.configs"}
    found = set()
    for top, prefix in mapping.items():
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((prefix, *parts)))
    assert found == declared, f"packages on disk but not in pyproject: {found - declared}; declared but missing: {declared - found}"


def test_wheel_layout(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "plugins" not in tops and "backbones" not in tops
    assert "memplug/plugins/encoders/legs.py" in names
    assert "memplug/backbones/tiny.py" in names or not (ROOT / "backbones" / "tiny.py").exists()


def test_wheel_imports_and_registers_its_plugins(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import memplug, memplug.plugins.encoders.legs as legs;"
        "print(memplug.__file__); print(legs.__file__);"
        "print(sorted(memplug.available('encoder') + memplug.available('retriever')))"
    )
    # The unpacked wheel goes first on sys.path, ahead of the editable install's finder.
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )
    memplug_file, legs_file, names = result.stdout.strip().splitlines()
    assert memplug_file.startswith(str(site)) and legs_file.startswith(str(site))
    assert {"legs", "legt", "fout", "jacobi", "uniform", "warped", "learned"} <= set(eval(names))


def test_wheel_ships_the_example_configs(wheel, tmp_path):
    """``memplug init`` reads the example configs from the installed package, not the checkout."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = ("import memplug.app.examples as e; print(e.__file__);"
             "print(sorted((k, len(v)) for k, v in e.example_configs().items()))")
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )
    module_file, found = result.stdout.strip().splitlines()
    assert module_file.startswith(str(site))
    assert eval(found) == sorted((p.stem, len(p.read_text())) for p in (ROOT / "configs").glob("*.toml"))
