"""Atomic writes: a file or a directory is either complete or absent, never half-written.

Everything is written under a temporary name in the destination's folder, flushed to disk, then
moved into place with :func:`os.replace` (atomic on POSIX within one file system). A crash, a
kill or a full disk leaves at most a hidden ``.NAME.tmp-*`` entry, which readers ignore.

Replacing an existing folder takes two renames (a non-empty folder cannot be the target of a
rename): the old one is moved aside into ``.NAME.old-*/NAME``, then the new one into place. A
kill between the two leaves the aside copy as the only complete one; :func:`recover_interrupted`
puts it back before anything else runs in that folder.

Created files and folders follow the user's umask, as ``open()`` and ``mkdir`` do (not the
0600 / 0700 of :mod:`tempfile`), so a checkpoint is as readable as any other file the user
writes.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_directory", "atomic_write_bytes", "follow_umask", "fsync_tree", "recover_interrupted"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` and the folders themselves to stable storage."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb+") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(dirpath))


def _create_unique(parent: Path, prefix: str, create: Callable[[Path], None]) -> Path:
    """``create(parent / (prefix + random suffix))`` for a name nobody holds yet; returns the path.

    ``create`` must fail with :class:`FileExistsError` on a taken name (``os.mkdir`` and
    ``O_CREAT | O_EXCL`` do), so two writers never share a temporary."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            create(path)
            return path
        except FileExistsError:
            continue


def _make_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 & ~umask


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give the file ``path`` the permissions a file newly created beside it gets (``0o666 & ~umask``),
    for files a library wrote through its own 0600 temporary (safetensors does)."""
    path = Path(path)
    probe = _create_unique(path.parent, f".{path.name}.mode-", _make_file)
    try:
        os.chmod(path, stat.S_IMODE(probe.stat().st_mode))
    finally:
        probe.unlink()


def _replace_folder(new: Path, final: Path) -> None:
    """Move the complete folder ``new`` to ``final``, replacing an existing one.

    An existing ``final`` is moved aside first; if the second rename fails it is moved back,
    and a kill between the two renames is repaired by :func:`recover_interrupted`."""
    if not final.exists():
        os.replace(new, final)
        _fsync_dir(final.parent)
        return
    aside = _create_unique(final.parent, f".{final.name}.old-", os.mkdir)
    os.replace(final, aside / final.name)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(aside / final.name, final)
        aside.rmdir()
        raise
    _fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_directory(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``final``; on success it replaces ``final`` atomically.

    On any exception (``KeyboardInterrupt`` included) the temporary folder is removed and
    ``final`` is left as it was. An existing ``final`` is replaced (see the module docstring).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_unique(final.parent, f".{final.name}.tmp-", os.mkdir)
    try:
        yield tmp
        fsync_tree(tmp)
        _replace_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_interrupted(parent: str | os.PathLike[str]) -> list[Path]:
    """Repair what killed :func:`atomic_directory` writers left in ``parent``; returns what was removed.

    A folder moved aside (``.NAME.old-*/NAME``) whose ``NAME`` is missing is the only complete
    copy: it is moved back into place. Every other ``.NAME.old-*`` and ``.NAME.tmp-*`` entry is
    deleted. Call only while no other process writes in ``parent``.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return []
    removed = []
    for aside in sorted(parent.glob(".*.old-*")):
        name = aside.name[1:].rpartition(".old-")[0]
        if (aside / name).is_dir() and not (parent / name).exists():
            os.replace(aside / name, parent / name)
            _fsync_dir(parent)
        shutil.rmtree(aside, ignore_errors=True)
        removed.append(aside)
    for tmp in sorted(parent.glob(".*.tmp-*")):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a flushed temporary file and :func:`os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_unique(path.parent, f".{path.name}.tmp-", _make_file)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
