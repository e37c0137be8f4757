"""``text``: your own text, from a folder of files, one file, or a JSONL file.

Options (``memplug data prepare text --option root=~/notes``, or ``dataset = "text"`` in a
config's ``[data]`` with ``root`` in ``[data.options]``):

- ``root`` (required): a folder, read recursively (hidden files and folders skipped); one text
  file; or a ``.jsonl`` file, one JSON object per line;
- ``glob``: for a folder, the file-name patterns to read, comma-separated (default ``*.txt,*.md``);
- ``field``: for JSONL, the key holding each record's text (default ``text``);
- ``group``: for JSONL, a key whose value groups records (default: each record is its own group).

Every file (or JSONL record) is one document, in a group of its own unless ``group`` names one;
documents of one group always share a split. A file that is not UTF-8 text (or holds NUL bytes,
as binary files do), or a JSONL line that is not an object with a string ``field``, is skipped
and reported with a count and the first few names. A corpus without a usable document stops
with one line saying why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from ..core.contracts import Dataset, Document, SourceMissingError
from ..core.hookspecs import hookimpl
from .cache import tree_fingerprint
from .text import decode_text

__all__ = ["TextFiles"]

logger = logging.getLogger("memplug")

DEFAULT_GLOB = "*.txt,*.md"
SHOWN = 5  # names quoted in a report of skipped files


def _patterns(glob: str | list[str]) -> list[str]:
    patterns = [p.strip() for p in glob.split(",")] if isinstance(glob, str) else glob
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns) or not patterns:
        raise ValueError(f"dataset 'text': glob must be file-name patterns separated by commas (*.txt,*.md), got {glob!r}")
    return patterns


def _decode(raw: bytes) -> str | None:
    """UTF-8 text (see :func:`decode_text`), or None for bytes that are not text."""
    try:
        text = decode_text(raw, strict=True)
    except UnicodeDecodeError:
        return None
    return None if "\0" in text else text


def _report(skipped: list[str], what: str) -> None:
    if skipped:
        shown = ", ".join(skipped[:SHOWN]) + (f" and {len(skipped) - SHOWN} more" if len(skipped) > SHOWN else "")
        logger.warning("text: skipped %d %s: %s", len(skipped), what, shown)


class TextFiles(Dataset):
    """Your own text: a folder of files, one file, or a JSONL file (see the module docstring)."""

    name = "text"
    description = "your own text: a folder of *.txt/*.md files, one file, or a JSONL file (option root)"

    def __init__(self, root: str | Path | None = None, glob: str | list[str] = DEFAULT_GLOB, field: str = "text",
                 group: str | None = None) -> None:
        if root is None or not str(root).strip():
            raise ValueError("dataset 'text' needs the option root: a folder, a text file or a .jsonl file "
                             "(--option root=PATH, or root in [data.options])")
        for key, value in (("field", field), ("group", group)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"dataset 'text': {key} must be a JSON key (a non-empty string), got {value!r}")
        self.root = Path(root).expanduser()
        self.patterns = _patterns(glob)
        self.field, self.group = field, group

    def options(self) -> dict[str, Any]:
        return {"root": str(self.root), "glob": ",".join(self.patterns), "field": self.field, "group": self.group}

    @property
    def _jsonl(self) -> bool:
        return self.root.is_file() and self.root.suffix == ".jsonl"

    def _files(self) -> list[Path]:
        if self.root.is_file():
            return [self.root]
        return sorted(
            p for p in self.root.rglob("*")
            if p.is_file() and any(fnmatch(p.name, pattern) for pattern in self.patterns)
            and not any(part.startswith(".") for part in p.relative_to(self.root).parts)
        )

    def source(self) -> str:
        if not self.root.exists():
            raise SourceMissingError(f"text: {self.root} does not exist (option root: a folder, a text file or a "
                                     ".jsonl file)")
        files = self._files()
        if not files:
            raise SourceMissingError(f"text: no file under {self.root} matches {','.join(self.patterns)} (option glob)")
        return f"{self.root} files:{tree_fingerprint(files)}"

    def documents(self) -> Iterator[Document]:
        self.source()
        count = 0
        for doc in self._records() if self._jsonl else self._file_documents():
            count += 1
            yield doc
        if count == 0:
            raise ValueError(f"text: no usable document in {self.root} (every one was skipped, see above)")

    def _file_documents(self) -> Iterator[Document]:
        skipped = []
        for path in self._files():
            name = path.name if path == self.root else path.relative_to(self.root).as_posix()
            text = _decode(path.read_bytes())
            if text is None:
                skipped.append(name)
                continue
            yield Document(name=name, group=name, text=text)
        _report(skipped, "files that are not UTF-8 text")

    def _records(self) -> Iterator[Document]:
        skipped = []
        for number, raw in enumerate(self.root.read_bytes().split(b"\n"), start=1):
            if not raw.strip():
                continue
            name = f"{self.root.name}:{number}"
            record = self._record(raw)
            if record is None:
                skipped.append(f"line {number}")
                continue
            text, group = record
            yield Document(name=name, group=name if group is None else group, text=text)
        wanted = f"a JSON object with a string {self.field!r}" + (f" and a {self.group!r}" if self.group else "")
        _report(skipped, f"lines of {self.root.name} that are not {wanted}")

    def _record(self, raw: bytes) -> tuple[str, str | None] | None:
        """(text, group) of one JSONL line, or None when the line is not a usable record."""
        line = _decode(raw)
        try:
            record = json.loads(line) if line is not None else None
        except json.JSONDecodeError:
            return None
        if not isinstance(record, dict) or not isinstance(record.get(self.field), str):
            return None
        if self.group is None:
            return record[self.field], None
        group = record.get(self.group)
        if not isinstance(group, (str, int)) or isinstance(group, bool):
            return None
        return record[self.field], f"{self.group}={group}"


@hookimpl
def memplug_add_datasets(registry) -> None:
    registry.add(TextFiles)
