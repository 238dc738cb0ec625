"""`CSVLogger`: one CSV row of epoch logs per epoch."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from .base import Callback


class CSVLogger(Callback):
    """Write one CSV row per epoch: the epoch number (from 1, as printed), then every epoch-log value.

    Args:
        path: the CSV file.
        append: add to an existing file (no second header) instead of overwriting it.
        separator: the field delimiter.

    The columns are fixed by the first epoch logged; later extra keys are ignored.
    Each row is flushed, so the file is readable while training runs. In a data-parallel `fit`
    only rank 0 writes (every rank logs the same epochs), as `model.save` does.
    """

    def __init__(self, path: str | os.PathLike, append: bool = False, separator: str = ",") -> None:
        self.path = Path(path)
        self.append = append
        self.separator = separator
        self.keys: list[str] | None = None
        self._file: Any = None
        self._writer: Any = None

    def _writes(self) -> bool:
        """False on the ranks other than 0 of a data-parallel fit, whose rows rank 0 writes."""
        comm = getattr(self.model, "distributed", None)
        return comm is None or comm.rank == 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.keys = None
        if not self._writes():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.append and self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as f:
                header = next(csv.reader(f, delimiter=self.separator), None)
            if header and header[0] == "epoch":
                self.keys = header[1:]
            self._file = open(self.path, "a", newline="")  # stays open across epochs
        else:
            self._file = open(self.path, "w", newline="")
        self._writer = csv.writer(self._file, delimiter=self.separator)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if not self._writes():
            return
        if self._file is None:
            self.on_train_begin()
        if self.keys is None:
            self.keys = list(logs)
            self._writer.writerow(["epoch", *self.keys])
        self._writer.writerow([epoch + 1, *(_csv_value(logs.get(k, "")) for k in self.keys)])
        self._file.flush()  # pyright: ignore[reportOptionalMemberAccess] - on_train_begin() opened it

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None


def _csv_value(value: Any) -> Any:
    return repr(value) if isinstance(value, float) else value
