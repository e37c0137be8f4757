"""The run folder of ``memplug train``: one training at a time, never another run's files by accident.

``RUN/`` holds one run: ``log.csv``, ``checkpoints/``, ``tensorboard/`` and ``eval/``. A training

- refuses a folder that holds anything, unless it continues that run (``--resume``) or was told
  to discard it (``--overwrite``, which deletes exactly those four entries and nothing else);
- holds ``RUN/.train.lock`` for its whole duration (an operating-system file lock, released when
  the process ends, even by a kill), so a second training in the same folder stops at once with
  a message and leaves the first untouched;
- once it holds the lock, repairs what a killed run left in ``checkpoints/`` (see
  :func:`memplug.app.checkpoint.recover_checkpoints`).

A training that fails before it starts removes the folders it created, so a refused start leaves
no trace.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from ..util.atomic import atomic_write_bytes
from .checkpoint import recover_checkpoints

__all__ = ["LOCK", "RUN_ENTRIES", "OutputError", "RunFolder", "RunFolderError", "check_fresh", "check_writable",
           "claim_run_folder", "run_contents"]

LOCK = ".train.lock"
#: What a training writes in its run folder (and ``--overwrite`` deletes).
RUN_ENTRIES = ("checkpoints", "log.csv", "tensorboard", "eval")


class OutputError(OSError):
    """The output folder cannot be written (read-only, full disk, not a folder)."""


class RunFolderError(RuntimeError):
    """The run folder holds another run or is in use by another training; the message says what to do."""


def run_contents(out: Path) -> list[str]:
    """The names in ``out`` other than the lock file (none when ``out`` is missing or not a folder)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name != LOCK)


def check_fresh(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a run folder that holds anything, unless the training resumes it or overwrites it."""
    held = run_contents(out)
    if held and not (resume or overwrite):
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise RunFolderError(f"{out} already holds a run ({shown}): continue it with --resume, discard it with "
                             f"--overwrite, or train into another folder (--set name=... or --set out=...)")


def check_writable(out: Path) -> None:
    """Create ``out`` and write a probe file, or raise :class:`OutputError` saying why not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".memplug-write-test"
        atomic_write_bytes(probe, b"ok")
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output directory {out} is not writable: {exc.strerror or exc}") from None


@dataclass
class RunFolder:
    """A claimed run folder: the held lock, and the folders the claim created (topmost first)."""

    out: Path
    lock: FileLock
    created: list[Path]

    def release(self, *, failed: bool = False) -> None:
        """Release the lock; after a ``failed`` start, also remove the folders the claim created
        (when nothing but the lock file is in them)."""
        remove = failed and bool(self.created) and not run_contents(self.out)
        if remove:
            (self.out / LOCK).unlink(missing_ok=True)  # while still held: no other training can take it meanwhile
        self.lock.release()
        if not remove:
            return
        for folder in reversed(self.created):  # innermost first
            try:
                folder.rmdir()
            except OSError:
                return


def claim_run_folder(out: Path, *, resume: bool = False, overwrite: bool = False) -> RunFolder:
    """Create ``out``, take its lock and make it ready for a training (see the module docstring).

    Raises :class:`RunFolderError` (another training holds it, or it holds a run and neither
    ``resume`` nor ``overwrite`` is set) or :class:`OutputError` (it cannot be written).
    """
    created = [p for p in reversed([out, *out.parents]) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(out / LOCK, timeout=0)
        lock.acquire()
    except Timeout:
        raise RunFolderError(f"{out} is in use by another training (it holds the lock {out / LOCK}): wait for it "
                             "to finish, or train into another folder") from None
    except OSError as exc:
        raise OutputError(f"output directory {out} is not writable: {exc.strerror or exc}") from None
    folder = RunFolder(out, lock, created)
    try:
        check_fresh(out, resume=resume, overwrite=overwrite)  # again, now that no other training can start
        if overwrite:
            for name in RUN_ENTRIES:
                path = out / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    os.unlink(path)
        check_writable(out)
        recover_checkpoints(out / "checkpoints")
    except BaseException:
        folder.release(failed=True)
        raise
    return folder
