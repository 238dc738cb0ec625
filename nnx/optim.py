"""Optimizers in PyTorch style, written once against the array API standard.

Each optimizer updates a list of `Parameter` objects from their `grad` with the
update rule `torch.optim` documents for it. Hyper-parameters are plain Python
numbers (the learning rate `lr` may be changed between steps by a scheduler);
per-parameter state (moment estimates, momentum buffers) lives on the
parameter's backend and device and is created at the parameter's first update.

Correctness never relies on in-place mutation: every update rebinds
`p.value` and the state entries (augmented assignment rebinds on JAX and
mutates in place elsewhere, which is safe because the optimizer is the only
owner of its state arrays and never writes into `p.grad`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import array_api_compat

from .backends import Backend, dtype_name, get_backend
from .registry import Registry

OPTIMIZERS = Registry(
    "optimizer",
    "A subclass of nnx.optim.Optimizer registers itself under its lower-case class name when its module is "
    "imported: import that module before loading.",
    normalize=str.lower,
)
"""Lower-case name -> optimizer class; every `Optimizer` subclass adds itself when defined."""

__all__ = [
    "Optimizer",
    "SGD",
    "Momentum",
    "Adam",
    "AdamW",
    "RMSprop",
    "Adagrad",
    "OPTIMIZERS",
    "get_optimizer",
]


# -- argument checks -----------------------------------------------------------

def _number(name: str, value: Any, low: float = 0.0, high: float = math.inf, *,
            low_open: bool = False, high_open: bool = True) -> float:
    """`value` as a float after checking it is a finite real in the given interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if not math.isfinite(value) or too_low or too_high:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a finite number in {interval}, got {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _betas(value: Any) -> tuple[float, float]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise TypeError(f"betas must be a pair of numbers, got {value!r}")
    pair = tuple(value)
    if len(pair) != 2:
        raise ValueError(f"betas must be a pair of numbers, got {len(pair)} values: {value!r}")
    return (_number("betas[0]", pair[0], 0.0, 1.0), _number("betas[1]", pair[1], 0.0, 1.0))


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


# -- base class ------------------------------------------------------------------

class Optimizer:
    """Base class: holds the parameters, the hyper-parameters and per-parameter state.

    Args:
        params: the `Parameter` objects to update (e.g. ``model.parameters()``).
        lr: learning rate, a finite number > 0; stored in the mutable attribute `lr`.
        **hyperparams: the subclass's other hyper-parameters, validated by `_check`.

    Subclasses implement `_check(hyperparams) -> dict` (validate and normalise),
    `_state_keys(hyperparams) -> tuple` (the arrays kept per parameter) and
    `_update(i, p, g, t)` (one update of parameter `i` from gradient `g` at its
    `t`-th update).
    """

    def __init__(self, params: Iterable[Any], lr: float, **hyperparams: Any) -> None:
        self.params: list[Any] = _param_list(params)
        _number("lr", lr, 0.0, low_open=True)
        for name, value in self._check({"lr": lr, **hyperparams}).items():
            setattr(self, name, value)
        self._hyper_names: tuple[str, ...] = ("lr", *hyperparams)
        self.state: dict[int, dict[str, Any]] = {}
        self.step_count: int = 0
        # Per-parameter update counts, as torch keeps them: a parameter skipped for lack of a
        # gradient does not advance its own bias corrections or learning-rate decay.
        self._param_steps: list[int] = [0] * len(self.params)
        self._xps: list[Any] = [None] * len(self.params)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_"):
            OPTIMIZERS.add(cls.__name__, cls)

    # -- what subclasses provide ------------------------------------------------
    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        # Zero passes here (a schedule may anneal to it); constructors reject it.
        return {"lr": _number("lr", hp["lr"])}

    @classmethod
    def _state_keys(cls, hp: dict[str, Any]) -> tuple[str, ...]:
        return ()

    def _update(self, i: int, p: Any, g: Any, t: int) -> None:
        raise NotImplementedError

    # -- public API -------------------------------------------------------------
    # The backend's fast path (False until looked up) and the single update over all parameters it
    # builds when they and their gradients are views of flat buffers (nnx.fastpath.FusedUpdate).
    _fastpath: Any = False
    _fused: Any = None

    def step(self) -> None:
        """Update every parameter whose `grad` is not None, from that gradient."""
        fused = self._fused
        ready = fused is not None and fused.ready(self)
        if not ready:  # a ready fused update holds the very gradient arrays it laid out: nothing to check
            self._check_grads()
        self.step_count += 1
        if self._fused_step(ready):
            return
        steps = self._param_steps
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            steps[i] += 1
            self._update(i, p, g, steps[i])

    def _check_grads(self) -> None:
        """Every gradient an array like its value, before any parameter moves: a bad one never
        half-applies a step, or broadcasts silently into the wrong shape."""
        for p in self.params:
            g, v = p.grad, p.value
            if g is None:
                continue
            if type(g) is not type(v):
                raise TypeError(f"the grad of parameter {getattr(p, 'name', '?')!r} is a {type(g).__name__}, "
                                f"not an array like its value ({type(v).__name__})")
            if g.shape != v.shape or g.dtype != v.dtype:
                raise ValueError(f"the grad of parameter {getattr(p, 'name', '?')!r} has shape {tuple(g.shape)} "
                                 f"and dtype {g.dtype}; its value has shape {tuple(v.shape)} and dtype {v.dtype}")

    def _fused_step(self, ready: bool = False) -> bool:
        """One update over all parameters at once, when the backend's fast path finds them laid out flat.

        The fused update re-checks before every step that nothing was rebound since it was
        built; otherwise `step` takes the per-parameter loop, with the same result.
        """
        fused = self._fused
        if not ready:
            fastpath = self._fastpath
            if fastpath is False:
                fastpath = self._fastpath = get_backend(self.params[0].value).fastpath
            fused = self._fused = None if fastpath is None else fastpath.fuse(self)
            if fused is None:
                return False
        fused.run(self)
        return True

    def zero_grad(self) -> None:
        """Set every parameter's `grad` to None (torch's ``set_to_none=True``)."""
        for p in self.params:
            p.grad = None

    @property
    def lr(self) -> float:
        """The learning rate; a scheduler may set it between steps (stored as a Python float)."""
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        # A NumPy scalar times an array_api_strict array gives a NumPy array, so keep a Python float.
        self._lr = _number("lr", value)

    def _xp(self, i: int) -> Any:
        # array_namespace costs about a microsecond per call; look it up once per parameter.
        xp = self._xps[i]
        if xp is None:
            xp = self._xps[i] = array_api_compat.array_namespace(self.params[i].value)
        return xp

    @property
    def hyperparams(self) -> dict[str, Any]:
        """The current hyper-parameters as JSON-serialisable Python values."""
        out = {}
        for name in self._hyper_names:
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    def state_dict(self) -> dict[str, Any]:
        """A snapshot: type, hyper-parameters, step count and copies of the state arrays.

        ``"param_steps"`` holds each parameter's own update count (they differ from
        ``"step"`` only for parameters that were skipped for lack of a gradient).
        """
        return {
            "type": type(self).__name__,
            "hyperparams": self.hyperparams,
            "step": self.step_count,
            "param_steps": list(self._param_steps),
            # Copies, so the snapshot does not follow later in-place updates on NumPy/torch.
            "state": {str(i): {k: _copy(v) for k, v in st.items()} for i, st in sorted(self.state.items())},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a `state_dict` snapshot; arrays may be NumPy or backend arrays.

        Everything is checked before anything changes: the optimizer type, the
        hyper-parameter names and values, the number of parameters and the shape
        of every state array. A mismatch raises `ValueError` naming it.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = [k for k in ("type", "hyperparams", "step", "state") if k not in state_dict]
        if missing:
            raise ValueError(f"state_dict is missing the key(s) {missing}")
        kind = type(self).__name__
        if state_dict["type"] != kind:
            raise ValueError(f"state_dict is for a {state_dict['type']} optimizer, not a {kind}")

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
        param_steps = state_dict.get("param_steps")
        if param_steps is not None:
            if not isinstance(param_steps, (list, tuple)):
                raise TypeError(f"state_dict param_steps must be a list of ints, got {type(param_steps).__name__}")
            if len(param_steps) != n:
                raise ValueError(f"state_dict is for {len(param_steps)} parameters but this optimizer has {n}")
            if any(isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0 for s in param_steps):
                raise ValueError(f"state_dict param_steps must be non-negative ints, got {param_steps!r}")

        keys = set(self._state_keys(hp))

        new_state: dict[int, dict[str, Any]] = {}
        for key, entry in state_dict["state"].items():
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
            if set(entry) != keys:
                raise ValueError(
                    f"state_dict state for {label} must have the arrays {sorted(keys)}, got {sorted(entry)}"
                )
            backend = get_backend(p.value)
            dtype = dtype_name(p.value.dtype)
            shape = tuple(p.value.shape)
            arrays = {}
            for name, arr in entry.items():
                arr = backend.asarray(arr, dtype=dtype, argname=f"state_dict state {name!r} for {label}")
                if tuple(arr.shape) != shape:
                    raise ValueError(
                        f"state_dict state {name!r} for {label} has shape {tuple(arr.shape)}, "
                        f"expected the parameter's shape {shape}"
                    )
                # asarray may share memory with the caller's array; the copy keeps in-place updates ours.
                arrays[name] = _copy(arr)
            new_state[i] = arrays

        for name, value in hp.items():
            setattr(self, name, value)
        self.step_count = int(step)
        if param_steps is None:
            # Older snapshots: every parameter with state was updated at every step.
            self._param_steps = [self.step_count if i in new_state else 0 for i in range(n)]
        else:
            self._param_steps = [int(s) for s in param_steps]
        self.state = new_state
        self._xps = [None] * n

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparams.items())
        return f"{type(self).__name__}({len(self.params)} params, {args})"


# -- the optimizers --------------------------------------------------------------

class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    Args:
        params: the parameters to update.
        lr: learning rate (> 0).
        momentum: momentum factor in [0, 1).
        dampening: dampening of the momentum in [0, 1].
        nesterov: use Nesterov momentum (needs momentum > 0 and dampening == 0).
        weight_decay: L2 penalty coefficient (>= 0), added to the gradient.
        maximize: ascend instead of descend.
    """

    # hyper-parameters, set by Optimizer.__init__ (declared here for type checkers)
    momentum: float
    dampening: float
    nesterov: bool
    weight_decay: float
    maximize: bool

    def __init__(self, params: Iterable[Any], lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, maximize: bool = False) -> None:
        super().__init__(params, lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                         weight_decay=weight_decay, maximize=maximize)

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        out = {
            **Optimizer._check(hp),
            "momentum": _number("momentum", hp["momentum"], 0.0, 1.0),
            "dampening": _number("dampening", hp["dampening"], 0.0, 1.0, high_open=False),
            "nesterov": _flag("nesterov", hp["nesterov"]),
            "weight_decay": _number("weight_decay", hp["weight_decay"]),
            "maximize": _flag("maximize", hp["maximize"]),
        }
        if out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
            raise ValueError(
                f"nesterov=True requires momentum > 0 and dampening == 0, "
                f"got momentum={out['momentum']!r}, dampening={out['dampening']!r}"
            )
        return out

    @classmethod
    def _state_keys(cls, hp: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if hp["momentum"] != 0 else ()

    def _update(self, i: int, p: Any, g: Any, t: int) -> None:
        if self.maximize:
            g = -g
        if self.weight_decay != 0:
            g = g + self.weight_decay * p.value
        mu = self.momentum
        if mu != 0:
            st = self.state.get(i)
            if st is None:
                # torch starts the buffer at the gradient itself: no dampening on the first step.
                buf = _copy(g)
                self.state[i] = {"momentum_buffer": buf}
            else:
                buf = st["momentum_buffer"]
                buf *= mu
                buf += g if self.dampening == 0 else (1.0 - self.dampening) * g
                st["momentum_buffer"] = buf
            g = g + mu * buf if self.nesterov else buf
        p.value -= self.lr * g


class Momentum(Optimizer):
    """Classical momentum in the tutorial's form: ``v = mu*v - lr*g; p += v``.

    Args:
        params: the parameters to update.
        lr: learning rate (> 0).
        momentum: momentum factor ``mu`` in [0, 1).
    """

    # hyper-parameters, set by Optimizer.__init__ (declared here for type checkers)
    momentum: float

    def __init__(self, params: Iterable[Any], lr: float = 0.01, momentum: float = 0.9) -> None:
        super().__init__(params, lr, momentum=momentum)

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        return {**Optimizer._check(hp), "momentum": _number("momentum", hp["momentum"], 0.0, 1.0)}

    @classmethod
    def _state_keys(cls, hp: dict[str, Any]) -> tuple[str, ...]:
        return ("velocity",)

    def _update(self, i: int, p: Any, g: Any, t: int) -> None:
        st = self.state.get(i)
        if st is None:
            st = self.state[i] = {"velocity": self._xp(i).zeros_like(p.value)}
        v = st["velocity"]
        v *= self.momentum
        v -= self.lr * g
        st["velocity"] = v
        p.value += v


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

    # AdamW sets this: decay the weights directly instead of adding to the gradient.
    _decoupled = False

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
            **Optimizer._check(hp),
            "betas": _betas(hp["betas"]),
            # eps = 0 divides 0 by 0 wherever a gradient entry has always been 0 (a dead unit): NaN
            "eps": _number("eps", hp["eps"], low_open=True),
            "weight_decay": _number("weight_decay", hp["weight_decay"]),
            "amsgrad": _flag("amsgrad", hp["amsgrad"]),
        }

    @classmethod
    def _state_keys(cls, hp: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if hp["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _update(self, i: int, p: Any, g: Any, t: int) -> None:
        xp = self._xp(i)
        lr, (beta1, beta2), wd = self.lr, self.betas, self.weight_decay
        st = self.state.get(i)
        if st is None:
            st = self.state[i] = {k: xp.zeros_like(p.value) for k in self._state_keys(self.hyperparams)}
        if wd != 0:
            if self._decoupled:
                p.value *= 1.0 - lr * wd
            else:
                g = g + wd * p.value
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m += (1.0 - beta1) * (g - m)
        v *= beta2
        v += (1.0 - beta2) * (g * g)
        st["exp_avg"], st["exp_avg_sq"] = m, v
        if self.amsgrad:
            v = st["max_exp_avg_sq"] = xp.maximum(st["max_exp_avg_sq"], v)
        # Bias corrections are host floats. The step size lr/bc1 is folded into the denominator
        # (as torch's capturable path does), which saves one array operation:
        # p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)  ==  p -= m / (sqrt(v)*c + eps*bc1/lr)
        bc1 = 1.0 - beta1**t
        bc2_sqrt = math.sqrt(1.0 - beta2**t)
        step_size = lr / bc1
        if bc2_sqrt * step_size == 0.0:
            return  # an lr so small (~1e-300) that the step underflows to nothing; 1/0 below otherwise
        p.value -= m / (xp.sqrt(v) * (1.0 / (bc2_sqrt * step_size)) + self.eps / step_size)


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

    _decoupled = True

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
            **Optimizer._check(hp),
            "alpha": _number("alpha", hp["alpha"], 0.0, 1.0),
            "eps": _number("eps", hp["eps"], low_open=True),
            "weight_decay": _number("weight_decay", hp["weight_decay"]),
            "momentum": _number("momentum", hp["momentum"], 0.0, 1.0),
            "centered": _flag("centered", hp["centered"]),
        }

    @classmethod
    def _state_keys(cls, hp: dict[str, Any]) -> tuple[str, ...]:
        keys = ("square_avg",)
        if hp["momentum"] > 0:
            keys += ("momentum_buffer",)
        if hp["centered"]:
            keys += ("grad_avg",)
        return keys

    def _update(self, i: int, p: Any, g: Any, t: int) -> None:
        xp = self._xp(i)
        alpha = self.alpha
        st = self.state.get(i)
        if st is None:
            st = self.state[i] = {k: xp.zeros_like(p.value) for k in self._state_keys(self.hyperparams)}
        if self.weight_decay != 0:
            g = g + self.weight_decay * p.value
        sq = st["square_avg"]
        sq *= alpha
        sq += (1.0 - alpha) * (g * g)
        st["square_avg"] = sq
        if self.centered:
            ga = st["grad_avg"]
            ga += (1.0 - alpha) * (g - ga)
            st["grad_avg"] = ga
            avg = xp.sqrt(sq - ga * ga) + self.eps
        else:
            avg = xp.sqrt(sq) + self.eps
        if self.momentum > 0:
            buf = st["momentum_buffer"]
            buf *= self.momentum
            buf += g / avg
            st["momentum_buffer"] = buf
            p.value -= self.lr * buf
        else:
            p.value -= (self.lr * g) / avg


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
            **Optimizer._check(hp),
            "lr_decay": _number("lr_decay", hp["lr_decay"]),
            "weight_decay": _number("weight_decay", hp["weight_decay"]),
            "initial_accumulator_value": _number("initial_accumulator_value", hp["initial_accumulator_value"]),
            "eps": _number("eps", hp["eps"], low_open=True),
        }

    @classmethod
    def _state_keys(cls, hp: dict[str, Any]) -> tuple[str, ...]:
        return ("sum",)

    def _update(self, i: int, p: Any, g: Any, t: int) -> None:
        xp = self._xp(i)
        st = self.state.get(i)
        if st is None:
            st = self.state[i] = {"sum": xp.full_like(p.value, self.initial_accumulator_value)}
        if self.weight_decay != 0:
            g = g + self.weight_decay * p.value
        clr = self.lr / (1.0 + (t - 1) * self.lr_decay)
        s = st["sum"]
        s += g * g
        st["sum"] = s
        p.value -= (clr * g) / (xp.sqrt(s) + self.eps)




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
    """An optimizer of the type in `state`, on `params`, carrying that state (arrays may be anywhere)."""
    opt = OPTIMIZERS.lookup(str(state.get("type", "")))(params, **state.get("hyperparams", {}))
    if source is not None:
        state = _state_to_host(state, source)
    opt.load_state_dict(state)
    return opt


def _state_to_host(state: Any, source: Backend) -> Any:
    if isinstance(state, dict):
        return {k: _state_to_host(v, source) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_state_to_host(v, source) for v in state)
    if source.owns(state):
        return source.to_host(state)
    return state
