"""The JAX adapter's fast path: the whole training step compiled with `jax.jit`.

The portable step runs op by op through JAX's eager dispatch, which at small shapes
costs far more than the arithmetic. Here the same step -- the layers' own ``forward``
and ``backward``, the loss's ``value_and_grad``, the regularizers' penalty and
gradient, the gradient transforms, the finite check and the optimizer's update --
is traced once per input shape and dtype into one pure function

    (parameter values, optimizer state, buffers, lr, t, RNG counter, batch, finite flags)
        -> (new values, new state, new buffers, loss, outputs, gradients, finite flags)

and compiled. Gradients are nnx's own (no ``jax.grad``): tracing binds tracers into
the `Parameter`, `Buffer` and optimizer-state objects for the duration of the trace,
runs the portable code on them, reads the results back out and restores the objects.
Everything a step changes is an output, so nothing of a trace survives it.

What varies from step to step without changing the program is an input: the
learning rate (a schedule never recompiles), the optimizer's update count ``t``
(Adagrad's decay; Adam's bias corrections are computed on the host, exactly as its
``_update`` does, and passed in) and the dropout stream's counter (so the masks are
those the uncompiled path draws, not constants of the trace). Hyper-parameters other
than the learning rate, layer settings and the loss are constants of the program;
when one of them changes the step is traced again.

The finite check is the deferred one of `nnx.training.TrainStep`, computed inside:
a step applies only while every step of the epoch so far was finite (a selection in
the program), and the host reads the verdict once per epoch.

Declarations: as for the NumPy fast path, what the compiled step handles is listed
by exact class (a subclass may change the math or keep state the trace cannot see):
the layers, losses, regularizers, optimizers and gradient transforms below. Anything
else -- a user's layer, loss or optimizer, an ``on_gradients`` callback, gradient
accumulation, data-parallel averaging -- makes `compiled_step` return None, and the
portable stages run.
"""

from __future__ import annotations

import functools
import importlib
import math
import weakref
from typing import Any

from .optimizer_rules import BUILTIN_OPTIMIZER_HYPERPARAMS

__all__ = ["CompiledStep", "FastPath"]

# -- declarations ----------------------------------------------------------------------------------

_LAYERS = ("Dense", "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "Softmax", "Identity", "Dropout", "BatchNorm",
           "LayerNorm", "Flatten")
_LOSSES = ("MSE", "MAE", "BinaryCrossEntropy", "CrossEntropy")
_REGULARIZERS = ("L1", "L2", "ElasticNet")
_TRANSFORMS = ("ClipByNorm", "ClipByValue")
# Adam and AdamW fold host floats of t into their update (math.sqrt, a test for an update that underflows),
# which a traced t cannot reach: the step computes those numbers on the host as `_update` does and runs the
# rule below on them. The other optimizers' own `_update` runs in the trace.
_HOST_SCALARS = ("Adam", "AdamW")


@functools.cache
def _declared() -> dict[str, frozenset]:
    """The declared classes by kind, resolved once through nnx's public modules."""
    mods = {name: importlib.import_module(f"nnx.{name}")
            for name in ("layers", "losses", "regularizers", "optim", "training.transforms", "backends.jax")}
    return {
        "layers": frozenset(getattr(mods["layers"], n) for n in _LAYERS),
        "losses": frozenset(getattr(mods["losses"], n) for n in _LOSSES),
        "regularizers": frozenset(getattr(mods["regularizers"], n) for n in _REGULARIZERS),
        "transforms": frozenset(getattr(mods["training.transforms"], n) for n in _TRANSFORMS),
        "optimizers": frozenset(getattr(mods["optim"], n) for n in BUILTIN_OPTIMIZER_HYPERPARAMS),
        "host_scalars": frozenset(getattr(mods["optim"], n) for n in _HOST_SCALARS),
        "rng": frozenset({mods["backends.jax"].JaxRNG}),
    }


def _config(obj: Any) -> str:
    """What an object's settings are, as a constant of the program depends on them."""
    if obj is None:
        return "None"
    get = getattr(obj, "get_config", None)
    return repr(get()) if get is not None else repr(vars(obj))


def plan(model: Any, loss: Any, optimizer: Any, transforms: list[Any]) -> tuple | None:
    """The signature of the program for this model, loss, optimizer and transforms, or None when not declared."""
    d = _declared()
    # a method replaced on one object (a test's or a user's hook) runs only in the portable stages
    patched = [(optimizer, ("step", "_update")), (loss, ("value_and_grad",)),
               *((layer, ("forward", "backward")) for layer in model.layers)]
    if any(name in getattr(obj, "__dict__", {}) for obj, names in patched for name in names):
        return None
    if type(optimizer) not in d["optimizers"] or not set(optimizer.hyperparams) <= set(
            BUILTIN_OPTIMIZER_HYPERPARAMS[type(optimizer).__name__]):
        return None
    if type(model.dropout_rng) not in d["rng"]:
        return None
    n_run, head, _ = model.output_head(loss)
    if type(loss) not in d["losses"] or type(head) not in d["losses"]:
        return None
    if any(type(t) not in d["transforms"] for t in transforms):
        return None
    regs = [model.regularizer] + [getattr(layer, "regularizer", None) for layer in model.layers]
    if any(r is not None and type(r) not in d["regularizers"] for r in regs):
        return None
    if any(type(layer) not in d["layers"] for layer in model.layers):
        return None
    params = model.parameters()
    if not params or len({id(p) for p in params}) != len(params) or list(optimizer.params) != params:
        return None  # the optimizer must update exactly the model's parameters, each once
    return (tuple(map(id, model.layers)), tuple(_config(layer) for layer in model.layers),
            tuple(map(id, params)), tuple(map(id, model.buffers())), _config(model.regularizer), n_run,
            type(head), _config(head), type(optimizer), _hyper(optimizer),
            tuple((type(t), _config(t)) for t in transforms), model.dropout_rng.seed)


def _hyper(optimizer: Any) -> tuple:
    """The optimizer's hyper-parameters that are constants of the program (all but lr)."""
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in optimizer.hyperparams.items() if k != "lr")


class FastPath:
    """The JAX fast path, reached as ``backend.fastpath``: `compiled_step` (the other hooks answer None)."""

    def __init__(self) -> None:
        # one compiled step per model, kept while the model lives, so a later fit reuses its programs
        self._steps: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def train_step(self, model: Any, loss: Any) -> None:
        """No buffered forward/backward pass of the NumPy kind: the whole step compiles instead."""
        return None

    def fuse(self, optimizer: Any) -> None:
        """No fused eager update: the compiled step runs the update."""
        return None

    def compiled_step(self, model: Any, loss: Any, optimizer: Any, transforms: list[Any],
                      check_finite: bool) -> CompiledStep | None:
        """The compiled training step for these objects, or None when one of them is not declared."""
        signature = plan(model, loss, optimizer, transforms)
        if signature is None:
            return None
        signature = (*signature, bool(check_finite))
        step = self._steps.get(model)
        if step is None or step.signature != signature:
            step = CompiledStep(model, loss, optimizer, transforms, check_finite, signature)
            self._steps[model] = step
        else:
            step.rebind(loss, optimizer, transforms)
        return step


class CompiledStep:
    """One training step of a model as a compiled JAX program; see the module docstring.

    Calling it runs forward, loss, backward, the transforms, the finite check and the
    update for one batch and writes the results into the parameters, buffers, gradients
    and optimizer state. It keeps the epoch's deferred verdict (`end_epoch`, `reset`).

    Attributes:
        traces: how many times the step was traced (compiled) so far, for tests.
    """

    def __init__(self, model: Any, loss: Any, optimizer: Any, transforms: list[Any], check_finite: bool,
                 signature: tuple) -> None:
        jax = importlib.import_module("jax")  # the library (pyright would resolve this adapter package's jax.py)
        jnp = importlib.import_module("jax.numpy")

        self.jax, self.jnp = jax, jnp
        self.signature = signature
        self._model = weakref.ref(model)  # the step is kept per model: a strong reference would keep it alive
        self.params = model.parameters()
        self.buffers = model.buffers()
        self.rng = model.dropout_rng
        self.check_finite = bool(check_finite)
        self.device = model.backend.device
        self.traces = 0
        self._draws: int | None = None
        self.rebind(loss, optimizer, transforms)
        self._jit = jax.jit(self._pure)
        self.reset()

    def _live_model(self) -> Any:
        """The model this step belongs to (the step lives only as long as its model)."""
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this compiled step no longer exists")
        return model

    def rebind(self, loss: Any, optimizer: Any, transforms: list[Any]) -> None:
        """Use these (equally configured) objects from now on, e.g. those of a later fit."""
        model = self._live_model()
        self.n_run, self.head, _ = model.output_head(loss)
        self.optimizer = optimizer
        self.transforms = list(transforms)
        self._host_scalars = type(optimizer) in _declared()["host_scalars"]
        self._keys = optimizer._state_keys(optimizer.hyperparams)
        self._hyper_names = tuple(k for k in optimizer.hyperparams if k != "lr")
        self._hyper_values = tuple(getattr(optimizer, k) for k in self._hyper_names)
        self._lr: float | None = None
        self._lr_device: Any = None

    # -- the epoch's deferred verdict ------------------------------------------------------------
    # The step's small integers travel as one int64 vector (each 0-d input or output of a program costs
    # about as much as a small matmul on a CPU): t, the dropout counter, the step's index in the epoch,
    # whether every step of the epoch so far was finite (1/0) and the index of the first that was not (-1).
    _T, _COUNTER, _INDEX, _OK, _FIRST_BAD = range(5)

    def reset(self) -> None:
        """Forget the epoch's verdict (a new epoch, or after a refused or interrupted step)."""
        self._index = 0
        self._expect: tuple | None = None  # the host counters (t, dropout counter) the device carry matches
        self._carry: Any = None
        self._start: tuple | None = None

    def end_epoch(self) -> int | None:
        """The index of the epoch's first non-finite step (one read), or None; counters put back to match."""
        carry, start = self._carry, self._start
        self.reset()
        if carry is None or start is None or not self.check_finite:
            return None
        first = int(self.jax.device_get(carry)[self._FIRST_BAD])
        if first < 0:
            return None
        self._restore(start, first)
        return first

    def _restore(self, start: tuple, updates: int) -> None:
        """The optimizer's host counters as after `updates` steps from `start` (the device kept those arrays)."""
        opt = self.optimizer
        count, param_steps, had_state = start
        opt.step_count = count + updates
        opt._param_steps[:] = [s + updates for s in param_steps]
        if updates == 0:
            for i in set(opt.state) - had_state:
                del opt.state[i]

    # -- one step -----------------------------------------------------------------------------
    def __call__(self, X: Any, y: Any, sample_weight: Any = None, read_check: bool = False) -> tuple[Any, Any, bool]:
        """Run one step; returns (loss incl. penalty, head outputs, finite).

        `finite` is read from the device only with `read_check` (a callback handles
        non-finite steps itself); otherwise it is True and `end_epoch` tells.
        """
        opt, jnp = self.optimizer, self.jnp
        hyper = tuple(getattr(opt, k) for k in self._hyper_names)
        if hyper != self._hyper_values:  # a callback changed a hyper-parameter the program holds as a constant
            self._hyper_values = hyper
            self._jit = self.jax.jit(self._pure)
        params = self.params
        steps = opt._param_steps
        t, counter = steps[0] + 1, self.rng.counter
        if self._index == 0:
            self._start = (opt.step_count, list(steps), set(opt.state))
            self._carry = self._put(jnp.asarray([t, counter, 0, 1, -1], dtype=jnp.int64))
        elif (t, counter) != self._expect:  # something moved the host counters mid-epoch: send them
            self._carry = self._carry.at[:2].set(jnp.asarray([t, counter], dtype=jnp.int64))
        lr = opt.lr
        if lr != self._lr:
            self._lr, self._lr_device = lr, self._put(jnp.asarray(lr))  # weakly typed, as a Python float traces
        self._index += 1
        state = opt.state
        had_state = set(state) if read_check else None
        keys = self._keys
        states = tuple(tuple(state[i][k] for k in keys) if i in state else () for i in range(len(params)))
        scalars = self._put(jnp.asarray(self._adam_scalars(t), dtype=jnp.float64)) if self._host_scalars else None
        out = self._jit(tuple(p.value for p in params), states, tuple(b.value for b in self.buffers),
                        self._lr_device, self._carry, scalars, X, y, sample_weight)
        values, new_states, bufs, grads, value, Z, self._carry = out
        for p, v, g in zip(params, values, grads, strict=True):
            p.value, p.grad = v, g
        for b, v in zip(self.buffers, bufs, strict=True):
            b.value = v
        for i, st in enumerate(new_states):
            if st:
                state[i] = dict(zip(keys, st, strict=True))
        opt.step_count += 1
        steps[:] = [s + 1 for s in steps]
        self.rng.counter += self._draws or 0
        self._expect = (t + 1, self.rng.counter)
        if not read_check or not self.check_finite or int(self.jax.device_get(self._carry)[self._OK]):
            return value, Z, True
        # refused, and a callback stops on it: the program kept every array; the counters follow
        opt.step_count -= 1
        steps[:] = [s - 1 for s in steps]
        for i in set(state) - (had_state or set()):
            del state[i]
        self._expect = None
        return value, Z, False

    def _put(self, x: Any) -> Any:
        return self.jax.device_put(x, self.device)

    def _adam_scalars(self, t: int) -> tuple[float, float, float]:
        """Adam's per-step host floats, computed as `nnx.optim.Adam._update` computes them (and 1.0: no step)."""
        opt = self.optimizer
        beta1, beta2 = opt.betas
        bc1 = 1.0 - beta1**t
        bc2_sqrt = math.sqrt(1.0 - beta2**t)
        step_size = opt.lr / bc1
        if bc2_sqrt * step_size == 0.0:
            return 1.0, 1.0, 1.0  # the step underflows to nothing: `_update` returns without moving p
        return 1.0 / (bc2_sqrt * step_size), opt.eps / step_size, 0.0

    # -- the traced function ------------------------------------------------------------------
    def _pure(self, values: tuple, states: tuple, bufs: tuple, lr: Any, carry: Any, scalars: Any,
              X: Any, y: Any, w: Any) -> tuple:
        """The step as a pure function of its inputs (runs only while JAX traces it); see `reset` for `carry`."""
        jnp = self.jnp
        self.traces += 1
        t, counter, index = carry[self._T], carry[self._COUNTER], carry[self._INDEX]
        model, opt, rng = self._live_model(), self.optimizer, self.rng
        params, buffers = self.params, self.buffers
        saved = ([(p.value, p.grad) for p in params], [b.value for b in buffers], opt.state, opt._lr,
                 rng.counter)
        draws = [0]

        def draw(shape: tuple[int, ...], label: str) -> Any:
            draws[0] += 1
            return type(rng)._draw(rng, shape, label)

        keys = self._keys
        try:
            for p, v in zip(params, values, strict=True):
                p.value, p.grad = v, None
            for b, v in zip(buffers, bufs, strict=True):
                b.value = v
            opt.state = {i: dict(zip(keys, st, strict=True)) for i, st in enumerate(states) if st}
            opt._lr = lr
            rng.counter = counter
            rng._draw = draw  # counts the draws; the counter itself is the traced input
            # forward + loss, backward: `nnx.training.TrainStep.forward_loss` and `backward`
            Z = model.forward_to_head(X, self.n_run, training=True)
            if w is None:
                value, dZ = self.head.value_and_grad(y, Z, check=False)
            else:
                value, dZ = self.head.value_and_grad(y, Z, check=False, sample_weight=w)
            penalty = model.penalty()
            if penalty is not None:
                value = value + penalty
            model.backward_from_head(dZ, self.n_run, need_dX=False)
            new_bufs = tuple(b.value for b in buffers)
            ok_now = None
            if self.check_finite:  # `TrainStep.check`, before the transforms
                ok_now = jnp.all(jnp.isfinite(value))
                for p in params:
                    ok_now = ok_now & jnp.all(jnp.isfinite(p.grad))
            rows = int(X.shape[0])
            for transform in self.transforms:
                transform.apply(params, rows)
            grads = tuple(p.grad for p in params)
            # the update: `Optimizer.step` without its host bookkeeping (the caller counts)
            if self._host_scalars:
                for i, p in enumerate(params):
                    self._adam_update(i, p, p.grad, scalars)
            else:
                for i, p in enumerate(params):
                    opt._update(i, p, p.grad, t)
            new_values = tuple(p.value for p in params)
            new_states = tuple(tuple(opt.state[i][k] for k in keys) if i in opt.state else ()
                               for i in range(len(params)))
        finally:
            for p, (v, g) in zip(params, saved[0], strict=True):
                p.value, p.grad = v, g
            for b, v in zip(buffers, saved[1], strict=True):
                b.value = v
            opt.state, opt._lr, rng.counter = saved[2], saved[3], saved[4]
            rng.__dict__.pop("_draw", None)
        if self._draws is not None and self._draws != draws[0]:
            raise RuntimeError(f"the compiled step drew {draws[0]} dropout masks, a previous trace {self._draws}")
        self._draws = draws[0]
        if ok_now is None:
            carry = carry.at[:3].add(jnp.asarray([1, draws[0], 1], dtype=carry.dtype))
            return new_values, new_states, new_bufs, grads, value, Z, carry
        # the deferred check: apply only while every step of the epoch so far, this one included, was finite
        ok_in = carry[self._OK] != 0
        keep = ok_in & ok_now
        new_values = tuple(jnp.where(keep, new, old) for new, old in zip(new_values, values, strict=True))
        new_states = tuple(
            tuple(jnp.where(keep, new, old) for new, old in zip(st, states[i], strict=True)) if states[i]
            else tuple(jnp.where(keep, new, jnp.zeros_like(new)) for new in st)
            for i, st in enumerate(new_states))
        # buffers move in the forward pass, before the check: as the per-step check leaves them, the refused
        # step's forward counts and later ones do not
        new_bufs = tuple(jnp.where(ok_in, new, old) for new, old in zip(new_bufs, bufs, strict=True))
        first_bad = jnp.where(ok_in & ~ok_now, index, carry[self._FIRST_BAD])
        carry = jnp.stack([t + 1, counter + draws[0], index + 1, keep.astype(carry.dtype), first_bad])
        return new_values, new_states, new_bufs, grads, value, Z, carry

    def _adam_update(self, i: int, p: Any, g: Any, scalars: tuple) -> None:
        """`nnx.optim.Adam._update` (and AdamW's), operation for operation, on the host floats of `_adam_scalars`."""
        jnp, opt = self.jnp, self.optimizer
        # host floats, rounded to the model's dtype as Python floats are where the eager update uses them
        inv_denominator, eps_term = (self.jnp.astype(scalars[k], p.value.dtype) for k in (0, 1))
        underflow = scalars[2] != 0
        lr, (beta1, beta2), wd = opt.lr, opt.betas, opt.weight_decay
        st = opt.state.get(i)
        if st is None:
            st = opt.state[i] = {k: jnp.zeros_like(p.value) for k in self._keys}
        if wd != 0:
            if opt._decoupled:
                p.value = p.value * (1.0 - lr * wd)
            else:
                g = g + wd * p.value
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m = m + (1.0 - beta1) * (g - m)
        v = v * beta2
        v = v + (1.0 - beta2) * (g * g)
        st["exp_avg"], st["exp_avg_sq"] = m, v
        if opt.amsgrad:
            v = st["max_exp_avg_sq"] = jnp.maximum(st["max_exp_avg_sq"], v)
        moved = p.value - m / (jnp.sqrt(v) * inv_denominator + eps_term)
        # an update that underflows moves p no further (than the decay), as `_update` returns early
        p.value = jnp.where(underflow, p.value, moved)
