"""Metrics `fit` and `evaluate` report: each maps (xp, y_true, y_pred, from_logits) to a 0-d array on the device.

y_pred is the model's outputs (probabilities or logits) in a real floating dtype: predicted labels, bool or
integer as scikit-learn's scores take them, raise `TypeError` naming their dtype.
y_true is either class indices ((n,) or (n, 1)) for multi-class outputs or has y_pred's shape; the
regression metrics (mse, mae, rmse, r2) read class indices as one-hot rows, as a cross-entropy loss does.
Called directly, a metric takes a NumPy ``y_true`` beside another library's ``y_pred`` and moves it there,
as the losses do.
With a binary cross-entropy loss, every output is a label of its own (multi-label indicator
targets): `fit` and `evaluate` then score ``"accuracy"``, ``"precision"``, ``"recall"`` and ``"f1"``
per label, as scikit-learn scores multi-label targets (see `resolve_metrics`).
The class and label metrics are NaN where y_true holds no class or 0/1 label, where an output is NaN, and
on no rows: scikit-learn refuses these, and a number there would only look like a score.
A user's metric is a function of the same signature, passed as ``(name, fn)`` or
registered by name with `register_metric`. Metrics see no sample weights: `fit` and `evaluate`
weigh the loss only, as Keras's ``metrics=`` (scikit-learn's scores without ``sample_weight``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast

from array_api_compat import array_namespace, is_array_api_obj, is_jax_array, is_numpy_array
from array_api_compat import device as array_device

from .backends import get_backend
from .backends.names import is_host_subclass
from .losses import BinaryCrossEntropy
from .registry import Registry


def _host_targets(metric: Callable[..., Any]) -> Callable[..., Any]:
    """`metric` reading its inputs as the losses read them: a NumPy array (or a list) beside another library's
    outputs, or one of their own library on another device, is moved to their backend and device; an array of a
    third library raises `TypeError` naming both. A NumPy subclass (masked array, matrix) is read as a plain
    array, which refuses masked entries by name; a y_pred that is no array is refused by name.

    Arrays of the outputs' own type on their device (what `fit` and `evaluate` pass) go through untouched. JAX's
    functions take NumPy arrays as they are, and a traced output has no backend to move anything to.
    """
    @functools.wraps(metric)
    def scored(xp: Any, y_true: Any, y_pred: Any, from_logits: bool = False) -> Any:
        if is_host_subclass(y_pred):
            # NumPy's masked operators skip masked entries (a score of the rest), a matrix's ** is a matrix power:
            # read as a plain array, which refuses masked entries by name (before the check below: array_api_compat
            # takes no matrix for an array)
            y_pred = get_backend("numpy").asarray(y_pred, argname="y_pred")
        if not is_array_api_obj(y_pred):
            raise TypeError(f"y_pred must be an array, got {type(y_pred).__name__}")
        dtype = cast(Any, y_pred).dtype  # is_array_api_obj narrowed it to a protocol without dtype
        # the standard's isdtype; a bare `torch` module passed as xp has none (mse and mae worked with it)
        isdtype = xp.isdtype if hasattr(xp, "isdtype") else array_namespace(y_pred).isdtype
        if not isdtype(dtype, "real floating"):
            # predicted labels (scikit-learn's f1_score(y_true, labels)) are no outputs: bool ones were counted in
            # bool (f1 2.0), integer class indices read as one output thresholded at 0.5 (NaN)
            raise TypeError(f"y_pred must have a real floating dtype (the model's outputs: probabilities or logits, "
                            f"not predicted labels), got {dtype}")
        if _moved(y_true, y_pred):
            y_true = get_backend(y_pred).asarray(y_true, argname="y_true")
        if tuple(getattr(y_pred, "shape", ()))[:1] == (0,):
            # NaN, the score of no rows, is the answer: NumPy would also warn of the means of nothing behind it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return metric(xp, y_true, y_pred, from_logits)
        return metric(xp, y_true, y_pred, from_logits)
    return scored


def _moved(y_true: Any, y_pred: Any) -> bool:
    """Whether `y_true` must go through y_pred's `Backend.asarray` before a metric computes with it."""
    if getattr(getattr(y_true, "dtype", None), "kind", "f") not in "biufV":
        # NumPy's strings, objects and dates (beside NumPy or JAX outputs too): the move refuses them by name,
        # where the arithmetic would fail on "could not convert string to float"
        return True
    if is_jax_array(y_pred):
        # JAX takes NumPy arrays as they are (a masked one or a matrix is moved, to be read as a plain array); an
        # array of a third library is moved, which names both
        return not (is_jax_array(y_true) or is_numpy_array(y_true)) or is_host_subclass(y_true)
    if type(y_true) is not type(y_pred):
        return True
    # one library, two devices (torch's cpu and cuda, array_api_strict's Device("device1")): moved, as a loss does,
    # where the arithmetic would fail on the library's own "two different devices"
    return not is_numpy_array(y_pred) and str(array_device(y_true)) != str(array_device(y_pred))


def _binary_labels(y_pred: Any, from_logits: bool) -> Any:
    return y_pred > (0.0 if from_logits else 0.5)


def _like_outputs(xp: Any, y_true: Any, y_pred: Any) -> Any:
    """`y_true` in `y_pred`'s shape and dtype, or ValueError unless its shape differs at most in trailing 1s.

    ``(n,)`` against ``(n, 1)`` (and back) is how fit passes one output's targets; anything else reshaped would
    be scored scrambled: targets transposed or flattened (scikit-learn and the losses refuse them). Bool or
    integer labels are cast: the array API mixes no dtype kinds (array_api_strict refuses ``labels > 0.5``).
    """
    t_shape, p_shape = tuple(y_true.shape), tuple(y_pred.shape)
    if t_shape != p_shape:
        # only trailing axes of length 1 may differ: any other reshape of as many values (per-sample targets
        # transposed, (n, 3, 2) for (n, 2, 3)) scrambles them, and the losses refuse it
        if not t_shape or _without_trailing_ones(t_shape) != _without_trailing_ones(p_shape):
            raise ValueError(f"y_true must hold one row per row of y_pred, shaped like it: got y_true {t_shape} "
                             f"for y_pred {p_shape} (rows may differ only in trailing axes of length 1, as (n,) "
                             "for (n, 1))")
        y_true = xp.reshape(y_true, p_shape)
    return y_true if y_true.dtype == y_pred.dtype else xp.astype(y_true, y_pred.dtype)


def _without_trailing_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    """`shape` without its trailing axes of length 1, the first (rows) kept."""
    while len(shape) > 1 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _unless_nan(xp: Any, y_pred: Any, score: Any) -> Any:
    """`score`, or NaN where an output is NaN: such an output has no class (a threshold would file it under
    class 0, an argmax under whatever index the backend picks), so the score would only look like one.
    NaN for no rows too: precision, recall and f1 of nothing came out 0 (scikit-learn refuses empty input),
    where accuracy, the mean of nothing, is NaN."""
    if y_pred.shape[0] == 0:
        return score * math.nan
    return xp.where(xp.any(xp.isnan(y_pred)), math.nan, score)


def _unless_unlabelled(xp: Any, true: Any, y_pred: Any, score: Any) -> Any:
    """`_unless_nan`, and NaN where `true` (y_true in y_pred's shape) holds anything but 0/1 labels: a threshold
    at 0.5 would file other targets under two labels that only look like a score (as `_unless_unclassed`)."""
    score = _unless_nan(xp, y_pred, score)
    if xp.isdtype(true.dtype, "bool"):
        return score
    return xp.where(xp.any((true != 0) & (true != 1)), math.nan, score)


def _unless_unclassed(xp: Any, y_true: Any, y_pred: Any, score: Any) -> Any:
    """`_unless_nan`, and NaN where `y_true` holds something other than class labels: a 0/1 label for one output,
    an index in [0, outputs) for several (one-hot or probability rows, entries >= 0 as cross-entropy takes them,
    are read by their argmax, as Keras's categorical accuracy reads them). Continuous targets (a regression's)
    have no classes: scikit-learn refuses them, and a threshold at 0.5 would file them under two classes that
    only look like a score."""
    n_out = 1 if y_pred.ndim == 1 else y_pred.shape[-1]
    score = _unless_nan(xp, y_pred, score)
    if xp.isdtype(y_true.dtype, "bool"):
        return score
    if n_out > 1 and y_true.ndim == 2 and y_true.shape[-1] == n_out:
        # rows of class weights, as cross-entropy takes them: a negative entry (a regression's targets, which
        # cross-entropy refuses) or a NaN makes a row no class distribution, whose argmax would only look like one
        return xp.where(xp.any(~(y_true >= 0)), math.nan, score)
    if n_out == 1:
        other = (y_true != 0) & (y_true != 1)
    else:
        other = (y_true < 0) | (y_true >= n_out)
        if xp.isdtype(y_true.dtype, "real floating"):
            other = other | (xp.floor(y_true) != y_true)
    return xp.where(xp.any(other), math.nan, score)


def _class_pairs(xp: Any, y_true: Any, y_pred: Any, from_logits: bool) -> tuple[Any, Any, int]:
    """Predicted and true class indices, and the number of classes."""
    n_out = 1 if y_pred.ndim == 1 else y_pred.shape[-1]
    if n_out == 1:
        # y_true checked against the outputs' own rows, then both flattened ((n,) outputs: one output, not one
        # class per row): flattened first, outputs of shape (n, 2, 1) took targets of 2n rows
        true = xp.reshape(_like_outputs(xp, y_true, y_pred), (-1,))
        pred = xp.astype(_binary_labels(xp.reshape(y_pred, (-1,)), from_logits), xp.int64)
        return xp.astype(true > 0.5, xp.int64), pred, 2
    pred = xp.argmax(y_pred, axis=-1)
    if y_true.ndim == 2 and y_true.shape[-1] == n_out:
        true = xp.argmax(_like_outputs(xp, y_true, y_pred), axis=-1)  # one-hot rows (bool ones too)
    else:  # class indices, (n,) or (n, 1)
        true = xp.astype(_like_outputs(xp, y_true, y_pred[:, :1])[:, 0], pred.dtype)
    return true, pred, n_out


@_host_targets
def accuracy(xp: Any, y_true: Any, y_pred: Any, from_logits: bool = False) -> Any:
    """Fraction of samples whose predicted class (threshold 0.5, or argmax) is right."""
    true, pred, _ = _class_pairs(xp, y_true, y_pred, from_logits)
    return _unless_unclassed(xp, y_true, y_pred, xp.mean(xp.astype(true == pred, y_pred.dtype)))


def _count(xp: Any, mask: Any, dtype: Any) -> Any:
    """How many rows are True in each column of `mask`, counted in integers and then cast to `dtype`.

    A count kept in float32 stops at 2**24 = 16777216 where rows are added one after another (NumPy's axis-0
    sum), which turned precision 0.375 into 0.42 at 19 million rows.
    """
    return xp.astype(xp.sum(xp.astype(mask, xp.int64), axis=0), dtype)


def _count_dtype(xp: Any, dtype: Any) -> Any:
    """`dtype`, or float32 for a narrower float (float16, bfloat16), which holds counts exactly only up to 2048
    (256): precision at 5001 rows was off by 1e-3."""
    return xp.float32 if xp.finfo(dtype).bits < 32 else dtype


def _confusion_counts(xp: Any, y_true: Any, y_pred: Any, from_logits: bool) -> tuple[Any, Any, Any]:
    """True positives, predicted positives and actual positives per class (the positive class for binary)."""
    true, pred, n_classes = _class_pairs(xp, y_true, y_pred, from_logits)
    dtype = _count_dtype(xp, y_pred.dtype)
    device = array_device(y_pred)
    binary = y_pred.ndim == 1 or y_pred.shape[-1] == 1  # one output: only its positive class is scored
    classes = xp.arange(1 if binary else 0, n_classes, device=device)
    true_hot = true[:, None] == classes
    pred_hot = pred[:, None] == classes
    return _count(xp, true_hot & pred_hot, dtype), _count(xp, pred_hot, dtype), _count(xp, true_hot, dtype)


def _safe_ratio(xp: Any, num: Any, den: Any) -> Any:
    # scikit-learn's zero_division=0: an empty denominator scores 0, not NaN.
    return xp.where(den > 0, num / xp.where(den > 0, den, 1.0), 0.0)


def _macro(xp: Any, per_class: Any, predicted: Any, actual: Any) -> Any:
    """Mean over the classes that occur in y_true or y_pred, as scikit-learn's average="macro".

    A class the model has an output for but that appears in neither is left out; in the
    binary case the single (positive) class scores 0 when absent, as with average="binary".
    """
    present = xp.astype((predicted + actual) > 0, per_class.dtype)
    return xp.sum(per_class * present) / xp.maximum(xp.sum(present), xp.ones_like(xp.sum(present)))


@_host_targets
def precision(xp: Any, y_true: Any, y_pred: Any, from_logits: bool = False) -> Any:
    """Precision of the positive class (binary) or its macro average over classes."""
    tp, predicted, actual = _confusion_counts(xp, y_true, y_pred, from_logits)
    return _unless_unclassed(xp, y_true, y_pred, _macro(xp, _safe_ratio(xp, tp, predicted), predicted, actual))


@_host_targets
def recall(xp: Any, y_true: Any, y_pred: Any, from_logits: bool = False) -> Any:
    """Recall of the positive class (binary) or its macro average over classes."""
    tp, predicted, actual = _confusion_counts(xp, y_true, y_pred, from_logits)
    return _unless_unclassed(xp, y_true, y_pred, _macro(xp, _safe_ratio(xp, tp, actual), predicted, actual))


@_host_targets
def f1(xp: Any, y_true: Any, y_pred: Any, from_logits: bool = False) -> Any:
    """F1 score of the positive class (binary) or its macro average over classes."""
    tp, predicted, actual = _confusion_counts(xp, y_true, y_pred, from_logits)
    per_class = _safe_ratio(xp, 2.0 * tp, predicted + actual)
    return _unless_unclassed(xp, y_true, y_pred, _macro(xp, per_class, predicted, actual))


def _label_counts(xp: Any, true: Any, y_pred: Any, from_logits: bool) -> tuple[Any, Any, Any]:
    """True positives, predicted positives and actual positives per output, each output a yes/no label; `true`
    is y_true in y_pred's shape (`_like_outputs`)."""
    dtype = _count_dtype(xp, y_pred.dtype)
    true = true > 0.5
    pred = _binary_labels(y_pred, from_logits)
    return _count(xp, true & pred, dtype), _count(xp, pred, dtype), _count(xp, true, dtype)


@_host_targets
def label_accuracy(xp: Any, y_true: Any, y_pred: Any, from_logits: bool = False) -> Any:
    """Fraction of samples whose every label (output thresholded at 0.5) is right: scikit-learn's subset accuracy."""
    true = _like_outputs(xp, y_true, y_pred)
    right = xp.all((true > 0.5) == _binary_labels(y_pred, from_logits), axis=tuple(range(1, y_pred.ndim)))
    return _unless_unlabelled(xp, true, y_pred, xp.mean(xp.astype(right, y_pred.dtype)))


def _label_mean(xp: Any, per_label: Any) -> Any:
    # every label counts, present or not, as in scikit-learn's average="macro" of multi-label targets
    return xp.mean(xp.reshape(per_label, (-1,)))


@_host_targets
def label_precision(xp: Any, y_true: Any, y_pred: Any, from_logits: bool = False) -> Any:
    """Precision of each label (output thresholded at 0.5), averaged over the labels."""
    true = _like_outputs(xp, y_true, y_pred)
    tp, predicted, _ = _label_counts(xp, true, y_pred, from_logits)
    return _unless_unlabelled(xp, true, y_pred, _label_mean(xp, _safe_ratio(xp, tp, predicted)))


@_host_targets
def label_recall(xp: Any, y_true: Any, y_pred: Any, from_logits: bool = False) -> Any:
    """Recall of each label (output thresholded at 0.5), averaged over the labels."""
    true = _like_outputs(xp, y_true, y_pred)
    tp, _, actual = _label_counts(xp, true, y_pred, from_logits)
    return _unless_unlabelled(xp, true, y_pred, _label_mean(xp, _safe_ratio(xp, tp, actual)))


@_host_targets
def label_f1(xp: Any, y_true: Any, y_pred: Any, from_logits: bool = False) -> Any:
    """F1 score of each label (output thresholded at 0.5), averaged over the labels."""
    true = _like_outputs(xp, y_true, y_pred)
    tp, predicted, actual = _label_counts(xp, true, y_pred, from_logits)
    return _unless_unlabelled(xp, true, y_pred, _label_mean(xp, _safe_ratio(xp, 2.0 * tp, predicted + actual)))


def _regression_pair(xp: Any, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    """`y_true` in `y_pred`'s shape and dtype: class indices (one per row, for several outputs) as one-hot rows,
    which is how a cross-entropy loss reads them, so that they score as one-hot targets do."""
    n_out = 1 if y_pred.ndim < 2 else y_pred.shape[-1]
    if y_pred.ndim == 2 and n_out > 1 and tuple(y_true.shape) in ((y_pred.shape[0],), (y_pred.shape[0], 1)):
        classes = xp.arange(n_out, dtype=y_pred.dtype, device=array_device(y_pred))
        indices = xp.reshape(xp.astype(y_true, y_pred.dtype), (y_pred.shape[0], 1))
        # an index that is no class (cross-entropy refuses it) would be a row of zeros, scored as a target: NaN
        is_class = (indices >= 0) & (indices < n_out) & (xp.floor(indices) == indices)
        return xp.where(is_class, xp.astype(indices == classes, y_pred.dtype), math.nan), y_pred
    return _like_outputs(xp, y_true, y_pred), y_pred


@_host_targets
def mse(xp: Any, y_true: Any, y_pred: Any, from_logits: bool = False) -> Any:
    """Mean squared error over all elements."""
    y_true, y_pred = _regression_pair(xp, y_true, y_pred)
    return xp.mean((y_pred - y_true) ** 2)


@_host_targets
def mae(xp: Any, y_true: Any, y_pred: Any, from_logits: bool = False) -> Any:
    """Mean absolute error over all elements."""
    y_true, y_pred = _regression_pair(xp, y_true, y_pred)
    return xp.mean(xp.abs(y_pred - y_true))


@_host_targets
def rmse(xp: Any, y_true: Any, y_pred: Any, from_logits: bool = False) -> Any:
    """Root of the mean squared error over all elements (Keras's), not scikit-learn's mean of per-output roots."""
    return xp.sqrt(mse(xp, y_true, y_pred))


def _by_output(xp: Any, x: Any) -> Any:
    """`x` (rows first) as ``(outputs, rows)``, each output's values contiguous: reduced along that last axis.

    NumPy sums over the rows of a row-major array (axis 0) by adding row after row, so in float32 its error
    grows with the rows (the column mean of two million values near 1000 came out 1016, and r2 0.999 for
    0.750); along a contiguous last axis it adds pairwise, as torch and XLA sum either way.
    """
    n = x.shape[0]
    columns = xp.reshape(x, (n, -1))
    # flattened first: a reshape to the transpose's own shape would keep it a strided view
    return xp.reshape(xp.reshape(xp.matrix_transpose(columns), (-1,)), (columns.shape[1], n))


@_host_targets
def r2(xp: Any, y_true: Any, y_pred: Any, from_logits: bool = False) -> Any:
    """Coefficient of determination, averaged uniformly over outputs (scikit-learn's default); NaN for one row."""
    y_true, y_pred = _regression_pair(xp, y_true, y_pred)
    if y_pred.shape[0] < 2:
        # one row has no variance to explain: undefined, NaN as scikit-learn gives (not a score of 0 or 1)
        return xp.full((), math.nan, dtype=y_pred.dtype, device=array_device(y_pred))
    y_true, y_pred = _by_output(xp, y_true), _by_output(xp, y_pred)
    ss_res = xp.sum((y_true - y_pred) ** 2, axis=1)
    ss_tot = xp.sum((y_true - xp.mean(y_true, axis=1, keepdims=True)) ** 2, axis=1)
    # A constant target scores 1 when predicted exactly and 0 otherwise, as in scikit-learn. Constant is told by
    # its values, not by ss_tot == 0: the mean of equal values may round (0.1 seven times in float32), leaving an
    # ss_tot of ~1e-15 that turned a prediction 0.01 off into r2 = -1.8e12.
    # (the standard's where takes at most one Python scalar, hence the array for the inner one)
    exact = xp.astype(ss_res == 0, ss_res.dtype)
    varies = (xp.max(y_true, axis=1) > xp.min(y_true, axis=1)) & (ss_tot > 0)
    per_output = xp.where(varies, 1.0 - ss_res / xp.where(varies, ss_tot, 1.0), exact)
    # a NaN (a target that is no class, a NaN output) fails both comparisons above, which would score it 0 or 1
    return xp.mean(xp.where(xp.isnan(ss_res), math.nan, per_output))


Metric = Callable[..., Any]
METRICS = Registry(
    "metric",
    "Pass a custom metric to fit as a (name, function) pair, or register it once with "
    "@nnx.metrics.register_metric(\"name\").",
)
for _name, _fn in {"accuracy": accuracy, "acc": accuracy, "precision": precision, "recall": recall, "f1": f1,
                   "mse": mse, "mae": mae, "rmse": rmse, "r2": r2}.items():
    METRICS.add(_name, _fn)

# the built-in class metrics as they score outputs that are each a label of their own (a BCE loss)
_PER_LABEL: dict[Any, Metric] = {accuracy: label_accuracy, precision: label_precision, recall: label_recall,
                                 f1: label_f1}


def register_metric(name: str) -> Callable[[Metric], Metric]:
    """Decorator: make ``fn(xp, y_true, y_pred, from_logits) -> 0-d array`` usable by name in `fit`'s `metrics`."""
    def decorate(fn: Metric) -> Metric:
        if not callable(fn):
            raise TypeError(f"register_metric({name!r}) needs a function, got {type(fn).__name__}")
        METRICS.add(name, fn)
        return fn
    return decorate


def resolve_metrics(metrics: Any, loss: Any = None) -> dict[str, Metric]:
    """Turn a list of names or ``(name, function)`` pairs into a name -> metric dict.

    `loss`: the loss the metrics go with. With a `BinaryCrossEntropy` every output is a yes/no label,
    so ``"accuracy"``, ``"precision"``, ``"recall"`` and ``"f1"`` score the labels (subset accuracy,
    averages over the labels) instead of taking an argmax over the outputs as for one-hot classes;
    with one output both give the binary scores.
    """
    per_label = isinstance(loss, BinaryCrossEntropy)
    if metrics is None:
        return {}
    if isinstance(metrics, str):
        metrics = [metrics]
    if isinstance(metrics, Mapping):
        # iterating would give its keys alone: {"accuracy": my_fn} would score the built-in accuracy
        raise TypeError("metrics must be a list of names or (name, function) pairs, got a dict; pass "
                        "list(metrics.items()), e.g. [('accuracy', fn)]")
    try:
        metrics = list(metrics)
    except TypeError:
        raise TypeError(f"metrics must be a list of names or (name, function) pairs, "
                        f"got {type(metrics).__name__} {metrics!r}") from None
    resolved: dict[str, Metric] = {}
    for item in metrics:
        if isinstance(item, str):
            key = item.lower()
            fn: Metric = METRICS.lookup(key)
            name, fn = "accuracy" if key == "acc" else key, _PER_LABEL.get(fn, fn) if per_label else fn
        elif isinstance(item, tuple) and len(item) == 2 and callable(item[1]):
            name, fn = str(item[0]), item[1]
        else:
            raise TypeError(f"metrics entries must be names or (name, function) pairs, got {item!r}")
        _check_metric_name(name, resolved)
        resolved[name] = fn
    return resolved


def _check_metric_name(name: str, resolved: dict[str, Metric]) -> None:
    """ValueError for a name whose value would replace another entry of the logs `fit` and `evaluate` return."""
    if name == "loss":
        raise ValueError("metric name 'loss' is reserved for the loss in the logs fit and evaluate return; "
                         "name the metric otherwise")
    if name.startswith("val_"):
        raise ValueError(f"metric name {name!r} starts with 'val_', which fit's logs give the validation "
                         "values; name the metric otherwise")
    if name in resolved:
        raise ValueError(f"metric {name!r} is given twice; one log entry would replace the other")
