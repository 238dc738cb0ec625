"""`ModelCheckpoint`: save the model after epochs, or only when a monitored value improves."""

from __future__ import annotations

import copy
import math
import numbers
import os
import warnings
from typing import Any

from ...io import file_name, read_checkpoint
from .base import Callback
from .monitor import check_monitor, improved, not_validated, recorded_names, resolve_mode

STATE_KEY = "ModelCheckpoint"
"""Where checkpoints keep their state in ``model.callback_state``: the last saved epoch's logs, the bests so far."""


class ModelCheckpoint(Callback):
    """Save the model (with `model.save`, atomically) at the end of epochs.

    Args:
        filepath: where to write; may hold ``{epoch}`` (1-based) and any epoch-log name,
            e.g. ``"ckpt/model-{epoch:03d}-{val_loss:.3f}.npz"``; one naming a ``val_`` value saves nothing
            at an epoch that did not validate (``fit(validation_freq=n)``).
        monitor: the quantity that decides "best" when `save_best_only`.
        save_best_only: only save when `monitor` improved (then a fixed filepath always
            holds the best model so far, also across a fit resumed from a checkpoint).
        mode: ``"min"``, ``"max"`` or ``"auto"``, as in `EarlyStopping` (read only with `save_best_only`).
        include_optimizer: also store optimizer state, so training can resume exactly.
        save_freq: save every this many epochs (ignored with `save_best_only`); counted in epochs, not in
            batches as Keras counts an int, so a fit none of whose epochs it saves warns. ``"epoch"``
            (Keras's default) is 1.
        verbose: 1 prints a line per save.

    `saved` lists the paths written, in order (in a data-parallel `fit`, on every rank: those rank 0 wrote,
    and only rank 0 prints them); `best` is the best monitored value.

    Before each save, the epoch's logs and the best so far go into ``model.callback_state``,
    which the file keeps and `nnx.load` restores. A later `fit` of the model, or of one
    loaded from any of its checkpoints, starts `best` from there, so a resumed run keeps the
    best file of the uninterrupted one (whatever the order of the checkpoints that write the
    files). A fresh model starts from nothing. A fit that so writes nothing to a fixed filepath warns where
    no file there holds that best: none exists (fine-tuning into a new file), or one another run left
    does; ``model.callback_state.clear()`` starts anew.
    """

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto", include_optimizer: bool = True, save_freq: int | str = 1,
                 verbose: int = 0) -> None:
        if save_freq == "epoch":
            save_freq = 1
        if isinstance(save_freq, bool) or not isinstance(save_freq, numbers.Integral) or int(save_freq) < 1:
            raise ValueError(f"ModelCheckpoint save_freq must be an int >= 1 (epochs) or 'epoch', got {save_freq!r}")
        save_freq = int(save_freq)  # a NumPy integer (from np.arange) too
        self.filepath = file_name(filepath, "ModelCheckpoint")  # ~ expanded, as save expands it
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.mode = resolve_mode("ModelCheckpoint", mode, monitor, used=save_best_only)
        self.include_optimizer = include_optimizer
        self.save_freq = save_freq
        self.verbose = verbose
        self.best = math.inf if self.mode == "min" else -math.inf
        self.saved: list[str] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._inherited: float | None = None  # a best recorded by an earlier fit of the model
        self._saves = len(self.saved)
        if self.save_best_only:
            check_monitor("ModelCheckpoint", self.monitor, logs)
            self.best = self._best_so_far()
            self._inherited = self.best if math.isfinite(self.best) else None
        epochs = (logs or {}).get("epochs")
        if not self.save_best_only and isinstance(epochs, int) and epochs > 0:
            first, last = self.model.epochs_trained + 1, self.model.epochs_trained + epochs
            if last // self.save_freq == (first - 1) // self.save_freq:
                n = self.save_freq
                warnings.warn(f"ModelCheckpoint save_freq={n} saves once every {n} epochs (it counts in epochs, "
                              f"not batches as Keras does): none of this fit's epochs {first}-{last}",
                              UserWarning, stacklevel=2)
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
        best = self.best
        if self.save_best_only:
            if self.monitor not in logs:
                if not_validated(self.monitor, logs):
                    return  # an epoch between validations (validation_freq)
                raise ValueError(f"ModelCheckpoint monitors {self.monitor!r}, which is not in the epoch logs; "
                                 f"logged: {sorted(logs)}")
            current = float(logs[self.monitor])
            if not improved(current, self.best, self.mode, 0.0):
                return
        elif (epoch + 1) % self.save_freq:
            return
        try:
            path = self.filepath.format(epoch=epoch + 1, **logs)
        except KeyError as exc:
            if not_validated(str(exc.args[0]), logs):
                return  # the path names a validation value an epoch between validations (validation_freq) lacks
            raise
        if self.save_best_only:
            self.best = current
        recorded = copy.deepcopy(self.model.callback_state.get(STATE_KEY))
        self._record(logs)
        try:
            self.model.save(path, include_optimizer=self.include_optimizer)
        except BaseException:
            # a file never written is no best: else a later fit of this model would overwrite the best file only
            # with a model better than one that is on no disk
            self.best = best
            if recorded is None:
                self.model.callback_state.pop(STATE_KEY, None)
            else:
                self.model.callback_state[STATE_KEY] = recorded
            raise
        self.saved.append(path)  # on every rank of a data-parallel fit: where rank 0 wrote it
        comm = getattr(self.model, "distributed", None)
        if self.verbose and (comm is None or comm.rank == 0):  # the other ranks wrote nothing
            extra = f" ({self.monitor} = {self.best:.4g})" if self.save_best_only else ""
            print(f"ModelCheckpoint: saved {path}{extra}", flush=True)

    def on_train_end(self, logs: dict | None = None) -> None:
        # a fit that beat nothing recorded before it writes no file: right when resuming (the file holds the
        # best), a surprise when fine-tuning into a new file, which then does not exist, or into a path a file of
        # another run holds, which is then left as it was: either is said, with the way to start anew (a path with
        # placeholders names no one file to look for)
        logs = logs or {}
        history = logs.get("history")
        ran = history is None or len(history) > 0
        comm = getattr(self.model, "distributed", None)
        inherited = getattr(self, "_inherited", None)
        if (inherited is None or len(self.saved) != getattr(self, "_saves", 0) or not ran or logs.get("failed")
                or (comm is not None and comm.rank != 0) or "{" in self.filepath):
            return
        if not os.path.exists(self.filepath):
            found = "does not exist"
        else:
            held = self._best_in_file()
            if held == inherited:
                return  # the file holds this model's best: a resumed run that found no better one
            found = ("holds a checkpoint that records no such best" if held is None or not math.isfinite(held)
                     else f"holds a checkpoint whose best is {self.monitor} = {held:.6g}") + \
                ", so not this model's best (a file another run left?), and is left as it was"
        warnings.warn(f"ModelCheckpoint saved nothing, and {self.filepath!r} {found}: no epoch of this fit beat "
                      f"{self.monitor} = {inherited:.6g}, the best an earlier fit of this model recorded (kept in "
                      "model.callback_state and its checkpoints, so a resumed run keeps its best file); call "
                      "model.callback_state.clear() before fit to start anew", UserWarning, stacklevel=2)

    def _best_in_file(self) -> float | None:
        """The best the file at `filepath` records for this callback, as `_best_so_far` reads the model's; None
        where it is no nnx checkpoint or records none."""
        try:
            config, _ = read_checkpoint(self.filepath, config_only=True)
            training = config.get("training")
            recorded = training.get("callbacks") if isinstance(training, dict) else None
            return self._best_in(recorded) if isinstance(recorded, dict) else None
        except (OSError, ValueError):  # (CheckpointError is a ValueError)
            return None

    @property
    def _best_key(self) -> str:
        """Where this callback's best is recorded: its mode and monitor, as two checkpoints may differ in them."""
        return f"{self.mode} {self.monitor}"

    def _record(self, logs: dict) -> None:
        """Put the epoch's logs, and the best so far when tracking one, where the next file written keeps them."""
        state = self.model.callback_state.setdefault(STATE_KEY, {})
        state["logs"] = {k: float(v) for k, v in logs.items() if isinstance(v, numbers.Real)}
        if self.save_best_only:
            state.setdefault("bests", {})[self._best_key] = self.best

    def _best_so_far(self) -> float:
        """The better of the model's recorded best and the monitored value of its last saved epoch.

        That epoch's value counts too: a checkpoint written before this one's turn in that
        epoch holds the best of the epochs before it only. What this callback saw in an earlier
        fit does not count: that may have been another model (every best it saved for this one
        is recorded in the model).
        """
        return self._best_in(self.model.callback_state)

    def _best_in(self, callback_state: dict) -> float:
        """`_best_so_far` of recorded callback state (the model's, or a checkpoint file's)."""
        state = _recorded(callback_state, STATE_KEY)
        best = math.inf if self.mode == "min" else -math.inf
        for value in (_recorded(state, "bests").get(self._best_key), _recorded(state, "logs").get(self.monitor)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"ModelCheckpoint: the model's recorded checkpoint state holds {value!r} for "
                                 f"{self.monitor!r}, not a number")
            if improved(float(value), best, self.mode, 0.0):
                best = float(value)
        return best


def _recorded(state: dict, key: str) -> dict[str, Any]:
    """Part `key` of recorded checkpoint state ({} when absent); ValueError when not a dict (a damaged file)."""
    part = state.get(key, {})
    if not isinstance(part, dict):
        raise ValueError(f"ModelCheckpoint: the model's recorded checkpoint state {key!r} is {part!r}, not an object")
    return part
