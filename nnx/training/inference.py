"""`predict` and `evaluate`: a model's inference on arrays or batch sources, with its argument checks."""

from __future__ import annotations

from typing import Any

from .. import _validate as check
from ..metrics import resolve_metrics
from ..protocols import Model
from .data import batch_slices
from .evaluation import evaluate_arrays, evaluate_batches, head_outputs, predict_batches
from .history import Logs
from .loss_fit import check_loss_fits
from .sources import inference_source


def predict(model: Model, X: Any, batch_size: int | None = None, steps: int | None = None, prefetch: Any = True,
            check_finite: bool = True) -> Any:
    """Outputs for X in inference mode (dropout off), as an array on this model's backend.

    X may also be a `np.memmap` or array-like read batch by batch (h5py, ...; without `batch_size`, in
    batches of about 16 MiB), or an iterable of X batches or (X, ...) tuples or lists, as a torch DataLoader
    yields them (`steps` of them when given); `prefetch` prepares the next batch in a background thread
    for those. `check_finite` refuses X holding NaN or inf with a ValueError, as `fit` and `evaluate` do
    (one reduction and one host read per call or batch); False skips it.
    """
    if batch_size is not None:
        check.positive_int("batch_size", batch_size)
    check_finite = check.flag("check_finite", check_finite)
    source = inference_source(model, X, None, None, None, batch_size, steps, prefetch, check_finite)
    if source is not None:
        return predict_batches(model, source)
    X_d = model.prepare_inputs(X)
    if check_finite:
        model.require_finite(X_d, "X", X)  # NaN in, NaN out would look like a prediction
    forward = head_outputs(model, len(model.layers))
    if batch_size is None or X_d.shape[0] <= batch_size:
        return forward(X_d)
    parts = [forward(X_d[s, ...]) for s in batch_slices(X_d.shape[0], batch_size)]
    return model.xp.concat(parts, axis=0)


def evaluate(model: Model, X: Any, y: Any = None, loss: Any = None, metrics: Any = None, batch_size: int | None = None,
             sample_weight: Any = None, steps: int | None = None, prefetch: Any = True,
             check_finite: bool = True) -> dict[str, float]:
    """Loss (with the regularization penalty, as `fit` reports it; weighted by `sample_weight`) and metrics.

    Metrics are unweighted, as Keras's ``metrics=`` (not ``weighted_metrics=``): with `sample_weight`,
    ``"mse"`` is the plain mean while the loss of an MSE model is the weighted one.

    A dict of name -> float; it prints rounded to 4 significant digits, its values are not rounded.

    X, y may also be host array-likes read batch by batch (`np.memmap`, h5py, ...; without `batch_size`, in
    batches of about 16 MiB), or X alone an
    iterable of (X, y) / (X, y, sample_weight) batches (`steps` of them when given).
    `check_finite` refuses X or y holding NaN or inf with a ValueError; False skips it. A loss that
    does not fit the model's outputs (see `fit`) raises ValueError.
    """
    loss_fn = model.resolve_loss(loss)
    look_at_outputs = check_loss_fits(model, loss_fn)
    if batch_size is not None:
        check.positive_int("batch_size", batch_size)
    check_finite = check.flag("check_finite", check_finite)
    source = inference_source(model, X, y, sample_weight, loss_fn, batch_size, steps, prefetch, check_finite)
    if source is not None:
        return Logs(evaluate_batches(model, source, loss_fn, resolve_metrics(metrics, loss_fn), look_at_outputs))
    if y is None:
        raise TypeError("y is required when X is an array; to evaluate batches pass X as an iterable "
                        "of (X, y) or (X, y, sample_weight) tuples")
    X_d = model.prepare_inputs(X)
    y_d = model.prepare_targets(y, loss_fn, X_d.shape[0])
    w_d = model.prepare_sample_weight(sample_weight, None, y_d, loss_fn, X_d.shape[0])
    if check_finite:
        model.require_finite(X_d, "X", X)  # a NaN loss from NaN data would look like a result
        model.require_finite(y_d, "y", y)
    return Logs(evaluate_arrays(model, X_d, y_d, w_d, loss_fn, resolve_metrics(metrics, loss_fn), batch_size,
                                look_at_outputs))
