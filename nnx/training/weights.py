"""Per-row training weights (`sample_weight` times the `class_weight` of each row's class), and what a batch counts for.

A batch's loss and gradient count among batches by its rows, or by its sum of weights where the
loss divides by that (`batch_weight`): combined so, batches give one call's value over their rows.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, cast

import array_api_compat

from ..backends.names import backend_name_of
from ..losses import BinaryCrossEntropy, CrossEntropy, Loss
from ..protocols import Model
from .inputs import all_true


def prepare_sample_weight(model: Model, sample_weight: Any, class_weight: Mapping | None, y: Any, loss: Loss,
                          n_rows: int, argname: str = "sample_weight") -> Any:
    """Per-row weights on the model's backend (None when neither is given): `sample_weight` times `class_weight[y]`."""
    w = None
    if sample_weight is not None:
        if loss.reduction == "mean_with_sample_weight":
            # read as data first, as the cast below reads it: a torch tensor's autograd history and the 'meta'
            # device are the backend's to handle (torch warned, or failed on `item()`, in the scaling's max); a
            # NumPy array is scaled as it is, since JAX's CPU flushes subnormal weights to 0 before any scaling
            sample_weight = _ratios_in_range(sample_weight if backend_name_of(sample_weight) == "numpy" else
                                             model.backend.asarray(sample_weight, argname=argname))
        w = model.backend.asarray(sample_weight, dtype=model.dtype, argname=argname)
        if tuple(w.shape) != (n_rows,):
            raise ValueError(f"{argname} must have shape ({n_rows},), one weight per sample, "
                             f"got {tuple(w.shape)}")
        # one read in the common case: every weight finite and >= 0, and some positive
        if n_rows and not all_true(model, _finite_non_negative_some_positive, w):
            if not all_true(model, _finite_non_negative, w):
                raise ValueError(f"{argname} must be finite and >= 0{_beyond_range(model, sample_weight)}")
            _refuse_underflow(model, sample_weight, argname)  # all 0: as given (Keras's), or by the cast
    if class_weight is not None:
        cw = _class_weight_rows(model, class_weight, y, loss)
        w = cw if w is None else w * cw
    return w


def _ratios_in_range(w: Any) -> Any:
    """Weights of which only the ratios count (``mean_with_sample_weight``) scaled by a power of two, exactly, so
    that the largest is 1 where it lies far from 1: cast to a float32 model, weights above its range turned inf
    (and were refused as not finite), weights below it 0 or subnormal (a loss of 0 where a compiler flushes them).
    Anything but an array of floats with a positive finite largest weight is left to the checks."""
    if not array_api_compat.is_array_api_obj(w):
        return w
    w = cast(Any, w)  # is_array_api_obj narrowed it to a protocol without dtype and shape
    if math.prod(w.shape) == 0:
        return w
    wxp = array_api_compat.array_namespace(w)
    if not wxp.isdtype(w.dtype, "real floating"):
        return w
    largest = float(wxp.max(w))
    if not 2.0**-64 <= largest <= 2.0**64 and 0 < largest < math.inf:
        shift = max(-math.frexp(largest)[1], -1000)
        if shift > 1000:  # a subnormal largest weight: 2**shift itself lies beyond a double, so two exact steps
            w, shift = w * math.ldexp(1.0, 1000), shift - 1000
        w = w * math.ldexp(1.0, shift)
    return w


def _refuse_underflow(model: Model, given: Any, argname: str) -> None:
    """ValueError where weights the cast made all 0 held a positive one: a loss of 0, and no step moving anything."""
    # as the cast read it, in the dtype it was given (a NumPy array as it is: JAX's CPU flushes subnormals to 0)
    given = cast(Any, given if backend_name_of(given) == "numpy" else model.backend.asarray(given))
    largest = float(array_api_compat.array_namespace(given).max(given))
    if largest > 0:
        tiny = float(model.xp.finfo(model.backend.float_dtype(model.dtype)).smallest_normal)
        raise ValueError(f"{argname} became 0 in the model's dtype {model.dtype}: its weights (up to {largest:.4g}) "
                         f"lie below its range (smallest normal {tiny:.4g}), so the loss would be 0 and nothing would "
                         "train; scale them up, or use reduction=\"mean_with_sample_weight\", where only their "
                         "ratios count")


def _beyond_range(model: Model, given: Any) -> str:
    """For the error refusing weights: where finite weights became inf in the model's dtype, that they lie beyond it."""
    if not array_api_compat.is_array_api_obj(given):
        return ""
    given = cast(Any, model.backend.asarray(given))  # as the cast read it: a torch tensor without its autograd history
    if math.prod(given.shape) == 0:
        return ""
    wxp = array_api_compat.array_namespace(given)
    if not wxp.isdtype(given.dtype, "real floating") or not bool(wxp.all(wxp.isfinite(given) & (given >= 0))):
        return ""
    top = float(model.xp.finfo(model.backend.float_dtype(model.dtype)).max)
    return (f"; its weights (up to {float(wxp.max(given)):.4g}) lie beyond the range of the model's dtype "
            f"{model.dtype} (+-{top:.4g}), which turns them into inf: scale them down, or use "
            "reduction=\"mean_with_sample_weight\", where only their ratios count")


def _class_weight_rows(model: Model, class_weight: Mapping, y: Any, loss: Loss) -> Any:
    xp = model.xp
    if not isinstance(class_weight, Mapping):
        raise TypeError(f"class_weight must be a dict of class -> weight, got {type(class_weight).__name__}")
    n_classes = 2 if model.out_features == 1 else cast(int, model.out_features)
    table = [1.0] * n_classes
    top = float(xp.finfo(model.backend.float_dtype(model.dtype)).max)
    for key, weight in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, numbers.Integral) or not 0 <= key < n_classes:  # pyright: ignore[reportOperatorIssue]
            raise ValueError(f"class_weight keys must be class indices 0..{n_classes - 1}, got {key!r}")
        # inf would only show up as a non-finite training step (sample_weight is refused the same way)
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight < math.inf:  # pyright: ignore[reportOperatorIssue]
            raise ValueError(f"class_weight[{key}] must be a finite number >= 0, got {weight!r}")
        if float(weight) > top:  # finite here, inf in the model's dtype: the same non-finite step as inf itself
            raise ValueError(f"class_weight[{key}] ({float(weight):.4g}) lies beyond the range of the model's dtype "
                             f"{model.dtype} (+-{top:.4g}), which turns it into inf: scale the weights down")
        table[int(key)] = float(weight)
    if isinstance(loss, BinaryCrossEntropy) and model.out_features != 1:
        raise ValueError(f"class_weight weighs each row by its one class, but with a binary cross-entropy loss on "
                         f"{model.out_features} outputs each output is a label of its own (multi-label targets), "
                         "so a row has no one class; weigh the rows with sample_weight instead")
    _require_class_targets(model, y, loss)
    if isinstance(loss, CrossEntropy) and y.ndim == 1:
        classes = y
    elif model.out_features == 1:
        classes = xp.astype(xp.reshape(y, (-1,)) > 0.5, xp.int64)
    elif y.ndim == 2:
        classes = xp.argmax(y, axis=1)
    else:
        raise ValueError("class_weight needs class targets: indices, one-hot rows or 0/1 labels")
    weights = model.backend.asarray(table, dtype=model.dtype, argname="class_weight")
    return xp.take(weights, classes, axis=0)


def _require_class_targets(model: Model, y: Any, loss: Loss) -> None:
    """ValueError unless targets a loss other than cross-entropy reads hold one class per row: 0/1 labels for one
    output, one-hot rows for several. (Cross-entropy's targets are class indices or class rows already, and
    BCE's one output a probability of class 1.) Regression targets would be weighed by their largest column,
    or by whether they exceed 0.5."""
    if isinstance(loss, (CrossEntropy, BinaryCrossEntropy)) or not y.shape[0]:
        return
    if model.out_features == 1:
        if not all_true(model, _zero_one, y):
            raise ValueError(f"class_weight needs class targets, but {loss!r} on one output got targets that are "
                             "not 0/1 labels; weigh the rows with sample_weight instead")
        return
    if y.ndim != 2 or not all_true(model, _one_hot_rows, y):
        raise ValueError(f"class_weight needs class targets, but {loss!r} got targets that are not one-hot rows "
                         "(one 1 per row, else 0); weigh the rows with sample_weight instead")


def _finite_non_negative_some_positive(xp: Any, w: Any) -> Any:
    """Whether every weight in `w` is finite and >= 0, and one is > 0."""
    return xp.all(xp.isfinite(w) & (w >= 0)) & xp.any(w > 0)


def _finite_non_negative(xp: Any, w: Any) -> Any:
    """Whether every weight in `w` is finite and >= 0."""
    return xp.all(xp.isfinite(w) & (w >= 0))


def _zero_one(xp: Any, y: Any) -> Any:
    """Whether every element of `y` is 0 or 1."""
    return xp.all((y == 0) | (y == 1))


def _one_hot_rows(xp: Any, y: Any) -> Any:
    """Whether every row of 2-D `y` is one-hot: one 1, else 0."""
    return xp.all(xp.all((y == 0) | (y == 1), axis=1) & (xp.sum(y, axis=1) == 1))


def counts_by_weight(loss: Loss, w: Any) -> bool:
    """Whether a batch weighted by `w` counts among batches by its sum of weights, not its rows: under
    ``mean_with_sample_weight``, whose value (and gradient) divides by that sum."""
    return w is not None and loss.reduction == "mean_with_sample_weight"


def batch_weight(xp: Any, loss: Loss, rows: int, w: Any) -> Any:
    """What a batch's loss (and gradient) counts for among batches: its rows, or its sum of weights (a 0-d
    array) where it `counts_by_weight`; either way the weighted mean of the batches' values (and gradients)
    is one call's over all their rows."""
    return xp.sum(w) if counts_by_weight(loss, w) else rows


def host_values(model: Model, values: Any, weights: list[Any]) -> tuple[list[float], list[float]]:
    """Batch values (a 1-D array, or a list of 0-d arrays) and their `batch_weight`s as host numbers, read in one
    transfer from a device."""
    xp = model.xp
    if isinstance(values, list):
        if model.backend.arrays_on_host:
            # nothing to wait for: each is read where it lies (an epoch of 16 batches on NumPy: 0.5 us against
            # the stack's 10)
            return [float(v) for v in values], [float(w) for w in weights]
        values = xp.stack(values)
    on_device = [w for w in weights if not isinstance(w, int)]
    host = [float(v) for v in model.backend.to_host(xp.concat([values, xp.stack(on_device)]) if on_device else values)]
    n = int(values.shape[0])
    read = iter(host[n:])
    return host[:n], [float(w) if isinstance(w, int) else next(read) for w in weights]


def average(values: list[float], weights: list[float]) -> float:
    """``sum(w v) / sum(w)``; the plain mean where the weights sum to 0 (every row weighted 0), which is then
    what the batches gave alike (0 for the loss, or the penalty where it is included)."""
    total = sum(weights)
    if total == 0:
        return sum(values) / len(values)
    return sum(w * v for w, v in zip(weights, values, strict=True)) / total
