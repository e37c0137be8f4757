"""Technical prose: the reStructuredText sources of Python's documentation (Debian python3.X-doc).

The HTML documentation installed by ``apt-get install python3.11-doc`` keeps each page's source
as ``html/_sources/**/*.rst.txt``; each is one document (the library reference, tutorials,
HOWTOs, the C API).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.hookspecs import hookimpl
from ..core.contracts import Dataset, Document, SourceMissingError
from .cache import tree_fingerprint
from .text import decode_text

__all__ = ["PythonDocs"]

DOC_ROOT = Path("/usr/share/doc")
#: The Debian package for Debian 12 (bookworm); newer releases name it after their Python.
PACKAGE = "python3.11-doc"


def default_root() -> Path | None:
    """The ``_sources`` folder of the installed documentation, this interpreter's version first."""
    mine = DOC_ROOT / f"python{sys.version_info.major}.{sys.version_info.minor}-doc/html/_sources"
    if mine.is_dir():
        return mine
    found = sorted(DOC_ROOT.glob("python3*-doc/html/_sources"))
    return found[-1] if found else None


class PythonDocs(Dataset):
    """Python's documentation sources (reStructuredText).

    Options: ``root``, a folder of ``*.rst.txt`` files (default: the Debian package's).
    """

    name = "pydocs"
    description = "Python documentation sources (Debian python3.11-doc, _sources/**/*.rst.txt)"

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_root()

    def options(self) -> dict[str, Any]:
        return {"root": str(self.root)} if self.root is not None else {}

    def source(self) -> str:
        if self.root is None or not self.root.is_dir():
            where = self.root or DOC_ROOT / f"{PACKAGE}/html/_sources"
            raise SourceMissingError(
                f"pydocs: the Python documentation sources are not installed ({where} is missing); install them with:\n"
                f"  sudo apt-get install {PACKAGE}"
            )
        return f"{self.root} files:{tree_fingerprint(self._files())}"

    def _files(self) -> list[Path]:
        assert self.root is not None  # source() raised otherwise
        return sorted(self.root.rglob("*.rst.txt"))

    def documents(self) -> Iterator[Document]:
        self.source()
        assert self.root is not None  # source() raised otherwise
        for path in self._files():
            name = path.relative_to(self.root).as_posix()
            yield Document(name=name, group=name, text=decode_text(path.read_bytes()))


@hookimpl
def memplug_add_datasets(registry) -> None:
    registry.add(PythonDocs)
