"""A griffe extension for the API reference: subpackages installed from folders elsewhere.

pyproject.toml installs ``plugins/`` as ``memplug.plugins``, ``backbones/`` as
``memplug.backbones`` and ``configs/`` as ``memplug.configs`` (``[tool.setuptools.package-dir]``).
griffe finds the ``memplug`` package but not these, so once it has loaded ``memplug`` this
extension loads each mapped folder and attaches it under its installed name.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import griffe

if sys.version_info >= (3, 11):
    import tomllib
else:  # a dependency of memplug on Python 3.10
    import tomli as tomllib


class PackageDir(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "memplug" or pkg.filepath is None:
            return
        root = Path(pkg.filepath).parent.parent  # memplug/__init__.py -> the source tree
        mapping = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
        for installed, folder in mapping.items():
            parent, _, name = installed.rpartition(".")
            if parent == pkg.name and name not in pkg.members:
                pkg.set_member(name, loader.load(root / folder))
