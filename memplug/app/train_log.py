"""The training log: ``RUN/log.csv`` (and TensorBoard scalars when it is installed).

One row per logged training step and per validation. On ``--resume`` the rows written after
the checkpoint are dropped (the resumed run writes them again); rows that cannot be read (a
log cut by a kill or a full disk, a file edited by hand) are skipped and counted, never a
reason to refuse the resume. Every write error is an :class:`~memplug.app.run_folder.OutputError`.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import Any

from ..util.atomic import atomic_write_bytes
from .run_folder import OutputError

__all__ = ["LOG_FIELDS", "TrainLog", "read_rows"]

LOG_FIELDS = ("step", "split", "loss", "bpb", "lr", "grad_norm", "tokens", "tokens_per_s", "elapsed_s")
SPLITS = ("train", "validation")


def _row(line: str) -> dict[str, str] | None:
    """One log line as a row, or None when it is not one (wrong field count, a bad step or split)."""
    try:
        fields = next(csv.reader([line]))
    except (csv.Error, StopIteration):
        return None
    if len(fields) != len(LOG_FIELDS):
        return None
    row = dict(zip(LOG_FIELDS, fields))
    if not row["step"].isdigit() or row["split"] not in SPLITS:
        return None
    return row


def read_rows(path: Path, last_step: int) -> tuple[list[dict[str, str]], int]:
    """The readable rows of the log at ``path`` up to step ``last_step``, and how many lines
    were skipped as unreadable (the header is neither)."""
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\0", "")
    lines = [line for line in text.splitlines() if line.strip()]
    header = ",".join(LOG_FIELDS)
    rows, skipped = [], 0
    for line in lines:
        if line == header:
            continue
        row = _row(line)
        if row is None:
            skipped += 1
        elif int(row["step"]) <= last_step:
            rows.append(row)
    return rows, skipped


class TrainLog:
    """CSV rows (and TensorBoard scalars when installed); every write error is an OutputError."""

    def __init__(self, out: Path, resume_step: int | None, tensorboard: bool) -> None:
        self.path = out / "log.csv"
        try:
            resuming = resume_step is not None and self.path.exists()
            if resuming:
                self._keep_rows_until(resume_step)
            self.handle = open(self.path, "a" if resuming else "w", newline="")  # noqa: SIM115 - closed in close()
            self.writer = csv.DictWriter(self.handle, fieldnames=LOG_FIELDS)
            if not resuming:
                self.writer.writeheader()
                self.handle.flush()
        except OSError as exc:
            raise OutputError(f"cannot write the training log {self.path}: {exc.strerror or exc}") from None
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # tensorboard is optional (memplug[bench])
                self.tb = None

    def _keep_rows_until(self, step: int) -> None:
        """Rewrite the log with its readable rows up to ``step`` (atomically: a kill leaves the old
        log or the new one), saying how many unreadable lines were dropped."""
        rows, skipped = read_rows(self.path, step)
        if skipped:
            print(f"memplug train: {self.path}: skipped {skipped} unreadable line{'s' * (skipped > 1)} of the old log",
                  file=sys.stderr)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_bytes(self.path, text.getvalue().encode())

    def write(self, row: dict[str, Any]) -> None:
        try:
            self.writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})
            self.handle.flush()
        except OSError as exc:
            raise OutputError(f"cannot write the training log {self.path}: {exc.strerror or exc}") from None
        if self.tb is not None:
            for key in ("loss", "bpb", "lr", "grad_norm", "tokens_per_s"):
                if row.get(key) not in (None, ""):
                    self.tb.add_scalar(f"{row['split']}/{key}", float(row[key]), int(row["step"]))

    def close(self) -> None:
        try:
            self.handle.close()
        except OSError:
            pass
        if self.tb is not None:
            self.tb.close()
