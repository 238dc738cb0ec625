"""Unusual but legitimate user code under the derived executions: each gives the plain loop's numbers or error.

Each test trains two identical models, one with the derived executions on (flat buffers, the
replayed rule, JAX's compiled step and epochs) and one with them off
(`Backend.with_fastpath(False)`), and compares them, as tests/test_execution.py does.
"""

from __future__ import annotations

import decimal
import enum
import functools
import gc
import math
import random
import sys
import types
import weakref

import array_api_compat
import numpy as np
import pytest
from numpy import ndim as numpy_ndim
from numpy.random import standard_normal
from test_execution import _assert_same  # weights, buffers, loss history and optimizer state
from user_code import matrix_decay

import nnx
from nnx import optim


def _data(n=48, seed=0):
    """Three full batches of 16: one batch shape, so JAX compiles one step, and the plain loop's ops compile once."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6)), rng.integers(0, 3, n)


def _train(backend, dtype, fast, make_opt, layers=None, epochs=3, **fit):
    layers = layers() if layers is not None else [nnx.Dense(6, 9), nnx.ReLU(), nnx.Dense(9, 3)]
    model = nnx.Sequential(*layers, backend=backend.with_fastpath(fast), dtype=dtype, seed=3)
    opt = make_opt(model.parameters())
    X, y = _data()
    history = model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=epochs, batch_size=16, **fit)
    return model, opt, history


class EveryOtherBias(nnx.Dense):
    """A user's Dense that trains its bias on every second step only, counted in a Python attribute."""

    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features)
        self.calls = 0

    def backward(self, dY, need_dX=True):
        dX = super().backward(dY, need_dX)
        self.calls += 1
        if self.calls % 2 == 1:
            self.bias.grad = None
        return dX


def test_a_step_refused_by_the_compiler_leaves_the_layers_python_state_as_it_was(backend, dtype):
    """JAX tries to trace the step, finds the bias without a gradient and runs the plain stages instead; the
    attempt had run the layer's backward once, whose counter then stayed one ahead (the bias trained on the
    other steps than in the plain loop)."""
    runs = [_train(backend, dtype, fast, lambda ps: optim.SGD(ps, lr=0.05),
                   layers=lambda: [EveryOtherBias(6, 9), nnx.ReLU(), nnx.Dense(9, 3)]) for fast in (True, False)]
    assert runs[0][0].layers[0].calls == runs[1][0].layers[0].calls == 9
    _assert_same(*runs, dtype)


class ScaledByLargest(nnx.Layer):
    """``X * s`` with ``s`` chosen in Python from the batch's largest value: the step needs concrete values, so
    JAX's first trace fails and the plain stages run."""

    def forward(self, X, training=False):
        self.s = 0.5 if float(self.xp.max(X)) > 1.0 else 2.0
        return X * self.s

    def backward(self, dY, need_dX=True):
        return dY * self.s


class EveryBatch(nnx.callbacks.Callback):
    """Does nothing, after every batch: the fit runs step by step (each step compiled, on JAX), not whole epochs."""

    def on_batch_end(self, batch, logs=None):
        pass


@pytest.mark.parametrize("layer", [EveryOtherBias, ScaledByLargest])
def test_a_step_whose_first_trace_fails_under_a_batch_callback_still_updates(backend, dtype, layer):
    """With a batch callback JAX compiles step by step; a first trace that was refused (or needed concrete values)
    ran that batch's forward and backward plainly, but the loop, having asked for a compiled step, skipped the
    batch's update: the first batch trained nothing, silently."""
    def layers():
        if layer is ScaledByLargest:
            return [nnx.Dense(6, 9), nnx.ReLU(), ScaledByLargest(), nnx.Dense(9, 3)]
        return [EveryOtherBias(6, 9), nnx.ReLU(), nnx.Dense(9, 3)]
    runs = [_train(backend, dtype, fast, lambda ps: optim.SGD(ps, lr=0.1), layers=layers, epochs=1,
                   callbacks=[EveryBatch()]) for fast in (True, False)]
    _assert_same(*runs, dtype)


class RateFromAttribute(optim.Optimizer):
    """SGD whose rule reads ``self.lr`` rather than its `lr` argument, and keeps `scale` as a plain attribute
    (not passed to ``Optimizer.__init__`` as a hyper-parameter)."""

    elementwise = True

    def __init__(self, params, lr=0.05, scale=1.0):
        super().__init__(params, lr)
        self.scale = scale

    def update(self, xp, value, grad, state, step, lr):
        return value - self.lr * self.scale * grad, state


class Anneal(nnx.callbacks.Callback):
    """Halves the rate after every batch or epoch; sets the optimizer's `scale` to 3 from the second epoch."""

    def __init__(self, per_batch):
        self.per_batch = per_batch

    def on_batch_end(self, batch, logs=None):
        if self.per_batch:
            self.model.optimizer.lr = self.model.optimizer.lr * 0.5

    def on_epoch_end(self, epoch, logs=None):
        self.model.optimizer.lr = self.model.optimizer.lr * 0.5
        self.model.optimizer.scale = 3.0


@pytest.mark.parametrize("per_batch", [False, True], ids=["epochs", "batches"])
def test_a_rule_that_reads_its_optimizers_attributes_follows_their_changes(backend, dtype, per_batch):
    """A compiled program held ``self.lr`` and a setting kept outside the hyper-parameters as constants of its
    first trace: a schedule (per epoch or per batch) and a callback's change of the setting were ignored."""
    runs = [_train(backend, dtype, fast, RateFromAttribute, callbacks=[Anneal(per_batch)]) for fast in (True, False)]
    assert runs[0][1].lr == runs[1][1].lr == 0.05 * 0.5 ** (12 if per_batch else 3)
    _assert_same(*runs, dtype)


def test_models_whose_optimizers_differ_in_a_plain_setting_do_not_share_a_program(backend, dtype):
    """Compiled programs are shared by models of one definition; a setting the optimizer keeps as a plain attribute
    is part of it (the second model trained with the first one's scale)."""
    _train(backend, dtype, True, lambda ps: RateFromAttribute(ps, scale=1.0))
    runs = [_train(backend, dtype, fast, lambda ps: RateFromAttribute(ps, scale=2.0)) for fast in (True, False)]
    _assert_same(*runs, dtype)


class CountingMomentum(optim.Optimizer):
    """An elementwise rule whose state holds a 0-d count beside a buffer shaped like the parameter."""

    elementwise = True

    def __init__(self, params, lr=0.05):
        super().__init__(params, lr)

    def init_state(self, xp, value):
        return {"m": xp.zeros_like(value), "n": xp.zeros((), dtype=value.dtype, device=value.device)}

    def update(self, xp, value, grad, state, step, lr):
        n = state["n"] + 1.0
        m = 0.9 * state["m"] + grad
        return value - lr * m / n, {"m": m, "n": n}


def test_an_elementwise_rule_with_a_0d_state_runs_per_parameter(backend, dtype):
    """The flat update sliced the rule's 0-d state as if it were shaped like the parameters (IndexError); a
    state no flat buffer can hold leaves the step to `Optimizer.step`, parameter by parameter."""
    runs = [_train(backend, dtype, fast, CountingMomentum) for fast in (True, False)]
    _assert_same(*runs, dtype)
    assert [int(runs[0][0].backend.to_host(s["n"])) for s in runs[0][1].state.values()] == [9] * 4
    # and the history says so (it said "flat")
    assert runs[0][2].execution == ("compiled" if backend.can_compile else "plain")


class PromotingSGD(optim.Optimizer):
    """SGD that turns a float32 model's parameters (or its state) into float64 arrays."""

    elementwise = True

    def __init__(self, params, lr=0.05, in_state=False):
        super().__init__(params, lr, in_state=in_state)

    def init_state(self, xp, value):
        return {"m": xp.zeros_like(value)}

    def update(self, xp, value, grad, state, step, lr):
        if self.in_state:
            return value - lr * grad, {"m": xp.astype(state["m"], xp.float64) * 0.9 + grad}
        return value - lr * xp.astype(grad, xp.float64), state


@pytest.mark.parametrize("in_state", [False, True], ids=["value", "state"])
def test_a_rule_that_changes_an_arrays_dtype_is_named_in_every_execution(backend, in_state):
    """The plain loop turned the float32 parameters into float64 (a model of two dtypes; torch then failed in the
    next forward), the flat update cast them back into its float32 buffers, JAX's epoch program failed to carry
    them: now every execution raises the same TypeError naming the rule and the dtypes."""
    messages = []
    for fast in (True, False):
        with pytest.raises(TypeError, match=r"PromotingSGD\.update returned .*float64.* float32") as info:
            _train(backend, "float32", fast, lambda ps: PromotingSGD(ps, in_state=in_state), epochs=1)
        messages.append(str(info.value).split(" and shape")[0])  # the flat update sees one flat array
    assert messages[0] == messages[1]


class NormalizedSGD(optim.Optimizer):
    """SGD on each parameter's gradient divided by its norm: a rule that reads across elements, declared elementwise."""

    elementwise = True

    def __init__(self, params, lr=0.05):
        super().__init__(params, lr)

    def init_state(self, xp, value):
        return {}

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * grad / (xp.sqrt(xp.sum(grad * grad)) + 1e-12), state


class PerParameterNormalizedSGD(NormalizedSGD):
    """The same rule, declared as it is: each parameter updated on its own."""

    elementwise = False


@pytest.mark.parametrize("width", [9, 22_000], ids=["small", "replayed"])
def test_a_rule_declared_elementwise_that_reads_across_elements_is_named_over_flat_buffers(backend, width):
    """Over the flat buffer (all parameters concatenated) the norm mixed the parameters, and the weights differed
    from the plain loop's without a word; the replayed rule (from 131,072 parameters) refused it and called it
    plainly, with the same mix. Now the rule's first call over the buffer raises, naming the call, before anything
    is written; run parameter by parameter (the plain loop, JAX's compiled step) it trains as it is."""
    def layers():
        return [nnx.Dense(6, width), nnx.ReLU(), nnx.Dense(width, 3)]

    model = nnx.Sequential(*layers(), backend=backend, dtype="float64", seed=3)
    before = {k: model.backend.to_host(v) for k, v in model.state_dict().items()}
    if backend.can_compile:  # parameter by parameter: the plain loop's numbers
        runs = [_train(backend, "float64", fast, NormalizedSGD, layers, epochs=1) for fast in (True, False)]
        _assert_same(*runs, "float64")
        return
    with pytest.raises(TypeError, match=r"NormalizedSGD declares elementwise = True, but its update calls "
                                        r"xp\.sum across the elements .* Set elementwise = False on NormalizedSGD"):
        model.fit(*_data(), loss="cross_entropy", optimizer=NormalizedSGD(model.parameters()), epochs=1,
                  batch_size=16)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(model.backend.to_host(value), before[key], err_msg=key)
    if width > 9:
        return
    plain = _train(backend, "float64", False, NormalizedSGD, layers, epochs=1)
    # declared as it is, the rule trains parameter by parameter, to the plain loop's numbers
    _assert_same(_train(backend, "float64", True, PerParameterNormalizedSGD, layers, epochs=1), plain, "float64")


class DampedSGD(NormalizedSGD):
    """Halves every step once any gradient element passes 1: a rule reading across elements (``xp.any``)."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * grad * xp.where(xp.any(xp.abs(grad) > 1.0), 0.5, 1.0), state


class StackedNormSGD(NormalizedSGD):
    """Normalises by a sum over a stack or a concatenation of the gradient: arrays twice the buffer's size."""

    def __init__(self, params, lr=0.05, kind="stack"):
        super().__init__(params, lr)
        self.kind = kind

    def update(self, xp, value, grad, state, step, lr):
        doubled = xp.stack([grad, grad]) if self.kind == "stack" else xp.concat([grad, grad])
        return value - lr * grad / (1.0 + xp.sum(doubled * doubled)), state


@pytest.mark.parametrize("kind", ["stack", "concat"])
def test_a_rule_reading_across_a_stack_of_the_buffer_is_named(backend, kind):
    """Found in review of cf3cd20: only arrays exactly as large as the buffer were looked at."""
    if backend.can_compile:
        pytest.skip("JAX's compiled step runs the rule parameter by parameter: its own numbers")
    model = nnx.Sequential(nnx.Dense(6, 9), nnx.ReLU(), nnx.Dense(9, 3), backend=backend, dtype="float64", seed=3)
    with pytest.raises(TypeError, match=r"StackedNormSGD declares elementwise = True, but its update calls xp\.sum"):
        model.fit(*_data(), loss="cross_entropy", optimizer=StackedNormSGD(model.parameters(), kind=kind), epochs=1,
                  batch_size=16)


def test_a_rule_reading_across_elements_with_any_is_named_over_flat_buffers(backend):
    """Found in review of a3568ee: xp.any, xp.all and xp.count_nonzero had been let through as guards, and mixed
    the parameters over the flat buffer without a word."""
    if backend.can_compile:
        pytest.skip("JAX's compiled step runs the rule parameter by parameter: its own numbers")
    model = nnx.Sequential(nnx.Dense(6, 9), nnx.ReLU(), nnx.Dense(9, 3), backend=backend, dtype="float64", seed=3)
    with pytest.raises(TypeError, match=r"DampedSGD declares elementwise = True, but its update calls xp\.any"):
        model.fit(*_data(), loss="cross_entropy", optimizer=DampedSGD(model.parameters()), epochs=1, batch_size=16)


def _decay_rate(value, rate):
    """A helper beside the rule: decay for matrices, none for vectors (biases), as AdamW setups often do."""
    return rate if value.ndim > 1 else 0.0


class ShapedSGD(NormalizedSGD):
    """Rules declared elementwise that read their arrays' shape: each element reads only itself, but over the flat
    buffer the shape is the buffer's, one vector of every parameter."""

    def __init__(self, params, lr=0.05, kind="ndim"):
        super().__init__(params, lr)
        self.kind, self.size = kind, 3.0  # `self.size` is a setting of its own, not an array's size

    def _decayed(self, value, grad):
        return grad + 0.5 * value if value.ndim > 1 else grad

    def update(self, xp, value, grad, state, step, lr):
        if self.kind == "ndim":  # in a method it calls
            return value - lr * self._decayed(value, grad), state
        if self.kind == "module helper":
            return value - lr * (grad + _decay_rate(value, 0.5) * value), state
        return value - lr * grad / math.sqrt(value.shape[0] * self.size), state


@pytest.mark.parametrize("kind", ["ndim", "module helper", "shape"])
def test_an_elementwise_rule_reading_its_arrays_shape_runs_per_parameter(backend, kind):
    """Over the flat buffer ``value.ndim`` was 1 for every parameter, so a rule decaying matrices only decayed
    nothing, and one scaled by ``value.shape[0]`` scaled by the buffer's length: 0.39 off the plain loop's weights on
    NumPy and torch without a word. Read from the rule's code, such a rule now runs parameter by parameter."""
    runs = [_train(backend, "float64", fast, lambda ps: ShapedSGD(ps, kind=kind)) for fast in (True, False)]
    _assert_same(*runs, "float64")
    assert runs[0][2].execution == ("compiled" if backend.can_compile else "plain")


def _rate(value):
    return 0.5 if value.ndim > 1 else 0.0


def _undecorated(function):  # a decorator without functools.wraps: the function is in its closure
    def wrapper(*args):
        return function(*args)
    return wrapper


class _Rates:
    """A rate in another class."""

    rate = staticmethod(_rate)


class ByLen(NormalizedSGD):
    """Divides by len(value)."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * grad / len(value), state


class ByOtherModule(NormalizedSGD):
    """Decays matrices by a helper of another module."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * (grad + matrix_decay(value, 0.5) * value), state


class ByTypeOfSelf(NormalizedSGD):
    """Decays matrices by a staticmethod reached through type(self)."""

    rate = staticmethod(_rate)

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * (grad + type(self).rate(value) * value), state


class ByGetattr(NormalizedSGD):
    """Scales by getattr(value, "ndim")."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * grad * getattr(value, "ndim"), state  # noqa: B009


class ByTorchMethod(NormalizedSGD):
    """Scales by torch's value.dim()."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * grad * value.dim(), state


class ByOtherClass(NormalizedSGD):
    """Decays matrices by another class's staticmethod."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * (grad + _Rates.rate(value) * value), state


class ByDecorated(NormalizedSGD):
    """Decays matrices by a method decorated without functools.wraps."""

    @_undecorated
    def _rate(self, value):
        return 0.5 if value.ndim > 1 else 0.0

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * (grad + self._rate(value) * value), state


class ByAlias(NormalizedSGD):
    """Decays matrices by np.ndim under another name."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * (grad + (0.5 if numpy_ndim(value) > 1 else 0.0) * value), state


def _rows_scale(g):
    return 0.5 if len(g) > 5 else 1.0


class ByHelperLen(NormalizedSGD):
    """Scales by a helper taking len() of the gradient (found in review of 790e64b: 0.03 off when unseen)."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * grad * _rows_scale(grad), state


SPELLED = (ByLen, ByOtherModule, ByTypeOfSelf, ByGetattr, ByTorchMethod, ByOtherClass, ByDecorated, ByAlias,
           ByHelperLen)


def test_shape_dependence_reads_the_rules_code():
    from nnx import shape_reads
    from nnx.shape_reads import shape_dependence

    params = nnx.Sequential(nnx.Dense(2, 2)).parameters()
    for name, cls in optim.OPTIMIZERS.items():  # nnx's own rules read no shape (so they are not read at a fit)
        if cls.__module__.startswith("nnx."):
            assert shape_reads._reads(cls, cls.update, True)[0] is None, name
            assert shape_dependence(cls(params, lr=0.1)) is None, name
    assert shape_dependence(NormalizedSGD(params)) is None
    assert shape_dependence(ShapedSGD(params)) == "ShapedSGD.update reads .shape of an array"

    class DecayedSGD(ShapedSGD):
        """Found in the method its update calls (``self.size`` is no array's)."""

        def update(self, xp, value, grad, state, step, lr):
            return value - lr * self._decayed(value, grad) / self.size, state

    assert shape_dependence(DecayedSGD(params)) == "ShapedSGD._decayed reads .ndim of an array"

    class Matrices(NormalizedSGD):
        """Multiplies by a matrix."""

        def update(self, xp, value, grad, state, step, lr):
            return value - lr * (grad @ xp.eye(grad.shape[-1])), state

    class Preconditioned(Matrices):
        """Through super(), from a subclass's own update."""

        def update(self, xp, value, grad, state, step, lr):
            return super().update(xp, value, grad, state, step, 2 * lr)

    class Explicit(Matrices):
        """super(Cls, self), as Python 2 wrote it."""

        def update(self, xp, value, grad, state, step, lr):
            return super(Explicit, self).update(xp, value, grad, state, step, 2 * lr)  # noqa: UP008

    assert shape_dependence(Matrices(params)) is not None
    assert "Matrices.update" in shape_dependence(Preconditioned(params))
    assert "Matrices.update" in shape_dependence(Explicit(params))

    # found in review: spellings the first reading missed, each 0.18-0.39 off the plain loop's weights
    for spelled in SPELLED:  # one spelling each: a class found by another read would prove nothing
        assert shape_dependence(spelled(params)) is not None, spelled.__name__

    class Static(NormalizedSGD):
        """An update with no self: its first argument is xp."""

        @staticmethod
        def update(xp, value, grad, state, step, lr):
            return value - lr * grad * value.ndim, state

    assert shape_dependence(Static(params)) == "test_shape_dependence_reads_the_rules_code.<locals>.Static.update " \
        "reads .ndim of an array"

    # found in review of 95a82ef: a rule reaching the read through what the object holds, a partial, a callable
    # object, a closure, a table or another class (each 0.39 off the plain loop's weights when missed)
    class Wrapper(NormalizedSGD):
        """Hands the step to an optimizer it holds (Lookahead's way)."""

        def __init__(self, params, inner):
            super().__init__(params)
            self.inner = inner

        def update(self, xp, value, grad, state, step, lr):
            return self.inner.update(xp, value, grad, state, step, lr)

    assert shape_dependence(Masked(params, lambda v: 1.0 if v.ndim > 1 else 0.0)) is not None
    assert shape_dependence(Masked(params, lambda v: 1.0)) is None
    assert shape_dependence(Wrapper(params, ShapedSGD(params))) == "ShapedSGD.update reads .shape of an array"
    assert shape_dependence(Wrapper(params, NormalizedSGD(params))) is None

    class Settings(NormalizedSGD):
        """What is not a read of an array's shape: torch's ``len(state) == 0``, a setting named size in a config
        the object holds, ``getattr(self, ...)``, ``len`` of a setting."""

        cfg = types.SimpleNamespace(size=2.0, mode="size")

        def update(self, xp, value, grad, state, step, lr):
            first = len(state) == 0
            eps = getattr(self, "eps", 1e-8) * len(self.cfg.mode)
            return value - lr * grad / (self.cfg.size + eps + first), state

    assert shape_dependence(Settings(params)) is None

    class Zeros(NormalizedSGD):
        """Reads the shape only to make zeros of it."""

        def update(self, xp, value, grad, state, step, lr):
            return value - lr * (grad + xp.zeros(value.shape, dtype=value.dtype)), state

    # the shape read only to make an array of it: the flat update is given up, never a number
    assert shape_dependence(Zeros(params)) == "test_shape_dependence_reads_the_rules_code.<locals>.Zeros.update " \
        "reads .shape of an array"


class ShapedStartSGD(NormalizedSGD):
    """Reads no shape in its update, but its initial state depends on the parameter's: an accumulator started at 0.1
    for matrices (``kind="start"``), or momentum kept for matrices only (``kind="keys"``)."""

    def __init__(self, params, lr=0.05, kind="start"):
        super().__init__(params, lr)
        self.kind = kind

    def init_state(self, xp, value):
        if self.kind == "start":
            return {"acc": xp.full_like(value, 0.1 if value.ndim > 1 else 0.0)}
        return {"buf": xp.zeros_like(value)} if value.ndim > 1 else {}

    def update(self, xp, value, grad, state, step, lr):
        if "acc" in state:
            acc = state["acc"] + grad * grad
            return value - lr * grad / (xp.sqrt(acc) + 1e-8), {"acc": acc}
        if "buf" in state:
            buf = 0.9 * state["buf"] + grad
            return value - lr * buf, {"buf": buf}
        return value - lr * grad, state


@pytest.mark.parametrize("kind", ["start", "keys"])
def test_an_initial_state_shaped_by_its_parameter_is_made_parameter_by_parameter(backend, kind):
    """Found in review: the flat update called init_state once over the flat buffer, so an accumulator started by
    the parameter's ndim started at 0 for all (0.149 off the plain loop's weights), and momentum kept for matrices
    only was kept for none (0.263 off). The initial state is now made parameter by parameter and joined."""
    runs = [_train(backend, "float64", fast, lambda ps: ShapedStartSGD(ps, kind=kind)) for fast in (True, False)]
    _assert_same(*runs, "float64")
    if not backend.can_compile:  # keys that differ between parameters cannot be joined: parameter by parameter
        assert runs[0][2].execution == ("flat" if kind == "start" else "plain")


class _Policy:
    """A strategy object of the user's, holding the decision in a method."""

    def rate(self, value):
        return 0.5 if value.ndim > 1 else 0.0


POLICY = _Policy()
RULES = [_rate]  # a table of functions, in a module global


class ByHeldObject(NormalizedSGD):
    """Asks a policy object it holds."""

    def __init__(self, params):
        super().__init__(params)
        self.policy = _Policy()

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * (grad + self.policy.rate(value) * value), state


class ByGlobalObject(NormalizedSGD):
    """Asks a policy object at module level."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * (grad + POLICY.rate(value) * value), state


class ByDefault(NormalizedSGD):
    """Takes its helper as a default argument."""

    def update(self, xp, value, grad, state, step, lr, rate=_rate):
        return value - lr * (grad + rate(value) * value), state


class ByLocalImport(NormalizedSGD):
    """Imports its helper inside update."""

    def update(self, xp, value, grad, state, step, lr):
        from user_code import matrix_decay as decay

        return value - lr * (grad + decay(value, 0.5) * value), state


class ByTable(NormalizedSGD):
    """Takes its helper from a table of functions."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * (grad + RULES[0](value) * value), state


class ByOwnTable(NormalizedSGD):
    """Takes its helper from a table its class keeps."""

    rules = (_rate,)

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * (grad + self.rules[0](value) * value), state


class ByDunder(NormalizedSGD):
    """Scales by value.__len__()."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * grad / value.__len__(), state


def _no_decay(value):
    return 0.0


class ByRedefinable(NormalizedSGD):
    """Decays by a module helper that a notebook may define again."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * (grad + _helper(value) * value), state


_helper = _no_decay


def test_shape_reads_reached_through_objects_imports_defaults_and_tables():
    """Found in review of 61b9e2c: each of these ran over the flat buffer, 0.01-0.26 off the plain loop's weights."""
    from nnx.shape_reads import shape_dependence

    params = nnx.Sequential(nnx.Dense(2, 2)).parameters()
    for cls in (ByHeldObject, ByGlobalObject, ByDefault, ByLocalImport, ByTable, ByOwnTable, ByDunder):
        assert shape_dependence(cls(params)) is not None, cls.__name__


def test_a_helper_defined_again_is_read_again(monkeypatch):
    """Found in review: the reading was kept for the class, so a helper defined again in a notebook (now reading
    the shape) still counted as none: 0.084 off the plain loop's weights."""
    from nnx.shape_reads import shape_dependence

    params = nnx.Sequential(nnx.Dense(2, 2)).parameters()
    assert shape_dependence(ByRedefinable(params)) is None
    monkeypatch.setattr(sys.modules[__name__], "_helper", _rate)
    assert shape_dependence(ByRedefinable(params)) == "_rate reads .ndim of an array"
    monkeypatch.setattr(ByRedefinable, "update", ByLen.update)  # a method replaced on the class
    assert shape_dependence(ByRedefinable(params)) is not None


class _RaisingProxy:
    """A lazy proxy whose attributes raise outside its context (werkzeug's LocalProxy)."""

    def __getattr__(self, name):
        raise RuntimeError("working outside of the context")


def test_what_an_optimizer_holds_is_read_without_keeping_it_alive_or_failing():
    """Found in review: a mask function made per optimizer was kept by the cache with everything it closes over
    (3 models of 3 stayed alive), and a held proxy whose attributes raise made fit fail."""
    X, y = _data()
    kept = []
    for _ in range(3):
        model = nnx.Sequential(nnx.Dense(6, 3), dtype="float64", seed=0)
        opt = Masked(model.parameters(), lambda v, model=model: 1.0)
        opt.proxy = _RaisingProxy()
        model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=16)
        kept.append(weakref.ref(model))
        del model, opt
    gc.collect()
    assert not any(ref() is not None for ref in kept)


class Masked(NormalizedSGD):
    """Decays where a mask function it holds says (optax's decay_mask)."""

    def __init__(self, params, mask):
        super().__init__(params)
        self.mask = mask

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * (grad + 0.5 * self.mask(value) * value), state


class SwitchedDecaySGD(ShapedSGD):
    """Decays matrices only, from a rate a callback switches on after the first epoch: over flat buffers the first
    steps agree with the per-parameter rule, and the later ones do not."""

    def __init__(self, params, lr=0.05):
        super().__init__(params, lr)
        self.rate = 0.0

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * (grad + self.rate * value if value.ndim > 1 else grad), state


class SwitchDecayOn(nnx.callbacks.Callback):
    """Switches SwitchedDecaySGD's decay on after the first epoch."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.optimizer.rate = 0.5


def test_a_rule_whose_shape_dependence_shows_late_runs_per_parameter(backend):
    """Found in review: the flat update compared the rule's first step with its results parameter by parameter, and
    a decay switched on later (or a warm-up) then ran over the flat buffer, 0.27 off the plain loop's weights."""
    runs = [_train(backend, "float64", fast, SwitchedDecaySGD, callbacks=[SwitchDecayOn()]) for fast in (True, False)]
    _assert_same(*runs, "float64")
    assert runs[0][2].execution == ("compiled" if backend.can_compile else "plain")


class TableSGD(NormalizedSGD):
    """Elementwise rules that call functions reading across elements, but not across the buffer's: a reduction along
    an axis of their own (of two elements, of one), a fixed codebook searched and taken from."""

    def __init__(self, params, lr=0.05, kind="stacked", entries=5):
        super().__init__(params, lr)
        self.kind, self.entries = kind, entries

    def update(self, xp, value, grad, state, step, lr):
        if self.kind == "stacked":
            return value - lr * grad / (1.0 + xp.max(xp.stack([xp.abs(grad), xp.abs(value)]), axis=0)), state
        if self.kind == "new axis":
            return value - lr * xp.sum(grad[..., None], axis=-1), state
        if self.kind == "sorted pair":  # each element's larger of |grad| and |value|, along the stack's last axis
            pair = xp.sort(xp.stack([xp.abs(grad), xp.abs(value)], axis=-1), axis=-1)
            return value - lr * grad / (1.0 + pair[..., 1]), state
        return value - lr * grad, state


class CodebookSGD(TableSGD):
    """Snaps a tenth of each step to a fixed codebook: searched over the flattened values, reshaped back."""

    def update(self, xp, value, grad, state, step, lr):
        # `entries` values: 186 is twice the model's 93 parameters, and still a table, not a stack of them
        grid = xp.linspace(-1.0, 1.0, self.entries, dtype=value.dtype, device=value.device)
        new = value - lr * grad
        at = xp.clip(xp.searchsorted(grid, xp.reshape(new, (-1,))), 0, self.entries - 1)
        snapped = xp.reshape(xp.take(grid, at), new.shape)
        return 0.9 * new + 0.1 * snapped, state


@pytest.mark.parametrize("kind", ["stacked", "new axis", "sorted pair", "codebook", "codebook of twice the size"])
def test_an_elementwise_rule_reading_across_other_arrays_trains_over_flat_buffers(backend, kind):
    # (found in review of bd129ad: a codebook of a multiple of the buffer's size was taken for a stack of it)
    entries = 186 if kind == "codebook of twice the size" else 5
    kind = kind.split(" of ")[0]
    rule = CodebookSGD if kind == "codebook" else TableSGD
    runs = [_train(backend, "float64", fast, lambda ps: rule(ps, kind=kind, entries=entries)) for fast in (True, False)]
    _assert_same(*runs, "float64")
    if backend.can_compile:
        # (a traced array has no `.device`: the codebook's rule runs op by op on JAX)
        assert runs[0][2].execution == "compiled" or kind == "codebook"
    else:
        # (the codebook reshapes back to ``new.shape``: a rule reading its arrays' shape runs parameter by parameter)
        assert runs[0][2].execution == ("plain" if kind == "codebook" else "flat")


class HostNoise(nnx.Layer):
    """Gaussian noise in training, drawn from a NumPy generator the layer keeps (not the model's stream)."""

    def __init__(self, std=0.5, seed=0):
        super().__init__()
        self.std = std
        self.generator = np.random.default_rng(seed)

    def forward(self, X, training=False):
        if not training:
            return X
        return X + self.std * self.backend.asarray(self.generator.standard_normal(tuple(X.shape)), dtype=self.dtype)

    def backward(self, dY, need_dX=True):
        return dY

    def get_config(self):
        return {"type": "HostNoise", "std": self.std}


def test_a_layer_drawing_from_its_own_host_generator_gets_fresh_draws_every_step(backend, dtype):
    """JAX's compiled programs drew the noise once, when traced, and added that same constant at every step; a
    layer that draws on the host runs its own code step by step, from the generator's state before the trace."""
    layers = lambda: [nnx.Dense(6, 9), HostNoise(), nnx.ReLU(), nnx.Dense(9, 3)]  # noqa: E731
    runs = [_train(backend, dtype, fast, lambda ps: optim.SGD(ps, lr=0.05), layers=layers) for fast in (True, False)]
    _assert_same(*runs, dtype)
    if backend.can_compile:
        assert "random generator 'generator'" in runs[0][2].execution_reason


MODULE_GENERATOR = np.random.default_rng(5)


class OutsideNoise(nnx.Layer):
    """Noise in training from a host generator the layer does not keep: NumPy's global one, one at module level, a
    function imported from ``numpy.random``, or Python's global one."""

    def __init__(self, source="numpy"):
        super().__init__()
        self.source = source

    def forward(self, X, training=False):
        if not training:
            return X
        shape = tuple(X.shape)
        if self.source == "python":
            return X * (1.0 + 0.1 * random.gauss(0.0, 1.0))
        noise = np.random.standard_normal(shape) if self.source == "numpy" else \
            MODULE_GENERATOR.standard_normal(shape) if self.source == "module" else standard_normal(shape)
        return X + 0.5 * self.backend.asarray(noise, dtype=self.dtype)

    def backward(self, dY, need_dX=True):
        return dY


@pytest.mark.parametrize("source", ["numpy", "module", "imported", "python"])
def test_a_layer_drawing_from_a_generator_outside_it_gets_fresh_draws_every_step(backend, dtype, source):
    """The recorded passes (NumPy) and JAX's programs drew from NumPy's or Python's global generator, or one at
    module level, once, and replayed that noise at every step; now such a layer runs plainly, from the generator's
    state before the recording or the trace."""
    runs = []
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(6, 9), OutsideNoise(source), nnx.ReLU(), nnx.Dense(9, 3),
                               backend=backend.with_fastpath(fast), dtype=dtype, seed=3)
        opt = optim.SGD(model.parameters(), lr=0.05)
        np.random.seed(0), random.seed(0)
        MODULE_GENERATOR.bit_generator.state = np.random.default_rng(5).bit_generator.state
        history = model.fit(*_data(), loss="cross_entropy", optimizer=opt, epochs=3, batch_size=16)
        runs.append((model, opt, history))
    _assert_same(*runs, dtype)
    # (a function imported from numpy.random draws from NumPy's global generator, named once)
    name = {"module": "MODULE_GENERATOR", "python": "random"}.get(source, "numpy.random")
    assert f"from the random generator {name!r} on the host" in (runs[0][2].execution_reason or "") \
        or not backend.can_compile


SYSTEM_RANDOM = random.SystemRandom()


class TaggedScale(nnx.Layer):
    """Draws only when made: a name from the system's entropy, a scale from NumPy's global generator."""

    def __init__(self):
        super().__init__()
        self.tag = f"scale-{SYSTEM_RANDOM.randrange(10**6)}"
        self.scale = float(np.random.uniform(0.5, 1.5))

    def forward(self, X, training=False):
        return X * self.scale

    def backward(self, dY, need_dX=True):
        return dY * self.scale


def test_a_layer_drawing_only_when_made_keeps_every_execution(backend, dtype):
    """Found in review: a module-level SystemRandom the constructor reads crashed fit on NumPy (it has no state to
    compare) and left JAX step by step; a generator whose state is unchanged costs no repr of it (1.3 ms a
    recording for NumPy's global one)."""
    def layers():
        np.random.seed(1)  # the same scale for both runs
        return [nnx.Dense(6, 9), TaggedScale(), nnx.ReLU(), nnx.Dense(9, 3)]

    runs = [_train(backend, dtype, fast, lambda ps: optim.SGD(ps, lr=0.05), layers=layers) for fast in (True, False)]
    _assert_same(*runs, dtype)
    assert runs[0][2].execution == ("compiled" if backend.can_compile else "flat")


SYSTEM_DRAWS: list[float] = []  # (a log outside the layer: one it kept would be Python state of its own)


class SystemNoise(nnx.Layer):
    """Adds a number drawn from the system's entropy (no state) at every training step."""

    def __init__(self):
        super().__init__()
        self.source = SYSTEM_RANDOM

    def forward(self, X, training=False):
        if not training:
            return X
        SYSTEM_DRAWS.append(self.source.random())
        return X + SYSTEM_DRAWS[-1]

    def backward(self, dY, need_dX=True):
        return dY


def test_a_layer_drawing_from_the_systems_entropy_draws_at_every_step(backend):
    """Found in review of f380904: a SystemRandom (no state to compare) was passed over, so NumPy's recording and
    JAX's program drew from it once and added that number at every step. It now counts as drawn from whenever
    looked at, and the layer runs its own code every step."""
    SYSTEM_DRAWS.clear()
    model = nnx.Sequential(nnx.Dense(6, 3), SystemNoise(), backend=backend, dtype="float64", seed=3)
    X = _data()[0]
    history = model.fit(X, X[:, :3], loss="mse", optimizer="sgd", epochs=2, batch_size=16, shuffle=False, verbose=0)
    assert len(set(SYSTEM_DRAWS)) >= 6  # 2 epochs of 3 batches, each its own draw
    if backend.can_compile:
        assert "reads the SystemRandom 'source'" in history.execution_reason


class DenseList(nnx.Layer):
    """A user's block applying, in order, the Dense layers it lists in `items` (all of them held)."""

    def __init__(self, n=2):
        super().__init__()
        self.items = [self.add_layer(str(i), nnx.Dense(6, 6)) for i in range(n)]

    def forward(self, X, training=False):
        for layer in self.items:
            X = layer.forward(X, training)
        return X

    def backward(self, dY, need_dX=True):
        for layer in reversed(self.items):
            dY = layer.backward(dY)
        return dY


@pytest.mark.parametrize("source", ["arrays", "batches"])
def test_a_sub_layer_dropped_between_fits_stays_as_it_is(backend, dtype, source):
    """On JAX, the second fit's epoch program found the dropped layer's parameters without a gradient, and its
    refusal escaped as an internal TraceRefused, since an earlier fit had traced; the epoch now runs step by step
    (as it does where the layer is dropped before the first fit), and the dropped layer stays as it is."""
    X, y = _data()
    data = {"arrays": (X, y), "batches": ([(X[i:i + 16], y[i:i + 16]) for i in range(0, 48, 16)],)}[source]
    runs = []
    for fast in (True, False):
        model = nnx.Sequential(DenseList(), nnx.Dense(6, 3), backend=backend.with_fastpath(fast), dtype=dtype, seed=3)
        model.fit(*data, loss="cross_entropy", optimizer="adam", epochs=1, batch_size=16)
        dropped = model.layers[0].items.pop()
        kept = {p.name: backend.to_host(p.value) for p in dropped.parameters()}
        history = model.fit(*data, epochs=2, batch_size=16)
        for p in dropped.parameters():
            np.testing.assert_array_equal(backend.to_host(p.value), kept[p.name], err_msg=p.name)
        runs.append((model, model.optimizer, history))
    _assert_same(*runs, dtype)
    if backend.can_compile:
        assert "leaves 0.1.weight, 0.1.bias without a gradient" in runs[0][2].execution_reason


class ScaledBySetting(nnx.Layer):
    """A user's layer with a plain setting, ``X * scale``: its config is the constructor's argument."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale

    def forward(self, X, training=False):
        return X * self.scale

    def backward(self, dY, need_dX=True):
        return dY * self.scale


class ScaledBySlot(ScaledBySetting):
    """The same layer keeping its setting in a slot, which an object's ``__dict__`` does not show."""

    __slots__ = ("scale",)


class ChangeSettings(nnx.callbacks.Callback):
    """Doubles the user layer's scale and turns dropout off, after every batch or epoch."""

    def __init__(self, per_batch):
        self.per_batch = per_batch

    def _change(self):
        self.model.layers[2].scale *= 2.0
        self.model.layers[3].rate = 0.0

    def on_batch_end(self, batch, logs=None):
        if self.per_batch:
            self._change()

    def on_epoch_end(self, epoch, logs=None):
        self._change()


@pytest.mark.parametrize("scaled", [ScaledBySetting, ScaledBySlot], ids=["attribute", "slot"])
@pytest.mark.parametrize("per_batch", [False, True], ids=["epochs", "batches"])
def test_a_layer_setting_changed_between_calls_is_what_the_next_program_uses(backend, dtype, per_batch, scaled):
    """A compiled program held a layer's plain settings as constants of its first trace, and was kept while the
    layer's config stayed the same: a user's layer keeps its settings outside its config, so a setting changed by
    a callback, or between two fits or predicts, was ignored (and a step without dropout still counted a mask).
    A setting in a slot went unseen by the watches (NumPy's replay too): such a layer's steps run plainly."""
    layers = lambda: [nnx.Dense(6, 9), nnx.Tanh(), scaled(1.0), nnx.Dropout(0.4), nnx.Dense(9, 3)]  # noqa: E731
    runs = []
    for fast in (True, False):
        model, opt, history = _train(backend, dtype, fast, lambda ps: optim.SGD(ps, lr=0.01), layers=layers,
                                     epochs=2, callbacks=[ChangeSettings(per_batch)])
        model.layers[2].scale = 0.5
        predicted = backend.to_host(model.predict(_data()[0][:16]))  # a batch's rows: its ops compiled
        model.fit(*_data(), loss="cross_entropy", optimizer=opt, epochs=1, batch_size=16)
        runs.append(((model, opt, history), predicted))
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-5 if dtype == "float32" else 1e-12)
    _assert_same(runs[0][0], runs[1][0], dtype)


SHIFT = 0.0  # a module global `OutsideSettings` reads; `ChangeOutsideSettings` and the test set it


def _plus_shift(X):
    return X + SHIFT


class OutsideSettings(nnx.Layer):
    """``X * scale + SHIFT``, where `scale` is a class attribute no instance shadows and `SHIFT` a module global
    that a helper function reads; `forwards` counts the Python calls of its forward, in a class attribute its own
    code writes."""

    scale = 1.0
    forwards = 0

    def forward(self, X, training=False):
        type(self).forwards += 1
        return _plus_shift(X * self.scale)

    def backward(self, dY, need_dX=True):
        return dY * self.scale


def _set_outside(scale, shift):
    global SHIFT
    OutsideSettings.scale, SHIFT = scale, shift


class ChangeOutsideSettings(nnx.callbacks.Callback):
    """Doubles the class's scale after even epochs and raises the global shift after odd ones: one at a time, so
    that a change of one does not hide that the other went unseen."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch % 2:
            _set_outside(OutsideSettings.scale, SHIFT + 0.25)
        else:
            _set_outside(OutsideSettings.scale * 2.0, SHIFT)


def test_a_class_attribute_or_global_the_layer_reads_is_a_setting_and_its_own_counter_is_not(backend, dtype):
    """NumPy's recorded passes and JAX's programs held the values a layer's code read from its class or module as
    constants of their first recording or trace: changed by a callback, between fits, or before a new model of the
    same classes was built (which takes JAX's shared programs), they went unseen. A class attribute the layer's own
    code writes (a call counter) is its state, not a setting: watching it would trace every step again."""
    layers = lambda: [nnx.Dense(6, 9), nnx.Tanh(), OutsideSettings(), nnx.Dense(9, 3)]  # noqa: E731
    runs, forwards = [], []
    for fast in (True, False):
        _set_outside(1.0, 0.0)
        OutsideSettings.forwards = 0
        model, opt, history = _train(backend, dtype, fast, lambda ps: optim.SGD(ps, lr=0.05), layers=layers,
                                     epochs=3, callbacks=[ChangeOutsideSettings()])
        forwards.append(OutsideSettings.forwards)
        _set_outside(OutsideSettings.scale, -0.1)
        predicted = backend.to_host(model.predict(_data()[0][:16]))  # a batch's rows: its ops compiled
        model.fit(*_data(), loss="cross_entropy", optimizer=opt, epochs=1, batch_size=16)
        _set_outside(3.0, SHIFT)
        later = _train(backend, dtype, fast, lambda ps: optim.SGD(ps, lr=0.05), layers=layers, epochs=1)
        runs.append(((model, opt, history), predicted, later))
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-5 if dtype == "float32" else 1e-12)
    _assert_same(runs[0][0], runs[1][0], dtype)
    _assert_same(runs[0][2], runs[1][2], dtype)
    if backend.can_compile or backend.tape() is not None:  # traced or recorded once per setting, not every step
        assert forwards[0] < forwards[1] == 9, forwards


class SignOfZero(nnx.Layer):
    """Multiplies by the sign of `zero`, a class attribute 0.0 or -0.0 (copysign tells them apart)."""

    zero = 0.0

    def forward(self, X, training=False):
        self._sign = math.copysign(1.0, type(self).zero)
        return X * self._sign

    def backward(self, dY, need_dX=True):
        return dY * self._sign


class SignedL2(nnx.regularizers.Regularizer):
    """L2 at 0.05, its sign that of ``signs[0]``, a list the regularizer keeps (0.0 or -0.0)."""

    def __init__(self):
        self.signs = [0.0]

    def penalty(self, W):
        return math.copysign(0.025, self.signs[0]) * array_api_compat.array_namespace(W).sum(W * W)

    def gradient(self, W):
        return W * math.copysign(0.05, self.signs[0])


class NegatesZeros(nnx.callbacks.Callback):
    """Turns the layer's class attribute and the regularizer's list entry from 0.0 to -0.0 after the first
    epoch."""

    def on_epoch_end(self, epoch, logs=None):
        SignOfZero.zero = -0.0
        self.model.regularizer.signs[0] = -0.0


def test_a_setting_turned_from_0_to_minus_0_is_a_change(backend, dtype):
    """Found by mutation testing: the watches compared a class attribute or a global with ``!=``, and a list a
    regularizer keeps with its copy so, where -0.0 equals 0.0, so a setting turned to -0.0 by a callback went unseen by
    JAX's program (0.116 off the plain loop's weights), though a program's key tells them apart."""
    runs = []
    for fast in (True, False):
        SignOfZero.zero = 0.0
        model = nnx.Sequential(nnx.Dense(6, 4), SignOfZero(), nnx.Dense(4, 1), backend=backend.with_fastpath(fast),
                               dtype=dtype, seed=3, regularizer=SignedL2())
        X = _data()[0]
        opt = optim.SGD(model.parameters(), lr=0.05)
        history = model.fit(X, X[:, :1], loss="mse", optimizer=opt, epochs=3, batch_size=16,
                            callbacks=[NegatesZeros()])
        runs.append((model, opt, history))
    _assert_same(runs[0], runs[1], dtype)


TABLE = np.ones(3)  # a module global `ReadsATable` reads; `RebindsTheTable` replaces it, read-only, each batch
SIGN_ZERO = np.float64(0.0)  # a NumPy scalar the same layer reads; the callback flips its sign each batch


def _read_only(values):
    table = np.array(values, dtype=np.float64)
    table.flags.writeable = False
    return table


class ReadsATable(nnx.Layer):
    """Scales its input by `TABLE` and by the sign of `SIGN_ZERO`, both module globals."""

    def forward(self, X, training=False):
        self._scale = self.xp.asarray(TABLE * math.copysign(1.0, float(SIGN_ZERO)), dtype=X.dtype,
                                      device=array_api_compat.device(X))
        return X * self._scale

    def backward(self, dY, need_dX=True):
        return dY * self._scale


class RebindsTheTable(nnx.callbacks.Callback):
    """After each batch: a new read-only `TABLE`, and `SIGN_ZERO` turned between 0.0 and -0.0."""

    def on_batch_end(self, batch, logs=None):
        global TABLE, SIGN_ZERO
        TABLE = _read_only([1.0, 2.0, 3.0 + batch])
        SIGN_ZERO = np.float64(-0.0 if batch % 2 == 0 else 0.0)


def test_a_global_array_or_numpy_scalar_rebound_during_a_fit_is_a_change(backend, dtype):
    """Found in review of fe69c15: the watch of class attributes and globals compared an array or a NumPy scalar
    rebound to another object with ``!=``: a read-only table made fit fail ("truth value of an array is
    ambiguous"), and np.float64(-0.0) for 0.0 went unseen by NumPy's recording and JAX's program."""
    global TABLE, SIGN_ZERO
    X = _data()[0][:, :3]
    runs = []
    for fast in (True, False):
        TABLE, SIGN_ZERO = _read_only([1.0, 2.0, 3.0]), np.float64(0.0)
        model = nnx.Sequential(ReadsATable(), nnx.Dense(3, 1), backend=backend.with_fastpath(fast), dtype=dtype,
                               seed=3)
        opt = optim.SGD(model.parameters(), lr=0.01)
        history = model.fit(X, X.sum(axis=1, keepdims=True), loss="mse", optimizer=opt, epochs=2, batch_size=16,
                            callbacks=[RebindsTheTable()])
        runs.append((model, opt, history))
    _assert_same(runs[0], runs[1], dtype)


class TwoScales(enum.Enum):
    """A setting kept as an enum member."""

    ONE = 1.0
    TWO = 2.0


# (the value before, the value a callback alternates with it, what the layer scales by): each a module global
# that `ScalesByAGlobal` reads, of a kind the watches once skipped or keyed as another kind's equal
GLOBAL_KINDS = {
    "enum member": (TwoScales.ONE, TwoScales.TWO, lambda g: g.value),
    "Decimal": (decimal.Decimal(1), decimal.Decimal(2), float),
    "complex -0j": (complex(1, 0.0), complex(1, -0.0), lambda g: math.copysign(1.0, g.imag)),
    "True for 1": (1, True, lambda g: 2.0 if type(g) is bool else 1.0),
    "(True,) for (1,)": ((1,), (True,), lambda g: 2.0 if type(g[0]) is bool else 1.0),
}
SCALE_SETTING, SCALE_OF = None, None


class ScalesByAGlobal(nnx.Layer):
    """Scales its input by ``SCALE_OF(SCALE_SETTING)``, both module globals."""

    def forward(self, X, training=False):
        return X * SCALE_OF(SCALE_SETTING)

    def backward(self, dY, need_dX=True):
        return dY * SCALE_OF(SCALE_SETTING)


class AlternatesTheGlobal(nnx.callbacks.Callback):
    """Sets `SCALE_SETTING` to one value or the other after each batch."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def on_batch_end(self, batch, logs=None):
        global SCALE_SETTING
        SCALE_SETTING = self.second if batch % 2 == 0 else self.first


@pytest.mark.parametrize("kind", list(GLOBAL_KINDS))
def test_a_global_setting_of_another_kind_changed_during_a_fit_is_a_change(backend, kind):
    """Found in review: complex numbers, Decimals, Fractions, enum members and subclasses of int or str were no
    settings at all, and True keyed as 1 (alone or in a tuple), so NumPy's recording and JAX's program kept the
    value they first read where the plain loop read the new one."""
    global SCALE_SETTING, SCALE_OF
    first, second, SCALE_OF = GLOBAL_KINDS[kind]
    X = _data()[0][:, :3]
    runs = []
    for fast in (True, False):
        SCALE_SETTING = first
        model = nnx.Sequential(ScalesByAGlobal(), nnx.Dense(3, 1), backend=backend.with_fastpath(fast),
                               dtype="float64", seed=3)
        opt = optim.SGD(model.parameters(), lr=0.01)
        history = model.fit(X, X.sum(axis=1, keepdims=True), loss="mse", optimizer=opt, epochs=2, batch_size=16,
                            callbacks=[AlternatesTheGlobal(first, second)])
        runs.append((model, opt, history))
    _assert_same(runs[0], runs[1], "float64")


class WeightedHalfSquares(nnx.losses.Loss):
    """Half the squared error per row times `weight`, a class attribute."""

    weight = 1.0

    def rows(self, xp, y_true, y_pred):
        diff = y_pred - y_true
        return self.weight * 0.5 * xp.sum(diff * diff, axis=1), self.weight * diff / y_pred.shape[0]


class ScaledStepSGD(optim.Optimizer):
    """SGD whose step is scaled by `scale`, a class attribute."""

    elementwise = True
    scale = 1.0

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * self.scale * grad, state


class ChangeClassSettings(nnx.callbacks.Callback):
    """Doubles the loss's weight after even epochs and halves the optimizer's scale after odd ones, on their
    classes: one at a time, as `ChangeOutsideSettings`."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch % 2:
            ScaledStepSGD.scale *= 0.5
        else:
            WeightedHalfSquares.weight *= 2.0


def _train_regression(backend, dtype, fast, epochs, callbacks=()):
    model = nnx.Sequential(nnx.Dense(6, 9), nnx.Tanh(), nnx.Dense(9, 1), backend=backend.with_fastpath(fast),
                           dtype=dtype, seed=3)
    X = _data()[0]
    opt = ScaledStepSGD(model.parameters(), lr=0.05)
    history = model.fit(X, X[:, :1] - X[:, 1:2], loss=WeightedHalfSquares(), optimizer=opt, epochs=epochs,
                        batch_size=16, callbacks=list(callbacks))
    return model, opt, history


def test_a_class_attribute_a_loss_or_an_optimizer_reads_is_a_setting(backend, dtype):
    """The same held for a user's loss and optimizer: a weight or a scale kept on their class, changed by a callback,
    between fits or before a new model was built, was a constant of the first program."""
    runs = []
    for fast in (True, False):
        WeightedHalfSquares.weight, ScaledStepSGD.scale = 1.0, 1.0
        model, opt, history = _train_regression(backend, dtype, fast, 3, [ChangeClassSettings()])
        WeightedHalfSquares.weight = 3.0
        X = _data()[0]
        model.fit(X, X[:, :1] - X[:, 1:2], loss=WeightedHalfSquares(), optimizer=opt, epochs=1, batch_size=16)
        ScaledStepSGD.scale = 4.0
        runs.append(((model, opt, history), _train_regression(backend, dtype, fast, 1)))
    _assert_same(runs[0][0], runs[1][0], dtype)
    _assert_same(runs[0][1], runs[1][1], dtype)


def _identity(a):
    return a


def _doubled(a):
    return 2.0 * a


class BodySGD(optim.SGD):
    """SGD on ``body(grad)``, a function its class holds."""

    elementwise = True
    body = staticmethod(_identity)

    def update(self, xp, value, grad, state, step, lr):
        return super().update(xp, value, self.body(grad), state, step, lr)


class BodyLayer(nnx.Layer):
    """``act(X)`` forward and ``act(dY)`` backward, with a function its class holds."""

    act = staticmethod(_identity)

    def forward(self, X, training=False):
        return self.act(X)

    def backward(self, dY, need_dX=True):
        return self.act(dY)


@pytest.mark.parametrize("owner", [BodySGD, BodyLayer], ids=["optimizer", "layer"])
def test_a_function_a_class_holds_replaced_between_fits_is_what_the_next_fit_runs(backend, dtype, owner):
    """Found in review: NumPy's recorded passes and JAX's programs held the old function (0.38 off the plain loop's
    weights for the layer, 0.08 for the optimizer on JAX); a class attribute was watched only for plain values."""
    name = "body" if owner is BodySGD else "act"
    runs = []
    try:
        for fast in (True, False):
            setattr(owner, name, staticmethod(_identity))
            model, opt, _ = _train(backend, dtype, fast, lambda ps: BodySGD(ps, lr=0.05), epochs=1,
                                   layers=lambda: [nnx.Dense(6, 9), BodyLayer(), nnx.Dense(9, 3)])
            setattr(owner, name, staticmethod(_doubled))
            X, y = _data()
            runs.append((model, opt, model.fit(X, y, epochs=2, batch_size=16)))
    finally:
        setattr(owner, name, staticmethod(_identity))
    _assert_same(*runs, dtype)


class Mut4LinalgNormSGD(NormalizedSGD):
    """Divides by ``xp.linalg.vector_norm(grad)``: reads across elements through the linalg namespace."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * grad / (xp.linalg.vector_norm(grad) + 1e-12), state


def test_a_rule_reading_across_elements_through_xp_linalg_is_named_over_flat_buffers(backend):
    """Found by mutation testing: only functions of `xp` itself were checked, not those of its ``linalg`` (and ``fft``)
    namespaces, so an elementwise rule dividing by ``xp.linalg.vector_norm(grad)`` trained over the flat buffer with
    the norm of all parameters mixed, other weights than the plain loop's without a word."""
    if backend.can_compile:
        pytest.skip("JAX's compiled step runs the rule parameter by parameter: its own numbers")
    model = nnx.Sequential(nnx.Dense(6, 9), nnx.ReLU(), nnx.Dense(9, 3), backend=backend, dtype="float64", seed=3)
    with pytest.raises(TypeError, match=r"Mut4LinalgNormSGD declares elementwise = True, but its update calls "
                                        r"xp\.linalg\.vector_norm"):
        model.fit(*_data(), loss="cross_entropy", optimizer=Mut4LinalgNormSGD(model.parameters()), epochs=1,
                  batch_size=16)


class Mut4PositionalAxisSGD(NormalizedSGD):
    """Sums along a new axis of one element, given positionally (``xp.nansum(g[..., None], -1)``): elementwise."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * xp.nansum(grad[..., None], -1), state


def test_an_elementwise_rule_reducing_along_a_positional_axis_of_one_element_trains_over_flat_buffers(backend):
    """Found by mutation testing: an axis given as the second positional argument was not read, so the sum along a
    new axis of one element was taken as one over every element and the rule was refused over the flat buffer (a
    TypeError where the plain loop trains). (The array API's own reductions take the axis by keyword only: NumPy's
    and torch's ``nansum`` take it positionally.)"""
    if not hasattr(backend.xp, "nansum"):
        pytest.skip(f"{backend.name}'s namespace has no nansum")
    runs = [_train(backend, "float64", fast, Mut4PositionalAxisSGD) for fast in (True, False)]
    _assert_same(*runs, "float64")
    assert runs[0][2].execution == ("compiled" if backend.can_compile else "flat")


def _mut4_decay_mask(value, rate):
    """Decay for matrices only, at `rate` (`Mut4ByPartial` holds it as a ``functools.partial``)."""
    return rate if value.ndim > 1 else 0.0


class Mut4ByMatch(NormalizedSGD):
    """Decays matrices, told by ``case object(ndim=2)``."""

    def update(self, xp, value, grad, state, step, lr):
        match value:
            case object(ndim=2):
                return value - lr * (grad + 0.5 * value), state
            case _:
                return value - lr * grad, state


class Mut4ByLenOfGrad(NormalizedSGD):
    """Divides by len(grad) (the second array of update's, after value)."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * grad / len(grad), state


class Mut4ByIterGrad(NormalizedSGD):
    """Divides by the count of a loop over the gradient (its first axis)."""

    def update(self, xp, value, grad, state, step, lr):
        n = 0
        for _ in grad:
            n += 1
        return value - lr * grad / n, state


class Mut4ByPartial(NormalizedSGD):
    """Decays matrices, by a ``functools.partial`` of a module helper it holds (optax's decay_mask)."""

    def __init__(self, params, lr=0.05):
        super().__init__(params, lr)
        self.mask = functools.partial(_mut4_decay_mask, rate=0.5)

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * (grad + self.mask(value) * value), state


@pytest.mark.parametrize("rule, read", [
    (Mut4ByMatch, "Mut4ByMatch.update matches an array's shape"),
    (Mut4ByLenOfGrad, "Mut4ByLenOfGrad.update calls len() of an array"),
    (Mut4ByIterGrad, "Mut4ByIterGrad.update iterates over an array"),
    (Mut4ByPartial, "_mut4_decay_mask reads .ndim of an array"),
], ids=["match class", "len of grad", "iterating grad", "held partial"])
def test_a_shape_read_by_match_len_or_loop_over_grad_or_a_held_partial_runs_per_parameter(backend, rule, read):
    """Found by mutation testing: ``case object(ndim=2)``, ``len(grad)``, ``for _ in grad`` and a held
    ``functools.partial`` of a helper reading ``value.ndim`` each had one reading of the rule's code alone seeing
    them; missed, the rule ran over the flat buffer, where every parameter is one vector (0.05-0.4 off the plain
    loop's weights)."""
    from nnx.shape_reads import shape_dependence

    assert shape_dependence(rule(nnx.Sequential(nnx.Dense(2, 2)).parameters())) == read
    if rule in (Mut4ByLenOfGrad, Mut4ByIterGrad):
        probe = backend.asarray(np.zeros(2))
        try:
            len(probe), next(iter(probe))
        except TypeError:
            pytest.skip(f"{backend.name}'s arrays have no len() and refuse iteration (array-api-strict)")
    runs = [_train(backend, "float64", fast, rule) for fast in (True, False)]
    _assert_same(*runs, "float64")
    assert runs[0][2].execution == ("compiled" if backend.can_compile else "plain")
