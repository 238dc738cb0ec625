"""Learning-rate schedules: `LearningRateScheduler` for any function, and the built-in decays."""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

from ... import _validate as check
from ...protocols import Model
from .base import Callback, prints_here


class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate at the start of every epoch.

    Args:
        schedule: a callable ``(epoch, lr) -> new_lr >= 0`` (epoch counts from 0 over the model's
            whole training, lr is the current rate), e.g. one of `StepDecay`,
            `ExponentialDecay`, `CosineDecay`; or ``(epoch) -> new_lr``, which Keras also takes.
        verbose: 1 prints the rate when it changes.

    The rate used in each epoch is added to the epoch logs (and so the History and any
    `CSVLogger`, wherever it is in the callbacks list) as ``"lr"``.
    """

    adds_logs = ("lr",)

    def __init__(self, schedule: Callable[[int, float], float] | Callable[[int], float], verbose: int = 0) -> None:
        if not callable(schedule):
            raise TypeError(f"schedule must be callable as (epoch, lr) -> lr, got {type(schedule).__name__}")
        self.schedule = schedule
        self.verbose = verbose
        self._epoch_only = _takes_epoch_only(schedule)

    def set_model(self, model: Model) -> None:
        """Attach the model, also to a schedule that is itself a callback (it reads the optimizer's base rate)."""
        super().set_model(model)
        if isinstance(self.schedule, Callback) and self.schedule is not self:
            self.schedule.set_model(model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._first_epoch = True

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError("LearningRateScheduler needs the model's optimizer; it is set by fit")
        old = float(optimizer.lr)
        first = getattr(self, "_first_epoch", False)
        if first:
            self._first_epoch = False
            # a rate set by hand since a schedule last set one (opt.lr = 0.02 between fits, or by a callback as this
            # fit began) is the base of this fit's schedule, as fit(lr=0.02) makes it: decaying from the old
            # `initial_lr` would put a rate the user replaced back, higher than the one set, without a word. The
            # old base set again (a resumed script's fit(lr=base)) is that base still
            if optimizer.scheduled_lr is not None and old not in (optimizer.scheduled_lr, optimizer.initial_lr):
                optimizer.initial_lr = None
        if first and isinstance(self.schedule, Schedule) and self.schedule.ended_at_zero(epoch):
            warnings.warn(f"{self.schedule!r} ended before this fit began (at the model's epoch {epoch}, counted "
                          "across fits, it is past its end), so every epoch of this fit trains at rate 0; for a new "
                          f"schedule from here, pass start_epoch={epoch}", UserWarning, stacklevel=2)
        schedule: Any = self.schedule  # of one argument or two, as `_takes_epoch_only` found
        returned = schedule(epoch) if self._epoch_only else schedule(epoch, old)
        new = _rate(returned)
        if new is None:
            raise TypeError(f"learning-rate schedule {self.schedule!r} returned {returned!r} of type "
                            f"{type(returned).__name__} at epoch {epoch + 1}; it must return a number")
        if not math.isfinite(new) or new < 0:  # 0 is a rate (a warm-up from 0), as for Keras and torch
            raise ValueError(f"learning-rate schedule {self.schedule!r} returned {returned!r} at epoch {epoch + 1}; "
                             "it must return a finite number >= 0")
        optimizer.lr = new
        self._epoch_rate = optimizer.scheduled_lr = float(optimizer.lr)
        if self.verbose and new != old and prints_here(self.model):
            print(f"LearningRateScheduler: epoch {epoch + 1}, lr {old:.4g} -> {float(new):.4g}", flush=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # the rate set for this epoch, not the optimizer's now: a callback whose on_epoch_end ran before this one
        # (ReduceLROnPlateau listed first) may already have set the next epoch's
        rate = getattr(self, "_epoch_rate", None)
        if rate is None and getattr(self.model, "optimizer", None) is not None:
            rate = float(self.model.optimizer.lr)
        if logs is not None and rate is not None:
            logs["lr"] = rate


def _takes_epoch_only(schedule: Callable[..., Any]) -> bool:
    """Whether `schedule` is called as ``(epoch)`` rather than ``(epoch, lr)``; a TypeError when it takes neither,
    so the mistake shows when the callback is made rather than as an argument count at the first epoch."""
    try:
        signature = inspect.signature(schedule)
    except (TypeError, ValueError):
        return False  # a callable whose signature Python does not tell (some builtins): called as (epoch, lr)

    def binds(*args: Any) -> bool:
        try:
            signature.bind(*args)
        except TypeError:
            return False
        return True

    if binds(0, 0.1):
        return False
    if binds(0):
        return True
    raise TypeError(f"schedule must be callable as (epoch, lr) -> lr or (epoch) -> lr; {schedule!r} takes {signature}")


def _rate(value: Any) -> float | None:
    """A schedule's result as a Python float: a real number (a NumPy float32 too) or a 0-d array, as Keras takes
    them; None for anything else (a bool, a string, an array of several rates)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real) or getattr(value, "shape", None) == ():
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    return None


class Schedule(LearningRateScheduler):
    """Base of the built-in schedules: callable as ``(epoch, lr) -> lr``, and usable directly as a callback.

    The base rate is `initial_lr` when given. Else, in `fit`, it is the optimizer's
    `initial_lr`: its rate when a schedule first ran on it, kept in its state and so in
    checkpoints, as torch keeps it; a later `fit`, or one resumed from a checkpoint, decays
    from the same base as one uninterrupted run. A rate set by hand since a schedule last set
    one (``opt.lr = 0.02`` between fits) is the base of the next fit's schedule instead, as
    ``fit(lr=0.02)`` makes it. Called by hand, outside `fit`, the base is the first rate it is given.

    The epochs counted are the model's (`epochs_trained`, across fits), so a resumed run goes on
    where it stopped. A new schedule for a later phase of training (fine-tuning with a fresh
    cosine after 10 epochs) passes the model epoch it starts at, ``start_epoch=10``, as a number
    (a resumed script passes the same), and starts at its own epoch 0 there, as a torch
    scheduler made then does. A fit that a decay past its end would run at rate 0 throughout warns.
    """

    def __init__(self, initial_lr: float | None = None, verbose: int = 0, start_epoch: int = 0) -> None:
        super().__init__(self, verbose)
        self.initial_lr = None if initial_lr is None else check.positive("initial_lr", initial_lr)
        self.start_epoch = check.integer("start_epoch", start_epoch, low=0)
        self._base: float | None = None  # the first rate given, for calls by hand

    def __call__(self, epoch: int, lr: float) -> float:
        return self.rate(max(epoch - self.start_epoch, 0), self._base_rate(lr))

    def ended_at_zero(self, epoch: int) -> bool:
        """Whether every epoch from the model's `epoch` on trains at rate 0 (a decay past its end, to 0)."""
        return False

    def _base_rate(self, lr: float) -> float:
        """`initial_lr`, else the optimizer's (set to `lr` when none is yet), else the first `lr` seen."""
        if self.initial_lr is not None:
            return self.initial_lr
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None:
            if optimizer.initial_lr is None:
                if not lr > 0:  # every rate from a base of 0 is 0, and a checkpoint refuses that base
                    raise ValueError(f"{type(self).__name__} has no base rate to decay from: the optimizer's rate "
                                     f"is {lr!r}; give initial_lr=")
                optimizer.initial_lr = float(lr)
            return optimizer.initial_lr
        if self._base is None:
            self._base = float(lr)
        return self._base

    def rate(self, epoch: int, base: float) -> float:
        """The rate for `epoch` given the base rate."""
        raise NotImplementedError(f"{type(self).__name__} must implement rate(epoch, base) -> float")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                           if not k.startswith("_") and k not in ("schedule", "verbose", "model"))
        return f"{type(self).__name__}({fields})"



class StepDecay(Schedule):
    """``base * gamma ** (epoch // step_size)``: multiply the rate by `gamma` every `step_size` epochs.

    Args:
        step_size: epochs between drops.
        gamma: the factor applied at each drop.
        initial_lr: the base rate (default: the optimizer's `initial_lr`; see `Schedule`).
        start_epoch: the model epoch counted as the schedule's first (see `Schedule`).
    """

    def __init__(self, step_size: int, gamma: float = 0.1, initial_lr: float | None = None,
                 start_epoch: int = 0) -> None:
        super().__init__(initial_lr, start_epoch=start_epoch)
        self.step_size = check.positive_int("StepDecay step_size", step_size)
        self.gamma = check.positive("StepDecay gamma", gamma)

    def rate(self, epoch: int, base: float) -> float:
        return base * self.gamma ** (epoch // self.step_size)


class ExponentialDecay(Schedule):
    """``base * decay_rate ** (epoch / decay_epochs)`` (floored exponent when `staircase`).

    Args:
        decay_rate: factor per `decay_epochs` epochs, e.g. 0.96.
        decay_epochs: epochs over which the rate is multiplied by `decay_rate`.
        staircase: decay in whole steps instead of continuously.
        initial_lr: the base rate (default: the optimizer's `initial_lr`; see `Schedule`).
        start_epoch: the model epoch counted as the schedule's first (see `Schedule`).
    """

    def __init__(self, decay_rate: float, decay_epochs: float = 1, staircase: bool = False,
                 initial_lr: float | None = None, start_epoch: int = 0) -> None:
        super().__init__(initial_lr, start_epoch=start_epoch)
        self.decay_rate = check.positive("ExponentialDecay decay_rate", decay_rate)
        self.decay_epochs = check.positive("ExponentialDecay decay_epochs", decay_epochs)
        self.staircase = check.flag("ExponentialDecay staircase", staircase)

    def rate(self, epoch: int, base: float) -> float:
        exponent = epoch / self.decay_epochs
        return base * self.decay_rate ** (math.floor(exponent) if self.staircase else exponent)


class CosineDecay(Schedule):
    """Cosine annealing from the base rate to `min_lr` over `decay_epochs`, then `min_lr`.

    ``min_lr + (base - min_lr) * (1 + cos(pi * min(t, decay_epochs) / decay_epochs)) / 2``, where
    ``t = epoch - warmup_epochs`` counts the epochs after the warm-up (``epoch`` itself without one).

    Args:
        decay_epochs: epochs to reach `min_lr`, counted after the warm-up (as Keras's ``decay_steps``).
        min_lr: the final rate (>= 0, at most the base; torch's ``eta_min`` and Keras's ``alpha * base``, both
            0 by default).
        warmup_epochs: epochs of linear warm-up from base/warmup_epochs to base first; the epoch after
            them trains at base.
        initial_lr: the base rate (default: the optimizer's `initial_lr`; see `Schedule`).
        start_epoch: the model epoch counted as the schedule's first (see `Schedule`).
    """

    def __init__(self, decay_epochs: int, min_lr: float = 0.0, warmup_epochs: int = 0,
                 initial_lr: float | None = None, start_epoch: int = 0) -> None:
        super().__init__(initial_lr, start_epoch=start_epoch)
        self.decay_epochs = check.positive_int("CosineDecay decay_epochs", decay_epochs)
        self.min_lr = check.non_negative("CosineDecay min_lr", min_lr)
        self.warmup_epochs = check.integer("CosineDecay warmup_epochs", warmup_epochs, low=0)

    def ended_at_zero(self, epoch: int) -> bool:
        return self.min_lr == 0 and epoch - self.start_epoch >= self.warmup_epochs + self.decay_epochs

    def rate(self, epoch: int, base: float) -> float:
        if self.min_lr > base:
            raise ValueError(f"CosineDecay min_lr={self.min_lr!r} is above its base rate {base!r}: the decay would "
                             "raise the rate; give a min_lr at most the base")
        if epoch < self.warmup_epochs:
            return base * (epoch + 1) / self.warmup_epochs
        t = min(epoch - self.warmup_epochs, self.decay_epochs) / self.decay_epochs
        return self.min_lr + (base - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
