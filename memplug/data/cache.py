"""Where prepared corpora, fetched sources and trained tokenizers live.

``MEMPLUG_CACHE`` wins; otherwise the platform's user cache folder for ``memplug`` from
platformdirs: ``$XDG_CACHE_HOME/memplug`` or ``~/.cache/memplug`` on Linux,
``~/Library/Caches/memplug`` on macOS, ``%LOCALAPPDATA%\\memplug\\Cache`` on Windows.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from platformdirs import user_cache_dir

__all__ = ["CACHE_ENV", "cache_dir", "tree_fingerprint"]

CACHE_ENV = "MEMPLUG_CACHE"


def cache_dir(*parts: str) -> Path:
    """The cache directory (or a path below it); not created here."""
    root = os.environ.get(CACHE_ENV) or user_cache_dir("memplug", appauthor=False)
    return Path(root).joinpath(*parts)


def tree_fingerprint(paths: list[Path]) -> str:
    """A cheap identity of a set of files (names, sizes, modification times) for cache keys."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
