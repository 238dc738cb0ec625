"""Target encoding: `y` on the model's backend in the form its loss reads (class indices, one-hot, outputs' shape)."""

from __future__ import annotations

from typing import Any, cast

from ..losses import BinaryCrossEntropy, CrossEntropy, Loss
from ..protocols import Model
from .inputs import all_true


def prepare_targets(model: Model, y: Any, loss: Loss, n_rows: int, argname: str = "y", x_argname: str = "X") -> Any:
    """`y` on the model's backend, in the form `loss` reads: class indices or one-hot rows for cross-entropy,
    as given for a loss with its own `prepare` (which encodes and checks them), else shaped like the outputs."""
    own_prepare = not isinstance(loss, CrossEntropy) and _encodes_targets(loss)
    if isinstance(loss, CrossEntropy):
        y = _class_targets(model, y, n_rows, argname)
    elif own_prepare:
        y = _given_targets(model, y, argname)
    else:
        y = _output_targets(model, y, n_rows, argname)
    if y.shape[0] != n_rows:
        raise ValueError(f"{x_argname} has {n_rows} samples but {argname} has {y.shape[0]}")
    if own_prepare:
        _check_with_own_prepare(model, y, loss)
    # training never checks values (check=False in the step), so check once here: targets outside
    # [0, 1] would make BCE unbounded below and training silently chase them
    if isinstance(loss, BinaryCrossEntropy) and y.shape[0] and not all_true(model, _in_unit_interval, y):
        raise ValueError(f"{argname} for binary cross-entropy must lie in [0, 1] (and not be NaN), "
                         f"{_found_values(model.backend.to_host(y))}")
    # and a negative entry in a row of class probabilities would make cross-entropy unbounded below
    if isinstance(loss, CrossEntropy) and y.ndim == 2 and y.shape[0] and not all_true(model, _non_negative, y):
        raise ValueError(f"{argname} for cross-entropy must be class indices, or one-hot or probability rows "
                         "with entries >= 0 (and not NaN): a negative entry makes the loss unbounded below")
    return y


def _encodes_targets(loss: Loss) -> bool:
    """Whether `loss` brings its own `prepare` (where the docs put target encoding): it then gets y as given."""
    return type(loss).prepare not in (Loss.prepare, BinaryCrossEntropy.prepare)


def _check_with_own_prepare(model: Model, y: Any, loss: Loss) -> None:
    """Run the loss's own `prepare` once over all targets with ``check=True`` (training passes False per batch).

    The outputs it is shown are a zero-strided view of one zero row, so the check costs no memory; where the
    model cannot tell its output shape yet, only the per-batch shape checks run.
    """
    out = model.output_sample_shape
    if out is None or not y.shape[0]:
        return
    xp = model.xp
    row = xp.zeros((1, *out), dtype=model.backend.float_dtype(model.dtype), device=model.backend.device)
    loss.prepare(xp, y, xp.broadcast_to(row, (y.shape[0], *out)), True)


def _given_targets(model: Model, y: Any, argname: str) -> Any:
    """`y` on the model's backend as given, floats in the model's dtype (cast once, as every input)."""
    y = model.backend.asarray(y, argname=argname)
    if model.xp.isdtype(y.dtype, "real floating"):
        y = model.backend.asarray(y, dtype=model.dtype, argname=argname)
    if y.ndim == 0:
        raise ValueError(f"{argname} must have one row per sample, got a 0-d array")
    return y


def _class_targets(model: Model, y: Any, n_rows: int, argname: str) -> Any:
    """`y` for cross-entropy: int64 class indices in range, or one-hot / probability rows in the model's dtype."""
    xp = model.xp
    y = model.backend.asarray(y, argname=argname)
    if y.ndim == 2 and y.shape[1] == 1 and model.out_features != 1:
        y = xp.reshape(y, (-1,))  # a column of class indices, as (n, 1) labels come
    if y.ndim != 1:
        y = model.backend.asarray(y, dtype=model.dtype, argname=argname)
        if tuple(y.shape) != (n_rows, model.out_features):
            raise ValueError(f"{argname} for cross-entropy must be class indices of shape ({n_rows},) or "
                             f"({n_rows}, 1), or one-hot rows of shape ({n_rows}, {model.out_features}), "
                             f"got {tuple(y.shape)}")
        return y
    n_classes = cast(int, model.out_features)  # known once the model is built
    given = y
    if xp.isdtype(y.dtype, "real floating"):
        # checked before the cast, all in one call: a float beyond int64's range has no defined int64
        finite, whole, in_range = (bool(fact) for fact in model.backend.to_host(
            model.backend.fused(_float_index_facts, ("n_classes",))(y, n_classes=n_classes)))
        if not finite:  # inf would become a meaningless index in the message below
            raise ValueError(f"{argname} holds class indices but has NaN or infinite values")
        if not whole:
            raise ValueError(f"{argname} holds class indices but has non-integer values")
        if in_range:
            y = xp.astype(y, xp.int64)
    elif not xp.isdtype(y.dtype, "integral"):
        raise TypeError(f"{argname} must hold class indices or one-hot rows, got dtype {y.dtype}")
    else:
        if y.dtype != xp.int64:
            # torch reads uint8/bool index tensors as masks (and compares no uint64); a uint64 index beyond
            # int64 turns negative here, so the check refuses it
            y = xp.astype(y, xp.int64)
        in_range = all_true(model, _indices_below, y, n_classes=n_classes)
    if y.shape[0] and not in_range:
        host = model.backend.to_host(given)  # the values as given, for the message
        raise ValueError(f"{argname} has class indices in [{int(host.min())}, {int(host.max())}] but the model has "
                         f"{n_classes} outputs (valid: 0..{n_classes - 1})")
    return y


def _in_unit_interval(xp: Any, y: Any) -> Any:
    """Whether every element of `y` lies in [0, 1] (NaN does not): binary cross-entropy's targets."""
    return xp.all((y >= 0) & (y <= 1))


def _non_negative(xp: Any, y: Any) -> Any:
    """Whether every element of `y` is >= 0 (NaN is not): rows of class probabilities."""
    return xp.all(y >= 0)


def _indices_below(xp: Any, y: Any, n_classes: int) -> Any:
    """Whether every class index in `y` lies in 0..n_classes-1."""
    return xp.all((y >= 0) & (y < n_classes))


def _float_index_facts(xp: Any, y: Any, n_classes: int) -> Any:
    """Of class indices given as floats: whether all are finite, whole numbers, and in 0..n_classes-1."""
    return xp.stack([xp.all(xp.isfinite(y)), xp.all(y == xp.round(y)), _indices_below(xp, y, n_classes)])


def _output_targets(model: Model, y: Any, n_rows: int, argname: str) -> Any:
    """`y` in the model's dtype, shaped like the outputs; (n,) and (n, 1) both fit one value per sample.

    Where the model does not know its output shape, the loss aligns y with the outputs it gets.
    """
    xp = model.xp
    out = model.output_sample_shape
    y = model.backend.asarray(y, dtype=model.dtype, argname=argname)
    if y.ndim == 1 and out == (1,):
        y = xp.reshape(y, (-1, 1))
    elif y.ndim == 2 and y.shape[1] == 1 and out == ():
        y = xp.reshape(y, (-1,))
    if y.ndim == 0 or (out is not None and tuple(y.shape[1:]) != out):
        want = str((n_rows, *out)) if out is not None else "(n, ...)"
        hint = ""
        if out is not None and len(out) == 1 and out[0] > 1 and (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
            host = model.backend.to_host(y)
            if host.size and (host == host.round()).all() and host.min() >= 0 and host.max() < out[0]:
                # class indices given to a loss that reads one value per output ("mse", chosen after a Dense)
                hint = f'; for class indices 0..{out[0] - 1} use loss="cross_entropy"'
        raise ValueError(f"{argname} must have shape {want} to match the model's outputs, got {tuple(y.shape)}{hint}")
    return y


# the most classes the BCE target message takes whole-numbered targets for: larger ones are rather counts or amounts
_MOST_HINTED_CLASSES = 1000


def _found_values(host: Any) -> str:
    """What BCE targets outside [0, 1] hold (a host array), for the message, with what they most likely are:
    labels -1 and 1, labels 0..k-1 (cross-entropy), or a regression's targets."""
    if (host != host).any():  # NaN
        return "got NaN"
    low, high = host.min(), host.max()
    found = f"got values in [{low:g}, {high:g}]"
    whole = bool((host == host.round()).all())
    if whole and ((host == -1) | (host == 1)).all():
        return found + "; for labels -1 and 1, give 0 and 1 ((y + 1) / 2)"
    if whole and low >= 0 and high < _MOST_HINTED_CLASSES:
        return found + (f'; for {int(high) + 1} classes labelled 0..{int(high)}, give the model {int(high) + 1} '
                        'outputs and use loss="cross_entropy"')
    return found + '; for a regression\'s targets, end the model without the Sigmoid and use loss="mse"'


def joined_targets(model: Model, targets: list[Any]) -> Any:
    """The prepared targets of several batches as one array, for the metrics of all their rows.

    Cross-entropy reads class indices and one-hot rows alike, so one batch may bring either: where they are
    mixed, the indices become one-hot rows of the others' width and dtype, which every metric scores alike.
    """
    xp = model.xp
    rows = [t for t in targets if t.ndim == 2]
    if not rows or len(rows) == len(targets) or not all(xp.isdtype(t.dtype, "integral") for t in targets
                                                          if t.ndim == 1):
        return xp.concat(targets, axis=0)
    width, dtype = rows[0].shape[1], rows[0].dtype
    classes = xp.arange(width, device=model.backend.device)
    return xp.concat([t if t.ndim == 2 else xp.astype(xp.reshape(t, (-1, 1)) == xp.astype(classes, t.dtype), dtype)
                      for t in targets], axis=0)
