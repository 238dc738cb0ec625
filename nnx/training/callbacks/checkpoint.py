"""`ModelCheckpoint`: save the model after epochs, or only when a monitored value improves."""

from __future__ import annotations

import math
import os

from .base import Callback
from .monitor import check_monitor, improved, recorded_names, resolve_mode


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
        self.mode = resolve_mode("ModelCheckpoint", mode, monitor)
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
            if not improved(current, self.best, self.mode, 0.0):
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
