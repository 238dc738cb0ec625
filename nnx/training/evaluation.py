"""Inference passes over prepared data: the loss and metrics of arrays or of a batch source, and predictions.

Each pass is written once, as functions of the model and arrays that `inference_program` runs as
compiled programs where the backend compiles (JAX), and op by op elsewhere.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable
from typing import Any

from ..layers import Sigmoid, Softmax
from ..protocols import Model
from .compiled_inference import inference_program
from .data import batch_slices
from .loss_fit import check_outputs
from .outside_settings import outside_key
from .shared_programs import LOSS_CODE
from .targets import joined_targets
from .trace_state import described_with_attributes
from .weights import average, batch_weight, host_values


def head_outputs(model: Model, n_run: int) -> Callable[[Any], Any]:
    """Inference outputs of the first `n_run` layers, as a function of a prepared batch."""
    return inference_program(model, ("outputs", n_run), lambda m, X: m.forward_to_head(X, n_run, training=False))


def metric_outputs(model: Model, Z: Any, from_logits: bool, folded: bool | None = None) -> tuple[Any, bool]:
    """What metrics read of head outputs `Z`: the model's outputs, as `predict` gives them, and whether those
    are logits. A last layer folded into the loss (`output_head`: a final Sigmoid or Softmax, the only case where
    it reports logits beside such a last layer, or a layer a loss folds itself with ``fold_output_layer``) is
    applied here, so a metric such as ``"mse"`` scores the outputs. `folded` says whether the head folded it;
    None reads that from `from_logits` (right for nnx's own folds, not for a loss's)."""
    last = model.layers[-1]
    if folded is None:
        folded = from_logits and isinstance(last, (Sigmoid, Softmax))
    if folded:
        return last.forward(Z, training=False), False
    return Z, from_logits


def folds_last_layer(model: Model, loss: Any) -> bool | None:
    """Whether the head of `loss` leaves out the model's last layer (folded into the loss); None without a loss."""
    return None if loss is None else model.output_head(loss)[0] < len(model.layers)


def _metric_vector(m: Model, metric_fns: dict, y: Any, Z: Any, from_logits: bool, folded: bool | None) -> Any:
    xp = m.xp
    Z, from_logits = metric_outputs(m, Z, from_logits, folded)
    return xp.stack([xp.astype(fn(xp, y, Z, from_logits), Z.dtype) for fn in metric_fns.values()])


def _head_loss(head: Any, y: Any, Z: Any, w: Any) -> Any:
    """The loss of head outputs `Z` against `y`, weighted when `w` is given (a loss may take no weights)."""
    return head(y, Z, check=False) if w is None else head(y, Z, check=False, sample_weight=w)


def _head_key(head: Any) -> tuple:
    """The loss's class and attributes (its math's constants); where they are not plain, the object and its
    attributes by identity (`described_with_attributes`); its class's methods as they are now (one patched
    since is other code than the program traced); and the class attributes and module globals a user's loss
    reads (`outside_key`: ``SCALE`` changed by a callback between validations)."""
    return (described_with_attributes(head), tuple(getattr(type(head), name, None) for name in LOSS_CODE),
            outside_key((head,)))


def _metrics_key(metric_fns: dict) -> tuple:
    # a metric may be any callable, hashable or not: a function by identity (the key holds it, so no id is
    # reused), an object of the user's by its attributes, so a setting changed between calls is another program;
    # and the globals and closure variables a user's metric reads (`outside_key`), which the program holds too
    return (tuple((name, described_with_attributes(fn)) for name, fn in metric_fns.items()),
            outside_key(metric_fns.values()))


def metric_values(model: Model, metric_fns: dict, y: Any, Z: Any, from_logits: bool,
                  loss: Any = None) -> dict[str, float]:
    """Each metric of head outputs `Z` against `y`, as Python floats (one host transfer for all).

    `loss` is the loss whose head gave `Z` (None: the model's, which `fit` sets), which tells whether `Z` are the
    inputs of a last layer the loss folded.
    """
    folded = folds_last_layer(model, model.loss if loss is None else loss)
    vector = inference_program(model, ("metrics", _metrics_key(metric_fns), from_logits, folded),
                               lambda m, y, Z: _metric_vector(m, metric_fns, y, Z, from_logits, folded),
                               tuple(fn for fn in metric_fns.values() if not isinstance(fn, types.FunctionType)))
    host = model.backend.to_host(vector(y, Z))
    return {name: float(v) for name, v in zip(metric_fns, host, strict=True)}


def _penalty(model: Model) -> float | None:
    """The regularization penalty as a Python float, or None without one."""
    penalty = inference_program(model, ("penalty",), lambda m: m.penalty())()
    return None if penalty is None else model.backend.to_float(penalty)


def evaluate_arrays(model: Model, X: Any, y: Any, w: Any, loss_fn: Any, metric_fns: dict,
                    batch_size: int | None, look_at_outputs: bool = False) -> dict[str, float]:
    """Loss (penalty included, weighted when `w` is given) and metrics of prepared device arrays.

    In batches of `batch_size` rows, the forward pass is one program per batch shape (two at most), and the
    loss and metrics one call over all the outputs, so the value is that of all rows at once.
    `look_at_outputs`: check that the outputs fit `loss_fn` (see `check_loss_fits`) before using them.
    """
    if X.shape[0] == 0:
        raise ValueError("cannot evaluate on 0 samples")
    n_run, head, from_logits = model.output_head(loss_fn)

    def scores(m: Model, y: Any, Z: Any, w: Any) -> Any:
        """The loss (penalty included) and then each metric, as one vector: one host transfer for all."""
        xp = m.xp
        value = _head_loss(head, y, Z, w)
        penalty = m.penalty()
        if penalty is not None:
            value = value + penalty
        value = xp.reshape(xp.astype(value, Z.dtype), (1,))
        folded = n_run < len(m.layers)
        return xp.concat([value, _metric_vector(m, metric_fns, y, Z, from_logits, folded)]) if metric_fns else value

    key = (_head_key(head), _metrics_key(metric_fns), from_logits)
    if batch_size is None or X.shape[0] <= batch_size:
        if look_at_outputs:  # an undecided model is never folded: Z are its outputs
            check_outputs(model, loss_fn, head_outputs(model, n_run)(X), "the data")
        program = inference_program(model, ("evaluate", n_run, *key),
                                    lambda m, X, y, w: scores(m, y, m.forward_to_head(X, n_run, training=False), w))
        vector = program(X, y, w)
    else:
        # not one program tracing every batch's forward: that grows with the rows (200 batches of 32 compiled
        # for seconds); each batch shape's forward is traced once, and the outputs scored together
        forward = head_outputs(model, n_run)
        outs = [forward(X[s, ...]) for s in batch_slices(X.shape[0], batch_size)]
        Z = model.xp.concat(outs, axis=0)
        if look_at_outputs:
            check_outputs(model, loss_fn, Z, "the data")
        vector = inference_program(model, ("evaluate outputs", n_run, *key), scores)(y, Z, w)
    host = model.backend.to_host(vector)
    return {"loss": float(host[0]), **{name: float(v) for name, v in zip(metric_fns, host[1:], strict=True)}}


def evaluate_batches(model: Model, batches: Any, loss_fn: Any, metric_fns: dict,
                     look_at_outputs: bool = False) -> dict[str, float]:
    """Loss (penalty included) and metrics over a batch source: the mean of the batch losses, weighted.

    Each batch's loss is a mean over its rows (weighted ones with Keras's meaning, sum(w * loss) / rows),
    so weighting by rows gives the value `evaluate_arrays` computes on all rows at once, up to rounding (the
    batches' sums are added in another order, and one batch's mean is multiplied back by its rows); under
    ``mean_with_sample_weight`` a batch divides by its sum of weights, which is then what it counts for
    (`batch_weight`).
    Metrics see every batch's outputs and targets together, as they do for arrays.
    `look_at_outputs`: check that the first batch's outputs fit `loss_fn` (see `check_loss_fits`).
    """
    xp = model.xp
    n_run, head, from_logits = model.output_head(loss_fn)

    def batch_loss(m: Model, X: Any, y: Any, w: Any) -> tuple[Any, Any]:
        Z = m.forward_to_head(X, n_run, training=False)
        return _head_loss(head, y, Z, w), Z

    scores = inference_program(model, ("batch", n_run, _head_key(head)), batch_loss)
    values, weights, outputs, targets = [], [], [], []
    with contextlib.closing(batches.epoch()) as source:
        for Xb, yb, wb in source:
            value, Z = scores(Xb, yb, wb)
            if look_at_outputs and not values:
                check_outputs(model, loss_fn, Z)
            values.append(value)
            weights.append(batch_weight(xp, head, int(Xb.shape[0]), wb))
            if metric_fns:
                outputs.append(Z)
                targets.append(yb)
    value = average(*host_values(model, values, weights))
    penalty = _penalty(model)
    result = {"loss": value if penalty is None else value + penalty}
    if metric_fns:
        result.update(model.metric_values(metric_fns, joined_targets(model, targets), xp.concat(outputs, axis=0),
                                          from_logits, loss_fn))
    return result


def predict_batches(model: Model, batches: Any) -> Any:
    """Inference outputs of every batch of a source, concatenated on the model's backend."""
    forward = head_outputs(model, len(model.layers))
    with contextlib.closing(batches.epoch()) as source:
        parts = [forward(Xb) for Xb, _, _ in source]
    return parts[0] if len(parts) == 1 else model.xp.concat(parts, axis=0)
