"""Callbacks: hooks `fit` calls at train, epoch and batch boundaries."""

from __future__ import annotations

from typing import Any


class Callback:
    """Base class: override any hook. `self.model` is set before training starts.

    Batch logs hold device arrays (``logs["loss"]`` is a 0-d array) so that no
    hook forces a device sync unless it converts them; epoch logs hold floats.
    """

    model: Any = None

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

    def on_train_begin(self, logs: dict | None = None) -> None:
        for cb in self.callbacks:
            cb.on_train_begin(logs)

    def on_train_end(self, logs: dict | None = None) -> None:
        for cb in self.callbacks:
            cb.on_train_end(logs)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, logs)

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        for cb in self.callbacks:
            cb.on_batch_begin(batch, logs)

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        for cb in self.callbacks:
            cb.on_batch_end(batch, logs)


class ProgressBar(Callback):
    """One line per epoch with loss and metrics (a richer tqdm bar comes with the training issue)."""

    def __init__(self, epochs: int | None = None) -> None:
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        items = " - ".join(f"{k}: {v:.4g}" for k, v in (logs or {}).items())
        total = f"/{self.epochs}" if self.epochs else ""
        print(f"epoch {epoch + 1}{total} - {items}", flush=True)
