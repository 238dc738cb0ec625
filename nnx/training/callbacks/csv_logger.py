"""`CSVLogger`: one CSV row of epoch logs per epoch."""

from __future__ import annotations

import csv
import io
import numbers
import os
from pathlib import Path
from typing import Any

from ...io import file_name, write_atomically
from .base import Callback


class CSVLogger(Callback):
    """Write one CSV row per epoch: the epoch number (from 1, as printed), then every epoch-log value.

    Args:
        path: the CSV file.
        append: add to an existing file (keeping its rows and columns) instead of overwriting it.
        separator: the field delimiter.

    The columns are those of the first epoch logged, in order; a name first logged later (or by a
    later fit appending to the file, e.g. one with validation) adds a column, left empty in the rows
    before it: the file is then written anew beside itself and renamed into place, so its rows are
    never lost. Otherwise each row is appended and flushed, so the file is readable while training
    runs; a last row cut short by a killed run is ended before the next is appended. In a
    data-parallel `fit` only rank 0 writes (every rank logs the same epochs), as `model.save` does.
    """

    def __init__(self, path: str | os.PathLike, append: bool = False, separator: str = ",") -> None:
        self.path = Path(file_name(path, "CSVLogger"))  # ~ expanded, as save expands it
        self.append = append
        self.separator = separator
        self.keys: list[str] = []
        self._rows: list[list[str]] = []  # every row of the file after its header, for a rewrite with new columns
        self._file: Any = None  # open for appending between epochs

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
                text = f.read()
            rows = list(csv.reader(io.StringIO(text), delimiter=self.separator))
            if not rows or not rows[0] or rows[0][0] != "epoch":
                raise ValueError(f"CSVLogger cannot append to {str(self.path)!r}: its first line is not a header "
                                 f"starting with 'epoch' and separated by {self.separator!r}")
            self.keys, self._rows = rows[0][1:], [row for row in rows[1:] if row]
            if not text.endswith("\n"):  # a run killed while writing a row
                self._rewrite()
        else:
            self._rewrite()  # a new log starts empty: the file it replaces is no log of this run
        self._file = open(self.path, "a", newline="", encoding="utf-8")

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if not self._writes():
            return
        if self._file is None:  # called outside fit
            self.on_train_begin()
        new = [key for key in logs if key not in self.keys]
        self.keys += new
        values = {key: _csv_value(value) for key, value in logs.items()}
        self._rows.append([str(epoch + 1), *(values.get(key, "") for key in self.keys)])
        file: Any = self._file  # on_train_begin() opened it
        if new or len(self._rows) == 1:  # the header changes: every row again, with the new columns
            file.close()
            self._rewrite()
            self._file = open(self.path, "a", newline="", encoding="utf-8")
        else:
            csv.writer(file, delimiter=self.separator).writerow(self._rows[-1])
            file.flush()

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _rewrite(self) -> None:
        """The header and every row, written beside the file and renamed into place."""
        text = io.StringIO()
        if self._rows:
            writer = csv.writer(text, delimiter=self.separator)
            width = len(self.keys) + 1
            writer.writerow(["epoch", *self.keys])
            writer.writerows(row[:width] + [""] * (width - len(row)) for row in self._rows)
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
