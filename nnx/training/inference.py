"""`predict` and `evaluate`: a model's inference on arrays or batch sources, with its argument checks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .. import _validate as check
from ..backends import dtype_name
from ..layers.parameter import in_model_dtype
from ..metrics import resolve_metrics
from ..protocols import Model
from .data import batch_slices
from .evaluation import evaluate_arrays, evaluate_batches, head_outputs, predict_batches
from .history import Logs
from .inputs import require_all_finite, require_backend_state, require_own_outputs, require_untraced
from .loss_fit import check_loss_fits
from .sources import inference_source


def require_forward_run(model: Model, what: str) -> None:
    """TypeError when `model`'s own forward, which `what` would not run, is not the one that computes its outputs.

    predict, evaluate, fit and gradient checks run the layers through ``forward_to_head`` (a loss may fold the last
    layer), never the model's ``forward``: a subclass overriding forward (as torch's ``nn.Module.forward`` is
    written), or a forward set on the object, changed ``model(X)`` while these gave the plain model's numbers.
    A class overriding ``forward_to_head`` as well, or only it, is run as written.
    """
    cls = type(model)
    if "forward" in vars(model):
        where = "its forward was replaced on the object"
    else:
        mro = cls.__mro__
        forward = next(c for c in mro if "forward" in vars(c))
        head = next(c for c in mro if "forward_to_head" in vars(c))
        if mro.index(forward) >= mro.index(head):
            return
        where = f"{cls.__name__} overrides forward" + ("" if forward is cls else f" (in {forward.__name__})")
    raise TypeError(f"{where}, which {what} does not run: predict, evaluate, fit and check_gradients run the layers "
                    f"through forward_to_head(X, n_layers, training), so that a loss can fold the last layer; put "
                    f"the change in an override of forward_to_head (or in a layer of the model)")


def predict(model: Model, X: Any, batch_size: int | None = None, *, steps: int | None = None, prefetch: Any = True,
            check_finite: bool = True) -> Any:
    """Outputs for X in inference mode (dropout off), as an array on this model's backend.

    X may also be a `np.memmap` or array-like read batch by batch (h5py, ...; without `batch_size`, in
    batches of about 16 MiB), or an iterable of X batches or (X, ...) tuples or lists, as a torch DataLoader
    yields them (`steps` of them when given); `prefetch` prepares the next batch in a background thread
    for those. `check_finite` refuses X holding NaN or inf with a ValueError, as `fit` and `evaluate` do
    (one reduction and one host read per call or batch); False skips it.

    Arguments after `batch_size` are keyword-only: Keras's third is ``verbose``, which read as `steps` cut an
    iterable short without a word (``predict(loader, 32, 1)`` gave the first batch's outputs only).
    """
    if batch_size is not None:
        check.positive_int("batch_size", batch_size)
    check_finite = check.flag("check_finite", check_finite)
    require_forward_run(model, "predict")
    require_untraced(model, "predict", X)
    source = inference_source(model, X, None, None, None, batch_size, steps, prefetch, check_finite)
    if source is not None:
        with _rebound_named(model, "predict"):
            out = predict_batches(model, source)
    else:
        out = _predict_arrays(model, X, batch_size, check_finite)
    require_own_outputs(model, out, "predict")
    if out.dtype != model.backend.float_dtype(model.dtype) and model.xp.isdtype(out.dtype, "real floating"):
        _raise_if_rebound(model, f"predict's outputs came out in {dtype_name(out.dtype)}")
        raise TypeError(f"predict's outputs came out in {dtype_name(out.dtype)}, but the model's dtype is "
                        f"{model.dtype}: a layer's forward computes in another dtype; cast where it meets the "
                        "activations")
    return out


def _predict_arrays(model: Model, X: Any, batch_size: int | None, check_finite: bool) -> Any:
    X_d = model.prepare_inputs(X)
    if check_finite:
        model.require_finite(X_d, "X", X)  # NaN in, NaN out would look like a prediction
    forward = head_outputs(model, len(model.layers))
    with _rebound_named(model, "predict"):
        if batch_size is None or X_d.shape[0] <= batch_size:
            return forward(X_d)
        parts = [forward(X_d[s, ...]) for s in batch_slices(X_d.shape[0], batch_size)]
    return model.xp.concat(parts, axis=0)


@contextlib.contextmanager
def _rebound_named(model: Model, what: str) -> Iterator[None]:
    """A forward that fails with a parameter or buffer in another dtype than the model's names that array as the
    likely cause: torch refuses operands of two dtypes in its own words (``expected m1 and m2 to have the same
    dtype``), naming none. The error itself is kept in the message (a layer may hold such an array on purpose)."""
    try:
        yield
    except (RuntimeError, TypeError, AttributeError) as exc:  # AttributeError: a list where an array belongs
        _raise_if_rebound(model, f"{what} failed ({type(exc).__name__}: {exc}); a likely cause", exc)
        raise


def _raise_if_rebound(model: Model, what: str, cause: BaseException | None = None) -> None:
    """TypeError saying `what`, naming the first float parameter or buffer in a dtype other than the model's; nothing
    where there is none.

    ``p.value = np.load(...)`` (NumPy's float64) in a float32 model made NumPy and JAX predict float64 outputs
    without a word, and torch fail in its matmul with its own message, naming no parameter. A user's layer may keep
    a parameter in another dtype on purpose and cast where it meets the activations: only outputs in another dtype,
    or a failed forward, are laid to such an array.
    """
    require_backend_state(model, what)  # a list or another library's array has no dtype to compare
    expected = model.backend.float_dtype(model.dtype)
    for kind, arrays in (("parameter", model.parameters()), ("buffer", model.buffers())):
        for a in arrays:
            if a.value.dtype != expected and model.xp.isdtype(a.value.dtype, "real floating"):
                raise TypeError(f"{what}: {kind} {a.name!r} holds {dtype_name(a.value.dtype)} in a {model.dtype} "
                                f"model; {in_model_dtype(kind)}") from cause


def evaluate(model: Model, X: Any, y: Any = None, loss: Any = None, metrics: Any = None, batch_size: int | None = None,
             sample_weight: Any = None, steps: int | None = None, prefetch: Any = True,
             check_finite: bool = True) -> dict[str, float]:
    """Loss (with the regularization penalty, as `fit` reports it; weighted by `sample_weight`) and metrics.

    `loss` None is the last fit's loss, or for a model never fit the one `fit` would pick from the output layer
    (``"bce"`` after a Sigmoid, cross-entropy after a Softmax, else ``"mse"``). `metrics` are only those passed
    here, not the ones of the last fit (there is no ``compile``).

    Metrics are unweighted, as Keras's ``metrics=`` (not ``weighted_metrics=``): with `sample_weight`,
    ``"mse"`` is the plain mean while the loss of an MSE model is the weighted one.

    A dict of name -> float; it prints rounded to 4 significant digits, its values are not rounded.

    X, y may also be host array-likes read batch by batch (`np.memmap`, h5py, ...; without `batch_size`, in
    batches of about 16 MiB), or X alone an
    iterable of (X, y) / (X, y, sample_weight) batches (`steps` of them when given).
    `check_finite` refuses X or y holding NaN or inf with a ValueError; False skips it. A loss that
    does not fit the model's outputs (see `fit`) raises ValueError.
    """
    require_forward_run(model, "evaluate")
    require_untraced(model, "evaluate", X, y, sample_weight)
    loss_fn = model.resolve_loss(loss)
    look_at_outputs = check_loss_fits(model, loss_fn)
    metric_fns = resolve_metrics(metrics, loss_fn)  # up front, as fit: outside the guard that blames rebound arrays
    if batch_size is not None:
        check.positive_int("batch_size", batch_size)
    check_finite = check.flag("check_finite", check_finite)
    source = inference_source(model, X, y, sample_weight, loss_fn, batch_size, steps, prefetch, check_finite)
    if source is not None:
        with _rebound_named(model, "evaluate"):
            return Logs(evaluate_batches(model, source, loss_fn, metric_fns, look_at_outputs))
    if y is None:
        raise TypeError("y is required when X is an array; to evaluate batches pass X as an iterable "
                        "of (X, y) or (X, y, sample_weight) tuples")
    X_d = model.prepare_inputs(X)
    y_d = model.prepare_targets(y, loss_fn, X_d.shape[0])
    w_d = model.prepare_sample_weight(sample_weight, None, y_d, loss_fn, X_d.shape[0])
    if check_finite:  # a NaN loss from NaN data would look like a result
        require_all_finite(model, (X_d, "X", X), (y_d, "y", y))
    with _rebound_named(model, "evaluate"):
        return Logs(evaluate_arrays(model, X_d, y_d, w_d, loss_fn, metric_fns, batch_size, look_at_outputs))
