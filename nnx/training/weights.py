"""Per-row training weights (`sample_weight` times the `class_weight` of each row's class), and what a batch counts for.

A batch's loss and gradient count among batches by its rows, or by its sum of weights where the
loss divides by that (`batch_weight`): combined so, batches give one call's value over their rows.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, cast

from ..losses import CrossEntropy, Loss
from ..protocols import Model
from .inputs import all_true


def prepare_sample_weight(model: Model, sample_weight: Any, class_weight: Mapping | None, y: Any, loss: Loss,
                          n_rows: int, argname: str = "sample_weight") -> Any:
    """Per-row weights on the model's backend (None when neither is given): `sample_weight` times `class_weight[y]`."""
    xp = model.xp
    w = None
    if sample_weight is not None:
        w = model.backend.asarray(sample_weight, dtype=model.dtype, argname=argname)
        if tuple(w.shape) != (n_rows,):
            raise ValueError(f"{argname} must have shape ({n_rows},), one weight per sample, "
                             f"got {tuple(w.shape)}")
        if n_rows and not all_true(model, xp.isfinite(w) & (w >= 0)):
            raise ValueError(f"{argname} must be finite and >= 0")
    if class_weight is not None:
        cw = _class_weight_rows(model, class_weight, y, loss)
        w = cw if w is None else w * cw
    return w


def _class_weight_rows(model: Model, class_weight: Mapping, y: Any, loss: Loss) -> Any:
    xp = model.xp
    if not isinstance(class_weight, Mapping):
        raise TypeError(f"class_weight must be a dict of class -> weight, got {type(class_weight).__name__}")
    n_classes = 2 if model.out_features == 1 else cast(int, model.out_features)
    table = [1.0] * n_classes
    for key, weight in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, numbers.Integral) or not 0 <= key < n_classes:  # pyright: ignore[reportOperatorIssue]
            raise ValueError(f"class_weight keys must be class indices 0..{n_classes - 1}, got {key!r}")
        # inf would only show up as a non-finite training step (sample_weight is refused the same way)
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= weight < math.inf:  # pyright: ignore[reportOperatorIssue]
            raise ValueError(f"class_weight[{key}] must be a finite number >= 0, got {weight!r}")
        table[int(key)] = float(weight)
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
    """Batch values (a 1-D device array) and their `batch_weight`s as host numbers, read in one transfer."""
    xp = model.xp
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
