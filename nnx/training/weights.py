"""Per-row training weights: a `sample_weight` vector times the weight `class_weight` gives each row's class."""

from __future__ import annotations

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
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not weight >= 0:  # pyright: ignore[reportOperatorIssue]
            raise ValueError(f"class_weight[{key}] must be a number >= 0, got {weight!r}")
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
