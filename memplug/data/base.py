"""The dataset contract: a named source of documents, registered like any other plugin.

A :class:`Dataset` yields :class:`Document` objects. :func:`memplug.data.prepare` turns them into
document-level train / validation / test splits; documents that share a ``group`` (two editions
of one play, say) always land in the same split, so no work leaks from training into evaluation.

Third-party datasets register through the ``memplug_add_datasets`` hook::

    @memplug.hookimpl
    def memplug_add_datasets(registry):
        registry.add(MyCorpus)
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["Dataset", "Document", "SourceMissingError"]


class SourceMissingError(FileNotFoundError):
    """A dataset's source files are not on this machine; the message says how to fetch them."""


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    ``name`` is stable across machines (a path relative to the source root); ``group`` names the
    work it belongs to (documents with one group share a split); ``text`` is the full text.
    """

    name: str
    group: str
    text: str


class Dataset(abc.ABC):
    """A corpus of long documents.

    Subclasses set ``name`` (the registry key users type in ``memplug data prepare NAME``) and
    ``description``, accept their options as keyword arguments (a source path override, say),
    and implement :meth:`source` and :meth:`documents`.
    """

    kind: ClassVar[str] = "dataset"
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def __init__(self, **options: Any) -> None:
        if options:
            raise TypeError(f"dataset {self.name!r} takes no options, got {sorted(options)}")

    @abc.abstractmethod
    def source(self) -> str:
        """A string that identifies the source and its version (part of the cache key).

        Raises :class:`SourceMissingError` naming the command that fetches a missing source.
        """

    @abc.abstractmethod
    def documents(self) -> Iterator[Document]:
        """Every document, in a deterministic order."""

    def options(self) -> dict[str, Any]:
        """The options this instance was built with (recorded in the prepared manifest)."""
        return {}
