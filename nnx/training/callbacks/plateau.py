"""`ReduceLROnPlateau`: lower the learning rate when a monitored quantity stops improving."""

from __future__ import annotations

import math
import warnings

from ... import _validate as check
from .base import Callback, prints_here
from .monitor import check_monitor, improved, not_validated, resolve_mode


class ReduceLROnPlateau(Callback):
    """Multiply the optimizer's rate by `factor` once `monitor` has not improved for `patience` epochs, as Keras's.

    Args:
        monitor: epoch-log name to watch (``"val_loss"``, ``"loss"``, ``"val_accuracy"``, ...).
        factor: the rate is multiplied by it at each reduction (0 < factor < 1).
        patience: epochs without improvement after which the rate is reduced. Keras counts so: with
            ``patience=2`` the second epoch without improvement reduces (torch reduces after the third).
        mode: ``"min"``, ``"max"`` or ``"auto"``, as in `EarlyStopping`.
        min_delta: smallest change that counts as an improvement (absolute, as Keras's).
        cooldown: epochs after a reduction during which no epoch counts towards `patience`.
        min_lr: the rate is never reduced below it.
        verbose: 1 prints a line at each reduction.

    The rate of each epoch goes into the epoch logs as ``"lr"`` (the one it trained with, before a reduction
    at its end). Like `EarlyStopping`, each `fit` starts its patience, best and cooldown anew; the reduced rate
    itself is the optimizer's, so a later `fit` or a checkpoint keeps it. A learning-rate schedule in the same
    `fit` that sets the rate at every epoch from its own formula (a `StepDecay`) raises it back and so undoes each
    reduction: that warns. One that decays from the rate it is given (``lambda epoch, lr: lr * 0.9``) keeps them.
    """

    adds_logs = ("lr",)

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, mode: str = "auto",
                 min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0, verbose: int = 0) -> None:
        # a factor of 1 or more would never lower the rate (Keras refuses it too)
        self.factor = check.real("ReduceLROnPlateau factor", factor, 0.0, 1.0, low_open=True, high_open=True)
        self.monitor = monitor
        self.patience = check.integer("ReduceLROnPlateau patience", patience, low=0)
        self.mode = resolve_mode("ReduceLROnPlateau", mode, monitor)
        self.min_delta = abs(check.real("ReduceLROnPlateau min_delta", min_delta))
        self.cooldown = check.integer("ReduceLROnPlateau cooldown", cooldown, low=0)
        self.min_lr = check.non_negative("ReduceLROnPlateau min_lr", min_lr)
        self.verbose = verbose
        self._reset()

    def _reset(self) -> None:
        self.wait = 0
        self.cooldown_counter = 0
        self.best = math.inf if self.mode == "min" else -math.inf
        self.reductions: list[tuple[int, float]] = []  # (epoch index, the rate from the next epoch on)
        self._set: float | None = None  # the rate this callback set, to see another callback undo it

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._reset()
        check_monitor("ReduceLROnPlateau", self.monitor, logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError("ReduceLROnPlateau needs the model's optimizer; it is set by fit")
        lr = float(optimizer.lr)
        logs["lr"] = lr
        # raised back above the reduced rate: a schedule that decays from the rate it is given (Keras's
        # ``lr * exp(-0.1)``) keeps the reductions and lowers the rate further, which is no conflict
        if self._set is not None and lr > self._set:
            warnings.warn(f"ReduceLROnPlateau lowered the learning rate to {self._set:.4g}, but epoch {epoch + 1} "
                          f"trained at {lr:.4g}: another callback (a learning-rate schedule) sets the rate every "
                          "epoch and undoes the reductions; use one of them", UserWarning, stacklevel=2)
        self._set = None
        if self.monitor not in logs:
            if not_validated(self.monitor, logs):
                return  # an epoch between validations (validation_freq)
            raise ValueError(f"ReduceLROnPlateau monitors {self.monitor!r}, which is not in the epoch logs; "
                             f"logged: {sorted(logs)}")
        current = float(logs[self.monitor])
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if improved(current, self.best, self.mode, self.min_delta):
            self.best = current
            self.wait = 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait < self.patience or lr <= self.min_lr:
            return
        new = max(lr * self.factor, self.min_lr)
        optimizer.lr = new
        # a callback's rate, not one set by hand: a schedule in the next fit goes on from its base and undoes it, as
        # in this fit (`Optimizer.scheduled_lr`), rather than decaying again from the reduced, decayed rate
        optimizer.scheduled_lr = float(optimizer.lr)
        self._set = new
        self.reductions.append((epoch, new))
        self.cooldown_counter, self.wait = self.cooldown, 0
        if self.verbose and prints_here(self.model):
            print(f"ReduceLROnPlateau: {self.monitor} did not improve; epoch {epoch + 1}, lr {lr:.4g} -> "
                  f"{new:.4g}", flush=True)
