"""`CSVLogger`: one CSV row of epoch logs per epoch."""

from __future__ import annotations

import csv
import io
import numbers
import os
from pathlib import Path
from typing import Any

from ...io import write_atomically
from .base import Callback


class CSVLogger(Callback):
    """Write one CSV row per epoch: the epoch number (from 1, as printed), then every epoch-log value.

    Args:
        path: the CSV file.
        append: add to an existing file (keeping its rows and columns) instead of overwriting it.
        separator: the field delimiter.

    The columns are those of the first epoch logged, in order; a name first logged later (or by a
    later fit appending to the file, e.g. one with validation) adds a column, left empty in the rows
    before it. After each epoch the file is written anew beside itself and renamed into place, so it
    is readable while training runs, and a crash never leaves a half-written row or loses the rows
    before it. In a data-parallel `fit` only rank 0 writes (every rank logs the same epochs), as
    `model.save` does.
    """

    def __init__(self, path: str | os.PathLike, append: bool = False, separator: str = ",") -> None:
        self.path = Path(path)
        self.append = append
        self.separator = separator
        self.keys: list[str] = []
        self._rows: list[list[str]] | None = None  # the file's rows after the header, by column of `keys`

    def _writes(self) -> bool:
        """False on the ranks other than 0 of a data-parallel fit, whose rows rank 0 writes."""
        comm = getattr(self.model, "distributed", None)
        return comm is None or comm.rank == 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.keys, self._rows = [], []
        if not self._writes():
            return
        if self.append and self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = list(csv.reader(f, delimiter=self.separator))
            if not rows or not rows[0] or rows[0][0] != "epoch":
                raise ValueError(f"CSVLogger cannot append to {str(self.path)!r}: its first line is not a header "
                                 f"starting with 'epoch' and separated by {self.separator!r}")
            self.keys, self._rows = rows[0][1:], [row for row in rows[1:] if row]
        else:
            self._write([])  # a new log starts empty: the file it replaces is no log of this run

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if not self._writes():
            return
        if self._rows is None:  # called outside fit
            self.on_train_begin()
        rows = self._rows = self._rows or []
        self.keys += [key for key in logs if key not in self.keys]
        values = {key: _csv_value(value) for key, value in logs.items()}
        rows.append([str(epoch + 1), *(values.get(key, "") for key in self.keys)])
        self._write(rows)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._rows = None

    def _write(self, rows: list[list[str]]) -> None:
        """The header and `rows`, written beside the file and renamed into place."""
        text = io.StringIO()
        if rows:
            writer = csv.writer(text, delimiter=self.separator)
            width = len(self.keys) + 1
            writer.writerow(["epoch", *self.keys])
            writer.writerows(row[:width] + [""] * (width - len(row)) for row in rows)
        data = text.getvalue().encode("utf-8")
        write_atomically(self.path, lambda handle: handle.write(data))


def _csv_value(value: Any) -> str:
    """A log value as written: a number as Python prints it (``0.5``, not ``np.float64(0.5)``), else its text."""
    if isinstance(value, (bool, str)):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real) or getattr(value, "shape", None) == ():
        try:
            return repr(float(value))
        except (TypeError, ValueError):
            pass
    return str(value)
