"""Code: the CPython standard library source of the running interpreter (nothing to download).

Every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` is one document, except
``site-packages`` (third-party code that differs between machines) and ``__pycache__``. A few
test files are deliberately not UTF-8 (encoding-declaration tests); they are skipped.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.hookspecs import hookimpl
from ..core.contracts import Dataset, Document, SourceMissingError
from .cache import tree_fingerprint
from .text import decode_text

__all__ = ["PythonCode"]

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


class PythonCode(Dataset):
    """The Python standard library's source files.

    Options: ``root``, another source tree to read instead (default: the running interpreter's
    standard library).
    """

    name = "code"
    description = "CPython standard library source (.py files of the running interpreter)"

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else Path(sysconfig.get_paths()["stdlib"])

    def options(self) -> dict[str, Any]:
        return {"root": str(self.root)}

    def source(self) -> str:
        if not self.root.is_dir():
            raise SourceMissingError(f"code: the source tree {self.root} does not exist (pass root= a folder of .py files)")
        return f"python {sys.version.split()[0]} {self.root} files:{tree_fingerprint(self._files())}"

    def _files(self) -> list[Path]:
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
        return files

    def documents(self) -> Iterator[Document]:
        self.source()
        for path in self._files():
            try:
                text = decode_text(path.read_bytes(), strict=True)
            except UnicodeDecodeError:
                continue
            name = path.relative_to(self.root).as_posix()
            yield Document(name=name, group=name, text=text)


@hookimpl
def memplug_add_datasets(registry) -> None:
    registry.add(PythonCode)
