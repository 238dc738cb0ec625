"""Callbacks that stop training: `EarlyStopping` on a plateau, `TerminateOnNaN` on a non-finite loss."""

from __future__ import annotations

import math
import sys
from typing import Any, cast

from ... import _validate as check
from ...protocols import Model
from .base import Callback, prints_here
from .monitor import check_monitor, improved, not_validated, resolve_mode


def _copy_state(model: Model) -> dict[str, Any]:
    """Device-side copies of the weights (optimizers update in place on some backends): `state_dict` copies each
    array, and copying its copies again would hold the weights twice more at each improvement, not once."""
    return model.state_dict(copy=True)


class EarlyStopping(Callback):
    """Stop training when a monitored quantity has stopped improving.

    Args:
        monitor: epoch-log name to watch (``"val_loss"``, ``"loss"``, ``"val_accuracy"``, ...).
        patience: epochs without improvement after which training stops.
        min_delta: smallest change that counts as an improvement.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracy/precision/recall/f1/r2/auc, min for
            loss/mse/mae/rmse; another name, a custom metric's, needs ``"min"`` or ``"max"``).
        restore_best_weights: when training ends, put back the weights of the best epoch.
        baseline: a value the monitored quantity must beat within `patience` epochs; epochs that
            do not beat it count towards `patience` even when they improve on the best so far, so training
            stops after `patience` epochs (one with patience 0) that all miss it, improving or not, as Keras
            documents it. (Keras 3's code differs: it never stops at an epoch that improves, nor after the first.)
        verbose: 1 prints a line when stopping.
        start_from_epoch: epochs to wait before monitoring, as Keras's (a warm-up in which no improvement is
            expected): an epoch whose index (0-based, counted over the model's whole training as the hooks and
            `History.epoch` count it) is below it is neither a best nor counts towards `patience`.

    After training, `stopped_epoch` is the index of the epoch at which it stopped (None
    if it did not), `best` the best value and `best_epoch` the index of its epoch. Both
    are 0-based indices, like the ``epoch`` the hooks receive and `History.epoch`; the
    epoch people count (and ``verbose=1`` prints) is the index + 1.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False, baseline: float | None = None,
                 verbose: int = 0, start_from_epoch: int = 0) -> None:
        # NumPy numbers too (a grid from np.arange or a float32 config), as ReduceLROnPlateau takes them
        self.patience = check.integer("EarlyStopping patience", patience, low=0)
        self.min_delta = abs(check.real("EarlyStopping min_delta", min_delta))
        self.monitor = monitor
        self.mode = resolve_mode("EarlyStopping", mode, monitor)
        self.restore_best_weights = restore_best_weights
        self.baseline = None if baseline is None else check.real("EarlyStopping baseline", baseline)
        self.verbose = verbose
        self.start_from_epoch = check.integer("EarlyStopping start_from_epoch", start_from_epoch, low=0)
        self._reset()

    def _reset(self) -> None:
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_weights: dict[str, Any] | None = None
        self._running = False  # from a fit's on_train_begin to its on_train_end: the weights kept are its own

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._reset()
        check_monitor("EarlyStopping", self.monitor, logs)
        self._running = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            if not_validated(self.monitor, logs):
                return  # an epoch between validations (validation_freq)
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which is not in the epoch logs; "
                             f"logged: {sorted(logs)}")
        if epoch < self.start_from_epoch:
            return  # the warm-up: not monitored
        current = float(logs[self.monitor])
        if improved(current, self.best, self.mode, self.min_delta):
            # the best epoch is kept whether or not it beats the baseline, as Keras keeps it: with a
            # baseline never beaten, training still ends on the weights of the best epoch it saw
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = _copy_state(self.model)
            if self.baseline is None or improved(current, self.baseline, self.mode, self.min_delta):
                self.wait = 0
                return
        self.wait += 1
        if self.wait >= max(self.patience, 1):
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.verbose and prints_here(self.model):
                print(f"EarlyStopping: {self.monitor} did not improve for {self.wait} epoch(s); "
                      f"stopping at epoch {epoch + 1}", flush=True)

    def on_train_end(self, logs: dict | None = None) -> None:
        # a fit that failed before this callback began (another's on_train_begin raised) ends here too: the
        # weights kept then are an earlier fit's, maybe of another model
        running, self._running = self._running, False
        # a fit failing (a non-finite step) leaves the model as its error says, at the last finite step, as Keras
        # leaves it: restoring here would contradict that message
        failed = bool((logs or {}).get("failed"))
        if running and not failed and self.restore_best_weights and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
            if self.verbose and prints_here(self.model):
                print(f"EarlyStopping: restored the weights of epoch {cast(int, self.best_epoch) + 1} "
                      f"({self.monitor} = {self.best:.4g})", flush=True)


class TerminateOnNaN(Callback):
    """Stop training at the first step whose loss is NaN or infinite.

    `fit`'s own `check_finite` (on by default) raises at such a step; with this
    callback the step is still refused (nothing is updated) but training stops
    quietly and `fit` returns its History. It declares that with
    ``handles_non_finite = True``, which any callback may set.

    After training, `stopped_epoch` and `stopped_batch` say where it stopped, as 0-based
    indices (the message it prints counts both from 1).
    """

    handles_non_finite = True

    def __init__(self) -> None:
        self.stopped_epoch: int | None = None
        self.stopped_batch: int | None = None
        self._epoch = 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.stopped_epoch = self.stopped_batch = None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        value = (logs or {}).get("loss")
        if value is None:
            return
        loss = self.model.backend.to_float(value)
        if not math.isfinite(loss):
            self.stopped_epoch, self.stopped_batch = self._epoch, batch
            self.model.stop_training = True
            print(f"TerminateOnNaN: loss is {loss} at epoch {self._epoch + 1}, batch {batch + 1}; stopping",
                  file=sys.stderr, flush=True)
