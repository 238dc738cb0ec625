"""The training loop behind `Sequential.fit`: epochs of `TrainStep`s, callbacks, validation and History.

The loop owns the order of events and what happens on every way out: a
non-finite step raises `FloatingPointError` naming the epoch and batch before
it is applied, Ctrl-C ends the run between steps, and every callback's
``on_train_end`` runs whatever happened.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

from ..backends.host import is_out_of_core
from ..metrics import resolve_metrics
from .callbacks import Callback, CallbackList, ProgressBar
from .data import (
    ArrayBatches,
    BatchPreparer,
    HostBatches,
    IterableBatches,
    batch_slices,
    is_batch_iterable,
    n_rows,
    prefetch_depth,
)
from .epoch import plan
from .history import History
from .interrupts import InterruptGuard
from .loss_fit import check_loss_fits, check_outputs
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
            raise TypeError("gradient_transforms entries must be nnx.training.GradientTransform, "
                            f"got {type(t).__name__}")
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


def fit(model: Any, X: Any, y: Any = None, *, loss: Any = None, optimizer: Any = None, lr: float | None = None,
        epochs: int = 1, batch_size: int | None = 32, validation_data: Any = None,
        validation_split: float = 0.0, metrics: Any = None, callbacks: Any = None, verbose: int = 0,
        shuffle: bool = True, check_finite: bool = True, sample_weight: Any = None,
        class_weight: dict | None = None, clip_norm: float | None = None, clip_value: float | None = None,
        accumulate: int = 1, gradient_transforms: list[GradientTransform] | None = None,
        steps_per_epoch: int | None = None, validation_steps: int | None = None, prefetch: Any = True,
        distributed: Any = None, chunk_batches: int | None = None) -> History:
    """Train `model`; see `Sequential.fit` for the arguments."""
    loss_fn = model.resolve_loss(loss)
    look_at_outputs = check_loss_fits(model, loss_fn)  # a loss that cannot fit the outputs is refused up front
    metric_fns = resolve_metrics(metrics)
    check_positive_int("epochs", epochs, allow_zero=True)
    if chunk_batches is not None:
        check_positive_int("chunk_batches", chunk_batches)
    if batch_size is not None:
        check_positive_int("batch_size", batch_size)
    if not (isinstance(validation_split, (int, float)) and 0.0 <= validation_split < 1.0):
        raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
    for name, value in (("steps_per_epoch", steps_per_epoch), ("validation_steps", validation_steps)):
        if value is not None:
            check_positive_int(name, value)
    depth = prefetch_depth(prefetch)
    val_rows = None
    batches: Any
    if y is None and is_batch_iterable(X):
        if sample_weight is not None:
            raise ValueError("sample_weight cannot be passed with an iterable of batches; yield "
                             "(X, y, sample_weight) batches instead")
        if validation_split:
            raise ValueError("validation_split needs arrays; with an iterable of batches pass validation_data")
        batches = IterableBatches(X, BatchPreparer(model, loss_fn, class_weight), steps_per_epoch, depth)
    elif y is None:
        raise TypeError("y is required when X is an array; to train from batches pass X as an iterable "
                        "(a list or a generator) of (X, y) or (X, y, sample_weight) tuples")
    elif steps_per_epoch is not None:
        raise ValueError("steps_per_epoch applies to an iterable of batches; with arrays an epoch is one "
                         "pass over them (batch_size sets the steps)")
    elif is_out_of_core(X):
        n = n_rows(X, "X")
        n_train = n - _held_out(n, validation_split)
        batches = HostBatches(model, X, y, sample_weight, batch_size or n, shuffle,
                              BatchPreparer(model, loss_fn, class_weight), depth, rows=(0, n_train))
        if n_train < n:
            val_rows = HostBatches(model, X, y, None, batch_size or n, False,
                                   BatchPreparer(model, loss_fn), depth, rows=(n_train, n))
    else:
        X_d = model.prepare_inputs(X)
        n = X_d.shape[0]
        if n == 0:
            raise ValueError("X has 0 samples; fit needs at least one")
        y_d = model.prepare_targets(y, loss_fn, n)
        w_d = model.prepare_sample_weight(sample_weight, class_weight, y_d, loss_fn, n)
        model.require_finite(X_d, "X")
        model.require_finite(y_d, "y")
        if validation_split:
            n_val = _held_out(n, validation_split)
            validation_data = (X_d[n - n_val:, ...], y_d[n - n_val:, ...])
            X_d, y_d, n = X_d[:n - n_val, ...], y_d[:n - n_val, ...], n - n_val
            w_d = None if w_d is None else w_d[:n, ...]
        batches = ArrayBatches(model, X_d, y_d, w_d, batch_size or n, shuffle)
        if look_at_outputs:  # the same rows on every rank, so every rank decides alike
            check_outputs(model, loss_fn, model.forward_to_head(X_d[:batch_size or n, ...], len(model.layers),
                                                                 training=False))
            look_at_outputs = False
    dp = _data_parallel(model, distributed)
    if dp is not None:
        batches = dp.shard(batches)  # batch_size is the global batch; this rank computes its slice
    val = None  # () -> the validation logs
    if val_rows is not None:
        val = lambda: evaluate_batches(model, val_rows, loss_fn, metric_fns)  # noqa: E731
    elif validation_data is not None:
        val = _validation(model, validation_data, validation_steps, batch_size, loss_fn, metric_fns, depth)
    model.loss = loss_fn
    opt = model.optimizer = model.resolve_optimizer(optimizer, lr)
    cbs = _callbacks(callbacks, verbose if dp is None or dp.is_root else 0, epochs)
    extra = gradient_transforms if dp is None else [dp.transform, *(gradient_transforms or [])]
    transforms = build_transforms(clip_norm, clip_value, accumulate, extra, cbs)
    cb = CallbackList(cbs)
    cb.set_model(model)
    history = model.history = History()
    model.stop_training = False
    step = TrainStep(model, loss_fn, opt, transforms, check_finite)
    history.execution = step.execution
    program = plan(history, step, batches, cbs, dp, chunk_batches, verbose)  # whole epochs as programs, or None
    failing = False
    guard = InterruptGuard().install()  # Ctrl-C never lands between two parameters' updates
    try:
        if dp is not None:
            dp.begin()
        # "metrics" and "validation" let callbacks reject a monitored name that will never be logged, up front
        cb.on_train_begin({"epochs": epochs, "steps": batches.steps, "metrics": list(metric_fns),
                           "validation": val is not None})
        # batches read one by one are looked at in the first step, before it is applied; with several
        # ranks each sees another slice and a one-sided refusal would leave the others waiting, so not there
        look_at_outputs = look_at_outputs and dp is None
        for _ in range(epochs):
            check_loss = loss_fn if look_at_outputs else None
            if program is not None and not program.step.broken:
                logs = program.run_epoch(step, batches, cb, guard, metric_fns, check_loss, _non_finite, lambda c, src: (
                    _run_epoch(model, step, src, c, guard, metric_fns, dp)), history)
            else:
                logs = _run_epoch(model, step, batches, cb, guard, metric_fns, dp, check_loss)
            look_at_outputs = False
            if val is not None:
                logs.update({f"val_{k}": v for k, v in val().items()})
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
        failing = True
        raise
    finally:
        guard.uninstall()
        if dp is not None:
            dp.end()
        _train_end(cb, history, failing)
    return history


def _train_end(cb: CallbackList, history: History, failing: bool) -> None:
    """Every callback's on_train_end; when fit is already failing, a callback's error must not hide fit's."""
    try:
        cb.on_train_end({"history": history})
    except Exception as exc:
        if not failing:
            raise
        # fit's own error is on its way out and stays the one the caller sees; this one is reported beside it
        warnings.warn(f"a callback's on_train_end failed while fit was stopping on an error: {exc!r}",
                      RuntimeWarning, stacklevel=3)


def _data_parallel(model: Any, distributed: Any) -> Any:
    """The data-parallel parts of this fit for communicator `distributed` (None alone or without one)."""
    model.distributed = None
    if distributed is None:
        return None
    from ..distributed.parallel import DataParallelFit

    dp = DataParallelFit(model, distributed)  # checks the type, also for a single process
    if distributed.engine == "single":
        return None  # (a world of one on a real engine still runs its collectives: the GPU check uses that)
    model.distributed = distributed  # rank 0 writes the checkpoints (nnx.io.save_model)
    return dp


def _held_out(n: int, validation_split: float) -> int:
    """Rows validation_split holds out from the end of n."""
    n_val = int(math.floor(n * validation_split))
    if validation_split and (n_val == 0 or n_val == n):
        raise ValueError(f"validation_split={validation_split} leaves {n - n_val} training and "
                         f"{n_val} validation samples out of {n}")
    return n_val


def _validation(model: Any, data: Any, steps: int | None, batch_size: int | None, loss_fn: Any,
                metric_fns: dict, depth: int) -> Callable[[], dict[str, float]]:
    """What validation_data means (arrays, host arrays, or an iterable of batches) as a callable giving the logs."""
    arrays = isinstance(data, (tuple, list)) and len(data) in (2, 3) and not isinstance(data[0], tuple)
    looks_like_arrays = isinstance(data, tuple) and any(hasattr(item, "shape") for item in data)
    if looks_like_arrays and not arrays:
        raise TypeError(f"validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, sample_weight), "
                        f"got a tuple of {len(data)}")
    if not arrays:
        if not is_batch_iterable(data):
            raise TypeError("validation_data must be a pair (X_val, y_val), a triple (X_val, y_val, "
                            "sample_weight), or an iterable of such batches")
        source = IterableBatches(data, BatchPreparer(model, loss_fn), steps, depth, name="validation_data")
        return lambda: evaluate_batches(model, source, loss_fn, metric_fns)
    if steps is not None:
        raise ValueError("validation_steps applies to validation_data given as an iterable of batches")
    w = data[2] if len(data) == 3 else None
    if is_out_of_core(data[0]):
        n = n_rows(data[0], "validation X")
        host = HostBatches(model, data[0], data[1], w, batch_size or n, False, BatchPreparer(model, loss_fn),
                           depth, name="validation X")
        return lambda: evaluate_batches(model, host, loss_fn, metric_fns)
    Xv = model.prepare_inputs(data[0], "validation X")
    yv = model.prepare_targets(data[1], loss_fn, Xv.shape[0], "validation y", "validation X")
    wv = model.prepare_sample_weight(w, None, yv, loss_fn, Xv.shape[0], "validation sample_weight")
    model.require_finite(Xv, "validation X")
    model.require_finite(yv, "validation y")
    return lambda: evaluate_arrays(model, Xv, yv, wv, loss_fn, metric_fns, None)


def _run_epoch(model: Any, step: TrainStep, batches: Any, cb: CallbackList, guard: InterruptGuard,
               metric_fns: dict, dp: Any = None, check_loss: Any = None) -> dict[str, float]:
    """One pass over the batches; returns the epoch's logs (mean loss weighted by rows, metrics).

    With `check_loss` (a `Loss`), the first batch's outputs are checked to fit it before the first step.
    """
    with contextlib.closing(batches.epoch()) as source:  # closing stops a prefetch thread on any way out
        return _epoch_steps(model, step, source, cb, guard, metric_fns, dp, check_loss)


def _epoch_steps(model: Any, step: TrainStep, source: Any, cb: CallbackList, guard: InterruptGuard,
                 metric_fns: dict, dp: Any = None, check_loss: Any = None) -> dict[str, float]:
    xp, be = model.xp, model.backend
    handles_non_finite = any(getattr(c, "handles_non_finite", False) for c in cb.callbacks)
    compiled = step.compiled is not None
    batch_begin, batch_end = cb.uses("on_batch_begin"), cb.uses("on_batch_end")
    epoch = model.epochs_trained
    cb.on_epoch_begin(epoch, {})
    losses, rows, outputs, targets = [], [], [], []
    for b, (Xb, yb, wb) in enumerate(source):
        size = int(Xb.shape[0]) if dp is None else dp.local_rows  # rows of this rank's slice (0: a placeholder)
        if check_loss is not None and b == 0:
            check_outputs(model, check_loss, model.forward_to_head(Xb, len(model.layers), training=False))
        if batch_begin:
            cb.on_batch_begin(b, {"size": size})
        if compiled:  # every stage in one compiled call; it updates only a finite step
            guard.in_step = True
            value, Z, finite = step.run(Xb, yb, wb, read_check=handles_non_finite)
            guard.end_step()
        else:
            value, Z = step.forward_loss(Xb, yb, wb)
            step.backward()
            finite = step.check(value)
        due = False
        if dp is not None and step.check_finite:
            # one collective per step: a rank's non-finite step poisons the gradient all-reduce, and
            # every rank then refuses the update (and raises) together
            if not finite:
                dp.transform.poison()
            due = step.transform(size)
            finite = not due or step.gradients_finite()
        elif finite and not compiled:
            due = step.transform(size)
        if not finite and handles_non_finite:
            # a callback that stops on NaN (TerminateOnNaN) sees the bad loss; nothing is updated
            step.reset()
            losses.append(value)
            rows.append(size)
            cb.on_batch_end(b, {"loss": value, "size": size})
            model.stop_training = True
            break
        if not finite:
            raise _non_finite(epoch, b)
        if due:
            guard.in_step = True
            step.update()
            guard.end_step()
        losses.append(value)
        rows.append(size)
        if metric_fns:
            outputs.append(Z if size else None)
            targets.append(yb if size else None)
        if batch_end:
            cb.on_batch_end(b, {"loss": value, "size": size})
        if model.stop_training:
            break  # a callback (e.g. TerminateOnNaN) stops mid-epoch
    if step.flush():
        if dp is not None and step.check_finite and not step.gradients_finite():
            raise _non_finite(epoch, len(losses) - 1)
        guard.in_step = True
        step.update()
        guard.end_step()
    refused = step.end_epoch()  # a deferred (on-device) check is read here, once per epoch
    if refused is not None:
        raise _non_finite(epoch, refused)
    host = be.to_host(xp.stack(losses))
    n_seen = sum(rows)
    if dp is not None:
        dp.end_epoch()
        weighted = float(sum(r * float(v) for r, v in zip(rows, host, strict=True)))
        return dp.epoch_logs(weighted, n_seen, metric_fns, targets, outputs, step.from_logits)
    logs = {"loss": float(sum(r * float(v) for r, v in zip(rows, host, strict=True)) / n_seen)}
    if metric_fns:
        logs.update(model.metric_values(metric_fns, xp.concat(targets, axis=0), xp.concat(outputs, axis=0),
                                        step.from_logits))
    return logs


def _non_finite(epoch: int, batch: int) -> NonFiniteStep:
    """The error for a refused step, at 0-based `epoch` and `batch`; people read them counted from 1."""
    return NonFiniteStep(
        f"training loss or gradients became NaN or infinite at epoch {epoch + 1}, batch {batch + 1}; the weights "
        "and optimizer state are those after the last finite step. Lower the learning rate, clip the "
        "gradients (clip_norm=...), scale the inputs, or pass check_finite=False to keep going"
    )


def evaluate_arrays(model: Any, X: Any, y: Any, w: Any, loss_fn: Any, metric_fns: dict,
                    batch_size: int | None, look_at_outputs: bool = False) -> dict[str, float]:
    """Loss (penalty included, weighted when `w` is given) and metrics of prepared device arrays.

    `look_at_outputs`: check that the outputs fit `loss_fn` (see `check_loss_fits`) before using them.
    """
    if X.shape[0] == 0:
        raise ValueError("cannot evaluate on 0 samples")
    n_run, head, from_logits = model.output_head(loss_fn)
    parts = batch_slices(X.shape[0], batch_size or X.shape[0])
    outs = [model.forward_to_head(X[part, ...], n_run, training=False) for part in parts]
    Z = outs[0] if len(outs) == 1 else model.xp.concat(outs, axis=0)
    if look_at_outputs:
        check_outputs(model, loss_fn, Z, "the data")  # an undecided model is never folded: Z are its outputs
    value = head(y, Z, check=False) if w is None else head(y, Z, check=False, sample_weight=w)
    penalty = model.penalty()
    if penalty is not None:
        value = value + penalty
    result = {"loss": model.backend.to_float(value)}
    if metric_fns:
        result.update(model.metric_values(metric_fns, y, Z, from_logits))
    return result


def evaluate_batches(model: Any, batches: Any, loss_fn: Any, metric_fns: dict,
                     look_at_outputs: bool = False) -> dict[str, float]:
    """Loss (penalty included) and metrics over a batch source: the row-weighted mean of the batch losses.

    Each batch's loss is a mean over its rows (weighted ones with Keras's meaning, sum(w * loss) / rows),
    so weighting by rows gives the value `evaluate_arrays` computes on all rows at once.
    Metrics see every batch's outputs and targets together, as they do for arrays.
    `look_at_outputs`: check that the first batch's outputs fit `loss_fn` (see `check_loss_fits`).
    """
    xp = model.xp
    n_run, head, from_logits = model.output_head(loss_fn)
    values, rows, outputs, targets = [], [], [], []
    with contextlib.closing(batches.epoch()) as source:
        for Xb, yb, wb in source:
            Z = model.forward_to_head(Xb, n_run, training=False)
            if look_at_outputs and not values:
                check_outputs(model, loss_fn, Z)
            values.append(head(yb, Z, check=False) if wb is None else head(yb, Z, check=False, sample_weight=wb))
            rows.append(int(Xb.shape[0]))
            if metric_fns:
                outputs.append(Z)
                targets.append(yb)
    host = model.backend.to_host(xp.stack(values))
    value = sum(r * float(v) for r, v in zip(rows, host, strict=True)) / sum(rows)
    penalty = model.penalty()
    result = {"loss": value if penalty is None else value + model.backend.to_float(penalty)}
    if metric_fns:
        result.update(model.metric_values(metric_fns, xp.concat(targets, axis=0), xp.concat(outputs, axis=0),
                                          from_logits))
    return result


def predict_batches(model: Any, batches: Any) -> Any:
    """Inference outputs of every batch of a source, concatenated on the model's backend."""
    n = len(model.layers)
    with contextlib.closing(batches.epoch()) as source:
        parts = [model.forward_to_head(Xb, n, training=False) for Xb, _, _ in source]
    return parts[0] if len(parts) == 1 else model.xp.concat(parts, axis=0)


def inference_source(model: Any, X: Any, y: Any, sample_weight: Any, loss_fn: Any, batch_size: int | None,
                     steps: int | None, prefetch: Any, check_finite: bool = True) -> Any:
    """The batch source `evaluate` (loss_fn given) or `predict` (loss_fn None) reads, or None for in-memory arrays.

    predict takes X batches or (X, ...) tuples; a list counts as batches when its items are tuples or arrays
    of one more axis than a sample, else it is one array (a nested list), as before. `check_finite` refuses
    NaN/inf in every batch.
    """
    depth = prefetch_depth(prefetch)
    if steps is not None:
        check_positive_int("steps", steps)
    targets = loss_fn is not None
    if is_out_of_core(X):
        if steps is not None:
            raise ValueError("steps applies to an iterable of batches")
        n = n_rows(X, "X")
        return HostBatches(model, X, y, sample_weight if targets else None, batch_size or n, False,
                           BatchPreparer(model, loss_fn, check_finite=check_finite), depth)
    if y is not None or not is_batch_iterable(X) or (not targets and not _list_of_batches(model, X)):
        if steps is not None:
            raise ValueError("steps applies to an iterable of batches")
        return None
    if sample_weight is not None:
        raise ValueError("sample_weight cannot be passed with an iterable of batches; yield "
                         "(X, y, sample_weight) batches instead")
    return IterableBatches(X, BatchPreparer(model, loss_fn, check_finite=check_finite), steps, depth, targets=targets)


def _list_of_batches(model: Any, X: Any) -> bool:
    if not isinstance(X, (list, tuple)):
        return True
    if not X:
        return False
    first = X[0]
    if isinstance(first, tuple):
        return True
    ndim = getattr(first, "ndim", None)
    if ndim is None:
        return False
    return ndim >= 2 if model.input_shape is None else ndim == len(model.input_shape) + 1
