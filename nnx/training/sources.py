"""Data-source selection: which batch source `fit`, its validation, `predict` and `evaluate` read for their input.

Arrays in memory, host arrays read batch by batch (`np.memmap`, h5py, ...), or an iterable
of batches; each becomes a source from `nnx.training.data`, prepared on the model's backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .. import _validate as check
from ..backends.host import is_out_of_core
from ..protocols import Model
from .data import (
    ArrayBatches,
    BatchPreparer,
    HostBatches,
    IterableBatches,
    batch_shaped,
    holds_inputs,
    host_batch_rows,
    is_batch_iterable,
    n_rows,
    prefetch_depth,
    refuse_unreadable,
)
from .evaluation import evaluate_arrays, evaluate_batches
from .inputs import require_all_finite
from .loss_fit import check_outputs


def training_source(model: Model, X: Any, y: Any, sample_weight: Any, class_weight: Any, loss_fn: Any,
                    batch_size: int | None, shuffle: bool, validation_split: float, validation_data: Any,
                    steps_per_epoch: int | None, depth: int, look_at_outputs: bool,
                    check_finite: bool = True) -> tuple[Any, Any, Any, bool]:
    """What `fit` reads: (its batches, the held-out rows of host arrays or None, validation_data, look_at_outputs).

    Arrays are prepared and checked here (for NaN and inf too, unless not `check_finite`); `validation_split`
    holds rows out from the end (of arrays they become `validation_data`); `look_at_outputs` stays True when
    the first batch's outputs must still be checked to fit the loss (see `check_loss_fits`).
    """
    if validation_split and validation_data is not None:
        # one would be dropped without a word (Keras lets validation_data win; which one was meant is a guess)
        raise ValueError(f"pass validation_data or validation_split, not both: validation_split={validation_split} "
                         "would hold out rows of X while validation_data is given")
    refuse_unreadable(X, "X", model.backend.spec)
    _refuse_y_beside_batches(X, y)
    val_rows = None
    batches: Any
    if y is None and is_batch_iterable(X):
        if sample_weight is not None:
            raise ValueError("sample_weight cannot be passed with an iterable of batches; yield "
                             "(X, y, sample_weight) batches instead")
        if validation_split:
            raise ValueError("validation_split needs arrays; with an iterable of batches pass validation_data")
        batches = IterableBatches(X, BatchPreparer(model, loss_fn, class_weight, check_finite), steps_per_epoch, depth,
                                  steps_name="steps_per_epoch", continues=True)
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
                              BatchPreparer(model, loss_fn, class_weight, check_finite), depth, rows=(0, n_train))
        if n_train < n:  # scored with their sample weights, as Keras splits them (class_weight is for training)
            val_rows = HostBatches(model, X, y, sample_weight, batch_size or n, False,
                                   BatchPreparer(model, loss_fn, check_finite=check_finite), depth, rows=(n_train, n))
    else:
        X_d = model.prepare_inputs(X)
        n = X_d.shape[0]
        if n == 0:
            raise ValueError("X has 0 samples; fit needs at least one")
        y_d = model.prepare_targets(y, loss_fn, n)
        w_d = model.prepare_sample_weight(sample_weight, None, y_d, loss_fn, n)
        if check_finite:
            require_all_finite(model, (X_d, "X", X), (y_d, "y", y))
        if validation_split:
            # the held-out rows keep their sample weights, as Keras splits them; class_weight is for training
            n -= _held_out(n, validation_split)
            (X_d, y_d, w_d), held = model.backend.fused(_split_rows, ("at",))((X_d, y_d, w_d), at=n)
            validation_data = HeldOut(a for a in held if a is not None)
        if class_weight is not None:
            w_d = model.prepare_sample_weight(w_d, class_weight, y_d, loss_fn, n)
        batches = ArrayBatches(model, X_d, y_d, w_d, batch_size or n, shuffle)
        if look_at_outputs:  # the same rows on every rank, so every rank decides alike
            check_outputs(model, loss_fn, model.forward_to_head(X_d[:batch_size or n, ...], len(model.layers),
                                                                 training=False))
            look_at_outputs = False
    return batches, val_rows, validation_data, look_at_outputs


def _refuse_y_beside_batches(X: Any, y: Any) -> None:
    """A y given with X an iterable of batches (other than a list or tuple, which may be nested rows) would
    be cast as part of one array and refused as "dtype object": name the mistake instead."""
    if y is not None and is_batch_iterable(X) and not isinstance(X, (list, tuple)):
        raise ValueError(f"y cannot be passed with an iterable of batches (X is a {type(X).__name__}); yield "
                         "(X, y) or (X, y, sample_weight) batches instead")


class HeldOut(tuple):
    """The rows `validation_split` held out, (X, y) or (X, y, sample_weight): arrays `fit` prepared and checked
    already, which its validation reads as they are."""

    __slots__ = ()


def _split_rows(xp: Any, arrays: tuple[Any, ...], at: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """`arrays` (None stays None) cut before row `at`: (the rows above, the rows from `at` on)."""
    return (tuple(None if a is None else a[:at, ...] for a in arrays),
            tuple(None if a is None else a[at:, ...] for a in arrays))


def _held_out(n: int, validation_split: float) -> int:
    """Rows validation_split holds out from the end of n: Keras's split, which keeps the first
    ``floor(n * (1 - validation_split))`` rows for training (23 rows at 0.25 hold out 6, not 5)."""
    n_val = n - int(math.floor(n * (1.0 - validation_split)))
    if validation_split and (n_val == 0 or n_val == n):
        raise ValueError(f"validation_split={validation_split} leaves {n - n_val} training and "
                         f"{n_val} validation samples out of {n}")
    return n_val


def validation_source(model: Model, data: Any, steps: int | None, batch_size: int | None, loss_fn: Any,
                      metric_fns: dict, depth: int, check_finite: bool = True) -> Callable[[], dict[str, float]]:
    """What validation_data means (arrays, host arrays, or an iterable of batches) as a callable giving the logs;
    NaN and inf in it are refused unless not `check_finite`."""
    refuse_unreadable(data, "validation_data", model.backend.spec)
    # two or three batches, as tuples or as lists [X, y] (list(loader) of a torch DataLoader), are batches, as fit
    # and evaluate read them; a pair of arrays, or of nested-list rows, is arrays
    arrays = isinstance(data, (tuple, list)) and len(data) in (2, 3) and not isinstance(data[0], tuple) \
        and not (isinstance(data[0], list) and len(data[0]) in (2, 3) and holds_inputs(model, data[0]))
    looks_like_arrays = isinstance(data, tuple) and any(hasattr(item, "shape") for item in data)
    if looks_like_arrays and not arrays:
        raise TypeError(f"validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, sample_weight), "
                        f"got a tuple of {len(data)}")
    if not arrays:
        if not is_batch_iterable(data):
            raise TypeError("validation_data must be a pair (X_val, y_val), a triple (X_val, y_val, "
                            "sample_weight), or an iterable of such batches")
        source = IterableBatches(data, BatchPreparer(model, loss_fn, check_finite=check_finite), steps, depth,
                                 name="validation_data",
                                 steps_name="validation_steps")
        return lambda: evaluate_batches(model, source, loss_fn, metric_fns)
    if steps is not None:
        raise ValueError("validation_steps applies to validation_data given as an iterable of batches")
    w = data[2] if len(data) == 3 else None
    if is_out_of_core(data[0]):
        n = n_rows(data[0], "validation X")
        host = HostBatches(model, data[0], data[1], w, batch_size or n, False,
                           BatchPreparer(model, loss_fn, check_finite=check_finite), depth, name="validation X")
        return lambda: evaluate_batches(model, host, loss_fn, metric_fns)
    if isinstance(data, HeldOut):
        Xv, yv, wv = data[0], data[1], w
    else:
        Xv = model.prepare_inputs(data[0], "validation X")
        yv = model.prepare_targets(data[1], loss_fn, Xv.shape[0], "validation y", "validation X")
        wv = model.prepare_sample_weight(w, None, yv, loss_fn, Xv.shape[0], "validation sample_weight")
        if check_finite:
            require_all_finite(model, (Xv, "validation X", data[0]), (yv, "validation y", data[1]))
    if batch_size is None or Xv.shape[0] <= batch_size:
        return lambda: evaluate_arrays(model, Xv, yv, wv, loss_fn, metric_fns, None)
    # in fit's batches, as Keras validates: all rows at once would hold every layer's activations of all of them,
    # what batch_size keeps training from holding (batch by batch, as validation data read from a memmap)
    batches = ArrayBatches(model, Xv, yv, wv, batch_size, shuffle=False)
    return lambda: evaluate_batches(model, batches, loss_fn, metric_fns)


def inference_source(model: Model, X: Any, y: Any, sample_weight: Any, loss_fn: Any, batch_size: int | None,
                     steps: int | None, prefetch: Any, check_finite: bool = True) -> Any:
    """The batch source `evaluate` (loss_fn given) or `predict` (loss_fn None) reads, or None for in-memory arrays.

    predict takes X batches or (X, ...) tuples or lists; a list counts as batches when its items are those or
    arrays of one more axis than a sample, else it is one array (a nested list), as before. `check_finite` refuses
    NaN/inf in every batch.
    """
    depth = prefetch_depth(prefetch)
    if steps is not None:
        check.positive_int("steps", steps)
    targets = loss_fn is not None
    refuse_unreadable(X, "X", model.backend.spec)
    _refuse_y_beside_batches(X, y)
    if is_out_of_core(X):
        if steps is not None:
            raise ValueError(f"steps={steps} counts batches of an iterable X, but X is an array: drop steps (every "
                             "row is read)")
        if targets and y is None:
            raise TypeError("y is required when X is an array; to evaluate batches pass X as an iterable "
                            "of (X, y) or (X, y, sample_weight) tuples")
        n = n_rows(X, "X")
        # without a batch_size, arrays are one batch; host data is read in batches of bounded size instead
        rows = batch_size or host_batch_rows(X, n)
        return HostBatches(model, X, y, sample_weight if targets else None, rows, False,
                           BatchPreparer(model, loss_fn, check_finite=check_finite), depth)
    if y is not None or not is_batch_iterable(X) or (not targets and not _list_of_batches(model, X)):
        if steps is not None:
            raise ValueError(f"steps={steps} counts batches of an iterable X, but X is an array: drop steps (every "
                             "row is read)")
        return None
    if sample_weight is not None:
        raise ValueError("sample_weight cannot be passed with an iterable of batches; yield "
                         "(X, y, sample_weight) batches instead")
    return IterableBatches(X, BatchPreparer(model, loss_fn, check_finite=check_finite), steps, depth, targets=targets)


def _list_of_batches(model: Model, X: Any) -> bool:
    if not isinstance(X, (list, tuple)):
        return True
    return bool(X) and (holds_inputs(model, X[0]) or batch_shaped(model, X[0]))
