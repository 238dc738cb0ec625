"""Loss functions: a value and the gradient of exactly that value w.r.t. the predictions.

A loss is the mean of per-row losses ``l_i`` (one row per sample). Every loss is
written once, as `Loss.rows` (the row losses and the gradient of their mean); the
base class derives the value, the gradient, `Loss.per_sample` and both weighted
reductions from it. Built-in losses average over all elements (PyTorch's
``reduction="mean"``: row i's loss is the mean over its elements), except
`CrossEntropy`, whose row loss is the row's cross-entropy (the mean over samples,
like ``torch.nn.CrossEntropyLoss``).

Per-row weights follow Keras (``reduction="sum_over_batch_size"``): with
``sample_weight=w`` the value is ``sum_i w_i * l_i / n``, where ``n`` is the
number of rows, so ``w = 1`` gives the unweighted mean.
``reduction="mean_with_sample_weight"`` (also Keras's name) divides by ``sum(w)``
instead, per call: what scikit-learn means by sample weights, where a weight of 2
is the row repeated in every batch it lands in (`fit` and `evaluate` combine
batches by their sums of weights then, which gives one call's value over all the
rows). Without weights the two reductions are the same mean.

Checking inputs comes in two parts. Shapes and dtypes are metadata, so they are
always checked (a ``(n,)`` target against ``(n, 1)`` predictions is reshaped,
never broadcast to ``(n, n)``). Checks that read values (class indices in range,
BCE targets in [0, 1]) make the host wait for the device, so they run only when
``check=True``, the default; a training loop validates once and then passes
``check=False``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, cast

import array_api_compat

from . import _validate as check
from .backends import backend_name_of, get_backend, loaded_namespace
from .backends.names import article, in_other_byte_order, is_host_subclass
from .registry import (
    CONFIG_KEY,
    Registry,
    config_repr,
    config_type,
    json_arguments,
    live_arguments,
    recording_init,
    register,
)

LOSSES = Registry(
    "loss",
    "A subclass of nnx.losses.Loss registers itself under its class name (or the `name=` of its class "
    "statement) when its module is imported: import that module before loading.",
)
"""Name (any case) -> `Loss` class or factory; every subclass adds itself when defined, aliases follow."""

__all__ = [
    "LOSSES",
    "REDUCTIONS",
    "MAE",
    "MSE",
    "BinaryCrossEntropy",
    "CrossEntropy",
    "Loss",
    "get_loss",
    "row_mean",
]


REDUCTIONS = ("sum_over_batch_size", "mean_with_sample_weight")
"""How weighted row losses are averaged: divided by the number of rows, or by the sum of the weights."""

# The extension hooks of nnx 0.2; a subclass that still defines one would be silently ignored.
_REMOVED_HOOKS = ("_prepare", "_compute", "_rows")


def row_mean(xp: Any, elementwise: Any) -> Any:
    """Mean over every axis but the first, ``(n, ...) -> (n,)``: the row losses of an elementwise loss."""
    if elementwise.ndim == 1:
        return elementwise
    n = elementwise.shape[0]
    if math.prod(elementwise.shape[1:]) == 1:
        return xp.reshape(elementwise, (n,))  # one element per row (a single output): no reduction needed
    return xp.mean(xp.reshape(elementwise, (n, -1)), axis=1)


def _clip_eps(xp: Any, dtype: Any) -> float:
    # Per-dtype clipping bound for probabilities: large enough that 1 - eps is
    # still below 1 in `dtype` (so log(1 - p) and 1 / (p (1 - p)) stay finite),
    # small enough not to bias the loss: 1.19e-7 in float32, 1e-15 in float64.
    return max(float(xp.finfo(dtype).eps), 1e-15)


def _refuse_swapped(y_true: Any, y_pred: Any) -> None:
    """TypeError when y_true is an array of another library than y_pred's, and not NumPy's (which a loss moves):
    with y_pred a NumPy array, most often a model's output passed first, in torch's ``loss(input, target)`` order.
    The backend's own message blamed a model that "runs on" y_pred's backend, which no model in the call does."""
    other = backend_name_of(y_true) if array_api_compat.is_array_api_obj(y_true) else None
    mine = backend_name_of(y_pred) or "numpy"  # (y_pred is an array: checked before)
    if other is None or other == "numpy" or other == mine:
        return
    if mine != "numpy":
        raise TypeError(f"y_true is {article(other)} array but y_pred is {article(mine)} array: a loss computes on "
                        f"y_pred's library, and takes y_true from it or as a NumPy array; pass y_true as "
                        f"{article(mine)} array")
    raise TypeError(f"y_true is {article(other)} array but y_pred is a NumPy array: a loss is called as "
                    f"loss(y_true, y_pred), the model's output second (Keras's order; torch's loss(input, target) "
                    f"is the reverse). Otherwise a loss computes on y_pred's backend: pass both as NumPy arrays, "
                    f"or y_pred as {article(other)} array")


def _normalized(xp: Any, w: Any, n: int) -> Any:
    """``w * n / sum(w)``, so that ``sum(w l) / n`` is ``sum(w l) / sum(w)``; 0 where every weight is 0 (as Keras).

    The weights are divided by their largest first: their sum then lies in [1, n], so neither it nor
    ``n / sum`` overflows, whatever the weights' size. Both are first scaled (exactly) by a power of two
    that brings the largest near 1, as a compiler may divide through a reciprocal (XLA on a CPU), which
    for a divisor above 2**126 in float32 lies below the normal numbers and is flushed to 0.
    """
    largest = xp.max(w)
    scale = 2.0**-64 * xp.astype(largest > 1, w.dtype) + 2.0**64 * xp.astype(largest <= 1, w.dtype)
    largest = largest * scale
    w = w * scale / (largest + xp.astype(largest == 0, largest.dtype))
    total = xp.sum(w)
    return w * (n / (total + xp.astype(total == 0, total.dtype)))


def _host_all(y_pred: Any, flag: Any) -> bool:
    # The one place a built-in loss waits for the device; only reached when check=True.
    return bool(get_backend(y_pred).to_host(flag))


class Loss:
    """Base class: ``loss(y_true, y_pred)`` is a 0-d array, ``loss.gradient`` its gradient w.r.t. ``y_pred``.

    A loss is written with two public methods, and the base class derives
    everything else (``__call__``, `gradient`, `value_and_grad`, `per_sample`,
    ``sample_weight`` and both reductions) from them:

    - `rows` (required) returns ``(l, g)``: ``l`` of shape ``(n,)``, row i's loss,
      which depends on row i of ``y_pred`` only; and ``g``, shaped like ``y_pred``,
      the gradient of the *mean* ``sum(l) / n`` w.r.t. ``y_pred``. The value is
      ``sum(l) / n`` with gradient ``g``; with weights it is ``sum(w * l) / n``
      with gradient ``g`` scaled row by row by ``w``.
    - `prepare` (optional) validates ``y_true`` and brings it to the form `rows`
      needs; the default asks for ``y_pred``'s shape and casts to its dtype.

    ``rows`` always forms both results, so a value-only call (``loss(...)``,
    `per_sample`) also pays for the gradient's few elementwise operations (a
    compiled step drops them).

    A loss remembers the arguments it was constructed with, as a layer does, so a
    loss with constructor arguments is saved and rebuilt by `get_loss` with no
    code of its own, as long as they are JSON values.

    Args:
        reduction: ``"sum_over_batch_size"`` (weighted row losses summed, divided by
            the number of rows) or ``"mean_with_sample_weight"`` (divided by the sum
            of the weights); the same without weights.
    """

    name = "Loss"
    """The name the class is registered and saved under (`nnx.registry`): its class name, or ``name=``."""
    reduction = "sum_over_batch_size"  # the default also for subclasses whose __init__ skips ours

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = recording_init(cls.__init__)  # type: ignore[method-assign]
        # a `name = "..."` in the class body (how losses were named before ``name=``) still counts
        register(LOSSES, cls, name if name is not None else cls.__dict__.get("name"), "name")

    def __new__(cls, *args: Any, **kwargs: Any):  # no return annotation: inferred as the subclass itself
        # Checked when a loss is made, not when its class is defined, so that a module holding an old
        # loss still imports and only the code that uses it fails.
        removed = [name for name in _REMOVED_HOOKS if any(name in k.__dict__ for k in cls.__mro__)]
        if removed:
            raise TypeError(
                f"{cls.__name__} defines {', '.join(removed)}, which nnx no longer calls: write the loss as "
                "rows(xp, y_true, y_pred) -> (per-row losses (n,), gradient of their mean w.r.t. y_pred) and, "
                "where targets need validating or encoding, prepare(xp, y_true, y_pred, check) -> y_true"
            )
        return super().__new__(cls)

    @recording_init
    def __init__(self, reduction: str = "sum_over_batch_size") -> None:
        self.reduction = check.one_of("reduction", reduction, REDUCTIONS)

    # -- the extension API ----------------------------------------------------
    def rows(self, xp: Any, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        """``(l, g)``: row losses of shape ``(n,)`` and the gradient of ``sum(l) / n`` w.r.t. ``y_pred``.

        ``y_true`` is what `prepare` returned; ``y_pred`` has at least one axis and
        a real floating dtype. Both results must be in ``y_pred``'s dtype.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement rows(xp, y_true, y_pred) returning the (n,) per-row losses "
            "(whose mean is the loss) and the gradient of that mean w.r.t. y_pred"
        )

    def prepare(self, xp: Any, y_true: Any, y_pred: Any, check: bool) -> Any:
        """``y_true`` as `rows` needs it: here reshaped to ``y_pred``'s shape and cast to its dtype, or ValueError.

        Only the ``(n,)`` against ``(n, 1)`` case is reshaped (broadcasting it would
        silently give an ``(n, n)`` loss). An override checks shapes and dtypes
        always, and values (which makes the host wait for the device) only when
        ``check`` is True.
        """
        t_shape, p_shape = tuple(y_true.shape), tuple(y_pred.shape)
        if t_shape != p_shape:
            n = p_shape[0]
            if {t_shape, p_shape} == {(n,), (n, 1)}:
                y_true = xp.reshape(y_true, p_shape)
            else:
                raise ValueError(
                    f"y_true and y_pred must have the same shape, got y_true {t_shape} and y_pred {p_shape}"
                )
        if y_true.dtype != y_pred.dtype:
            y_true = xp.astype(y_true, y_pred.dtype)
        return y_true

    # -- what the base class derives from them ---------------------------------
    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None, *, check: bool = True) -> Any:
        """The mean loss (or ``sum_i w_i l_i / n`` with ``sample_weight``), a 0-d array on ``y_pred``'s device."""
        return self._reduce(*self._inputs(y_true, y_pred, check, sample_weight))[0]

    def gradient(self, y_true: Any, y_pred: Any, sample_weight: Any = None, *, check: bool = True) -> Any:
        """Gradient of ``self(y_true, y_pred, sample_weight)`` w.r.t. ``y_pred``, shaped like ``y_pred``."""
        return self._reduce(*self._inputs(y_true, y_pred, check, sample_weight))[1]

    def value_and_grad(self, y_true: Any, y_pred: Any, sample_weight: Any = None, *,
                       check: bool = True) -> tuple[Any, Any]:
        """``(value, gradient)`` in one pass, sharing the work the two have in common."""
        return self._reduce(*self._inputs(y_true, y_pred, check, sample_weight))

    def value_and_grad_prepared(self, xp: Any, y_true: Any, y_pred: Any, sample_weight: Any = None) -> tuple[Any, Any]:
        """`value_and_grad` for inputs a caller already checked: the training step's path.

        ``y_true`` and ``y_pred`` are arrays of namespace `xp` on one device, ``y_pred``
        real floating with a row axis, and ``sample_weight`` None or ``(n,)`` in
        ``y_pred``'s dtype. Only `prepare`'s shape and dtype alignment runs (without
        value checks), not the input checks that cost a small network's step as much
        as its arithmetic.
        """
        return self._reduce(xp, self.prepare(xp, y_true, y_pred, False), y_pred, sample_weight)

    def check_inputs(self, y_true: Any, y_pred: Any, sample_weight: Any = None, *, check: bool = True) -> None:
        """Raise as `value_and_grad` would for these inputs (types, dtypes, shapes; values with `check`), without
        computing the loss: a training step whose outputs were computed otherwise checks a fit's first batch so."""
        self._inputs(y_true, y_pred, check, sample_weight)

    def per_sample(self, y_true: Any, y_pred: Any, *, check: bool = True) -> Any:
        """Row i's loss l_i for every row, shape ``(n,)``; the loss's value is their mean."""
        xp, y_true, y_pred, _ = self._inputs(y_true, y_pred, check, None)
        return self._rows_checked(xp, y_true, y_pred)[0]

    def get_config(self) -> dict[str, Any]:
        """The registered name under ``"type"`` beside the constructor arguments; ``get_loss(config)`` rebuilds it.

        The arguments are those the loss was constructed with, each as the attribute of the
        same name stands (``loss.delta = 0.1`` after construction is saved, and JAX's compiled
        step, keyed by the config, trains with it); override this when one of them is not a
        JSON value. ``reduction`` is written only when it is not the default, so configs and
        files from before stay as they were.
        """
        args = live_arguments(self)
        if "reduction" in args:
            del args["reduction"]
            if self.reduction != "sum_over_batch_size":
                args["reduction"] = self.reduction
        fix = "override get_config() to write it as JSON values the constructor takes back"
        return {CONFIG_KEY: self.name, **json_arguments(self, "loss", args, fix)}

    def __repr__(self) -> str:
        return config_repr(self)

    # -- shared plumbing ----------------------------------------------------
    def _reduce(self, xp: Any, y_true: Any, y_pred: Any, w: Any) -> tuple[Any, Any]:
        # value = sum_i w_i l_i / n. `rows` gives the gradient of mean_i l_i, so the
        # weighted gradient is that one with row i scaled by w_i: no second formula.
        n = y_pred.shape[0]
        rows, g = self._rows_checked(xp, y_true, y_pred)
        if w is None:
            return xp.sum(rows) / n, g
        if self.reduction == "mean_with_sample_weight":
            w = _normalized(xp, w, n)
        return xp.sum(w * rows) / n, g * xp.reshape(w, (n,) + (1,) * (y_pred.ndim - 1))

    def _rows_checked(self, xp: Any, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        rows, g = self.rows(xp, y_true, y_pred)
        # metadata only: a wrong shape would broadcast in the reductions, a wrong dtype promote a float32 model
        if rows.shape != (y_pred.shape[0],) or g.shape != y_pred.shape:
            raise ValueError(
                f"{type(self).__name__}.rows must return row losses of shape ({y_pred.shape[0]},) and a gradient "
                f"of y_pred's shape {tuple(y_pred.shape)}, got {tuple(rows.shape)} and {tuple(g.shape)}"
            )
        if rows.dtype != y_pred.dtype or g.dtype != y_pred.dtype:
            raise TypeError(
                f"{type(self).__name__}.rows must return arrays of y_pred's dtype {y_pred.dtype}, "
                f"got {rows.dtype} and {g.dtype}"
            )
        return rows, g

    def _inputs(self, y_true: Any, y_pred: Any, check: bool, sample_weight: Any) -> tuple[Any, Any, Any, Any]:
        if is_host_subclass(y_pred) or in_other_byte_order(y_pred):
            # NumPy's masked operators skip masked entries (a mean of the rest), a matrix's * multiplies matrices
            # (and array_api_compat counts no matrix an array): read as a plain array, which refuses masked
            # entries by name. A big-endian y_pred (``>f8``) is read in the native order: the loss's rows come
            # out native, and the dtype check on them blamed the loss ("rows must return >f8, got float64")
            y_pred = get_backend("numpy").asarray(y_pred, argname="y_pred")
        if not array_api_compat.is_array_api_obj(y_pred):
            raise TypeError(f"y_pred must be an array, got {type(y_pred).__name__}")
        # the loaded backend adapter's namespace, as the training step's later batches use: array_api_compat's
        # torch `maximum(x, 0)` copies the 0 from host memory, which torch:cuda waits for (seen on an H200)
        xp = loaded_namespace(y_pred)
        y_pred = cast(Any, y_pred)  # is_array_api_obj narrowed it to a protocol without dtype and shape
        if not xp.isdtype(y_pred.dtype, "real floating"):
            raise TypeError(f"y_pred must have a real floating dtype, got {y_pred.dtype}")
        if y_pred.ndim == 0:
            raise ValueError("a loss needs y_pred with a leading row axis (one row per sample), got a 0-d y_pred")
        if (
            not array_api_compat.is_array_api_obj(y_true)
            or is_host_subclass(y_true)  # masked (its entries skipped, as y_pred's) or a matrix: as y_pred above
            or backend_name_of(y_true) != backend_name_of(y_pred)
            or str(array_api_compat.device(y_true)) != str(array_api_compat.device(y_pred))
        ):
            # NumPy arrays, lists and scalars are moved to y_pred's backend and
            # device; an array of another non-NumPy library raises TypeError.
            _refuse_swapped(y_true, y_pred)
            y_true = get_backend(y_pred).asarray(y_true, argname="y_true")
        y_true = cast(Any, y_true)
        if not xp.isdtype(y_true.dtype, ("bool", "integral", "real floating")):
            raise TypeError(f"y_true must hold real numbers, got dtype {y_true.dtype}")
        if math.prod(y_pred.shape) == 0:
            # the mean over no elements is 0/0: refuse rather than return NaN (or divide by zero)
            raise ValueError(f"y_pred is empty (shape {tuple(y_pred.shape)}); a loss needs at least one element")
        y_true = self.prepare(xp, y_true, y_pred, check)
        w = None if sample_weight is None else self._sample_weight(xp, sample_weight, y_pred, check)
        return xp, y_true, y_pred, w

    def _sample_weight(self, xp: Any, sample_weight: Any, y_pred: Any, check: bool) -> Any:
        """``sample_weight`` as an ``(n,)`` array in ``y_pred``'s dtype on its device, or ValueError/TypeError."""
        if isinstance(sample_weight, (bool, str)):
            # loss(y, p, False) from code written before sample_weight existed, or a typo
            raise TypeError(f"sample_weight must be an array of shape (n,) or None, got {sample_weight!r}"
                            " (check is keyword-only: check=False)")
        w = get_backend(y_pred).asarray(sample_weight, argname="sample_weight")
        if not xp.isdtype(w.dtype, ("bool", "integral", "real floating")):  # a bool mask weighs rows 1 or 0, as in fit
            raise TypeError(f"sample_weight must hold real numbers, got dtype {w.dtype}")
        n = y_pred.shape[0]
        if tuple(w.shape) != (n,):
            raise ValueError(
                f"sample_weight must have shape ({n},), one weight per row of y_pred {tuple(y_pred.shape)}, "
                f"got shape {tuple(w.shape)}"
            )
        if w.dtype != y_pred.dtype:
            w = xp.astype(w, y_pred.dtype)
        if check and not _host_all(y_pred, xp.all(xp.isfinite(w) & (w >= 0))):
            if not _host_all(y_pred, xp.all(xp.isfinite(w))):
                raise ValueError("sample_weight must be finite, got NaN or infinite weights")
            raise ValueError("sample_weight must be non-negative, got negative weights")
        return w


class MSE(Loss):
    """Mean squared error, mean((y_pred - y_true)**2) over all elements.

    Args:
        reduction: how ``sample_weight`` is averaged (see the module docstring).
    """

    def rows(self, xp: Any, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        """Row means of the squared differences, and ``2 (y_pred - y_true) / size``."""
        diff = y_pred - y_true
        return row_mean(xp, diff * diff), diff * (2 / math.prod(y_pred.shape))


class MAE(Loss):
    """Mean absolute error, mean(|y_pred - y_true|); its gradient uses sign(0) = 0.

    Args:
        reduction: how ``sample_weight`` is averaged (see the module docstring).
    """

    def rows(self, xp: Any, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        """Row means of the absolute differences, and ``sign(y_pred - y_true) / size``."""
        diff = y_pred - y_true
        return row_mean(xp, xp.abs(diff)), xp.sign(diff) * (1 / math.prod(y_pred.shape))


class BinaryCrossEntropy(Loss):
    """Binary cross-entropy, averaged over all elements.

    Args:
        from_logits: ``y_pred`` holds logits z (the stable form
            ``max(z, 0) - y z + log1p(exp(-|z|))`` is used, exact at extreme
            logits) instead of probabilities p. Probabilities are clipped to
            ``[eps, 1 - eps]`` with a per-dtype eps (1.19e-7 in float32, 1e-15
            in float64), so p exactly 0 or 1 gives a finite loss and gradient;
            the gradient is that of the formula at the clipped p, so a saturated
            prediction is still pushed back. (torch's ``binary_cross_entropy``
            clamps the log at -100 instead: a wrong p of exactly 0 or 1 costs 100
            there, -log(eps) here, about 15.9 in float32 and 34.5 in float64.)
        reduction: how ``sample_weight`` is averaged (see the module docstring).

    ``y_true`` holds targets in [0, 1] (soft labels allowed), shaped like ``y_pred``.
    """

    def __init__(self, from_logits: bool = False, reduction: str = "sum_over_batch_size") -> None:
        super().__init__(reduction)
        self.from_logits = check.flag("from_logits", from_logits)

    def prepare(self, xp: Any, y_true: Any, y_pred: Any, check: bool) -> Any:
        """``y_true`` shaped like ``y_pred`` in its dtype; with ``check``, ValueError unless it lies in [0, 1].

        Probabilities (``from_logits=False``) outside [0, 1] are refused too, as torch's
        ``binary_cross_entropy`` refuses them: clipped, 1.5 or inf would give a finite, meaningless loss.
        NaN predictions are left to propagate.
        """
        y_true = super().prepare(xp, y_true, y_pred, check)
        if check and not _host_all(y_pred, xp.all((y_true >= 0) & (y_true <= 1))):
            raise ValueError("y_true for binary cross-entropy must lie in [0, 1] (and not be NaN)")
        if check and not self.from_logits and _host_all(y_pred, xp.any((y_pred < 0) | (y_pred > 1))):
            raise ValueError("y_pred for binary cross-entropy with from_logits=False holds probabilities, which "
                             "must lie in [0, 1]; got values outside it (pass from_logits=True for logits)")
        return y_true

    def rows(self, xp: Any, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        """Row means of the elementwise cross-entropy, and its gradient divided by the number of elements."""
        scale = 1 / math.prod(y_pred.shape)
        if self.from_logits:
            # softplus(z) - y z and sigmoid(z) - y, sharing exp(-|z|): it lies in (0, 1], so nothing overflows.
            # max(z, 0) - y z is taken before log1p(e) is added: it is exactly 0 for a right hard label, so a
            # confident right prediction's loss is log1p(e) to a few ulps instead of the rounding left after
            # adding it to |z| and taking |z| off again
            e = xp.exp(-xp.abs(y_pred))
            rows = row_mean(xp, (xp.maximum(y_pred, 0) - y_true * y_pred) + xp.log1p(e))
            # the array API has no sigmoid; a namespace that has one (torch's) rounds it once, in one call
            sigmoid = getattr(xp, "sigmoid", None)
            probability = xp.where(y_pred >= 0, 1.0, e) / (1 + e) if sigmoid is None else sigmoid(y_pred)
            return rows, (probability - y_true) * scale
        eps = _clip_eps(xp, y_pred.dtype)
        p = xp.clip(y_pred, eps, 1 - eps)
        one_minus_p = 1 - p
        rows = -row_mean(xp, y_true * xp.log(p) + (1 - y_true) * xp.log(one_minus_p))
        return rows, (p - y_true) / (p * one_minus_p) * scale


class CrossEntropy(Loss):
    """Categorical cross-entropy for ``(batch, classes)`` predictions, averaged over samples.

    Args:
        from_logits: ``y_pred`` holds logits (a stable log-softmax is used; the
            default, like ``torch.nn.CrossEntropyLoss``) instead of probabilities,
            which are clipped below at a per-dtype eps before the log; as in
            `BinaryCrossEntropy`, the gradient is that of the formula at the
            clipped p (``-t / (n eps)`` for n rows), not the 0 of the flat clipped value,
            so a probability of exactly 0 for the true class is still pushed up.
        reduction: how ``sample_weight`` is averaged (see the module docstring).

    ``y_true`` is either integer class indices of shape ``(batch,)`` (or
    ``(batch, 1)``; float dtypes holding whole numbers are accepted too), or
    one-hot / probability rows of shape ``(batch, classes)``.
    """

    def __init__(self, from_logits: bool = True, reduction: str = "sum_over_batch_size") -> None:
        super().__init__(reduction)
        self.from_logits = check.flag("from_logits", from_logits)

    def prepare(self, xp: Any, y_true: Any, y_pred: Any, check: bool) -> Any:
        """``y_true`` as rows of ``y_pred``'s shape and dtype; class indices become one-hot rows (boolean from
        logits, which `rows` selects with).

        With ``check`` and ``from_logits=False``, negative predictions are refused (not probabilities).
        """
        p_shape, t_shape = tuple(y_pred.shape), tuple(y_true.shape)
        if len(p_shape) != 2:
            raise ValueError(f"y_pred for cross-entropy must be 2-D (batch, classes), got shape {p_shape}")
        if check and not self.from_logits and _host_all(y_pred, xp.any(y_pred < 0)):
            # above 1 is accepted (Dropout after Softmax in training); below 0 was clipped to eps without a word
            raise ValueError("y_pred for cross-entropy with from_logits=False holds probabilities, which must be "
                             ">= 0; got negative values (pass from_logits=True for logits)")
        n, n_classes = p_shape
        if t_shape == p_shape:
            y_true = y_true if y_true.dtype == y_pred.dtype else xp.astype(y_true, y_pred.dtype)
            # a negative entry makes the loss unbounded below (entries above 1 only weight a row)
            if check and not _host_all(y_pred, xp.all(y_true >= 0)):
                raise ValueError("y_true for cross-entropy must be class indices, or one-hot or probability rows "
                                 "with entries >= 0 (and not NaN): a negative entry makes the loss unbounded below")
            return y_true
        if t_shape == (n, 1):
            y_true = xp.reshape(y_true, (n,))
        elif t_shape != (n,):
            raise ValueError(
                f"y_true for cross-entropy must be class indices of shape ({n},) or one-hot rows of shape "
                f"{p_shape}, got y_true {t_shape} and y_pred {p_shape}"
            )
        integer = xp.isdtype(y_true.dtype, "integral")
        if not (integer or xp.isdtype(y_true.dtype, "real floating")):
            raise ValueError(f"y_true class indices must be integers, got dtype {y_true.dtype}")
        if integer and y_true.dtype != xp.int64:
            # before comparing with the class count and an arange of the classes: in uint8, class 261 of 300
            # wraps onto 5 (a second 1 in the one-hot row); a uint64 index beyond int64 turns negative, refused
            y_true = xp.astype(y_true, xp.int64)
        if check:
            in_range = (y_true >= 0) & (y_true < n_classes)
            whole = in_range if integer else in_range & (xp.floor(y_true) == y_true)
            if not _host_all(y_pred, xp.all(whole)):
                # Failure path only: a second look to say which rule was broken.
                if not integer and _host_all(y_pred, xp.any(xp.isnan(y_true))):
                    raise ValueError("y_true class indices hold NaN: every row needs a class")
                if not _host_all(y_pred, xp.all(in_range)):
                    raise ValueError(
                        f"y_true class indices must lie in [0, {n_classes}) for y_pred with {n_classes} classes"
                    )
                raise ValueError("y_true class indices must be integers, got non-integer values")
        if not integer:
            y_true = xp.astype(y_true, xp.int64)
        classes = xp.arange(n_classes, dtype=y_true.dtype, device=array_api_compat.device(y_pred))
        # One-hot by comparison: portable (no scatter, no in-place writes). From logits, `rows` selects with the
        # boolean rows as they are, which spares a conversion and the soft targets' arithmetic every step
        one_hot = y_true[:, None] == classes
        return one_hot if self.from_logits else xp.astype(one_hot, y_pred.dtype)

    def rows(self, xp: Any, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        """Each row's cross-entropy, and its gradient divided by the number of rows."""
        scale = 1 / y_pred.shape[0]
        if self.from_logits:
            # log_softmax and softmax (nnx.activations' formulas) share the shifted exponentials
            z = y_pred - xp.max(y_pred, axis=1, keepdims=True)
            e = xp.exp(z)
            e_sum = xp.sum(e, axis=1, keepdims=True)  # >= 1, since the shifted maximum is 0: its log is finite
            if y_true.dtype == xp.bool:
                # one-hot rows of class indices (`prepare`): the soft targets' numbers, bit for bit (a certain row's
                # loss is -0.0, as torch's), in fewer operations, and a class masked by a -inf logit is never read
                p = e / e_sum
                rows = -(xp.sum(xp.where(y_true, z, 0.0), axis=1) - xp.log(e_sum)[:, 0])
                return rows, xp.where(y_true, p - 1, p) * scale
            # a class masked by a -inf logit adds 0 where its target is 0 (as torch's class-index loss), not 0 * -inf
            rows = -xp.sum(y_true * xp.where(y_true == 0, 0.0, z - xp.log(e_sum)), axis=1)
            # Rows of soft targets need not sum to 1; the general gradient is
            # softmax * sum(t) - t, which is softmax - t for one-hot rows.
            total = xp.sum(y_true, axis=1, keepdims=True)
            return rows, (e / e_sum * total - y_true) * scale
        # clipped below only: Dropout after a Softmax scales probabilities above 1 in training, and the
        # loss reads those as they are, with the gradient of exactly that value
        p = xp.maximum(y_pred, _clip_eps(xp, y_pred.dtype))
        return -xp.sum(y_true * xp.log(p), axis=1), -(y_true / p) * scale


_ALIASES: dict[str, Callable[..., Loss]] = {
    "mean_squared_error": MSE,
    "mean_absolute_error": MAE,
    "bce": BinaryCrossEntropy,
    "binary_crossentropy": BinaryCrossEntropy,
    "binary_cross_entropy": BinaryCrossEntropy,
    "bce_with_logits": functools.partial(BinaryCrossEntropy, from_logits=True),
    "cross_entropy": CrossEntropy,
    "ce": CrossEntropy,
    # Keras's names keep Keras's default, probabilities (`fit` reads a model's logits by them all the same)
    "categorical_crossentropy": functools.partial(CrossEntropy, from_logits=False),
    "sparse_categorical_crossentropy": functools.partial(CrossEntropy, from_logits=False),
}
for _alias, _factory in _ALIASES.items():
    LOSSES.add(_alias, _factory)


def get_loss(spec: Any) -> Loss:
    """A `Loss` from an instance (returned as is), a `Loss` subclass, a name in `LOSSES` or a `get_config` dict."""
    if isinstance(spec, Loss):
        return spec
    if isinstance(spec, type) and issubclass(spec, Loss):
        return spec()
    if isinstance(spec, dict):
        return _by_name(*config_type(spec, "loss"))
    if isinstance(spec, str):
        return _by_name(spec, {})
    raise TypeError(f"loss must be a Loss, a Loss class, a name or a config dict, got {type(spec).__name__}")


def _by_name(name: str, kwargs: dict[str, Any]) -> Loss:
    return LOSSES.lookup(name)(**kwargs)
