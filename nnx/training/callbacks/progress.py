"""`ProgressBar`: a tqdm bar (or plain lines) per epoch, with the epoch logs."""

from __future__ import annotations

import sys
import time
import types
from typing import Any

from ..history import format_value
from .base import Callback, prints_here


def _format_logs(logs: dict) -> str:
    """One line of epoch logs, values rounded for display (NumPy and device scalars too)."""
    return " - ".join(f"{k}: {format_value(v)}" for k, v in logs.items())


class ProgressBar(Callback):
    """Live training progress: a tqdm bar per epoch on a terminal when tqdm is installed, else one line per epoch.

    Args:
        epochs: epochs in this run (default: taken from fit). Epochs are numbered over the model's whole
            training, as `history.epoch`, the other callbacks and their files number them: a second `fit(epochs=2)`
            after two epochs shows "epoch 3/4" and "epoch 4/4".
        use_tqdm: True/False to force; None uses tqdm when it imports and writes to a terminal
            (into a pipe or a file a bar is redrawn as new lines, so one plain line per epoch is written).
        file: where to write (tqdm default: stderr; plain lines: stdout).
        refresh_interval: seconds between live loss updates.

    The bar shows the running mean loss of the epoch. Step losses stay on the device
    and are summed there; the host reads the sum only when the display refreshes (at
    most every `refresh_interval` seconds), so the bar adds no per-step device sync.
    At the end of each epoch it shows every epoch-log value (metrics, validation).
    """

    batch_hooks_display_only = True
    """Its per-batch hook only draws: a fit that runs each epoch as one program hands it the epoch's batches
    (their losses) after the program, instead of running step by step for it."""

    def __init__(self, epochs: int | None = None, use_tqdm: bool | None = None, file: Any = None,
                 refresh_interval: float = 0.1) -> None:
        self.epochs = epochs
        self.use_tqdm = use_tqdm
        self.file = file
        self.refresh_interval = float(refresh_interval)
        self._tqdm: Any = None
        self._bar: Any = None
        self._shown = True

    def on_train_begin(self, logs: dict | None = None) -> None:
        logs = logs or {}
        self._total_epochs = self.epochs if self.epochs is not None else logs.get("epochs")
        self._steps = logs.get("steps")
        self._first_epoch = self.model.epochs_trained  # a model trained before continues its count
        self._epoch = self._first_epoch
        self._tqdm = None
        vars(self).pop("on_batch_end", None)  # a fit before drew no bar: this one may
        self._shown = prints_here(self.model)  # rank 0 alone draws a data-parallel fit's progress
        if self._shown and (self.use_tqdm or (self.use_tqdm is None and _is_terminal(self.file or sys.stderr))):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                if self.use_tqdm:
                    raise
            else:
                self._tqdm = tqdm
        if self._tqdm is None and type(self).on_batch_end is ProgressBar.on_batch_end:
            # no bar to move: this fit sees no per-batch hook here (`CallbackList.uses`), so its steps are not
            # interrupted by a call that does nothing, and run back to back as without a ProgressBar (a
            # subclass's own on_batch_end is kept)
            self.on_batch_end = types.MethodType(Callback.on_batch_end, self)

    def _label(self) -> str:
        total = f"/{self._first_epoch + self._total_epochs}" if self._total_epochs else ""
        return f"epoch {self._epoch + 1}{total}"

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch
        self._started = time.perf_counter()
        self._loss_sum: Any = None
        self._seen = 0
        self._last_refresh = self._started
        if self._tqdm is not None:
            self._bar = self._tqdm(total=self._steps, desc=self._label(), unit="step", leave=True,
                                   file=self.file, dynamic_ncols=True)

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._bar is None:
            return
        logs = logs or {}
        value, size = logs.get("loss"), int(logs.get("size", 1))
        if value is not None:
            weighted = value * size
            self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
            self._seen += size
        self._bar.update(1)
        now = time.perf_counter()
        if self._loss_sum is not None and now - self._last_refresh >= self.refresh_interval:
            self._last_refresh = now
            mean = self.model.backend.to_float(self._loss_sum) / self._seen  # the only sync, ~10 times/s
            self._bar.set_postfix_str(f"loss: {mean:.4g}", refresh=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self._shown:
            return
        text = _format_logs(logs or {})
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.close()
            self._bar = None
            return
        seconds = time.perf_counter() - self._started
        print(f"{self._label()} - {seconds:.2f}s - {text}", file=self.file or sys.stdout, flush=True)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._bar is not None:  # stopped mid-epoch (TerminateOnNaN, Ctrl-C)
            self._bar.close()
            self._bar = None


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (OSError, ValueError):  # a closed or detached stream
        return False
