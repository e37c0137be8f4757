"""Corpora as document-level splits, and the token windows training and evaluation read.

Built-in datasets (registered in code, see :data:`memplug.core.manager.BUILTIN_PLUGINS`):
``literature`` (Shakespeare and Milton), ``code`` (the Python standard library), ``pydocs``
(Python's documentation sources) and ``text`` (your own files: a folder, a file or a JSONL
file). ``memplug data prepare NAME`` on the command line.
"""

from ..core.contracts import Dataset, Document, SourceMissingError
from .cache import cache_dir
from .prepare import Prepared, Split, TokenizedSplit, get_dataset, prepare

__all__ = [
    "Dataset",
    "Document",
    "Prepared",
    "SourceMissingError",
    "Split",
    "TokenizedSplit",
    "cache_dir",
    "get_dataset",
    "prepare",
]
