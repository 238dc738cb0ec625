"""Finite-difference checks of analytic gradients, computed in float64 on the host.

The host side runs on the numpy backend (the reference every other backend is
compared with), reached through the backend seam like any other.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from typing import Any

from .backends import backend_name_of, get_backend
from .layers.own_arrays import require_own_arrays
from .layers.parameter import Parameter, require_built_shapes
from .training.head import forward_and_loss
from .training.inference import require_forward_run
from .training.loss_fit import check_loss_fits, check_outputs

_host = get_backend("numpy").xp


def _on_host(x: Any) -> Any:
    """`x` as the host reads it: an array of another backend (on any device) through its adapter; NumPy arrays,
    lists and numbers as they are."""
    if isinstance(x, (list, tuple, numbers.Number)) or backend_name_of(x) in (None, "numpy"):
        return x
    return get_backend(x).to_host(x)


def numerical_gradient(fn: Callable[[Any], float], x: Any, eps: float = 1e-6) -> Any:
    """Central-difference gradient of a scalar function, as a float64 host array shaped like `x`.

    `fn` is called with float64 host arrays; `x` may be an array of any backend, read on the host.
    """
    up, down = _shifted_values(fn, _on_host(x), eps)
    return (up - down) / (2 * eps)


def _shifted_values(fn: Callable[[Any], float], x: Any, eps: float) -> tuple[Any, Any]:
    """fn at x + eps and at x - eps along each entry of `x`, as two host arrays shaped like `x`."""
    x = _host.asarray(x, dtype=_host.float64, copy=True)
    flat_x = _host.reshape(x, (-1,))
    up, down = _host.zeros_like(flat_x), _host.zeros_like(flat_x)
    for i in range(flat_x.shape[0]):
        keep = float(flat_x[i])
        flat_x[i] = keep + eps
        up[i] = fn(_host.reshape(flat_x, x.shape))
        flat_x[i] = keep - eps
        down[i] = fn(_host.reshape(flat_x, x.shape))
        flat_x[i] = keep
    return _host.reshape(up, x.shape), _host.reshape(down, x.shape)


def _kink_aware_slope(fn: Callable[[Any], float], x: Any, at: float, analytic: Any, eps: float) -> Any:
    """The central difference of `fn` at `x`; at a kink, the value in the one-sided slopes' range nearest `analytic`.

    At a kink (ReLU's or |.|'s input exactly 0, as where an all-zero row meets a zero bias) the central
    difference is the mean of the two one-sided slopes, and any value between them (a subgradient,
    what a backward gives there) is right. An entry whose analytic value is off the central difference
    is looked at again with half the step: where `fn` is smooth, the gap between its one-sided slopes
    halves with the step (it is eps * fn''); at a kink it stays. There the numeric value is the analytic
    one moved into the range of the one-sided slopes (widened by that curvature term and rounding), so a
    value outside it still scores. `at` is fn(x).
    """
    up, down = _shifted_values(fn, x, eps)
    central = (up - down) / (2 * eps)
    off = _host.abs(analytic - central) > 1e-6 * (_host.abs(analytic) + _host.abs(central))
    if not bool(_host.any(off)):
        return central
    rounding = 16 * 2.0**-52 * abs(at) / eps
    flat_x = _host.reshape(_host.asarray(x, dtype=_host.float64, copy=True), (-1,))
    numeric, wanted = _host.reshape(central, (-1,)), _host.reshape(_host.asarray(analytic), (-1,))
    flat_up, flat_down, flat_off = (_host.reshape(a, (-1,)) for a in (up, down, off))
    for i in range(flat_x.shape[0]):
        if not bool(flat_off[i]):
            continue
        keep = float(flat_x[i])
        flat_x[i] = keep + eps / 2
        half_ahead = (fn(_host.reshape(flat_x, x.shape)) - at) / (eps / 2)
        flat_x[i] = keep - eps / 2
        half_behind = (at - fn(_host.reshape(flat_x, x.shape))) / (eps / 2)
        flat_x[i] = keep
        gap = (float(flat_up[i]) - at) / eps - (at - float(flat_down[i])) / eps
        half_gap = half_ahead - half_behind
        if abs(half_gap) > 0.75 * abs(gap):  # the gap did not halve with the step: a kink
            slack = abs(gap - half_gap) + 2 * rounding
            low, high = min(half_ahead, half_behind) - slack, max(half_ahead, half_behind) + slack
            numeric[i] = min(max(float(wanted[i]), low), high)
    return _host.reshape(numeric, central.shape)


def relative_error(analytic: Any, numeric: Any, floor: float = 1e-8) -> float:
    """Largest elementwise |a - n| / max(|a| + |n|, floor): scale-free, safe where both vanish.

    A NaN or inf in either scores inf, so ``err > tol`` flags it as ``err < tol`` does (a NaN would pass the first).
    Either may be an array of any backend (a backward's gradient as it returned it), read on the host.
    """
    a = _host.asarray(_on_host(analytic), dtype=_host.float64)
    n = _host.asarray(_on_host(numeric), dtype=_host.float64)
    if a.shape != n.shape:
        raise ValueError(f"gradient shapes differ: analytic {a.shape}, numeric {n.shape}")
    if a.size == 0:
        return 0.0
    if not (bool(_host.all(_host.isfinite(a))) and bool(_host.all(_host.isfinite(n)))):
        return math.inf
    return float(_host.max(_host.abs(a - n) / _host.maximum(_host.abs(a) + _host.abs(n), floor)))


def _below_resolution(analytic: Any, numeric: Any, noise: float) -> bool:
    """Whether a gradient is nonzero but lies, analytic and numeric alike, within the central differences'
    rounding floor (`noise` per entry): there any backward of that size scores 0, a wrong one as well."""
    a = _host.asarray(analytic, dtype=_host.float64)
    n = _host.asarray(numeric, dtype=_host.float64)
    size = max(float(_host.linalg.vector_norm(a)), float(_host.linalg.vector_norm(n)))
    return 0.0 < size <= noise * math.sqrt(a.size)


def _norm_relative_error(analytic: Any, numeric: Any, noise: float = 0.0) -> float:
    """||a - n|| / (||a|| + ||n||): robust where individual entries are ~0 (dead units, tiny weights).

    `noise` is the rounding floor of one central difference; that much difference per entry
    is discounted, so a gradient that is exactly zero (say, softmax outputs into a loss that
    is flat along them) scores 0 instead of |rounding noise| / |rounding noise| = 1. A gradient
    that is not finite scores inf.
    """
    a = _host.asarray(analytic, dtype=_host.float64)
    n = _host.asarray(numeric, dtype=_host.float64)
    scale = float(_host.linalg.vector_norm(a) + _host.linalg.vector_norm(n))
    if not math.isfinite(scale):  # a NaN or inf gradient: the worst error, never one that max() skips
        return math.inf
    if scale == 0.0:
        return 0.0
    diff = float(_host.linalg.vector_norm(a - n)) - noise * math.sqrt(a.size)
    return max(diff, 0.0) / scale


class GradientCheck(float):
    """What `check_gradients` returns: the largest relative error (a float), and where each error is.

    Attributes:
        errors: array name -> its relative error: every parameter by its model name (``"1.weight"``)
            and, when checked, ``"input"`` for dL/dX.
        worst: the array with the largest error, with its layer (``"parameter '1.scale' of layer 1
            (MyLayer)"``), so a wrong backward is found without a search.
        unresolved: the names of the arrays whose gradient, analytic and numeric, is below what central
            differences resolve at this loss value (a vanished gradient): their error of 0 says nothing.
    """

    errors: dict[str, float]
    worst: str
    unresolved: list[str]

    def __new__(cls, value: float, errors: dict[str, float] | None = None, worst: str = "",
                unresolved: list[str] | None = None) -> GradientCheck:
        result = super().__new__(cls, value)
        result.errors = dict(errors or {})
        result.worst = worst
        result.unresolved = list(unresolved or [])
        return result

    def __reduce__(self) -> tuple[Any, tuple[float, dict[str, float], str, list[str]]]:
        return type(self), (float(self), self.errors, self.worst, self.unresolved)  # copied and pickled with them


def check_gradients(model: Any, X: Any, y: Any, loss: Any = None, eps: float = 1e-6,
                    inputs: bool = True, sample_weight: Any = None) -> GradientCheck:
    """Largest relative error between backprop and central differences, in float64.

    Works on a float64 copy of `model` on its own backend; every parameter (and,
    with `inputs=True`, the input X) is checked, through the same loss path `fit`
    uses (a loss name read as `fit` reads it, None the loss `fit` would use: the model's last
    one, else one picked from its output layer; a final Sigmoid/Softmax folded into it,
    regularizer penalties, `sample_weight` (one weight per row, as `fit` takes it) and a
    fixed dropout mask included). The error per
    array is ||analytic - numeric|| / (||analytic|| + ||numeric||); below ~1e-6 is
    correct, above ~1e-3 is a bug. numeric is the central difference, except where the loss
    has a kink along the checked entry (one ReLU input exactly 0, as where an all-zero row meets
    a zero bias): there an analytic value between the two one-sided slopes (a subgradient) is
    right, not scored as a bug (the central difference is their mean). An input entry that moves
    several ReLU inputs off 0 at once has no subgradient backprop can give: it still scores.
    The result is a float that also names each array's
    error (`GradientCheck.errors`) and the worst one with its layer (`GradientCheck.worst`).
    An array whose gradient is nonzero but below what the central differences resolve at this loss
    value (a vanished gradient, as deep in a sigmoid stack) scores 0 whatever its backward gives: it
    is listed in `GradientCheck.unresolved`, with a `RuntimeWarning` naming it.

    The analytic gradients are those of a second backward pass, as in a second training
    step: a backward that adds to the previous ``p.grad`` instead of replacing it is caught.
    A parameter left without a gradient (``p.grad`` None) counts as a zero gradient, so one
    the loss depends on scores 1; a NaN gradient scores inf; a gradient of the wrong shape,
    or no dL/dX from the first layer, raises `ValueError` naming it. So do NaN or inf in X or y,
    and a loss that does not fit the model's outputs (BCE on an unbounded output), as `fit` refuses
    them: either would score as a broken backward.
    """
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0 (the finite-difference step), got {eps!r}")
    require_forward_run(model, "check_gradients")
    require_own_arrays(model)  # a tied or hand-made array: a gradient nothing would apply
    require_built_shapes(model, "check_gradients")
    try:
        model.backend.asarray(_host.zeros((1,)), dtype="float64")
    except Exception as exc:  # a float32-only device (Apple MPS, some accelerators): say what to do instead
        raise ValueError(f"check_gradients computes in float64, which {model.backend.spec} cannot hold ({exc}); "
                         f"check a copy on the host: nnx.check_gradients(model.to('numpy'), X, y, ...)") from exc
    try:
        checked = model.to(model.backend, dtype="float64")
    except TypeError as exc:  # a layer whose config cannot rebuild it: say why the check needs one
        raise TypeError(f"check_gradients works on a float64 copy of the model, rebuilt from its layers' configs: "
                        f"{exc}") from exc
    backend = checked.backend
    loss_fn = checked.resolve_loss(loss)  # a name means what it means to fit ("ce" after Softmax: probabilities)
    look_at_outputs = check_loss_fits(checked, loss_fn)
    X_d = checked.prepare_inputs(X)
    y_d = checked.prepare_targets(y, loss_fn, X_d.shape[0])
    w_d = checked.prepare_sample_weight(sample_weight, None, y_d, loss_fn, X_d.shape[0])
    checked.require_finite(X_d, "X", X)
    checked.require_finite(y_d, "y", y)
    if look_at_outputs:  # a user's last layer: its outputs tell whether the loss can read them
        check_outputs(checked, loss_fn, checked.forward_to_head(X_d, len(checked.layers), training=False), "the data")
    rng_state = checked.dropout_rng.get_state()
    buffers = [(b, b.value) for b in checked.buffers()]
    layers = dict(checked.named_layers())

    def reset() -> None:
        checked.dropout_rng.set_state(rng_state)  # the same dropout mask at every evaluation
        for b, value in buffers:  # and the same running statistics, for layers whose training pass reads them
            b.value = value

    def loss_at(X_now: Any) -> tuple[Any, Any]:
        reset()
        value, _, dX = checked.loss_and_grads(X_now, y_d, loss_fn, sample_weight=w_d, need_dX=True)
        return value, dX

    n_run, head, _ = checked.output_head(loss_fn)

    def value_at(X_now: Any) -> float:
        """The loss alone, as `loss_at` computes it: what each finite difference evaluates (no backward)."""
        reset()
        return backend.to_float(forward_and_loss(checked, X_now, y_d, n_run, head, w_d)[0])

    def owner(p: Parameter) -> str:
        path = p.name.rpartition(".")[0]
        layer = layers.get(path)
        return f"parameter {p.name!r}" + ("" if layer is None else f" of layer {path} ({type(layer).__name__})")

    loss_at(X_d)  # a first step: the second backward must give the same gradients, not twice them
    value, dX = loss_at(X_d)
    # f(x+eps) - f(x-eps) is only known to a few ulps of the loss: the difference quotient's floor.
    at = backend.to_float(value)
    noise = 16 * 2.0**-52 * abs(at) / (2 * eps)
    analytic = [(p, _host_gradient(backend, p.grad, p.shape, owner(p))) for p in checked.parameters()]
    errors: dict[str, float] = {}
    where: dict[str, str] = {}
    unresolved: list[str] = []
    norms: dict[str, float] = {}
    for p, grad in analytic:
        original = p.value

        def value_with(w: Any, p: Parameter = p) -> float:
            p.value = backend.asarray(w, dtype="float64")
            return value_at(X_d)

        numeric = _kink_aware_slope(value_with, backend.to_host(original), at, grad, eps)
        p.value = original
        errors[p.name], where[p.name] = _norm_relative_error(grad, numeric, noise), owner(p)
        norms[p.name] = float(_host.linalg.vector_norm(grad))
        if _below_resolution(grad, numeric, noise):
            unresolved.append(p.name)
    if inputs:
        if dX is None:
            first = checked.layers[0]
            raise ValueError(f"check_gradients: the model's backward gave no input gradient (dL/dX is None); "
                             f"layer 0 ({type(first).__name__}) must return dX when need_dX is True, or pass "
                             f"inputs=False to check the parameters only")
        grad_X = _host_gradient(backend, dX, tuple(X_d.shape), "the input gradient dL/dX")
        numeric = _kink_aware_slope(lambda x: value_at(backend.asarray(x)), backend.to_host(X_d), at, grad_X, eps)
        errors["input"] = _norm_relative_error(grad_X, numeric, noise)
        where["input"] = "the input gradient dL/dX"
        norms["input"] = float(_host.linalg.vector_norm(grad_X))
        if _below_resolution(grad_X, numeric, noise):
            unresolved.append("input")
    # a gradient at rounding level of the largest one is a zero (a bias before BatchNorm), not a vanished one
    zero = 16 * 2.0**-52 * max(norms.values(), default=0.0)
    unresolved = [k for k in unresolved if norms[k] > zero]
    if unresolved:
        # a vanished gradient (a deep sigmoid stack at init): a backward off by any factor there scores 0 too
        warnings.warn(f"check_gradients: the gradients of {', '.join(where[k] for k in unresolved)} are below what "
                      f"central differences resolve at this loss value ({at:.3g}: about {noise:.1g} per entry), "
                      f"so their error of 0 says nothing about their backward; check that layer where its "
                      f"gradient is larger (a shallower model, other weights or inputs)", RuntimeWarning,
                      stacklevel=2)
    worst = max(errors, key=lambda k: errors[k], default=None)
    if worst is None:
        return GradientCheck(0.0, errors, "nothing (the model has no parameters)")
    return GradientCheck(errors[worst], errors, where[worst], unresolved)


def _host_gradient(backend: Any, grad: Any, shape: tuple[int, ...], what: str) -> Any:
    """A gradient as a float64 host array: None as zeros (no gradient), a wrong shape refused naming `what`."""
    if grad is None:
        return _host.zeros(shape, dtype=_host.float64)
    got = tuple(grad.shape)
    if got != shape:
        raise ValueError(f"check_gradients: {what} has a gradient of shape {got}, expected {shape} "
                         f"(the shape of what it is the gradient of)")
    return _host.asarray(backend.to_host(grad), dtype=_host.float64)
