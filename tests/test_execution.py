"""Derived executions give the plain loop's numbers, for built-ins and for a user's code alike.

`fit` runs the training step plainly, with the optimizer's elementwise rule applied once
over flat buffers, or (JAX) as one compiled program traced from the model's own code. Each
test trains two identical models, one with derived executions on and one with them off
(`Backend.with_fastpath(False)`), and compares weights, optimizer state and losses: to
1e-12 in float64 and 1e-5 in float32, with the same NaN/inf behaviour. Which execution ran
is read from `History.execution`; nothing here reads private state.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from user_code import SetAfterFirstEpoch, UserDense

import nnx
from nnx import optim


def _tol(dtype):
    return {"rtol": 1e-12, "atol": 1e-14} if dtype == "float64" else {"rtol": 1e-5, "atol": 1e-6}


def _derived(backend) -> str:
    return "compiled" if backend.can_compile else "flat"


# -- a user's layer, loss and optimizer, written with the public API only ------------------------

class ExecUserAdam(optim.Optimizer):
    """torch's Adam written as a user's pure rule."""

    elementwise = True

    def __init__(self, params, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8):
        super().__init__(params, lr, beta1=beta1, beta2=beta2, eps=eps)

    def init_state(self, xp, value):
        return {"m": xp.zeros_like(value), "v": xp.zeros_like(value)}

    def update(self, xp, value, grad, state, step, lr):
        m = self.beta1 * state["m"] + (1.0 - self.beta1) * grad
        v = self.beta2 * state["v"] + (1.0 - self.beta2) * (grad * grad)
        denom = xp.sqrt(v) / (1.0 - self.beta2**step) ** 0.5 + self.eps
        return value - (lr / (1.0 - self.beta1**step)) * (m / denom), {"m": m, "v": v}


class ExecUserNormalizedSGD(optim.Optimizer):
    """Steps by the gradient divided by its parameter's norm: NOT elementwise, so it runs parameter by parameter."""

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * grad / (xp.sqrt(xp.sum(grad * grad)) + 1e-12), state


class ExecUserSquaredLoss(nnx.losses.Loss):
    """Half the squared error per row, written with the public `rows` API."""

    def rows(self, xp, y_true, y_pred):
        diff = y_pred - y_true
        n = y_pred.shape[0]
        return 0.5 * xp.sum(diff * diff, axis=1), diff / n


# -- models and data -----------------------------------------------------------------------------

MODELS = {
    "relu_ce": (lambda: [nnx.Dense(6, 9), nnx.ReLU(), nnx.Dense(9, 3)], "cross_entropy", "classes"),
    "softmax_ce": (lambda: [nnx.Dense(6, 9), nnx.Tanh(), nnx.Dense(9, 3), nnx.Softmax()], "cross_entropy",
                   "classes"),
    "sigmoid_bce_l2": (lambda: [nnx.Dense(6, 8, regularizer="l2"), nnx.LeakyReLU(0.1), nnx.Dense(8, 1),
                                nnx.Sigmoid()], "bce", "binary"),
    # BatchNorm after the activation: right after a Dense it makes that bias's gradient rounding noise,
    # which Adam's normalisation turns into steps of random sign (chaotic, whatever the execution)
    "dropout_batchnorm": (lambda: [nnx.Dense(6, 8), nnx.ReLU(), nnx.BatchNorm(), nnx.Dropout(0.3),
                                   nnx.Dense(8, 3)], "cross_entropy", "classes"),
    # 6-8-3, as the BatchNorm model's Dense layers: the same op shapes, none of its own to compile on JAX
    "user_dense_user_loss": (lambda: [UserDense(6, 8), nnx.ReLU(), UserDense(8, 3)],
                             ExecUserSquaredLoss(), "regression"),
}


# 32 rows in batches of 16 unless a test says otherwise: one batch shape, no short last batch (which on JAX is a
# second copy of the step in every epoch program, and a second set of eager op shapes). The every-model test keeps
# the short last batch (24 rows: 16 and 8), where it is checked once for every model.
def _data(kind, n=32, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    if kind == "classes":
        y = rng.integers(0, 3, n)
    elif kind == "binary":
        y = (rng.random((n, 1)) > 0.5).astype(float)
    else:
        y = rng.standard_normal((n, 3))
    return X, y


def _train(backend, dtype, name, opt_name, kwargs, fast, epochs=3, n=32, **fit):
    make, loss, kind = MODELS[name]
    model = nnx.Sequential(*make(), backend=backend.with_fastpath(fast), dtype=dtype, seed=3)
    opt = (optim.get_optimizer(opt_name, model.parameters(), **kwargs) if isinstance(opt_name, str)
           else opt_name(model.parameters(), **kwargs))
    X, y = _data(kind, n=n)
    history = model.fit(X, y, loss=loss, optimizer=opt, epochs=epochs, batch_size=16, **fit)
    return model, opt, history


def _assert_same(a, b, dtype):
    (ma, oa, ha), (mb, ob, hb) = a, b
    for pa, pb in zip(ma.parameters(), mb.parameters(), strict=True):
        np.testing.assert_allclose(ma.backend.to_host(pa.value), mb.backend.to_host(pb.value), **_tol(dtype),
                                   err_msg=pa.name)
    for ba, bb in zip(ma.buffers(), mb.buffers(), strict=True):
        np.testing.assert_allclose(ma.backend.to_host(ba.value), mb.backend.to_host(bb.value), **_tol(dtype))
    np.testing.assert_allclose(ha["loss"], hb["loss"], **_tol(dtype))
    sa, sb = oa.state_dict(), ob.state_dict()
    assert (sa["step"], sa["param_steps"]) == (sb["step"], sb["param_steps"])
    assert sa["state"].keys() == sb["state"].keys()
    for i, entry in sa["state"].items():
        assert entry.keys() == sb["state"][i].keys()
        for key, arr in entry.items():
            np.testing.assert_allclose(ma.backend.to_host(arr), mb.backend.to_host(sb["state"][i][key]),
                                       **_tol(dtype), err_msg=f"state {i} {key}")


OPTIMIZERS = [
    ("sgd", {"lr": 0.05}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.2, "weight_decay": 1e-3}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "maximize": False}),
    ("momentum", {"lr": 0.05, "momentum": 0.8}),
    ("adam", {"lr": 0.01, "weight_decay": 1e-3}),
    ("adam", {"lr": 0.01, "amsgrad": True}),
    ("adamw", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("adagrad", {"lr": 0.05, "lr_decay": 0.01}),
    ("lion", {"lr": 0.005, "weight_decay": 0.1}),
    (ExecUserAdam, {"lr": 0.01}),
]


@pytest.mark.parametrize("opt_name,kwargs", OPTIMIZERS, ids=lambda v: v if isinstance(v, str) else
                         getattr(v, "__name__", "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict)
                                 else str(v)))
def test_every_optimizer_rule_gives_the_plain_loops_numbers(backend, dtype, opt_name, kwargs):
    # What differs between these cases is the optimizer's rule, which sees parameters and gradients, never the
    # batch or the layers: 32 rows (two full batches, one shape to compile) over two epochs (the state carried from
    # one epoch program into the next), on the file's plain relu_ce model (on JAX its epoch program compiles in
    # under half the time of the BatchNorm and dropout model's, which the model test below trains with a user's
    # rule). The short last batch is the model test's too.
    derived = _train(backend, dtype, "relu_ce", opt_name, kwargs, fast=True, epochs=2)
    plain = _train(backend, dtype, "relu_ce", opt_name, kwargs, fast=False, epochs=2)
    assert derived[2].execution == _derived(backend) and plain[2].execution == "plain"
    _assert_same(derived, plain, dtype)


def test_a_schedule_reaches_the_rule_on_every_execution(backend, dtype):
    """A schedule's rate reaches the rule each epoch, on the derived execution as on the plain one: both give the
    numbers of one-epoch fits at the scheduled rates (a rate frozen into a program or a buffer would not)."""
    runs = [_train(backend, dtype, "relu_ce", "adam", {"lr": 0.02}, fast=fast,
                   callbacks=[nnx.callbacks.StepDecay(1, gamma=0.25)]) for fast in (True, False)]
    assert runs[0][2]["lr"] == runs[1][2]["lr"] == pytest.approx([0.02, 0.005, 0.00125])
    _assert_same(*runs, dtype)
    model, opt, first = _train(backend, dtype, "relu_ce", "adam", {"lr": 0.02}, fast=True, epochs=1)
    X, y = _data("classes")
    losses = first["loss"] + [model.fit(X, y, lr=lr, epochs=1, batch_size=16)["loss"][0] for lr in (0.005, 0.00125)]
    _assert_same(runs[0], (model, opt, runs[0][2]), dtype)
    np.testing.assert_allclose(losses, runs[0][2]["loss"], **_tol(dtype))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_gives_the_plain_loops_numbers(backend, dtype, name):
    # 24 rows: batches of 16 and 8, the short last batch run after the epoch program's loop; two epochs carry the
    # state (Adam's, BatchNorm's running statistics) from one epoch program into the next
    derived = _train(backend, dtype, name, ExecUserAdam, {"lr": 0.01}, fast=True, epochs=2, n=24, clip_norm=1.0)
    plain = _train(backend, dtype, name, ExecUserAdam, {"lr": 0.01}, fast=False, epochs=2, n=24, clip_norm=1.0)
    assert derived[2].execution == _derived(backend), "a user's layer, loss and optimizer get the derived speed"
    _assert_same(derived, plain, dtype)


def test_sample_weights_and_accumulation_give_the_plain_loops_numbers(backend, dtype):
    X, y = _data("classes", n=24)  # three batches of 8: accumulating 2 leaves a last group of one
    w = np.linspace(0.5, 2.0, len(X))
    runs = []
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(6, 9), nnx.ReLU(), nnx.Dense(9, 3), backend=backend.with_fastpath(fast),
                               dtype=dtype, seed=1)
        opt = optim.Adam(model.parameters(), lr=0.01)
        h = model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=8, sample_weight=w,
                      accumulate=2)
        runs.append((model, opt, h))
    _assert_same(runs[0], runs[1], dtype)


def test_float32_updates_are_the_plain_loops_to_float_tolerance(backend):
    """The updates themselves (not only the weights, which hide them) agree in float32: Adam's bias corrections
    are computed in double precision on the host, and a compiled step once rounded beta2 ** t to float32, which
    moved each update by up to 7e-4 of itself at beta2 = 0.99999."""
    make, loss, kind = MODELS["relu_ce"]
    start = [backend.to_host(p.value) for p in nnx.Sequential(*make(), backend=backend, dtype="float32",
                                                               seed=3).parameters()]
    runs = [_train(backend, "float32", "relu_ce", "adam", {"lr": 0.01, "betas": (0.9, 0.99999)}, fast=fast, epochs=1)
            for fast in (True, False)]
    for a, b, s0 in zip(runs[0][0].parameters(), runs[1][0].parameters(), start, strict=True):
        np.testing.assert_allclose(backend.to_host(a.value) - s0, backend.to_host(b.value) - s0, rtol=2e-5, atol=1e-7)


class FrozenBiasDense(nnx.Dense):
    """A user's Dense that does not train its bias: its backward leaves the bias without a gradient."""

    def backward(self, dY, need_dX=True):
        dX = super().backward(dY, need_dX)
        self.bias.grad = None
        return dX


@pytest.mark.parametrize("check_finite", [True, False])
def test_a_parameter_left_without_a_gradient_is_skipped_alike(backend, dtype, check_finite):
    """A parameter whose gradient the backward leaves None is skipped by the optimizer (its update count stays)
    in every execution; a compiled step, which would update every parameter, runs the plain stages instead."""
    runs = []
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(6, 9), nnx.Tanh(), FrozenBiasDense(9, 3),
                               backend=backend.with_fastpath(fast), dtype=dtype, seed=1)
        opt = optim.Adam(model.parameters(), lr=0.01)
        X, y = _data("classes")
        runs.append((model, opt, model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=16,
                                           check_finite=check_finite)))
    assert runs[0][1].param_steps[-1] == 0 and 3 not in runs[0][1].state  # never updated: no state, as in torch
    _assert_same(*runs, dtype)


def test_parameters_updated_unequally_often_keep_their_own_counts(backend, dtype):
    """After the last layer was updated alone (its update counts ahead of the others'), every execution gives
    each parameter the bias correction of its own count, as the plain loop and torch.optim do."""
    runs = []
    for fast in (True, False):
        make, loss, kind = MODELS["relu_ce"]
        model = nnx.Sequential(*make(), backend=backend.with_fastpath(fast), dtype=dtype, seed=3)
        opt = optim.Adam(model.parameters(), lr=0.01)
        head = model.parameters()[2:]
        for _ in range(3):  # a warm-up of the head: the others have no gradient, so the optimizer skips them
            for p in head:
                p.grad = model.backend.asarray(np.full(p.shape, 0.1), dtype=dtype)
            opt.step()
        X, y = _data(kind)
        runs.append((model, opt, model.fit(X, y, loss=loss, optimizer=opt, epochs=2, batch_size=16)))
    assert runs[0][1].param_steps[0] + 3 == runs[0][1].param_steps[-1]
    _assert_same(*runs, dtype)


def test_a_step_hooked_on_the_optimizer_runs_at_every_update(backend):
    """A hook put on the optimizer object's `step` (or a subclass's own `step`) is what fit calls: the derived
    executions, which stand in for `Optimizer.step`, leave such an optimizer to its own step."""
    model = nnx.Sequential(nnx.Dense(6, 9), nnx.Tanh(), nnx.Dense(9, 3), backend=backend, dtype="float64", seed=1)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    calls, step = [], opt.step
    opt.step = lambda: (calls.append(1), step())
    X, y = _data("classes")
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=16)
    assert len(calls) == opt.step_count == 2


def test_a_rule_that_is_not_elementwise_runs_per_parameter(backend, dtype):
    derived = _train(backend, dtype, "relu_ce", ExecUserNormalizedSGD, {"lr": 0.05}, fast=True)
    plain = _train(backend, dtype, "relu_ce", ExecUserNormalizedSGD, {"lr": 0.05}, fast=False)
    assert derived[2].execution == ("compiled" if backend.can_compile else "plain")
    _assert_same(derived, plain, dtype)


def test_flat_update_follows_rebinding_and_reloaded_state(backend, dtype):
    """Parameters or optimizer state replaced between fits (load_state_dict) are what the next step starts from."""
    runs = []
    for fast in (True, False):
        model, opt, _ = _train(backend, dtype, "relu_ce", "adam", {"lr": 0.01}, fast=fast, epochs=1)
        model.load_state_dict({k: model.backend.to_host(v) for k, v in model.state_dict().items()})
        opt.load_state_dict(opt.state_dict())
        X, y = _data("classes", seed=1)
        h = model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=16)
        runs.append((model, opt, h))
    _assert_same(runs[0], runs[1], dtype)


def test_an_optimizer_over_some_parameters(backend, dtype):
    runs = []
    for fast in (True, False):
        make, loss, kind = MODELS["relu_ce"]
        model = nnx.Sequential(*make(), backend=backend.with_fastpath(fast), dtype=dtype, seed=3)
        opt = optim.Adam(model.parameters()[2:], lr=0.01)  # the last layer only
        X, y = _data(kind)
        runs.append((model, opt, model.fit(X, y, loss=loss, optimizer=opt, epochs=2, batch_size=16)))
    _assert_same(runs[0], runs[1], dtype)


class HalveInPlace(nnx.training.GradientTransform):
    """A user's transform that writes into ``p.grad`` instead of rebinding it (where arrays are writable)."""

    def apply(self, params, rows):
        for p in params:
            p.grad[...] = p.grad * 0.5
        return True


@pytest.mark.parametrize("check_finite", [True, False])
def test_a_transform_that_writes_into_the_gradients_in_place_is_honoured(backend, dtype, check_finite):
    """The finite check gathers the gradients before the transforms run; the flat update must still use what a
    transform then wrote into ``p.grad`` in place (it used the check's stale copy)."""
    if backend.can_compile:
        pytest.skip("JAX arrays are immutable: a transform there rebinds p.grad")
    runs = [_train(backend, dtype, "relu_ce", "sgd", {"lr": 0.05, "momentum": 0.9}, fast=fast,
                   gradient_transforms=[HalveInPlace()], check_finite=check_finite) for fast in (True, False)]
    assert runs[0][2].execution == "flat"
    _assert_same(*runs, dtype)


@pytest.mark.parametrize("opt_name,kwargs,change", [
    ("sgd", {"lr": 0.05, "dampening": 0.3}, {"momentum": 0.9}),  # torch starts the new buffer at the gradient
    ("adam", {"lr": 0.01, "amsgrad": True}, {"amsgrad": False}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.5, "centered": True}, {"momentum": 0.0, "centered": False}),
], ids=["sgd-momentum-on", "adam-amsgrad-off", "rmsprop-momentum-centered-off"])
def test_a_hyper_parameter_that_changes_the_state_keys_mid_fit(backend, dtype, opt_name, kwargs, change):
    """Every execution follows the plain loop when a callback turns optimizer state on or off between epochs
    (JAX's epoch program cannot carry the change: that epoch runs step by step, the next compiles again)."""
    # Three epochs: the first as a program, the second step by step (the change), the third a program again.
    runs = [_train(backend, dtype, "relu_ce", opt_name, kwargs, fast=fast,
                   callbacks=[SetAfterFirstEpoch(**change)]) for fast in (True, False)]
    assert runs[0][2].execution == _derived(backend)
    _assert_same(*runs, dtype)


def test_momentum_switched_on_starts_its_buffer_as_torch_does(backend):
    """SGD whose momentum becomes non-zero after some steps starts the buffer at that step's gradient, as
    torch.optim.SGD does (it makes the buffer when it first needs one, with no dampening)."""
    model = nnx.Sequential(nnx.Dense(2, 1), backend=backend, dtype="float64", seed=0)
    opt = optim.SGD(model.parameters(), lr=0.05, dampening=0.5)
    start = [np.asarray(model.backend.to_host(p.value)) for p in model.parameters()]
    for step in range(3):
        if step == 1:
            opt.momentum = 0.9
        for p in model.parameters():
            p.grad = model.backend.asarray(np.ones(p.shape), dtype="float64")
        opt.step()
    # -0.05 (no momentum), -0.05 (a new buffer: the gradient), -0.07 (buffer 0.9 * 1 + (1 - 0.5) * 1 = 1.4)
    for p, before in zip(model.parameters(), start, strict=True):
        np.testing.assert_allclose(model.backend.to_host(p.value), before - 0.17, rtol=1e-12)


# The overflow into inf and NaN is the condition under test: NumPy (and array_api_strict, which runs on it)
# report it as RuntimeWarnings on the way; the test asserts the FloatingPointError that refuses the step.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_non_finite_step_is_refused_alike(backend, dtype):
    """A run that overflows into inf and NaN (through ReLU's backward too) is refused at the same batch, with the
    same weights, in every execution."""
    X, y = _data("classes", n=48)
    lr = 1e200 if dtype == "float64" else 1e30  # finite steps whose products overflow a step or two later
    outcomes = []
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(6, 9), nnx.ReLU(), nnx.Dense(9, 3), backend=backend.with_fastpath(fast),
                               dtype=dtype, seed=1)
        opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        with pytest.raises(FloatingPointError) as info:
            model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=3, batch_size=16, shuffle=False)
        outcomes.append((str(info.value).split(":")[0], [model.backend.to_host(p.value) for p in model.parameters()],
                         opt.state_dict()["param_steps"]))
    assert outcomes[0][0] == outcomes[1][0] and outcomes[0][2] == outcomes[1][2]
    for a, b in zip(outcomes[0][1], outcomes[1][1], strict=True):
        np.testing.assert_allclose(a, b, **_tol(dtype))


class _SmallBatchRefusingLoss(nnx.losses.Loss):
    """A user's MSE that refuses a batch of under 16 rows (as the plain loop raises it: after the forward)."""

    def rows(self, xp, y_true, y_pred):
        if y_pred.shape[0] < 16:
            raise ValueError("this loss takes batches of 16 rows or more")
        d = y_pred - y_true
        return xp.mean(d * d, axis=1), d * (2 / (y_pred.shape[0] * y_pred.shape[1]))


class _PerBatchHook(nnx.callbacks.Callback):
    def on_batch_begin(self, batch, logs=None):
        pass


@pytest.mark.parametrize("rows", [100, 10], ids=["at-the-last-batch", "at-the-first"])
def test_an_error_of_the_models_code_leaves_what_the_plain_loop_leaves(backend, dtype, rows):
    """JAX's step compiled batch by batch (a per-batch hook) met the loss's error while tracing a new batch shape
    and put the buffers back: BatchNorm's running mean missed that batch's forward, which the plain loop's error
    leaves moved (the whole-epoch program already ran such an epoch step by step)."""
    X, y = _data("regression", n=rows)
    outcomes = []
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(6, 8), nnx.Tanh(), nnx.BatchNorm(8), nnx.Dense(8, 3),
                               backend=backend.with_fastpath(fast), dtype=dtype, seed=0)
        with pytest.raises(ValueError, match="batches of 16 rows or more"):
            model.fit(X, y, loss=_SmallBatchRefusingLoss(), optimizer="adam", epochs=1, batch_size=16,
                      callbacks=[_PerBatchHook()])
        outcomes.append(({k: model.backend.to_host(v) for k, v in model.state_dict().items()},
                         model.optimizer.step_count))
    assert outcomes[0][1] == outcomes[1][1] == (6 if rows == 100 else 0)
    for k, value in outcomes[0][0].items():
        np.testing.assert_allclose(value, outcomes[1][0][k], **_tol(dtype), err_msg=k)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_an_error_while_tracing_after_a_refused_step_leaves_that_step_to_report(backend):
    """The compiled step checked on the device: after a step it refused, the model's error at a new batch shape
    is raised as it is, with nothing run plainly (the plain loop stopped at the refused step, and its buffers are
    those kept), and the epoch's verdict still names the refused step."""
    if not backend.can_compile:
        pytest.skip("only a backend that compiles runs the step as one program")
    from nnx.training.step import TrainStep

    X, y = _data("regression", n=36)
    model = nnx.Sequential(nnx.Dense(6, 8), nnx.ReLU(), nnx.BatchNorm(8), nnx.Dense(8, 3), backend=backend,
                           dtype="float64", seed=0)
    loss = _SmallBatchRefusingLoss()
    opt = optim.SGD(model.parameters(), lr=0.1)
    step = TrainStep(model, loss, opt)
    assert step.compiled is not None
    step.run_compiled(X[:16], y[:16])
    opt.lr = 1e300
    step.run_compiled(X[16:32], y[16:32])  # applied: the weights become huge
    step.run_compiled(X[:16], y[:16])  # overflows: refused on the device, unread
    kept = {k: model.backend.to_host(v) for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="batches of 16 rows or more"):
        step.run_compiled(X[32:], y[32:])
    for k, value in model.state_dict().items():
        np.testing.assert_array_equal(model.backend.to_host(value), kept[k], err_msg=k)
    assert step.end_epoch() == 2


class _DrawnBatches(nnx.callbacks.Callback):
    """A progress bar's kind of callback: its on_batch_end only draws, so a whole epoch may be one program."""

    batch_hooks_display_only = True

    def __init__(self):
        self.drawn = []

    def on_batch_end(self, batch, logs=None):
        self.drawn.append((batch, logs["size"]))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_a_refused_epoch_draws_the_batches_before_the_refused_one(backend, dtype):
    """A whole-epoch program hands its batches to a progress bar after it runs; an epoch ending in a refused step
    handed none, where the plain loop draws each batch before the refused one."""
    X, y = _data("regression", n=60)
    y[37] = 1e300 if dtype == "float64" else 1e30  # batch 3 (0-based 2) overflows its squared error
    drawn = []
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(6, 3), backend=backend.with_fastpath(fast), dtype=dtype, seed=0)
        bar = _DrawnBatches()
        with pytest.raises(FloatingPointError, match="epoch 2, batch 3"):
            model.fit(X[:32], y[:32], loss="mse", epochs=1, batch_size=16, callbacks=[bar])
            model.fit(X, y, loss="mse", epochs=1, batch_size=16, shuffle=False, callbacks=[bar])
        drawn.append(bar.drawn)
    assert drawn[0] == drawn[1] == [(0, 16), (1, 16), (0, 16), (1, 16)]


def test_kept_parameter_and_grad_arrays_follow_the_documented_semantics(backend, dtype):
    """``state_dict`` returns copies; a kept ``p.grad`` never changes later (the flat update gathers fresh ones)."""
    model, opt, _ = _train(backend, dtype, "relu_ce", "adam", {"lr": 0.01}, fast=True, epochs=1)
    snapshot = model.state_dict()
    kept = {k: np.array(model.backend.to_host(v), copy=True) for k, v in snapshot.items()}
    grads = [(p.grad, np.array(model.backend.to_host(p.grad), copy=True)) for p in model.parameters()]
    X, y = _data("classes", seed=2)
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=16)
    for k, v in snapshot.items():
        np.testing.assert_array_equal(model.backend.to_host(v), kept[k])
    for g, values in grads:
        np.testing.assert_array_equal(model.backend.to_host(g), values)


def test_the_switch(backend):
    off = backend.with_fastpath(False)
    assert not off.fastpath_enabled and off == backend
    assert backend.with_fastpath(True).fastpath_enabled or __import__("os").environ.get("NNX_FASTPATH") == "0"


@pytest.mark.parametrize("opt_name,kwargs", OPTIMIZERS, ids=lambda v: v if isinstance(v, str) else
                         getattr(v, "__name__", "-".join(f"{k}={x}" for k, x in v.items()) if isinstance(v, dict)
                                 else str(v)))
@pytest.mark.parametrize("deferred", [False, True], ids=["checked", "deferred"])
def test_the_flat_update_in_slices_gives_one_calls_numbers_bit_for_bit(backend, dtype, opt_name, kwargs, deferred):
    """On a CPU the rule runs over slices of the flat buffers (`FlatUpdate.piece`); elementwise, any slicing
    gives the numbers of one call over everything, also where the deferred check refuses a step."""
    from nnx.training.step import TrainStep

    X, y = _data("classes", n=16)
    runs = []
    for piece in (None, 7):  # 7 cuts every parameter and the buffers' end unevenly
        make, loss, _ = MODELS["relu_ce"]
        model = nnx.Sequential(*make(), backend=backend, dtype=dtype, seed=3)
        opt = (optim.get_optimizer(opt_name, model.parameters(), **kwargs) if isinstance(opt_name, str)
               else opt_name(model.parameters(), **kwargs))
        step = TrainStep(model, model.resolve_loss(loss), opt, defer_check=deferred)
        if step.flat is None:
            pytest.skip(f"{backend.spec} runs the step {step.execution}, not with the flat update")
        Xd, yd = model.prepare_inputs(X), model.prepare_targets(y, step.loss, len(X))
        for i in range(4):
            value, _ = step.forward_loss(Xd, yd)
            step.backward()
            if deferred and i == 2:  # a NaN gradient: the deferred check keeps the buffers of step 2
                model.parameters()[0].grad = model.parameters()[0].grad * float("nan")
            step.check(value)
            step.flat.piece = piece
            step.update()
        step.end_epoch()
        runs.append(([model.backend.to_host(p.value) for p in model.parameters()], opt.state_dict()))
    (values_a, state_a), (values_b, state_b) = runs
    for a, b in zip(values_a, values_b, strict=True):
        np.testing.assert_array_equal(a, b)
    assert state_a["step"] == state_b["step"]
    for i, entry in state_a["state"].items():
        for key, arr in entry.items():
            np.testing.assert_array_equal(model.backend.to_host(arr), model.backend.to_host(state_b["state"][i][key]))


def _outcome(backend, dtype, fast, make, opt_factory, callbacks=()):
    """What fit gives: the error's type and the parameters' dtypes, or the parameters and their dtypes."""
    be = backend.with_fastpath(fast)
    model = nnx.Sequential(*make(), backend=be, dtype=dtype, seed=3)
    opt = opt_factory(model)
    X, y = _data("classes")
    try:
        history = model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=16,
                            callbacks=list(callbacks))
    except Exception as exc:  # noqa: BLE001 - the plain loop's error, whichever it is, must be every execution's
        return type(exc).__name__, None, None
    return history.execution, [str(p.value.dtype) for p in model.parameters()], \
        [be.to_host(p.value) for p in model.parameters()]


def _assert_same_outcome(backend, dtype, *args, **kwargs):
    derived = _outcome(backend, dtype, True, *args, **kwargs)
    plain = _outcome(backend, dtype, False, *args, **kwargs)
    assert derived[1] == plain[1] and (derived[1] is not None or derived[0] == plain[0]), (derived[:2], plain[:2])
    if plain[2] is not None:
        for a, b in zip(derived[2], plain[2], strict=True):
            np.testing.assert_allclose(a, b, **_tol(dtype))


def test_a_hyper_parameter_set_to_a_numpy_float64_mid_fit_is_named_alike(backend):
    """A float32 model whose momentum a user's callback sets to ``np.float64(0.9)`` (which promotes NumPy's float32
    arrays to float64): every execution raises the plain loop's TypeError or gives its numbers; the flat update
    checked the rule's dtypes once and then cast the float64 results back into its float32 buffers silently."""
    _assert_same_outcome(backend, "float32", MODELS["relu_ce"][0],
                         lambda m: optim.SGD(m.parameters(), lr=0.05, momentum=0.5),
                         callbacks=[SetAfterFirstEpoch(momentum=np.float64(0.9))])


class Float64Scale(nnx.Layer):
    """A user's layer keeping its parameter in float64 whatever the model's dtype (a sensitive scale), casting
    where it meets the activations."""

    def build(self, input_shape):
        self.scale = self.add_parameter("scale", tuple(input_shape), "ones")
        self.scale.value = self.xp.astype(self.scale.value, self.xp.float64)

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, X, training=False):
        if training:
            self.X = X
        return X * self.xp.astype(self.scale.value, X.dtype)

    def backward(self, dY, need_dX=True):
        self.scale.grad = self.xp.astype(self.xp.sum(dY * self.X, axis=0), self.xp.float64)
        return dY * self.xp.astype(self.scale.value, dY.dtype) if need_dX else None


@pytest.mark.parametrize("opt_name,kwargs", [("sgd", {"lr": 0.05, "momentum": 0.9}), ("adam", {"lr": 0.01})])
def test_parameters_of_mixed_dtypes_keep_their_own(backend, opt_name, kwargs):
    """A float32 model with a user's float64 parameter: each parameter is updated in its own dtype in every
    execution (the flat update joined them into one float64 buffer, silently turning the model to float64)."""
    _assert_same_outcome(backend, "float32", lambda: [nnx.Dense(6, 9), Float64Scale(), nnx.ReLU(), nnx.Dense(9, 3)],
                         lambda m: optim.get_optimizer(opt_name, m.parameters(), **kwargs))


@pytest.mark.parametrize("value", ["false", "Off"])
def test_nnx_fastpath_off_is_honoured_in_any_spelling_and_when_set_after_the_backend_loaded(backend, monkeypatch,
                                                                                            value):
    """``NNX_FASTPATH`` was read once, when a backend first loaded, and only ``"0"`` turned the fast paths off:
    ``false`` or ``off``, or ``os.environ["NNX_FASTPATH"] = "0"`` in a notebook that had made a model, were
    ignored without a word. A value that is no switch is refused, naming the variable."""
    assert backend.fastpath_enabled or os.environ.get("NNX_FASTPATH", "1").strip().lower() in ("0", "false")
    monkeypatch.setenv("NNX_FASTPATH", value)
    make, loss, kind = MODELS["relu_ce"]  # the float32 test's model, data and batches: no op shape of its own
    X, y = _data(kind)
    model = nnx.Sequential(*make(), backend=backend, dtype="float32", seed=3)
    model.fit(X, y, loss=loss, optimizer="adam", epochs=1, batch_size=16, verbose=0)
    assert not backend.fastpath_enabled and model.history.execution == "plain", model.history.execution_reason
    monkeypatch.setenv("NNX_FASTPATH", "fast")
    with pytest.raises(ValueError, match="NNX_FASTPATH"):
        backend.with_fastpath(True).fastpath_enabled  # noqa: B018
