"""Input checks at the model's boundary: data on its backend, dtype and shape, and finite; its state and seed."""

from __future__ import annotations

import math
import numbers
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from ..backends import backend_name_of
from ..backends.names import article
from ..layers.parameter import in_model_dtype, require_built_shape
from ..protocols import Model


def all_true(model: Model, predicate: Callable[..., Any], *arrays: Any, **settings: Any) -> bool:
    """`predicate(xp, *arrays, **settings)`, a module-level function giving one boolean (a 0-d array) on the
    model's backend, read on the host: one call (one program on JAX, see `Backend.fused`) and one read."""
    check = model.backend.fused(predicate, tuple(settings))
    return bool(model.backend.to_host(check(*arrays, **settings)))


def all_finite(xp: Any, x: Any) -> Any:
    """Whether every element of `x` is finite (an `all_true` predicate)."""
    return xp.all(xp.isfinite(x))


def prepare_inputs(model: Model, X: Any, argname: str = "X") -> Any:
    """`X` on the model's backend in its dtype, checked against the model's sample shape (and a data frame's
    columns against those it was fit on)."""
    if model.feature_names_in_ is not None:
        require_fit_columns(model, X, argname)
    X = model.backend.asarray(X, dtype=model.dtype, argname=argname)
    flat = model.input_shape is not None and len(model.input_shape) == 1
    if X.ndim < 2 or (flat and X.ndim != 2):
        want = "2-D (samples, features)" if flat or model.input_shape is None \
            else f"shaped (samples, {', '.join(map(str, model.input_shape))})"
        raise ValueError(f"{argname} must be {want}, got shape {tuple(X.shape)}")
    if model.input_shape is not None and tuple(X.shape[1:]) != model.input_shape:
        if len(model.input_shape) == 1 and X.ndim == 2:
            raise ValueError(f"{argname} has {X.shape[1]} features but the model expects {model.input_shape[0]}")
        raise ValueError(f"{argname} has samples of shape {tuple(X.shape[1:])} but the model expects "
                         f"{model.input_shape}")
    return X


def column_names(X: Any) -> tuple[str, ...] | None:
    """The column names of a data frame (pandas, polars, ...); None for an array, or where a name is not a string
    (a frame with the default integer columns names nothing, as scikit-learn reads it)."""
    columns = getattr(X, "columns", None)
    if columns is None or isinstance(columns, str) or not hasattr(columns, "__iter__"):
        return None
    names = tuple(columns)
    return names if names and all(isinstance(name, str) for name in names) else None


def require_fit_columns(model: Model, X: Any, argname: str) -> None:
    """ValueError where `X` is a data frame whose column names are not those the model was fit on, in that order
    (``model.feature_names_in_``, as scikit-learn keeps them): its values are read by position, so columns in
    another order gave other numbers without a word. An array, or a frame without string names, passes."""
    names = model.feature_names_in_
    given = column_names(X)
    if names is None or given is None or given == names:
        return
    if sorted(given) == sorted(names):
        raise ValueError(f"{argname} has the columns the model was fit on in another order, {list(given)}; it was "
                         f"fit on {list(names)}, and columns are read by position: select them in that order "
                         f"(frame[{list(names)}])")
    unknown = [name for name in given if name not in names]
    missing = [name for name in names if name not in given]
    detail = f"columns {unknown} not among those" if unknown else f"no columns {missing} of those"
    raise ValueError(f"{argname} has {detail} the model was fit on, {list(names)}; columns are read by position")


def require_untraced(model: Model, what: str, *arrays: Any) -> None:
    """TypeError where data given to `what` (fit, predict, evaluate) is being traced (inside the user's own
    ``jax.jit``): these read their data on the host and compile programs of their own, and failed with the
    library's conversion error deep inside; the model's own call is what traced code runs."""
    for x in arrays:
        while isinstance(x, (list, tuple)) and x:  # batches, or (X, y) pairs: their first array tells
            x = x[0]
        if model.backend.is_traced(x):
            raise TypeError(f"{what} cannot run inside traced code (jax.jit, jax.grad, jax.vmap): it reads its data "
                            f"on the host and compiles its own programs; there, call the model itself, model(X) "
                            f"(model(X, training=True) for training mode), and a loss on its outputs")


def require_backend_state(model: Model, what: str) -> None:
    """TypeError naming the first parameter or buffer whose value is no array of the model's backend and device;
    one that is rebound to it as plain data (a torch tensor that requires grad: `Backend.as_data`).

    ``p.value = np.load(...)`` on a torch model, a list, or a tensor on a NumPy model failed deep inside a layer or
    the optimizer (torch even blamed "float32 and float32"). Once per call, never in a step: a type and device look
    per array, and its shape against the one its layer made it with (`require_built_shape`: a ValueError).
    """
    backend = model.backend
    placed: list[str] = []  # the device name the backend's own arrays report, read only where a name differs
    for kind, arrays in (("parameter", model.parameters()), ("buffer", model.buffers())):
        for a in arrays:
            value = a.value
            if not backend.owns(value):
                other = backend_name_of(value)
                got = f"{article(other)} array" if other else f"a {type(value).__name__}"
            elif not hasattr(value, "dtype") or (
                    hasattr(value, "device") and str(value.device) != str(backend.device)
                    and str(value.device) != _placed_device(backend, placed)):
                got = f"an array on device {value.device}"  # owns() holds: NumPy's arrays always have a dtype
            else:
                require_built_shape(kind, a, what)
                data = backend.as_data(value)
                if data is not value:  # read as data, as `asarray` reads what load_state_dict is given
                    a.value = data
                continue
            raise TypeError(f"{what}: {kind} {a.name!r} holds {got}, but the model runs on the {backend.spec} backend; "
                            f"{in_model_dtype(kind)}")


def require_own_outputs(model: Model, out: Any, what: str) -> None:
    """TypeError where the model's outputs `out` are no array of its backend: a layer computed with another library
    (``np.tanh`` where ``self.xp.tanh`` belongs), which left the backend without a word, and the error came later,
    in another's words (a loss blaming its arguments' order, a dtype comparison)."""
    if model.backend.owns(out):
        return
    other = backend_name_of(out)
    got = f"{article(other)} array" if other else f"a {type(out).__name__}"
    raise TypeError(f"{what}: the model's outputs are {got}, but the model runs on the {model.backend.spec} backend: "
                    "a layer's forward computes with another library (such as np.tanh where self.xp.tanh belongs); "
                    "write its math with self.xp")


def _placed_device(backend: Any, placed: list[str]) -> str:
    """The name of the device an array the backend makes reports, kept in `placed`: a device may be named otherwise
    than its arrays name it (torch's ``"cuda"``, ``"mps"`` or ``"cpu:0"`` put tensors on ``cuda:0``, ``mps:0``,
    ``cpu``), so the model's own arrays are compared with one it made, not with the name it was given."""
    if not placed:
        placed.append(str(getattr(backend.asarray(0.0), "device", backend.device)))
    return placed[0]


def require_finite(model: Model, arr: Any, argname: str, given: Any = None) -> None:
    """Raise ValueError naming `argname` when a float array holds NaN or inf.

    The array's sum is finite when every element is, unless finite elements overflow
    it, so one pass without a mask answers; a non-finite sum is confirmed element by
    element (the training step checks its gradients the same way). For a large X this
    is several times cheaper than ``all(isfinite(X))``, and `fit` checks X on every call.
    `given`, the data `arr` was cast from, tells an inf the cast made from a finite value
    beyond the model's dtype (read only then).
    """
    xp = model.xp
    if not xp.isdtype(arr.dtype, "real floating"):
        return
    if math.isfinite(float(model.backend.to_host(xp.sum(arr)))) or all_true(model, all_finite, arr):
        return
    if given is not None and _finite_before_the_cast(model, given, arr):
        raise ValueError(f"{argname} has values beyond the range of the model's dtype {model.dtype} "
                         f"(+-{float(xp.finfo(arr.dtype).max):.4g}), which overflow to inf in the cast; scale "
                         "them, or build the model with dtype=\"float64\"")
    raise ValueError(f"{argname} contains NaN or inf values")


def require_all_finite(model: Model, *checked: tuple[Any, str, Any]) -> None:
    """`require_finite` of each (array, argname, given) in turn, after one look at all of them whose sums are
    computed in one call (`Backend.sums_finite`: one program on JAX, where op by op each sum compiles for every
    new shape): only where a sum is not finite are the arrays looked at one by one."""
    if not model.backend.sums_finite([arr for arr, _, _ in checked]):
        for arr, argname, given in checked:
            require_finite(model, arr, argname, given)


def _finite_before_the_cast(model: Model, given: Any, arr: Any) -> bool:
    """Whether `given` is finite floating data of another dtype than `arr`, the model's cast of it."""
    xp = model.xp
    source = model.backend.asarray(given)
    return xp.isdtype(source.dtype, "real floating") and source.dtype != arr.dtype \
        and all_true(model, all_finite, source)


def state_values(model: Model, state: Mapping[str, Any], targets: Mapping[str, Any]) -> dict[str, Any]:
    """The arrays of a state dict on the model's backend, each checked against its target's shape and for NaN/inf."""
    new_values = {}
    for name, target in targets.items():
        value = model.backend.asarray(state[name], dtype=model.dtype, argname=f"state_dict[{name!r}]", copy=True)
        if tuple(value.shape) != target.shape:
            # the names are torch's, the layout of a weight is not
            transposed = value.ndim == 2 and tuple(value.shape[::-1]) == target.shape
            hint = (": its transpose (torch.nn.Linear keeps (out_features, in_features), nnx.Dense "
                    "(in_features, out_features))") if transposed else ""
            raise ValueError(f"state_dict[{name!r}] has shape {tuple(value.shape)}, the model expects "
                             f"{target.shape}{hint}")
        # NaN weights would make every output NaN; the given array tells an inf the cast made
        model.require_finite(value, f"state_dict[{name!r}]", state[name])
        new_values[name] = value
    return new_values


def sample_shape(shape: Any) -> tuple[int, ...]:
    """`input_shape` (an int or a tuple of sizes > 0) as the shape of one sample, else TypeError/ValueError."""
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"input_shape must be a tuple of ints (one sample's shape), got {shape!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of sizes > 0, got {shape}")
    return shape


def model_seed(seed: int | None) -> int:
    """The model's seed: `seed` checked (an int in [0, 2**63)), or a fresh random one for None."""
    # torch and JAX seed their device generators with a signed 64-bit int
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                             or not 0 <= seed < 2**63):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r} (below 2**63 for torch and JAX)")
    return secrets.randbits(32) if seed is None else int(seed)
