"""The `Callback` hooks `fit` calls, and `CallbackList`, which calls a list of them in order."""

from __future__ import annotations

import warnings
from typing import Any

from ...protocols import Model


def prints_here(model: Any) -> bool:
    """Whether this process prints what a callback reports: False on the ranks other than 0 of a data-parallel fit,
    whose every rank reports the same (as they write files, rank 0 alone prints)."""
    comm = getattr(model, "distributed", None)
    return comm is None or comm.rank == 0


class Callback:
    """Base class: override any hook. `self.model` is set before training starts.

    Batch logs hold device arrays (``logs["loss"]`` is a 0-d array) so that no
    hook forces a device sync unless it converts them; epoch logs hold floats.
    """

    model: Any = None  # a user's callback may call any public method of its model (predict, evaluate, ...)
    adds_logs: bool | tuple[str, ...] = False
    """True, or the names it adds: on_epoch_end writes into the logs, so it runs before the other callbacks', and
    a callback that monitors a name (`EarlyStopping`, a `ModelCheckpoint` path) takes one of them."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Take Keras's names for the batch hooks: ``on_train_batch_begin``/``on_train_batch_end`` are
        ``on_batch_begin``/``on_batch_end`` (Keras calls them so; a callback written for it would
        otherwise never be called, and `fit` would not know it needs the host between batches)."""
        super().__init_subclass__(**kwargs)
        for keras, own in (("on_train_batch_begin", "on_batch_begin"), ("on_train_batch_end", "on_batch_end")):
            if keras in vars(cls):
                if own in vars(cls):
                    raise TypeError(f"{cls.__name__} defines both {keras} and {own}, which are one hook; keep one")
                setattr(cls, own, vars(cls)[keras])
        ignored = sorted(name for name in vars(cls) if name.startswith(("on_test_", "on_predict_")))
        if ignored:
            warnings.warn(f"{cls.__name__} defines {', '.join(ignored)}, which nnx never calls (fit calls "
                          "on_train_begin/end, on_epoch_begin/end, on_batch_begin/end, on_backward, on_gradients)",
                          UserWarning, stacklevel=2)

    def set_model(self, model: Model) -> None:
        """Attach the model being trained."""
        self.model = model

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Before the first epoch."""

    def on_train_end(self, logs: dict | None = None) -> None:
        """After the last epoch, also after an interrupt or early stop, and when fit fails: ``logs["failed"]``
        is True then (the error is on its way to the caller). `logs` holds the last finished epoch's logs (as in
        Keras), ``"history"`` (the fit's `History`) and ``"failed"``."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        """Before each epoch."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        """After each epoch, with its loss and metrics (and validation ones)."""

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        """Before each training step."""

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        """After each batch's step. Under ``accumulate=k`` the optimizer updates only after every k-th batch: ``p.grad``
        then holds the gradient the update applied (their mean, clipped), and after the batches between updates that
        batch's own gradient (an epoch's partial group is applied after its last ``on_batch_end``)."""

    def on_backward(self) -> None:
        """After each batch's backward pass, before the gradient transforms (accumulation, the average across
        ranks, clipping, ``on_gradients``): every ``p.grad`` holds this batch's gradient (under data-parallel
        training, of this rank's slice). Only to look: where each step is one compiled program (JAX), the update
        has run already, and a gradient rebound here is refused; change gradients with `on_gradients`.
        """

    def on_gradients(self, grads: dict[str, Any]) -> dict[str, Any] | None:
        """Before each optimizer update, after clipping: parameter name -> gradient.

        Return None to only look, or a dict of replacement gradients (same names and shapes).
        """
        return None


# the hooks called between a fit's batches: where a callback has one, the batches' program waits for the host
BATCH_HOOKS = ("on_batch_begin", "on_batch_end", "on_backward", "on_gradients")


def overrides(cb: Any, hook: str) -> bool:
    """Whether `cb` has a `hook` of its own: its class's override, or a function set on the object; TypeError
    where what it has there cannot be called (``cb.on_gradients = None``), before any step."""
    own = getattr(cb, hook)
    if not callable(own):
        raise TypeError(f"{type(cb).__name__}.{hook} is {own!r}, not a function: set it to a function, or delete "
                        f"the attribute to leave the hook to {type(cb).__name__}'s class")
    return getattr(own, "__func__", own) is not getattr(Callback, hook)


def display_only(cb: Any, hook: str) -> bool:
    """Whether `cb`'s `hook` only draws: ``batch_hooks_display_only`` is declared on the object, or on the class
    that defines the hook or one below it. A subclass of a progress bar that overrides a per-batch hook without
    declaring the flag again inherits the flag, not the promise (its hook may set the rate or stop the fit)."""
    if not getattr(cb, "batch_hooks_display_only", False):
        return False
    if "batch_hooks_display_only" in getattr(cb, "__dict__", {}):
        return True
    mro = type(cb).__mro__
    declared = next(i for i, k in enumerate(mro) if "batch_hooks_display_only" in vars(k))
    defined = next((i for i, k in enumerate(mro) if hook in vars(k)), len(mro))
    return declared <= defined


def hooks_of(callbacks: list[Any]) -> list[frozenset[str]]:
    """The per-batch hooks each callback has, with ``handles_non_finite`` where it says so: what `fit` builds its
    gradient stage and chooses how its epochs run from, before ``on_train_begin``. An on_batch_end that only draws
    is left out: a compiled epoch hands it its batches afterwards (a `ProgressBar` sets its own as a fit begins)."""
    return [frozenset({h for h in BATCH_HOOKS if overrides(cb, h)
                       and not (h == "on_batch_end" and display_only(cb, h))}
                      | ({"handles_non_finite"} if getattr(cb, "handles_non_finite", False) else set()))
            for cb in callbacks]


def hooks_skipped(callbacks: list[Any], before: list[frozenset[str]], compiled: bool,
                  staged: frozenset[str]) -> list[tuple[str, str]]:
    """(callback, hook) for each per-batch hook a callback gained in ``on_train_begin`` (`before`: `hooks_of` them
    ahead of it) that this fit would never call: those the gradient stage calls from a list made before (`staged`:
    ``on_gradients``, and ``on_backward`` where it runs as the stage's first step), and with `compiled` epochs (one
    program each, planned before) every one. The others are looked for each epoch."""
    return [(type(cb).__name__, hook)
            for cb, had, has in zip(callbacks, before, hooks_of(callbacks), strict=True)
            for hook in sorted(has - had) if compiled or hook in staged]


def refuse_skipped_hooks(skipped: list[tuple[str, str]], compiled: bool) -> None:
    """TypeError naming the first of `hooks_skipped`, where there is one."""
    if skipped:
        name, hook = skipped[0]
        why = "this fit runs its epochs as compiled programs, planned without it" if compiled else \
            "the gradient stage calls the callbacks it found before"
        raise TypeError(f"{name} set {hook} in on_train_begin, after fit had built its steps from the hooks the "
                        f"callbacks had, so this fit would never call it ({why}): give the callback the hook before "
                        "fit, on its class or on the object")


class CallbackList(Callback):
    """Fans each hook out to a list of callbacks, in order.

    A `CallbackList` among them is replaced by its members, so what `fit` asks of each callback (its
    ``on_gradients``, ``adds_logs``, ``handles_non_finite``) reaches them. One object listed twice is refused:
    every hook would run twice per event (an `EarlyStopping` would count each epoch twice towards its patience).
    """

    def __init__(self, callbacks: list[Callback] | None = None) -> None:
        self.callbacks: list[Callback] = []
        for cb in callbacks or []:
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks must be nnx.callbacks.Callback instances, got {type(cb).__name__}")
            for member in cb.callbacks if isinstance(cb, CallbackList) else [cb]:
                if any(member is seen for seen in self.callbacks):
                    raise ValueError(f"callbacks lists the same {type(member).__name__} object twice, so each of its "
                                     "hooks would run twice per event; list it once")
                self.callbacks.append(member)

    def set_model(self, model: Model) -> None:
        for cb in self.callbacks:
            cb.set_model(model)

    def uses(self, hook: str) -> bool:
        """Whether any callback here overrides `hook` (fit skips building logs for a per-batch hook nobody uses)."""
        return any(overrides(cb, hook) for cb in self.callbacks)

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

    def on_backward(self) -> None:
        for cb in self.callbacks:
            cb.on_backward()
