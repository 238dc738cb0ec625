"""Inference passes over prepared data: the loss and metrics of arrays or of a batch source, and predictions."""

from __future__ import annotations

import contextlib
from typing import Any

from ..protocols import Model
from .data import batch_slices
from .loss_fit import check_outputs


def metric_values(model: Model, metric_fns: dict, y: Any, Z: Any, from_logits: bool) -> dict[str, float]:
    """Each metric of head outputs `Z` against `y`, as Python floats (one host transfer for all)."""
    values = [fn(model.xp, y, Z, from_logits) for fn in metric_fns.values()]
    host = model.backend.to_host(model.xp.stack([model.xp.astype(v, Z.dtype) for v in values]))
    return {name: float(v) for name, v in zip(metric_fns, host, strict=True)}


def evaluate_arrays(model: Model, X: Any, y: Any, w: Any, loss_fn: Any, metric_fns: dict,
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


def evaluate_batches(model: Model, batches: Any, loss_fn: Any, metric_fns: dict,
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


def predict_batches(model: Model, batches: Any) -> Any:
    """Inference outputs of every batch of a source, concatenated on the model's backend."""
    n = len(model.layers)
    with contextlib.closing(batches.epoch()) as source:
        parts = [model.forward_to_head(Xb, n, training=False) for Xb, _, _ in source]
    return parts[0] if len(parts) == 1 else model.xp.concat(parts, axis=0)
