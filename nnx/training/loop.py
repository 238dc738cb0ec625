"""The training loop behind `Sequential.fit`: epochs of `TrainStep`s, callbacks, validation and History.

The loop owns the order of events and what happens on every way out: a
non-finite step raises `FloatingPointError` naming the epoch and batch before
it is applied, Ctrl-C ends the run between steps, and every callback's
``on_train_end`` runs whatever happened.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ..metrics import resolve_metrics
from .callbacks import Callback, CallbackList, ProgressBar
from .data import ArrayBatches, batch_slices
from .history import History
from .interrupts import InterruptGuard
from .step import NonFiniteStep, TrainStep
from .transforms import Accumulate, CallbackHook, ClipByNorm, ClipByValue, GradientTransform


def check_positive_int(name: str, value: Any, allow_zero: bool = False) -> int:
    """`value` as an int > 0 (or >= 0), else TypeError/ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return int(value)


def build_transforms(clip_norm: float | None, clip_value: float | None, accumulate: int,
                        extra: list[GradientTransform] | None, callbacks: list[Callback]) -> list[GradientTransform]:
    """The gradient stage `fit` builds: accumulation, then `extra` (e.g. a cross-process average), clipping, hooks."""
    transforms: list[GradientTransform] = []
    if check_positive_int("accumulate", accumulate) > 1:
        transforms.append(Accumulate(accumulate))
    for t in extra or []:
        if not isinstance(t, GradientTransform):
            raise TypeError(f"gradient_transforms entries must be nnx.training.GradientTransform, got {type(t).__name__}")
        transforms.append(t)
    if clip_norm is not None:
        transforms.append(ClipByNorm(clip_norm))
    if clip_value is not None:
        transforms.append(ClipByValue(clip_value))
    hook = CallbackHook(callbacks)
    if hook.active():
        transforms.append(hook)
    return transforms


def _callbacks(callbacks: Any, verbose: int, epochs: int) -> list[Callback]:
    try:
        cbs = list(callbacks or [])
    except TypeError:
        raise TypeError(f"callbacks must be a list of nnx.callbacks.Callback, got {type(callbacks).__name__}") from None
    if verbose and not any(isinstance(cb, ProgressBar) for cb in cbs):
        cbs.append(ProgressBar(epochs))
    return cbs


def fit(model: Any, X: Any, y: Any, *, loss: Any = None, optimizer: Any = None, lr: float | None = None,
        epochs: int = 1, batch_size: int | None = 32, validation_data: tuple | None = None,
        validation_split: float = 0.0, metrics: Any = None, callbacks: Any = None, verbose: int = 0,
        shuffle: bool = True, check_finite: bool = True, sample_weight: Any = None,
        class_weight: dict | None = None, clip_norm: float | None = None, clip_value: float | None = None,
        accumulate: int = 1, gradient_transforms: list[GradientTransform] | None = None) -> History:
    """Train `model`; see `Sequential.fit` for the arguments."""
    loss_fn = model.resolve_loss(loss)
    metric_fns = resolve_metrics(metrics)
    check_positive_int("epochs", epochs, allow_zero=True)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    if not (isinstance(validation_split, (int, float)) and 0.0 <= validation_split < 1.0):
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    X_d = model.prepare_inputs(X)
    n = X_d.shape[0]
    if n == 0:
        raise ValueError("X has 0 samples; fit needs at least one")
    y_d = model.prepare_targets(y, loss_fn, n)
    w_d = model.prepare_sample_weight(sample_weight, class_weight, y_d, loss_fn, n)
    model.require_finite(X_d, "X")
    model.require_finite(y_d, "y")
    if validation_split:
        n_val = int(math.floor(n * validation_split))
        if n_val == 0 or n_val == n:
            raise ValueError(f"validation_split={validation_split} leaves {n - n_val} training and "
                             f"{n_val} validation samples out of {n}")
        validation_data = (X_d[n - n_val:, ...], y_d[n - n_val:, ...])
        X_d, y_d, n = X_d[:n - n_val, ...], y_d[:n - n_val, ...], n - n_val
        w_d = None if w_d is None else w_d[:n, ...]
    val = None
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3)):
            raise TypeError("validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, sample_weight)")
        Xv = model.prepare_inputs(validation_data[0], "validation X")
        yv = model.prepare_targets(validation_data[1], loss_fn, Xv.shape[0], "validation y", "validation X")
        wv = model.prepare_sample_weight(validation_data[2] if len(validation_data) == 3 else None, None, yv,
                                         loss_fn, Xv.shape[0], "validation sample_weight")
        model.require_finite(Xv, "validation X")
        model.require_finite(yv, "validation y")
        val = (Xv, yv, wv)

    model.loss = loss_fn
    opt = model.optimizer = model.resolve_optimizer(optimizer, lr)
    cbs = _callbacks(callbacks, verbose, epochs)
    transforms = build_transforms(clip_norm, clip_value, accumulate, gradient_transforms, cbs)
    cb = CallbackList(cbs)
    cb.set_model(model)
    history = model.history = History()
    model.stop_training = False
    batches = ArrayBatches(model, X_d, y_d, w_d, batch_size or n, shuffle)
    step = TrainStep(model, loss_fn, opt, transforms, check_finite)
    guard = InterruptGuard().install()  # Ctrl-C never lands between two parameters' updates
    try:
        # "metrics" and "validation" let callbacks reject a monitored name that will never be logged, up front
        cb.on_train_begin({"epochs": epochs, "steps": batches.steps, "metrics": list(metric_fns),
                           "validation": val is not None})
        for _ in range(epochs):
            logs = _run_epoch(model, step, batches, cb, guard, metric_fns)
            if val is not None:
                logs.update({f"val_{k}": v for k, v in evaluate_arrays(model, *val, loss_fn, metric_fns,
                                                                        None).items()})
            epoch = model.epochs_trained
            model.epochs_trained += 1
            cb.on_epoch_end(epoch, logs)
            history.append(epoch, logs)  # after the callbacks, so what they add (e.g. "lr") is recorded
            if model.stop_training:
                break
    except KeyboardInterrupt:
        # Ctrl-C between steps: the weights are those of the last finished update; hand back what we have.
        step.reset()
        history.interrupted = True
    except BaseException:
        step.reset()
        raise
    finally:
        guard.uninstall()
        cb.on_train_end({"history": history})
    return history


def _run_epoch(model: Any, step: TrainStep, batches: ArrayBatches, cb: CallbackList, guard: InterruptGuard,
               metric_fns: dict) -> dict[str, float]:
    """One pass over the batches; returns the epoch's logs (mean loss weighted by rows, metrics)."""
    xp, be = model.xp, model.backend
    epoch = model.epochs_trained
    cb.on_epoch_begin(epoch, {})
    losses, rows, outputs, targets = [], [], [], []
    for b, (Xb, yb, wb) in enumerate(batches.epoch()):
        size = int(Xb.shape[0])
        cb.on_batch_begin(b, {"size": size})
        value, Z = step.forward_loss(Xb, yb, wb)
        step.backward()
        if not step.check(value):
            raise NonFiniteStep(
                f"training loss or gradients became NaN or infinite at epoch {epoch}, batch {b}; the weights "
                "and optimizer state are those after the last finite step. Lower the learning rate, clip the "
                "gradients (clip_norm=...), scale the inputs, or pass check_finite=False to keep going"
            )
        if step.transform(size):
            guard.in_step = True
            step.update()
            guard.end_step()
        losses.append(value)
        rows.append(size)
        if metric_fns:
            outputs.append(Z)
            targets.append(yb)
        cb.on_batch_end(b, {"loss": value, "size": size})
        if model.stop_training:
            break  # a callback (e.g. TerminateOnNaN) stops mid-epoch
    if step.flush():
        guard.in_step = True
        step.update()
        guard.end_step()
    host = be.to_host(xp.stack(losses))
    n_seen = sum(rows)
    logs = {"loss": float(sum(r * float(v) for r, v in zip(rows, host, strict=True)) / n_seen)}
    if metric_fns:
        logs.update(model.metric_values(metric_fns, xp.concat(targets, axis=0), xp.concat(outputs, axis=0),
                                        step.from_logits))
    return logs


def evaluate_arrays(model: Any, X: Any, y: Any, w: Any, loss_fn: Any, metric_fns: dict,
                    batch_size: int | None) -> dict[str, float]:
    """Loss (penalty included, weighted when `w` is given) and metrics of prepared device arrays."""
    if X.shape[0] == 0:
        raise ValueError("cannot evaluate on 0 samples")
    n_run, head, from_logits = model.output_head(loss_fn)
    parts = batch_slices(X.shape[0], batch_size or X.shape[0])
    outs = [model.forward_to_head(X[part, ...], n_run, training=False) for part in parts]
    Z = outs[0] if len(outs) == 1 else model.xp.concat(outs, axis=0)
    value = head(y, Z, check=False) if w is None else head(y, Z, check=False, sample_weight=w)
    penalty = model.penalty()
    if penalty is not None:
        value = value + penalty
    result = {"loss": model.backend.to_float(value)}
    if metric_fns:
        result.update(model.metric_values(metric_fns, y, Z, from_logits))
    return result
