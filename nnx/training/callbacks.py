"""Callbacks: hooks `fit` calls at train, epoch and batch boundaries.

`fit` calls, in order: ``on_train_begin(logs)`` (logs: ``epochs``, ``steps``,
``metrics`` and ``validation``), then per epoch ``on_epoch_begin``, per step
``on_batch_begin``/``on_batch_end`` (logs: ``loss`` as a 0-d array on the
device, ``size``), ``on_epoch_end`` (logs: floats; what a callback adds to them
is recorded in the History), and ``on_train_end``, which runs on every exit (an error or Ctrl-C included). Setting
``model.stop_training = True`` stops after the current step.

The ``epoch`` the hooks receive is an index counting from 0 over the model's whole
training (``model.epochs_trained`` before the epoch); what is printed for people
counts from 1 ("epoch 1" is the first), as the progress bar does.
Callbacks that add entries to the epoch logs (``adds_logs = True``, e.g.
`LearningRateScheduler`'s ``"lr"``) get ``on_epoch_end`` before the others, so a
`CSVLogger` or `EarlyStopping` listed before them still sees those entries.

Callbacks that watch a metric (`EarlyStopping`, `ModelCheckpoint`) check at the
start of training that it will be recorded and raise `ValueError` otherwise.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import array_api_compat

from .history import format_value

# Names whose larger values are better, for mode="auto".
_HIGHER_IS_BETTER = ("acc", "accuracy", "precision", "recall", "f1", "r2", "auc")


class Callback:
    """Base class: override any hook. `self.model` is set before training starts.

    Batch logs hold device arrays (``logs["loss"]`` is a 0-d array) so that no
    hook forces a device sync unless it converts them; epoch logs hold floats.
    """

    model: Any = None
    adds_logs: bool = False  # True: on_epoch_end writes into the logs, so it runs before the other callbacks'

    def set_model(self, model: Any) -> None:
        """Attach the model being trained."""
        self.model = model

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Before the first epoch."""

    def on_train_end(self, logs: dict | None = None) -> None:
        """After the last epoch, also after an interrupt or early stop."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Before each epoch."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """After each epoch, with its loss and metrics (and validation ones)."""

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        """Before each training step."""

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """After each optimizer step; parameter gradients are still in place."""

    def on_gradients(self, grads: dict[str, Any]) -> dict[str, Any] | None:
        """Before each optimizer update, after clipping: parameter name -> gradient.

        Return None to only look, or a dict of replacement gradients (same names and shapes).
        """
        return None


class CallbackList(Callback):
    """Fans each hook out to a list of callbacks, in order."""

    def __init__(self, callbacks: list[Callback] | None = None) -> None:
        self.callbacks = list(callbacks or [])
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be nnx.callbacks.Callback instances, got {type(cb).__name__}")

    def set_model(self, model: Any) -> None:
        for cb in self.callbacks:
            cb.set_model(model)

    def uses(self, hook: str) -> bool:
        """Whether any callback here overrides `hook` (fit skips building logs for a per-batch hook nobody uses)."""
        base = getattr(Callback, hook)
        return any(getattr(getattr(cb, hook), "__func__", None) is not base for cb in self.callbacks)

    def on_train_begin(self, logs: dict | None = None) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        # every callback gets to close its files and bars, even when one of them fails
        first_error: BaseException | None = None
        for cb in self.callbacks:
            try:
                cb.on_train_end(logs)
            except BaseException as exc:  # noqa: B036 - re-raised below, after the others ran
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        # the callbacks that add to the logs first, so every reader sees them whatever the list's order
        for cb in sorted(self.callbacks, key=lambda c: not c.adds_logs):
            cb.on_epoch_end(epoch, logs)

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        for cb in self.callbacks:
            cb.on_batch_begin(batch, logs)

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        for cb in self.callbacks:
            cb.on_batch_end(batch, logs)


# -- helpers ---------------------------------------------------------------------

def recorded_names(logs: dict | None) -> list[str] | None:
    """The epoch-log names a `fit` run will record, from its ``on_train_begin`` logs (None if unknown)."""
    if not logs or "metrics" not in logs:
        return None
    names = ["loss", *logs["metrics"]]
    if logs.get("validation"):
        names += [f"val_{name}" for name in names]
    return names


def check_monitor(owner: str, monitor: str, logs: dict | None) -> None:
    """Raise ValueError when `monitor` is not among the names this run records."""
    names = recorded_names(logs)
    if names is None or monitor in names:
        return
    logs = cast(dict, logs)  # names were found, so there are logs
    hint = ""
    if monitor.startswith("val_") and not logs.get("validation"):
        hint = " (val_ metrics need validation_data or validation_split in fit)"
    elif monitor not in ("loss", "val_loss") and monitor.removeprefix("val_") not in logs["metrics"]:
        hint = f" (add {monitor.removeprefix('val_')!r} to fit's metrics)"
    raise ValueError(f"{owner} monitors {monitor!r}, which this fit does not record{hint}; "
                     f"recorded: {names}")


def _resolve_mode(owner: str, mode: str, monitor: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner} mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    base = monitor.removeprefix("val_").lower()
    return "max" if base in _HIGHER_IS_BETTER or base.endswith("accuracy") else "min"


def _improved(current: float, best: float, mode: str, min_delta: float) -> bool:
    if not math.isfinite(current):
        return False
    return current < best - min_delta if mode == "min" else current > best + min_delta


def _copy_state(model: Any) -> dict[str, Any]:
    """Device-side copies of the weights: optimizers update in place on some backends."""
    xp = model.xp
    return {name: xp.asarray(value, copy=True) for name, value in model.state_dict().items()}


def _format_logs(logs: dict) -> str:
    """One line of epoch logs, values rounded for display (NumPy and device scalars too)."""
    return " - ".join(f"{k}: {format_value(v)}" for k, v in logs.items())


# -- stopping ------------------------------------------------------------------------

class EarlyStopping(Callback):
    """Stop training when a monitored quantity has stopped improving.

    Args:
        monitor: epoch-log name to watch (``"val_loss"``, ``"loss"``, ``"val_accuracy"``, ...).
        patience: epochs without improvement after which training stops.
        min_delta: smallest change that counts as an improvement.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (max for accuracy/precision/recall/f1/r2, else min).
        restore_best_weights: when training ends, put back the weights of the best epoch.
        baseline: a value the monitored quantity must beat within `patience` epochs.
        verbose: 1 prints a line when stopping.

    After training, `stopped_epoch` is the index of the epoch at which it stopped (None
    if it did not), `best` the best value and `best_epoch` the index of its epoch. Both
    are 0-based indices, like the ``epoch`` the hooks receive and `History.epoch`; the
    epoch people count (and ``verbose=1`` prints) is the index + 1.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 0, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = False, baseline: float | None = None,
                 verbose: int = 0) -> None:
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping patience must be an int >= 0, got {patience!r}")
        if not isinstance(min_delta, (int, float)) or not math.isfinite(min_delta):
            raise ValueError(f"EarlyStopping min_delta must be a finite number, got {min_delta!r}")
        self.monitor = monitor
        self.patience = patience
        self.min_delta = abs(float(min_delta))
        self.mode = _resolve_mode("EarlyStopping", mode, monitor)
        self.restore_best_weights = restore_best_weights
        self.baseline = baseline
        self.verbose = verbose
        self._reset()

    def _reset(self) -> None:
        self.wait = 0
        self.stopped_epoch: int | None = None
        self.best_epoch: int | None = None
        self.best = math.inf if self.mode == "min" else -math.inf
        if self.baseline is not None:
            self.best = float(self.baseline)
        self.best_weights: dict[str, Any] | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        check_monitor("EarlyStopping", self.monitor, logs)
        self._reset()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which is not in the epoch logs; "
                             f"logged: {sorted(logs)}")
        current = float(logs[self.monitor])
        if _improved(current, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best_weights:
                self.best_weights = _copy_state(self.model)
            return
        self.wait += 1
        if self.wait >= max(self.patience, 1):
            self.stopped_epoch = epoch
            self.model.stop_training = True
            if self.verbose:
                print(f"EarlyStopping: {self.monitor} did not improve for {self.wait} epoch(s); "
                      f"stopping at epoch {epoch + 1}", flush=True)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
            if self.verbose:
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


# -- checkpoints and logs --------------------------------------------------------------

class ModelCheckpoint(Callback):
    """Save the model (with `model.save`, atomically) at the end of epochs.

    Args:
        filepath: where to write; may hold ``{epoch}`` (1-based) and any epoch-log name,
            e.g. ``"ckpt/model-{epoch:03d}-{val_loss:.3f}.npz"``.
        monitor: the quantity that decides "best" when `save_best_only`.
        save_best_only: only save when `monitor` improved (then a fixed filepath always
            holds the best model so far).
        mode: ``"min"``, ``"max"`` or ``"auto"``, as in `EarlyStopping`.
        include_optimizer: also store optimizer state, so training can resume exactly.
        save_freq: save every this many epochs (ignored with `save_best_only`).
        verbose: 1 prints a line per save.

    `saved` lists the paths written, in order; `best` is the best monitored value.
    """

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", include_optimizer: bool = True, save_freq: int = 1, verbose: int = 0) -> None:
        if isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1:
            raise ValueError(f"ModelCheckpoint save_freq must be an int >= 1, got {save_freq!r}")
        self.filepath = os.fspath(filepath)
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.mode = _resolve_mode("ModelCheckpoint", mode, monitor)
        self.include_optimizer = include_optimizer
        self.save_freq = save_freq
        self.verbose = verbose
        self.best = math.inf if self.mode == "min" else -math.inf
        self.saved: list[str] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        if self.save_best_only:
            check_monitor("ModelCheckpoint", self.monitor, logs)
        names = recorded_names(logs)
        if names is not None:
            try:  # a placeholder naming something never logged should fail now, not at the first save
                self.filepath.format(epoch=1, **dict.fromkeys(names, 0.0))
            except KeyError as exc:
                raise ValueError(f"ModelCheckpoint filepath {self.filepath!r} uses {{{exc.args[0]}}}, which this "
                                 f"fit does not record; available: ['epoch', *{names}]") from None
            except (ValueError, IndexError) as exc:
                raise ValueError(f"ModelCheckpoint filepath {self.filepath!r} is not a valid format "
                                 f"string: {exc}") from None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        if self.save_best_only:
            if self.monitor not in logs:
                raise ValueError(f"ModelCheckpoint monitors {self.monitor!r}, which is not in the epoch logs; "
                                 f"logged: {sorted(logs)}")
            current = float(logs[self.monitor])
            if not _improved(current, self.best, self.mode, 0.0):
                return
            self.best = current
        elif (epoch + 1) % self.save_freq:
            return
        path = self.filepath.format(epoch=epoch + 1, **logs)
        self.model.save(path, include_optimizer=self.include_optimizer)
        self.saved.append(path)
        if self.verbose:
            extra = f" ({self.monitor} = {self.best:.4g})" if self.save_best_only else ""
            print(f"ModelCheckpoint: saved {path}{extra}", flush=True)


class CSVLogger(Callback):
    """Write one CSV row per epoch: the epoch number (from 1, as printed), then every epoch-log value.

    Args:
        path: the CSV file.
        append: add to an existing file (no second header) instead of overwriting it.
        separator: the field delimiter.

    The columns are fixed by the first epoch logged; later extra keys are ignored.
    Each row is flushed, so the file is readable while training runs.
    """

    def __init__(self, path: str | os.PathLike, append: bool = False, separator: str = ",") -> None:
        self.path = Path(path)
        self.append = append
        self.separator = separator
        self.keys: list[str] | None = None
        self._file: Any = None
        self._writer: Any = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.keys = None
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


# -- learning-rate schedules -----------------------------------------------------------------

class LearningRateScheduler(Callback):
    """Set the optimizer's learning rate at the start of every epoch.

    Args:
        schedule: a callable ``(epoch, lr) -> new_lr`` (epoch counts from 0 over the model's
            whole training, lr is the current rate), e.g. one of `StepDecay`,
            `ExponentialDecay`, `CosineDecay`.
        verbose: 1 prints the rate when it changes.

    The rate used in each epoch is added to the epoch logs (and so the History and any
    `CSVLogger`, wherever it is in the callbacks list) as ``"lr"``.
    """

    adds_logs = True

    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0) -> None:
        if not callable(schedule):
            raise TypeError(f"schedule must be callable as (epoch, lr) -> lr, got {type(schedule).__name__}")
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None:
            raise ValueError("LearningRateScheduler needs the model's optimizer; it is set by fit")
        old = float(optimizer.lr)
        new = self.schedule(epoch, old)
        if isinstance(new, bool) or not isinstance(new, (int, float)) or not math.isfinite(new) or new <= 0:
            raise ValueError(f"learning-rate schedule {self.schedule!r} returned {new!r} at epoch {epoch + 1}; "
                             "it must return a finite number > 0")
        optimizer.lr = float(new)
        if self.verbose and new != old:
            print(f"LearningRateScheduler: epoch {epoch + 1}, lr {old:.4g} -> {float(new):.4g}", flush=True)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None and getattr(self.model, "optimizer", None) is not None:
            logs["lr"] = float(self.model.optimizer.lr)


class Schedule(LearningRateScheduler):
    """Base of the built-in schedules: callable as ``(epoch, lr) -> lr``, and usable directly as a callback.

    The base rate is `initial_lr` when given, else the optimizer's rate the first time
    the schedule is called (later calls, also in later `fit` calls, keep that base).
    """

    def __init__(self, initial_lr: float | None = None, verbose: int = 0) -> None:
        if initial_lr is not None and not (isinstance(initial_lr, (int, float)) and initial_lr > 0):
            raise ValueError(f"initial_lr must be a number > 0 or None, got {initial_lr!r}")
        super().__init__(self, verbose)
        self.initial_lr = None if initial_lr is None else float(initial_lr)
        self._base = self.initial_lr

    def __call__(self, epoch: int, lr: float) -> float:
        if self._base is None:
            self._base = float(lr)
        return self.rate(epoch, self._base)

    def rate(self, epoch: int, base: float) -> float:
        """The rate for `epoch` given the base rate."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items()
                           if not k.startswith("_") and k not in ("schedule", "verbose", "model"))
        return f"{type(self).__name__}({fields})"


def _positive(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner} {name} must be a finite number > 0, got {value!r}")
    return float(value)


class StepDecay(Schedule):
    """``base * gamma ** (epoch // step_size)``: multiply the rate by `gamma` every `step_size` epochs.

    Args:
        step_size: epochs between drops.
        gamma: the factor applied at each drop.
        initial_lr: the base rate (default: the optimizer's rate at the first epoch).
    """

    def __init__(self, step_size: int, gamma: float = 0.1, initial_lr: float | None = None) -> None:
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"StepDecay step_size must be an int >= 1, got {step_size!r}")
        super().__init__(initial_lr)
        self.step_size = step_size
        self.gamma = _positive("StepDecay", "gamma", gamma)

    def rate(self, epoch: int, base: float) -> float:
        return base * self.gamma ** (epoch // self.step_size)


class ExponentialDecay(Schedule):
    """``base * decay_rate ** (epoch / decay_epochs)`` (floored exponent when `staircase`).

    Args:
        decay_rate: factor per `decay_epochs` epochs, e.g. 0.96.
        decay_epochs: epochs over which the rate is multiplied by `decay_rate`.
        staircase: decay in whole steps instead of continuously.
        initial_lr: the base rate (default: the optimizer's rate at the first epoch).
    """

    def __init__(self, decay_rate: float, decay_epochs: float = 1, staircase: bool = False,
                 initial_lr: float | None = None) -> None:
        super().__init__(initial_lr)
        self.decay_rate = _positive("ExponentialDecay", "decay_rate", decay_rate)
        self.decay_epochs = _positive("ExponentialDecay", "decay_epochs", decay_epochs)
        self.staircase = staircase

    def rate(self, epoch: int, base: float) -> float:
        exponent = epoch / self.decay_epochs
        return base * self.decay_rate ** (math.floor(exponent) if self.staircase else exponent)


class CosineDecay(Schedule):
    """Cosine annealing from the base rate to `min_lr` over `decay_epochs`, then `min_lr`.

    ``min_lr + (base - min_lr) * (1 + cos(pi * min(epoch, decay_epochs) / decay_epochs)) / 2``

    Args:
        decay_epochs: epochs to reach `min_lr`.
        min_lr: the final rate (> 0, since optimizers reject a zero rate).
        warmup_epochs: epochs of linear warm-up from base/warmup_epochs to base first.
        initial_lr: the base rate (default: the optimizer's rate at the first epoch).
    """

    def __init__(self, decay_epochs: int, min_lr: float = 1e-6, warmup_epochs: int = 0,
                 initial_lr: float | None = None) -> None:
        if isinstance(decay_epochs, bool) or not isinstance(decay_epochs, int) or decay_epochs < 1:
            raise ValueError(f"CosineDecay decay_epochs must be an int >= 1, got {decay_epochs!r}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"CosineDecay warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
        super().__init__(initial_lr)
        self.decay_epochs = decay_epochs
        self.min_lr = _positive("CosineDecay", "min_lr", min_lr)
        self.warmup_epochs = warmup_epochs

    def rate(self, epoch: int, base: float) -> float:
        if epoch < self.warmup_epochs:
            return base * (epoch + 1) / self.warmup_epochs
        t = min(epoch - self.warmup_epochs, self.decay_epochs) / self.decay_epochs
        return self.min_lr + (base - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


# -- progress -----------------------------------------------------------------------------------

class ProgressBar(Callback):
    """Live training progress: a tqdm bar per epoch on a terminal when tqdm is installed, else one line per epoch.

    Args:
        epochs: epochs in this run (default: taken from fit).
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

    def on_train_begin(self, logs: dict | None = None) -> None:
        logs = logs or {}
        self._total_epochs = self.epochs if self.epochs is not None else logs.get("epochs")
        self._steps = logs.get("steps")
        self._run_epoch = 0
        self._tqdm = None
        if self.use_tqdm or (self.use_tqdm is None and _is_terminal(self.file or sys.stderr)):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                if self.use_tqdm:
                    raise
            else:
                self._tqdm = tqdm

    def _label(self) -> str:
        total = f"/{self._total_epochs}" if self._total_epochs else ""
        return f"epoch {self._run_epoch}{total}"

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._run_epoch += 1
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


# -- gradient analysis -------------------------------------------------------------------------

GRADIENT_STATS = ("weight_mean", "weight_max", "weight_norm", "bias_mean", "bias_max", "bias_norm")


class GradientAnalyzer(Callback):
    """Per layer with parameters and per step: mean |g|, max |g| and L2 norm of its weight and bias gradients.

    Every layer that has trained parameters of its own gets a column, built-in or a user's,
    at any depth inside containers (named by path, ``"2.0:Dense(8, 8)"``). Its
    "weight" statistics cover all of its parameters except the one named ``bias``
    (for `Dense` that is its weight matrix; for a layer with several such parameters,
    the statistics of all their entries together), and its "bias" statistics cover the
    parameter named ``bias`` (zeros when the layer has none). `layer_names` labels the
    columns ``"<index>:<Class>(<shape of its first parameter>)"``, e.g. ``"0:Dense(2, 4)"``,
    and `parameter_names` lists which parameters feed each column.

    Args:
        vanish_threshold: warn when a layer's mean |weight gradient| over an epoch falls below it.
        explode_threshold: warn when a layer's max |gradient| in an epoch exceeds it (or is not finite).
        warn: emit `warnings.warn` for those; events are recorded in `events` either way.

    The statistics are computed on the device right after each step and kept there;
    once per epoch they are stacked into one array and moved to the host in a single
    transfer, so the analyzer adds no per-step device sync. A layer warns when it
    enters the vanishing or exploding state (again only after it has left it).

    `history()` returns the statistics as ``(steps, layers)`` NumPy arrays,
    `layer_names` names the columns, `step_epochs` gives each step's epoch, and
    `plot()` draws them (`nnx.plot.plot_gradients`). Statistics accumulate over
    several `fit` calls on the same model; `reset()` clears them.
    """

    def __init__(self, vanish_threshold: float = 1e-7, explode_threshold: float = 1e3, warn: bool = True) -> None:
        self.vanish_threshold = _positive("GradientAnalyzer", "vanish_threshold", vanish_threshold)
        self.explode_threshold = _positive("GradientAnalyzer", "explode_threshold", explode_threshold)
        if self.vanish_threshold >= self.explode_threshold:
            raise ValueError(f"GradientAnalyzer vanish_threshold ({vanish_threshold}) must be below "
                             f"explode_threshold ({explode_threshold})")
        self.warn = warn
        self._model_id: int | None = None
        self.reset()

    def reset(self) -> None:
        """Forget all recorded statistics and events."""
        self.layer_names: list[str] = []
        self.step_epochs: list[int] = []
        self.events: list[dict[str, Any]] = []
        self._chunks: list[Any] = []  # host arrays (steps, layers, 6), one per epoch
        self._pending: list[Any] = []  # device arrays (layers * 6,), one per step of the current epoch
        self._pending_epochs: list[int] = []
        self._state: dict[tuple[str, str], bool] = {}
        self._layers: list[Any] = []  # (weight-like parameters, bias or None) per column
        self.parameter_names: list[list[str]] = []

    def set_model(self, model: Any) -> None:
        super().set_model(model)
        if self._model_id is not None and self._model_id != id(model):
            self.reset()
        self._model_id = id(model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        layers = [(path, layer) for path, layer in self.model.named_layers() if layer.parameters(recurse=False)]
        if not layers:
            raise ValueError("GradientAnalyzer needs a model with at least one layer that has parameters")
        names = [_column_name(path, layer) for path, layer in layers]
        if self.layer_names and names != self.layer_names:
            self.reset()
        self.layer_names = names
        self._layers = [_split_bias(layer) for _, layer in layers]
        self.parameter_names = [[p.name for p in weights] + ([] if bias is None else [bias.name])
                                for weights, bias in self._layers]
        self._pending, self._pending_epochs = [], []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        xp = self.model.xp
        values = []
        for weights, bias in self._layers:
            values.extend(_group_stats(xp, weights))
            values.extend(_group_stats(xp, [] if bias is None else [bias], like=weights[0]))
        self._pending.append(xp.stack(values))
        self._pending_epochs.append(self._epoch)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._flush(epoch)

    def on_train_end(self, logs: dict | None = None) -> None:
        self._flush(getattr(self, "_epoch", 0))  # steps of an epoch cut short by Ctrl-C

    def _flush(self, epoch: int) -> None:
        if not self._pending:
            return
        xp = self.model.xp
        host = self.model.backend.to_host(xp.stack(self._pending))  # the epoch's one transfer
        self._pending = []
        self.step_epochs.extend(self._pending_epochs)
        self._pending_epochs = []
        hxp = _host_xp()
        chunk = hxp.reshape(hxp.asarray(host, dtype=hxp.float64), (host.shape[0], len(self._layers), 6))
        self._chunks.append(chunk)
        self._check(epoch, chunk)

    def _check(self, epoch: int, chunk: Any) -> None:
        hxp = _host_xp()
        mean_w = hxp.mean(chunk[:, :, 0], axis=0)
        peak = hxp.max(hxp.stack([chunk[:, :, 1], chunk[:, :, 4]], axis=0), axis=(0, 1))
        finite = hxp.all(hxp.isfinite(chunk), axis=(0, 2))
        for j, name in enumerate(self.layer_names):
            exploding = (not bool(finite[j])) or float(peak[j]) > self.explode_threshold
            vanishing = (not exploding) and float(mean_w[j]) < self.vanish_threshold
            for kind, active, value, limit in (
                ("exploding", exploding, float(peak[j]), self.explode_threshold),
                ("vanishing", vanishing, float(mean_w[j]), self.vanish_threshold),
            ):
                was = self._state.get((name, kind), False)
                self._state[(name, kind)] = active
                if not active:
                    continue
                self.events.append({"epoch": epoch, "layer": name, "kind": kind, "value": value})
                if self.warn and not was:
                    what = "max |gradient|" if kind == "exploding" else "mean |weight gradient|"
                    side = "above" if kind == "exploding" else "below"
                    warnings.warn(f"GradientAnalyzer: gradients of layer {name} are {kind} at epoch {epoch + 1}: "
                                  f"{what} = {value:.3g}, {side} the threshold {limit:g}",
                                  RuntimeWarning, stacklevel=2)

    def history(self) -> dict[str, Any]:
        """Name (`GRADIENT_STATS`) -> NumPy array of shape (steps, layers), for the epochs finished so far."""
        hxp = _host_xp()
        n_layers = len(self.layer_names)
        data = hxp.concat(self._chunks, axis=0) if self._chunks else hxp.zeros((0, n_layers, 6))
        return {name: data[:, :, k] for k, name in enumerate(GRADIENT_STATS)}

    @property
    def steps(self) -> int:
        """Steps recorded and brought to the host so far."""
        return sum(chunk.shape[0] for chunk in self._chunks)

    def plot(self, **kwargs: Any) -> Any:
        """A matplotlib Figure of the gradient history (see `nnx.plot.plot_gradients`)."""
        from ..plot import plot_gradients

        return plot_gradients(self, **kwargs)


def _column_name(path: str, layer: Any) -> str:
    """``"0:Dense(2, 4)"``: the layer's path in the model, class and the shape of its first parameter."""
    shape = layer.parameters(recurse=False)[0].shape
    return f"{path}:{type(layer).__name__}({', '.join(map(str, shape))})"


def _split_bias(layer: Any) -> tuple[list[Any], Any]:
    """A layer's own parameters as (the weight-like ones, the one named ``bias`` or None)."""
    weights, bias = [], None
    for p in layer.parameters(recurse=False):
        if bias is None and p.name.rsplit(".", 1)[-1] == "bias":
            bias = p
        else:
            weights.append(p)
    if not weights:  # a layer whose only parameter is a bias: its statistics go in the weight columns
        weights, bias = [bias], None
    return weights, bias


def _group_stats(xp: Any, params: list[Any], like: Any = None) -> list[Any]:
    """`_grad_stats` over all entries of several parameters' gradients together (zeros for none)."""
    if not params:
        return _grad_stats(xp, None, like.value)
    if len(params) == 1:
        return _grad_stats(xp, params[0].grad, params[0].value)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return _grad_stats(xp, None, params[0].value)
    return _grad_stats(xp, xp.concat([xp.reshape(g, (-1,)) for g in grads]), params[0].value)


def _grad_stats(xp: Any, grad: Any, value: Any) -> list[Any]:
    """mean |g|, max |g| and ||g||_2 as 0-d device arrays (zeros when the step left no gradient)."""
    if grad is None:
        zero = xp.zeros((), dtype=value.dtype, device=array_api_compat.device(value))
        return [zero, zero, zero]
    a = xp.abs(grad)
    peak = xp.max(a)
    # scaled by the max so the squares cannot overflow when gradients explode
    scale = xp.where(peak > 0, peak, xp.ones_like(peak))
    norm = peak * xp.sqrt(xp.sum((a / scale) ** 2))
    return [xp.mean(a), peak, norm]


def _host_xp() -> Any:
    from ..backends import get_backend

    return get_backend("numpy").xp


__all__ = [
    "Callback", "CallbackList", "CSVLogger", "CosineDecay", "EarlyStopping", "ExponentialDecay",
    "GRADIENT_STATS", "GradientAnalyzer", "LearningRateScheduler", "ModelCheckpoint", "ProgressBar",
    "Schedule", "StepDecay", "TerminateOnNaN", "check_monitor", "recorded_names",
]
