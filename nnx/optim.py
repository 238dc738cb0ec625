"""Optimizers in PyTorch style outside, one pure rule inside.

Each optimizer is a pure function, its whole extension API:

    init_state(xp, value) -> dict of arrays shaped like value
    update(xp, value, grad, state, step, lr) -> (new value, new state)

`step` counts a parameter's updates from 1 and `lr` is the current learning rate;
under a compiler both may be traced arrays, so a rule does arithmetic on them and
never branches on them (branching on its own hyper-parameters is fine). A rule
never mutates its inputs, and returns arrays of the dtypes and shapes it was given
(`check_rule_result`: `step` every time, the flat update once its buffers are laid out, a compiler at
each trace). `Optimizer.step`, `state_dict`, schedules, the divergence
rollback, the flat-buffer and compiled executions of `nnx.training` and the sharded
update across ranks are all ordinary callers of `update`. A rule that declares
``elementwise = True`` (each output element reads only the same element of its
inputs) may be applied to any slice of the parameters, e.g. their concatenation.

The built-in rules are the update rules `torch.optim` documents, except the tutorial's `Momentum`
(``v = mu*v - lr*g``, which torch's momentum SGD matches only while the rate is constant) and Lion
(which torch lacks), written with the public API only, as a user's optimizer would be.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import warnings
from collections.abc import Iterable, Iterator
from copy import deepcopy
from typing import Any

import array_api_compat

from . import _validate as check
from ._slots import slot_values
from .backends import Backend, dtype_name, get_backend
from .registry import CONFIG_KEY, Registry, lookup_key, register

OPTIMIZERS = Registry(
    "optimizer",
    "A subclass of nnx.optim.Optimizer registers itself under its class name (or the `name=` of its class "
    "statement) when its module is imported: import that module before loading.",
)
"""Name (any case) -> optimizer class; every `Optimizer` subclass adds itself when defined."""

__all__ = [
    "Optimizer",
    "SGD",
    "Momentum",
    "Adam",
    "AdamW",
    "RMSprop",
    "Adagrad",
    "Lion",
    "OPTIMIZERS",
    "get_optimizer",
    "check_rule_result",
]


# -- argument checks (the shared ones are in nnx._validate) ---------------------

def _betas(value: Any) -> tuple[float, float]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"betas must be a pair of numbers, got {value!r}")
    pair = tuple(value)
    if len(pair) != 2:
        raise ValueError(f"betas must be a pair of numbers, got {len(pair)} values: {value!r}")
    return (check.probability("betas[0]", pair[0]), check.probability("betas[1]", pair[1]))


def _param_list(params: Iterable[Any]) -> list[Any]:
    if isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
        raise TypeError(f"params must be an iterable of Parameter, got {type(params).__name__}")
    params = list(params)
    if not params:
        raise ValueError("params is empty: the optimizer needs at least one Parameter")
    seen = set()
    for i, p in enumerate(params):
        if not (hasattr(p, "value") and hasattr(p, "grad")):
            raise TypeError(f"params[{i}] must be a Parameter (with .value and .grad), got {type(p).__name__}")
        if id(p) in seen:
            raise ValueError(f"params[{i}] ({getattr(p, 'name', '?')!r}) appears more than once")
        seen.add(id(p))
    return params


def _copy(x: Any) -> Any:
    """A fresh array equal to `x`, so that later in-place updates cannot reach the caller's array."""
    return array_api_compat.array_namespace(x).asarray(x, copy=True)


# what an optimizer keeps beside its settings: parameters, their state, update counts, caches and the rate
# (an argument of the rule), and a schedule's base rate
_BOOKKEEPING = frozenset({"params", "state", "step_count", "param_steps", "_xps", "_hyper_names", "_lr", "_traced_lr",
                          "initial_lr", "scheduled_lr"})


# -- base class ------------------------------------------------------------------

class Optimizer:
    """Base class: the parameters, the hyper-parameters and per-parameter state, updated by one pure rule.

    Args:
        params: the `Parameter` objects to update (e.g. ``model.parameters()``).
        lr: learning rate, a finite number > 0; stored in the mutable attribute `lr`.
        **hyperparams: the subclass's other hyper-parameters, stored as attributes of the same names.

    Subclasses implement `init_state` and `update` (see the module docstring) and set
    `elementwise`. ``state[i]`` holds parameter i's state dict and ``param_steps[i]``
    how often it was updated (a parameter skipped for lack of a gradient does not
    advance its own bias corrections, as in torch).
    """

    elementwise: bool = False
    """Whether `update` treats every element on its own, so it may run on any slice of the parameters."""

    nonnegative_state: tuple[str, ...] = ()
    """State arrays that never hold a negative value (averages or sums of squares): `load_state_dict` refuses a snapshot
    where one does, since the rule's square root of it would turn the parameters to NaN at the next step."""

    kept_state: tuple[str, ...] = ()
    """State arrays the rule keeps, untouched, while the setting that uses them is off, and goes on from when it is on
    again, as torch keeps them (a momentum buffer while momentum is 0): `load_state_dict` takes a snapshot holding
    them beside the arrays `init_state` makes under its settings. Each is shaped like its parameter."""

    started_state: tuple[str, ...] = ()
    """State arrays the rule starts itself where a parameter's state lacks them (SGD's momentum buffer, which torch
    starts at the gradient at the first step with momentum): `load_state_dict` takes a snapshot without them."""

    initial_lr: float | None = None
    """The rate a learning-rate schedule decays from (torch's ``initial_lr``): set by the first schedule that
    runs on this optimizer, and kept by `state_dict`, so a resumed fit's schedule decays from it again."""

    scheduled_lr: float | None = None
    """The rate a learning-rate schedule (or `ReduceLROnPlateau`) last set, or the rate `load_state_dict` restored
    beside an `initial_lr`; a snapshot taken after a rate set by hand since keeps no `initial_lr`.
    A fit whose `lr` is another finds it set by hand since (``opt.lr = 0.02`` between fits, as a torch user
    sets a param group's rate): its schedule decays from that rate, not from the old `initial_lr`."""

    def __init__(self, params: Iterable[Any], lr: float, **hyperparams: Any) -> None:
        self.params: list[Any] = _param_list(params)
        check.positive("lr", lr)
        for name, value in self._check({"lr": lr, **hyperparams}).items():
            setattr(self, name, value)
        self._hyper_names: tuple[str, ...] = ("lr", *hyperparams)
        self.state: dict[int, dict[str, Any]] = {}
        self.step_count: int = 0
        self.param_steps: list[int] = [0] * len(self.params)
        self._xps: list[Any] = [None] * len(self.params)

    registered_name: str = "Optimizer"
    """The name the class is registered and saved under (`nnx.registry`): its class name, or ``name=``."""

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register(OPTIMIZERS, cls, name, "registered_name")

    # -- the rule ---------------------------------------------------------------
    def init_state(self, xp: Any, value: Any) -> dict[str, Any]:
        """The state of a parameter before its first update: a dict of arrays shaped like `value`."""
        return {}

    def update(self, xp: Any, value: Any, grad: Any, state: dict[str, Any], step: Any,
               lr: Any) -> tuple[Any, dict[str, Any]]:
        """``(new value, new state)`` after the `step`-th update (from 1) with learning rate `lr`; pure.

        `step` and `lr` are Python numbers when nnx calls the rule step by step, and 0-d float arrays under a
        compiler (JAX's compiled step traces them, weakly typed as Python floats are): a rule mixes them with
        `value`'s arrays as numbers. An integer `step` array (as optax keeps its count) is neither: a caller of
        the rule casts it to a float first, since the array API mixes no dtype kinds.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement update(xp, value, grad, state, step, lr)")

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        # Zero passes here (a schedule may anneal to it); constructors reject it. Other hyper-parameters
        # pass unchanged: a subclass validates its own by overriding this, starting from ``super()._check(hp)``
        # (so that a subclass of a built-in keeps the built-in's checks).
        return {**hp, "lr": check.non_negative("lr", hp["lr"])}

    # -- public API -------------------------------------------------------------
    def step(self) -> None:
        """Update every parameter whose `grad` is not None, from that gradient."""
        self.check_grads()
        self.step_count += 1
        steps, state = self.param_steps, self.state
        t = 0  # stays 0 when no parameter had a gradient
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            xp = self._xp(i)
            current = state.get(i)
            if current is None:
                current = self.init_state(xp, p.value)
            t = steps[i] + 1
            new_value, new_state = self.update(xp, p.value, g, current, t, self._lr)
            check_rule_result(self, p, p.value, new_value, current, new_state)
            p.value, state[i] = new_value, new_state
            steps[i] = t
        if not t and self.params:
            self._warn_no_gradient()

    def _warn_no_gradient(self) -> None:
        """Warn that a step moved nothing: most often the optimizer holds another model's parameters."""
        # torch moves a module in place, so its optimizer follows; nnx's `to()`, `nnx.load` and nesting make new
        # parameters, and a loop's backward filled theirs while this step found none of its own with a gradient
        warnings.warn(f"{type(self).__name__}.step() found no gradient in any of its {len(self.params)} parameters, "
                      "so nothing moved: call model.backward(dY) after a forward(X, training=True) first. An "
                      "optimizer built before model.to(), nnx.load or placing the model inside another holds the "
                      "original model's parameters: build it from the new model's parameters()", stacklevel=3)

    def check_grads(self) -> None:
        """Raise unless every gradient is an array like its value: checked before any parameter moves, so a
        bad one never half-applies a step or broadcasts silently into the wrong shape."""
        for p in self.params:
            g, v = p.grad, p.value
            if g is None:
                continue
            if type(g) is not type(v):
                raise TypeError(f"the grad of parameter {getattr(p, 'name', '?')!r} is a {type(g).__name__}, "
                                f"not an array like its value ({type(v).__name__})")
            if g.shape != v.shape or g.dtype != v.dtype:
                raise ValueError(f"the grad of parameter {getattr(p, 'name', '?')!r} has shape {tuple(g.shape)} "
                                 f"and dtype {g.dtype}; its value has shape {tuple(v.shape)} and dtype {v.dtype}"
                                 + self._promoted_by(g.dtype, v.dtype))

    def _promoted_by(self, dtype: Any, own: Any) -> str:
        """Words naming the parameters whose values hold `dtype` where a gradient of that dtype was found for a
        parameter of dtype `own`: an array of another dtype assigned to one of them promotes every gradient
        computed with it, and the first gradient checked is seldom that parameter's own."""
        names = [repr(getattr(q, "name", "?")) for q in self.params if q.value.dtype == dtype and q.value.dtype != own]
        if not names:
            return ""
        return (f"; {', '.join(names)} holds {dtype}, which promotes the gradients computed with it: assign it an "
                f"array of its model's dtype ({own})")

    def zero_grad(self) -> None:
        """Set every parameter's `grad` to None (torch's ``set_to_none=True``)."""
        for p in self.params:
            p.grad = None

    _traced_lr: Any = None  # the traced rate while a compiler traces the rule (`rate_for_tracing`)

    @property
    def lr(self) -> float:
        """The learning rate; a scheduler may set it between steps (stored as a Python float)."""
        traced = self._traced_lr
        return self._lr if traced is None else traced

    @lr.setter
    def lr(self, value: float) -> None:
        # A NumPy scalar times an array_api_strict array gives a NumPy array, so keep a Python float.
        self._lr = check.non_negative("lr", value)

    def rule_constants(self) -> dict[str, Any]:
        """What `update` may read of this optimizer besides its arguments: the hyper-parameters but `lr` (an
        argument) and any other attribute, such as a setting a subclass keeps itself (in its ``__slots__`` too); not
        the parameters, their state or the update counts. A compiled program holds these as constants, traced again
        when one changes."""
        settings = {k: v for k, v in vars(self).items() if k not in _BOOKKEEPING}
        settings.update((name, value) for name, value in slot_values(self).items() if name not in _BOOKKEEPING)
        return settings

    @contextlib.contextmanager
    def rate_for_tracing(self, lr: Any) -> Iterator[None]:
        """While a compiler traces `update`: ``self.lr`` reads `lr`, the traced rate the rule is given, so a rule
        that reads the attribute instead of its argument follows a schedule as it does in `step`."""
        self._traced_lr = lr
        try:
            yield
        finally:
            del self._traced_lr

    def __deepcopy__(self, memo: dict[int, Any]) -> Optimizer:
        """An independent copy (`copy.deepcopy`, of it or of its model): its own parameters and state.

        The array namespaces `step` looked up for the parameters are modules, which cannot be copied: the copy
        shares them, as a copied layer shares its backend's (a model trained by calling ``optimizer.step()``
        raised "cannot pickle 'module' object" when copied).
        """
        for xp in self._xps:
            if xp is not None:
                memo.setdefault(id(xp), xp)
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__dict__.update({key: deepcopy(value, memo) for key, value in vars(self).items()})
        for name, value in slot_values(self).items():  # a subclass's slots: no __dict__ holds them
            setattr(copied, name, deepcopy(value, memo))
        return copied

    def _xp(self, i: int) -> Any:
        # array_namespace costs about a microsecond per call; look it up once per parameter.
        xp = self._xps[i]
        if xp is None:
            xp = self._xps[i] = array_api_compat.array_namespace(self.params[i].value)
        return xp

    def check_hyperparams(self) -> None:
        """ValueError unless the hyper-parameters are values the constructor takes: one set after construction
        (``opt.momentum = 1.5``) is checked here, by `fit` as it starts and by `state_dict`, never in a step."""
        try:
            self._check(self.hyperparams)
        except ValueError as exc:
            raise ValueError(f"{type(self).__name__} hyper-parameter changed to a value it refuses: {exc}") from None

    @property
    def hyperparams(self) -> dict[str, Any]:
        """The current hyper-parameters as JSON-serialisable Python values."""
        out = {}
        for name in self._hyper_names:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def state_dict(self, copy: bool = True) -> dict[str, Any]:
        """A snapshot: type, hyper-parameters, step count, schedule base (`initial_lr`), copies of the state arrays.

        ``copy=False`` gives the state arrays themselves, as torch's ``state_dict()`` does: for reading them at
        once (writing a file), without a second copy of the state in memory; the next step may change them.

        ``"state"`` and ``"param_steps"`` are indexed by position in `params`;
        ``"param_names"`` names the parameter at each position (``"2.weight"``), so a
        model's optimizer over some of its parameters, or in another order, can be
        rebuilt over the same ones (`rebuild_optimizer`). ``"param_steps"`` holds each
        parameter's own update count (they differ from ``"step"`` only for parameters
        that were skipped for lack of a gradient). A hyper-parameter out of range is refused (`check_hyperparams`).
        """
        self.check_hyperparams()  # else a saved snapshot that load_state_dict refuses
        return {
            CONFIG_KEY: type(self).registered_name,
            "hyperparams": self.hyperparams,
            "step": self.step_count,
            "param_names": [getattr(p, "name", None) for p in self.params],
            "param_steps": list(self.param_steps),
            # a rate set by hand since a schedule last set one is the next schedule's base (`scheduled_lr`): the
            # snapshot then keeps no old base, so a loaded optimizer goes on from that rate as this one would
            "initial_lr": None if self.scheduled_lr is not None and self.lr != self.scheduled_lr else self.initial_lr,
            # Copies, so the snapshot does not follow later in-place updates on NumPy/torch.
            "state": {str(i): {k: _copy(v) if copy else v for k, v in st.items()}
                      for i, st in sorted(self.state.items())},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a `state_dict` snapshot; arrays may be NumPy or backend arrays.

        Everything is checked before anything changes: the optimizer type, the
        hyper-parameter names and values, the number of parameters and the shape
        of every state array. A mismatch raises `ValueError` naming it. Entries are
        matched by position, as in torch; `rebuild_optimizer` matches them by name.
        A snapshot without ``"initial_lr"`` (older than it) leaves no schedule base.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = [k for k in (CONFIG_KEY, "hyperparams", "step", "state") if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict is missing the key(s) {missing}")
        kind = type(self).registered_name
        saved = state_dict[CONFIG_KEY]
        if not isinstance(saved, str) or lookup_key(saved) != lookup_key(kind):
            raise ValueError(f"state_dict is for a {saved} optimizer, not a {kind}")

        if not isinstance(state_dict["hyperparams"], dict) or not isinstance(state_dict["state"], dict):
            raise TypeError("state_dict 'hyperparams' and 'state' must be dicts, got "
                            f"{type(state_dict['hyperparams']).__name__} and {type(state_dict['state']).__name__}")
        hp = dict(state_dict["hyperparams"])
        expected, given = set(self._hyper_names), set(hp)
        if expected != given:
            raise ValueError(
                f"state_dict hyperparams for {kind} must have the keys {sorted(expected)}; "
                f"missing {sorted(expected - given)}, unexpected {sorted(given - expected)}"
            )
        hp = self._check(hp)

        step = state_dict["step"]
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"state_dict step must be a non-negative int, got {step!r}")
        n = len(self.params)
        names = _param_names(state_dict.get("param_names"))
        if names is not None and len(names) != n:
            raise ValueError(f"state_dict is for {len(names)} parameters but this optimizer has {n}")
        param_steps = state_dict.get("param_steps")
        if param_steps is not None:
            if not isinstance(param_steps, (list, tuple)):
                raise TypeError(f"state_dict param_steps must be a list of ints, got {type(param_steps).__name__}")
            if len(param_steps) != n:
                raise ValueError(f"state_dict is for {len(param_steps)} parameters but this optimizer has {n}")
            if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in param_steps):
                raise ValueError(f"state_dict param_steps must be non-negative ints, got {param_steps!r}")
        initial_lr = state_dict.get("initial_lr")
        if initial_lr is not None:
            initial_lr = check.positive("state_dict initial_lr", initial_lr)

        # the state's keys as the rule makes them under the snapshot's hyper-parameters
        saved_hp = {name: getattr(self, name) for name in self._hyper_names}
        for name, value in hp.items():
            setattr(self, name, value)
        try:
            new_state = self._loaded_state(state_dict["state"])
            if names is not None:  # after the arrays' checks, whose errors say more where shapes differ too
                _require_same_parameters(names, [getattr(p, "name", None) for p in self.params])
        except BaseException:
            for name, value in saved_hp.items():
                setattr(self, name, value)
            raise
        self.step_count = int(step)
        if param_steps is None:
            # Older snapshots: every parameter with state was updated at every step.
            self.param_steps = [self.step_count if i in new_state else 0 for i in range(n)]
        else:
            self.param_steps = [int(s) for s in param_steps]
        self.initial_lr = initial_lr
        self.scheduled_lr = self.lr if initial_lr is not None else None  # the saved rate is the schedule's
        self.state = new_state
        self._xps = [None] * n

    def _loaded_state(self, entries: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """The snapshot's state arrays on the parameters' backends, each checked against what `init_state` makes."""
        n = len(self.params)
        new_state: dict[int, dict[str, Any]] = {}
        for key, entry in entries.items():
            try:
                i = int(key)
            except (TypeError, ValueError):
                raise ValueError(f"state_dict state keys must be parameter indices, got {key!r}") from None
            if not 0 <= i < n:
                raise ValueError(f"state_dict has state for parameter {i} but this optimizer has {n} parameters")
            p = self.params[i]
            label = f"parameter {i} ({getattr(p, 'name', '?')!r})"
            if not isinstance(entry, dict):
                raise TypeError(f"state_dict state for {label} must be a dict of arrays, got {type(entry).__name__}")
            template = self.init_state(self._xp(i), p.value)
            required = set(template) - set(self.started_state)
            if not required <= set(entry) <= set(template) | set(self.kept_state):
                kept = sorted(set(self.kept_state) - required)
                maybe = f" (and may have {kept})" if kept else ""
                raise ValueError(f"state_dict state for {label} must have the arrays {sorted(required)}{maybe}, "
                                 f"got {sorted(entry)}")
            backend = get_backend(p.value)
            arrays = {}
            for name, arr in entry.items():
                like = template.get(name, p.value)  # a kept array its settings do not use now
                argname = f"state_dict state {name!r} for {label}"
                arr = _as_state_dtype(backend, arr, like.dtype, argname)
                if tuple(arr.shape) != tuple(like.shape):
                    raise ValueError(
                        f"state_dict state {name!r} for {label} has shape {tuple(arr.shape)}, "
                        f"expected {tuple(like.shape)}"
                    )
                # finite negatives: NaN and inf are the finite check's to name (`nnx.load` runs it on every state)
                if name in self.nonnegative_state and bool(backend.fused(_any_finite_negative)(arr)):
                    raise ValueError(f"{argname} holds negative values; it accumulates squares, "
                                     "so the snapshot is corrupt or not from this optimizer")
                # asarray may share memory with the caller's array; the copy keeps the snapshot independent.
                arrays[name] = _copy(arr)
            new_state[i] = arrays
        return new_state

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams.items())
        return f"{type(self).__name__}({len(self.params)} params, {args})"


def _as_state_dtype(backend: Backend, arr: Any, dtype: Any, argname: str) -> Any:
    """`arr` on `backend` in `dtype`, the dtype `init_state` gives that state array.

    A float state is cast as every float array is. An integer or bool state (a rule's count) keeps its dtype:
    `Backend.asarray` casts only to the model's float dtypes, and a value the cast would change (0.5, NaN, a
    count past the dtype's range) is refused rather than truncated or wrapped.
    """
    xp = backend.xp
    if xp.isdtype(dtype, "real floating"):
        return backend.asarray(arr, dtype=dtype_name(dtype), argname=argname)
    arr = backend.asarray(arr, argname=argname)
    if arr.dtype == dtype:
        return arr
    with warnings.catch_warnings():  # NumPy warns of the invalid casts that the comparison below refuses
        warnings.simplefilter("ignore", RuntimeWarning)
        cast = xp.astype(arr, dtype)
        exact = not xp.isdtype(arr.dtype, "real floating") or bool(xp.all(xp.isfinite(arr)))
        exact = exact and bool(xp.all(xp.astype(cast, arr.dtype) == arr))
    if not exact:
        raise ValueError(f"{argname} must hold {dtype_name(dtype)} values, as the optimizer's init_state makes it; "
                         f"got {dtype_name(arr.dtype)} values it cannot hold exactly (non-integer, NaN or inf, or "
                         "out of its range)")
    return cast


def _dtype_and_shape(x: Any) -> tuple[Any, tuple[int, ...]] | None:
    dtype, shape = getattr(x, "dtype", None), getattr(x, "shape", None)
    return None if dtype is None or shape is None else (dtype, tuple(shape))


def check_rule_result(optimizer: Optimizer, what: Any, value: Any, new_value: Any, state: dict[str, Any],
                      new_state: Any) -> None:
    """Raise TypeError unless `update` kept the dtype and shape of `value` and of each state array it was given.

    Every caller of the rule (`Optimizer.step`, the flat and the compiled executions) checks the same, so a rule
    that promotes a float32 model to float64 (a float64 constant such as ``xp.asarray(lr)``) is named where it
    happens instead of turning one model into two dtypes, or being cast back by an execution that writes into
    buffers of the parameters' dtype. `what` is the `Parameter`, or words naming the arrays.
    """
    try:  # the common case, quickly: every array as it was (a step of a small network checks a dozen)
        if value.dtype == new_value.dtype and value.shape == new_value.shape and all(
                key not in state or state[key].dtype == arr.dtype and state[key].shape == arr.shape
                for key, arr in new_state.items()):
            return
    except AttributeError:
        pass  # something that is not an array: told apart below
    name = type(optimizer).__name__
    if not isinstance(what, str):
        what = f"parameter {getattr(what, 'name', '?')!r}"
    had = _dtype_and_shape(value)
    got = _dtype_and_shape(new_value)
    if got != had:
        raise TypeError(f"{name}.update returned a new value {_described(got, new_value)} for {what}, which is "
                        f"{_described(had, value)}: a rule keeps its arrays' dtypes and shapes (use Python numbers "
                        "for constants: a float64 array promotes a float32 model)")
    if not isinstance(new_state, dict):
        raise TypeError(f"{name}.update returned a state of type {type(new_state).__name__} for {what}; "
                        "it must return a dict of arrays")
    for key, arr in new_state.items():
        old = state.get(key)
        if old is None:
            continue  # a key the rule adds (momentum switched on)
        had, got = _dtype_and_shape(old), _dtype_and_shape(arr)
        if had is not None and got != had:
            raise TypeError(f"{name}.update returned its state {key!r} {_described(got, arr)} for {what}, "
                            f"where it was {_described(had, old)}: a rule keeps its arrays' dtypes and shapes "
                            "(use Python numbers for constants)")


def _described(dtype_and_shape: tuple[Any, tuple[int, ...]] | None, x: Any) -> str:
    if dtype_and_shape is None:
        return f"of type {type(x).__name__}"
    dtype, shape = dtype_and_shape
    return f"of dtype {dtype_name(dtype)} and shape {shape}"


def _require_same_parameters(saved: list[str | None], own: list[str | None]) -> None:
    """ValueError where a snapshot's parameter names are not this optimizer's, position by position.

    The state is kept by position: a snapshot of an optimizer over other parameters (a model nested otherwise, or
    frozen otherwise) of the same shapes loaded each one's moments into another parameter without a word. Names
    that differ by one path prefix throughout (a nested model's ``"2.0.weight"``, its standalone copy's
    ``"0.weight"``) are the same parameters.
    """
    named = [(i, a, b) for i, (a, b) in enumerate(zip(saved, own, strict=True)) if a is not None and b is not None]
    first = next(((a, b) for _, a, b in named if a != b), None)
    if first is None:
        return
    longer, shorter = sorted(first, key=len, reverse=True)
    prefix = longer[:len(longer) - len(shorter)] if longer.endswith(shorter) else ""
    if prefix.endswith("."):  # every name one prefix longer on the same side: the same parameters, nested
        def same(a: str, b: str) -> bool:
            return (a == prefix + b) if longer == first[0] else (b == prefix + a)
    else:
        def same(a: str, b: str) -> bool:
            return a == b
    i = next((i for i, a, b in named if not same(a, b)), None)
    if i is None:
        return
    raise ValueError(f"state_dict is for other parameters: its parameter {i} is {saved[i]!r}, this optimizer's is "
                     f"{own[i]!r} (the model nested or frozen otherwise?); the state is kept by position, so it "
                     f"would train each parameter with another's moments. Build the optimizer over the parameters "
                     f"the snapshot names, in its order")


def _param_names(names: Any) -> list[str | None] | None:
    """A snapshot's ``"param_names"``, checked to be a list of names (None in snapshots older than them).

    An entry is None for a parameter without a name (an object with only ``value`` and ``grad``).
    """
    if names is None:
        return None
    if not isinstance(names, (list, tuple)) or not all(n is None or isinstance(n, str) for n in names):
        raise TypeError(f"state_dict param_names must be a list of parameter names, got {names!r}")
    return list(names)


def _any_finite_negative(xp: Any, arr: Any) -> Any:
    """Whether `arr` holds a finite negative value (a 0-d boolean; one program on JAX, see `Backend.fused`)."""
    return xp.any((arr < 0) & (arr > -math.inf))


def _zeros(xp: Any, value: Any, *keys: str) -> dict[str, Any]:
    """A state dict of zero arrays shaped like `value`, one per key."""
    return {key: xp.zeros_like(value) for key in keys}


# -- the optimizers --------------------------------------------------------------

class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    Args:
        params: the parameters to update.
        lr: learning rate (> 0).
        momentum: momentum factor in [0, 1).
        dampening: dampening of the momentum in [0, 1].
        weight_decay: L2 penalty coefficient (>= 0): ``weight_decay * p`` is added to the gradient of every
            parameter, biases included, and is not in the reported loss (`nnx.regularizers.L2` skips biases
            and is; docs/training.md).
        nesterov: use Nesterov momentum (needs momentum > 0 and dampening == 0).
        maximize: ascend instead of descend (keyword only).

    The arguments come in torch's order, so ``SGD(params, 0.1, 0.9, 0, 1e-4, True)`` means what it means there.
    """

    elementwise = True
    kept_state = started_state = ("momentum_buffer",)  # kept while momentum is 0, started at the gradient

    # hyper-parameters, set by Optimizer.__init__ (declared here for type checkers)
    momentum: float
    dampening: float
    nesterov: bool
    weight_decay: float
    maximize: bool

    # torch's order: a positional weight decay of 1 was taken for nesterov=True, and one of 1e-4 was refused as it
    def __init__(self, params: Iterable[Any], lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *, maximize: bool = False) -> None:
        super().__init__(params, lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov, maximize=maximize)

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        out = {
            **super()._check(hp),
            "momentum": check.probability("momentum", hp["momentum"]),
            "dampening": check.real("dampening", hp["dampening"], 0.0, 1.0),
            "nesterov": check.flag("nesterov", hp["nesterov"]),
            "weight_decay": check.non_negative("weight_decay", hp["weight_decay"]),
            "maximize": check.flag("maximize", hp["maximize"]),
        }
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(
                f"nesterov=True requires momentum > 0 and dampening == 0, "
                f"got momentum={out['momentum']!r}, dampening={out['dampening']!r}"
            )
        return out

    def init_state(self, xp: Any, value: Any) -> dict[str, Any]:
        return _zeros(xp, value, "momentum_buffer") if self.momentum != 0 else {}

    def update(self, xp: Any, value: Any, grad: Any, state: dict[str, Any], step: Any,
               lr: Any) -> tuple[Any, dict[str, Any]]:
        g = -grad if self.maximize else grad
        if self.weight_decay != 0:
            g = g + self.weight_decay * value
        mu = self.momentum
        if mu == 0:
            return value - lr * g, state
        previous = state.get("momentum_buffer")
        if previous is None:
            buf = g  # momentum switched on after steps without it: torch starts a new buffer at the gradient
        else:
            # torch starts the buffer at the gradient itself: no dampening on the first step (the buffer is 0 then)
            if self.dampening == 0:
                fresh = g
            else:
                after_first = step > 1
                if not isinstance(after_first, bool):
                    # a step array (a compiler's or a user's): the array API multiplies no bool by a float, and
                    # NumPy and torch would make that product float64 and float32, whatever g's dtype
                    after_first = xp.astype(after_first, g.dtype)
                fresh = (1.0 - self.dampening * after_first) * g
            buf = mu * previous + fresh
        g = g + mu * buf if self.nesterov else buf
        return value - lr * g, {"momentum_buffer": buf}


class Momentum(Optimizer):
    """Classical momentum in the tutorial's form: ``v = mu*v - lr*g; p += v``.

    Args:
        params: the parameters to update.
        lr: learning rate (> 0).
        momentum: momentum factor ``mu`` in [0, 1).
    """

    elementwise = True

    # hyper-parameters, set by Optimizer.__init__ (declared here for type checkers)
    momentum: float

    def __init__(self, params: Iterable[Any], lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__(params, lr, momentum=momentum)

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        return {**super()._check(hp), "momentum": check.probability("momentum", hp["momentum"])}

    def init_state(self, xp: Any, value: Any) -> dict[str, Any]:
        return _zeros(xp, value, "velocity")

    def update(self, xp: Any, value: Any, grad: Any, state: dict[str, Any], step: Any,
               lr: Any) -> tuple[Any, dict[str, Any]]:
        v = self.momentum * state["velocity"] - lr * grad
        return value + v, {"velocity": v}


class Adam(Optimizer):
    """Adam (Kingma & Ba), with optional L2 weight decay added to the gradient and AMSGrad.

    Args:
        params: the parameters to update.
        lr: learning rate (> 0).
        betas: decay rates of the first and second moment estimates, each in [0, 1).
        eps: added to the denominator for stability (> 0).
        weight_decay: L2 penalty coefficient (>= 0), added to the gradient.
        amsgrad: normalise by the running maximum of the second moment.
    """

    elementwise = True
    nonnegative_state = ("exp_avg_sq", "max_exp_avg_sq")
    # kept while amsgrad is off, as torch keeps it, and used again when on; started by the rule where amsgrad is
    # switched on after steps without it (not a `started_state`: a snapshot taken with amsgrad on holds it)
    kept_state = ("max_exp_avg_sq",)
    decoupled_weight_decay = False
    """AdamW sets this: decay the weights directly instead of adding the decay to the gradient."""

    # hyper-parameters, set by Optimizer.__init__ (declared here for type checkers)
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    amsgrad: bool

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        return {
            **super()._check(hp),
            "betas": _betas(hp["betas"]),
            # eps = 0 divides 0 by 0 wherever a gradient entry has always been 0 (a dead unit): NaN
            "eps": check.positive("eps", hp["eps"]),
            "weight_decay": check.non_negative("weight_decay", hp["weight_decay"]),
            "amsgrad": check.flag("amsgrad", hp["amsgrad"]),
        }

    def init_state(self, xp: Any, value: Any) -> dict[str, Any]:
        if self.amsgrad:
            return _zeros(xp, value, "exp_avg", "exp_avg_sq", "max_exp_avg_sq")
        return _zeros(xp, value, "exp_avg", "exp_avg_sq")

    def update(self, xp: Any, value: Any, grad: Any, state: dict[str, Any], step: Any,
               lr: Any) -> tuple[Any, dict[str, Any]]:
        beta1, beta2 = self.betas
        wd, g = self.weight_decay, grad
        if wd != 0:
            if self.decoupled_weight_decay:
                value = value * (1.0 - lr * wd)
            else:
                g = g + wd * value
        m = state["exp_avg"]
        m = m + (1.0 - beta1) * (g - m)  # torch's lerp
        v = beta2 * state["exp_avg_sq"] + (1.0 - beta2) * (g * g)
        new = {"exp_avg": m, "exp_avg_sq": v}
        if self.amsgrad:
            # switched on after steps without it, the running maximum starts where one kept from zeros would be
            # (torch raises a KeyError there); the second moment is never negative, so that is this step's own
            # (an array of its own, not the second moment's: the flat update writes each state array in place)
            previous = state.get("max_exp_avg_sq")
            v = new["max_exp_avg_sq"] = xp.maximum(v if previous is None else previous, v)
        elif "max_exp_avg_sq" in state:
            new["max_exp_avg_sq"] = state["max_exp_avg_sq"]  # AMSGrad off: kept for when it is on again, as in torch
        # torch's documented form; ** 0.5 rather than math.sqrt, so a traced step works too
        bias2_sqrt = (1.0 - beta2**step) ** 0.5
        step_size = lr / (1.0 - beta1**step)
        return value - step_size * (m / (xp.sqrt(v) / bias2_sqrt + self.eps)), new


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p *= 1 - lr*weight_decay`` each step.

    Args:
        params: the parameters to update.
        lr: learning rate (> 0).
        betas: decay rates of the first and second moment estimates, each in [0, 1).
        eps: added to the denominator for stability (> 0).
        weight_decay: decoupled weight decay coefficient (>= 0).
        amsgrad: normalise by the running maximum of the second moment.
    """

    decoupled_weight_decay = True

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(params, lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


class RMSprop(Optimizer):
    """RMSprop (Hinton), optionally centered and with momentum, as torch.optim.RMSprop.

    Args:
        params: the parameters to update.
        lr: learning rate (> 0).
        alpha: smoothing constant of the squared-gradient average, in [0, 1).
        eps: added to the denominator for stability (> 0).
        weight_decay: L2 penalty coefficient (>= 0), added to the gradient.
        momentum: momentum factor in [0, 1).
        centered: normalise by an estimate of the gradient's variance instead of its second moment.
    """

    elementwise = True
    nonnegative_state = ("square_avg",)
    # each kept while its setting is off, as torch keeps it; started by the rule, as from zeros, where its setting
    # is switched on after steps without it (torch raises a KeyError there), though a snapshot must hold it
    kept_state = ("momentum_buffer", "grad_avg")

    # hyper-parameters, set by Optimizer.__init__ (declared here for type checkers)
    alpha: float
    eps: float
    weight_decay: float
    momentum: float
    centered: bool

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False) -> None:
        super().__init__(params, lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                         centered=centered)

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        return {
            **super()._check(hp),
            "alpha": check.probability("alpha", hp["alpha"]),
            "eps": check.positive("eps", hp["eps"]),
            "weight_decay": check.non_negative("weight_decay", hp["weight_decay"]),
            "momentum": check.probability("momentum", hp["momentum"]),
            "centered": check.flag("centered", hp["centered"]),
        }

    def init_state(self, xp: Any, value: Any) -> dict[str, Any]:
        keys = ("square_avg",)
        if self.momentum > 0:
            keys += ("momentum_buffer",)
        if self.centered:
            keys += ("grad_avg",)
        return _zeros(xp, value, *keys)

    def update(self, xp: Any, value: Any, grad: Any, state: dict[str, Any], step: Any,
               lr: Any) -> tuple[Any, dict[str, Any]]:
        alpha, g = self.alpha, grad
        if self.weight_decay != 0:
            g = g + self.weight_decay * value
        sq = alpha * state["square_avg"] + (1.0 - alpha) * (g * g)
        new = {"square_avg": sq}
        if self.centered:
            ga = state.get("grad_avg")
            ga = new["grad_avg"] = (1.0 - alpha) * g if ga is None else ga + (1.0 - alpha) * (g - ga)
            avg = xp.sqrt(sq - ga * ga) + self.eps
        else:
            if "grad_avg" in state:  # centered off: kept for when it is on again, as in torch
                new["grad_avg"] = state["grad_avg"]
            avg = xp.sqrt(sq) + self.eps
        if self.momentum > 0:
            buf = state.get("momentum_buffer")
            buf = new["momentum_buffer"] = g / avg if buf is None else self.momentum * buf + g / avg
            return value - lr * buf, new
        if "momentum_buffer" in state:  # momentum 0: kept for when it is on again, as in torch
            new["momentum_buffer"] = state["momentum_buffer"]
        return value - (lr * g) / avg, new


class Adagrad(Optimizer):
    """Adagrad (Duchi et al.) with learning-rate decay, as torch.optim.Adagrad.

    Args:
        params: the parameters to update.
        lr: learning rate (> 0).
        lr_decay: the step's rate is ``lr / (1 + (t-1)*lr_decay)`` at a parameter's t-th update (>= 0).
        weight_decay: L2 penalty coefficient (>= 0), added to the gradient.
        initial_accumulator_value: starting value of the sum of squared gradients (>= 0).
        eps: added to the denominator for stability (> 0).
    """

    elementwise = True
    nonnegative_state = ("sum",)

    # hyper-parameters, set by Optimizer.__init__ (declared here for type checkers)
    lr_decay: float
    weight_decay: float
    initial_accumulator_value: float
    eps: float

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10) -> None:
        super().__init__(params, lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps)

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        return {
            **super()._check(hp),
            "lr_decay": check.non_negative("lr_decay", hp["lr_decay"]),
            "weight_decay": check.non_negative("weight_decay", hp["weight_decay"]),
            "initial_accumulator_value": check.non_negative("initial_accumulator_value",
                                                            hp["initial_accumulator_value"]),
            "eps": check.positive("eps", hp["eps"]),
        }

    def init_state(self, xp: Any, value: Any) -> dict[str, Any]:
        return {"sum": xp.full_like(value, self.initial_accumulator_value)}

    def update(self, xp: Any, value: Any, grad: Any, state: dict[str, Any], step: Any,
               lr: Any) -> tuple[Any, dict[str, Any]]:
        g = grad
        if self.weight_decay != 0:
            g = g + self.weight_decay * value
        clr = lr / (1.0 + (step - 1) * self.lr_decay)
        s = state["sum"] + g * g
        return value - (clr * g) / (xp.sqrt(s) + self.eps), {"sum": s}


class Lion(Optimizer):
    """Lion (Chen et al., 2023): the sign of an interpolated momentum, written with the public rule API only.

    Args:
        params: the parameters to update.
        lr: learning rate (> 0; typically 3-10x smaller than Adam's).
        beta1: interpolation between momentum and gradient for the update's sign, in [0, 1).
        beta2: decay of the momentum, in [0, 1).
        weight_decay: decoupled weight decay coefficient (>= 0).
    """

    elementwise = True

    beta1: float
    beta2: float
    weight_decay: float

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, beta1: float = 0.9, beta2: float = 0.99,
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay)

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        return {**super()._check(hp), "beta1": check.probability("beta1", hp["beta1"]),
                "beta2": check.probability("beta2", hp["beta2"]),
                "weight_decay": check.non_negative("weight_decay", hp["weight_decay"])}

    def init_state(self, xp: Any, value: Any) -> dict[str, Any]:
        return {"m": xp.zeros_like(value)}

    def update(self, xp: Any, value: Any, grad: Any, state: dict[str, Any], step: Any,
               lr: Any) -> tuple[Any, dict[str, Any]]:
        m = state["m"]
        direction = xp.sign(self.beta1 * m + (1.0 - self.beta1) * grad)
        if self.weight_decay != 0:
            value = value * (1.0 - lr * self.weight_decay)
        return value - lr * direction, {"m": self.beta2 * m + (1.0 - self.beta2) * grad}


def get_optimizer(spec: str | type[Optimizer] | Optimizer, params: Iterable[Any], **kwargs: Any) -> Optimizer:
    """An optimizer from a name in `OPTIMIZERS` (case-insensitive), an Optimizer class or instance.

    A name or class is constructed as ``cls(params, **kwargs)``; an instance is
    returned as is, its own parameters and settings unchanged.
    """
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, type) and issubclass(spec, Optimizer):
        return spec(params, **kwargs)
    if isinstance(spec, str):
        return OPTIMIZERS.lookup(spec.strip())(params, **kwargs)
    raise TypeError(f"optimizer must be a name, an Optimizer class or an Optimizer, got {type(spec).__name__}")


def rebuild_optimizer(state: dict, params: list[Any], source: Backend | None = None) -> Optimizer:
    """An optimizer of the type in `state`, carrying that state (arrays may be anywhere), over the
    parameters among `params` (a model's) that the state names, in its order.

    A state without ``"param_names"`` (written before they were recorded) is over all
    `params` in order. The class is built from the saved hyper-parameters its own
    ``__init__`` takes (a subclass may fix some of its base's); `load_state_dict` then
    restores every saved value, including any changed after construction (lr by a schedule).
    """
    cls = OPTIMIZERS.lookup(str(state.get(CONFIG_KEY, "")))
    hyperparams = state.get("hyperparams", {})
    if not isinstance(hyperparams, dict):
        raise TypeError(f"optimizer hyperparams must be an object, got {type(hyperparams).__name__}")
    arguments = init_arguments(cls, hyperparams)
    rate = arguments.get("lr")
    if isinstance(rate, numbers.Real) and not isinstance(rate, bool) and rate == 0:
        # the `lr` setter takes 0 (a frozen phase) where constructors refuse it: build at any rate, and
        # load_state_dict restores the saved 0 with the rest
        arguments["lr"] = 1.0
    opt = cls(_named_params(state.get("param_names"), params), **arguments)
    if source is not None:
        state = _state_to_host(state, source)
    opt.load_state_dict(state)
    return opt


def _named_params(names: Any, params: list[Any]) -> list[Any]:
    """The parameters among `params` that `names` names, in that order; all of them when `names` is None."""
    names = _param_names(names)
    if names is None:
        return params
    by_name = {p.name: p for p in params}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"the optimizer state is for parameters {unknown}, which the model does not have")
    return [by_name[name] for name in names]


def init_arguments(cls: type[Optimizer], hyperparams: dict[str, Any]) -> dict[str, Any]:
    """The saved hyper-parameters that ``cls.__init__`` accepts by keyword, after its `params`.

    A required argument that is not among them (one the optimizer does not keep as a
    hyper-parameter) cannot be rebuilt: that is a TypeError naming it.
    """
    accepted = list(inspect.signature(cls.__init__).parameters.values())[2:]  # after self, params
    if any(a.kind is inspect.Parameter.VAR_KEYWORD for a in accepted):
        return dict(hyperparams)
    keywords = [a for a in accepted if a.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                  inspect.Parameter.KEYWORD_ONLY)]
    unsaved = [a.name for a in keywords if a.default is inspect.Parameter.empty and a.name not in hyperparams]
    if unsaved:
        raise TypeError(f"{cls.__name__}.__init__ needs {unsaved}, which are not among its saved hyper-parameters "
                        f"{sorted(hyperparams)}: give them defaults, or pass them on to Optimizer.__init__ "
                        "as hyper-parameters, so that a saved optimizer can be rebuilt")
    return {a.name: hyperparams[a.name] for a in keywords if a.name in hyperparams}


def _state_to_host(state: Any, source: Backend) -> Any:
    if isinstance(state, dict):
        return {k: _state_to_host(v, source) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_state_to_host(v, source) for v in state)
    if source.owns(state):
        return source.to_host(state)
    return state
