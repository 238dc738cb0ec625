"""The finite check kept on the device (accelerators): same training, same refusal, no read per step.

On this CPU-only machine the deferred mode is forced by making the backend report
that its arrays are not in host memory, which is what cupy, torch:cuda and jax:gpu report.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nnx
from nnx.callbacks import Callback

# the poisoned batches overflow on purpose; and the device check (`inf * 0`, see TrainStep._step_flag) runs here
# on NumPy arrays posing as device arrays, where NumPy warns of the NaN it makes (a device library does not)
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:invalid value encountered in:RuntimeWarning")]


@pytest.fixture
def on_device(backend, monkeypatch):
    """The backend as if its arrays lived on an accelerator."""
    monkeypatch.setattr(type(backend), "arrays_on_host", property(lambda self: False))
    return backend


class Snapshots(Callback):
    """Weights and optimizer state after every step, and how often the host read an array during steps."""

    def __init__(self, backend):
        self.backend = backend
        self.states = {}
        self.reads = 0
        self._counting = False

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_begin(self, batch, logs=None):
        self._counting = True

    def on_batch_end(self, batch, logs=None):
        self._counting = False
        host = self.backend.to_host
        weights = {k: np.array(host(v)) for k, v in self.model.state_dict().items()}
        opt = self.model.optimizer
        state = {f"{i}.{k}": np.array(host(a)) for i, e in opt.state.items() for k, a in e.items()}
        self.states[(self.epoch, batch)] = (weights, state, opt.step_count, list(opt.param_steps))


def _model(backend, seed=0):
    return nnx.Sequential(nnx.Dense(3, 6), nnx.Tanh(), nnx.Dense(6, 1), backend=backend, dtype="float64", seed=seed)


def _data(rng, n=40):
    return rng.standard_normal((n, 3)), rng.standard_normal((n, 1))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_deferred_training_equals_checked_training(backend, rng, optimizer, monkeypatch):
    X, y = _data(rng)
    kwargs = dict(optimizer=optimizer, lr=0.05, epochs=3, batch_size=8)
    if optimizer == "sgd":
        kwargs["optimizer"] = nnx.optim.SGD
    plain = _model(backend)
    plain.fit(X, y, **{**kwargs, "optimizer": _optimizer(plain, optimizer)})
    monkeypatch.setattr(type(backend), "arrays_on_host", property(lambda self: False))
    deferred = _model(backend)
    deferred.fit(X, y, **{**kwargs, "optimizer": _optimizer(deferred, optimizer)})
    for name, value in plain.state_dict().items():
        np.testing.assert_allclose(backend.to_host(deferred.state_dict()[name]), backend.to_host(value),
                                   rtol=1e-12, atol=1e-14, err_msg=name)


def _optimizer(model, name):
    if name == "sgd":
        return nnx.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return nnx.optim.Adam(model.parameters(), lr=0.05)


@pytest.mark.parametrize("bad", [(0, 2), (1, 0), (1, 3)])
def test_deferred_refusal_keeps_the_last_finite_step(on_device, rng, bad):
    X, y = _data(rng)
    epoch, batch = bad
    model = _model(on_device)
    model.fit(X, y, optimizer="adam", lr=0.01, epochs=epoch, batch_size=8, shuffle=False)  # before the bad one
    y_bad = y.copy()
    y_bad[batch * 8 + 3, 0] = 1e300  # this batch's squared error overflows
    snaps = Snapshots(on_device)
    before = (dict(model.state_dict()), None)
    with pytest.raises(FloatingPointError, match=rf"at epoch {epoch + 1}, batch {batch + 1};"):
        model.fit(X, y_bad, epochs=2, batch_size=8, shuffle=False, callbacks=[snaps])
    if batch == 0:
        expect_weights = {k: on_device.to_host(v) for k, v in before[0].items()}
        expect = None
    else:
        expect_weights, state, count, param_steps = snaps.states[(epoch, batch - 1)]
        expect = (state, count, param_steps)
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(on_device.to_host(value), expect_weights[name], err_msg=name)
    opt = model.optimizer
    if expect is not None:
        state, count, param_steps = expect
        got = {f"{i}.{k}": on_device.to_host(a) for i, e in opt.state.items() for k, a in e.items()}
        assert set(got) == set(state)
        for key in state:
            np.testing.assert_array_equal(got[key], state[key], err_msg=key)
        assert (opt.step_count, opt.param_steps) == (count, param_steps)
    # and training goes on from there
    model.fit(X, y, epochs=1, batch_size=8)
    assert all(np.isfinite(on_device.to_host(v)).all() for v in model.state_dict().values())


class GradientPoison(nnx.Layer):
    """The identity forward; its backward makes the gradient NaN at one call, so the loss stays finite."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, X, training=False):
        return X

    def backward(self, dY, need_dX=True):
        self.calls += 1
        return dY * math.nan if self.calls == self.at else dY

    def output_shape(self, input_shape):
        return input_shape


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_deferred_refusal_of_a_gradient_that_is_not_finite_under_a_finite_loss(on_device, rng, optimizer):
    """The check reads the gradients, not only the loss: here only the first layer's gradients are NaN."""
    be = on_device.with_fastpath(False) if on_device.name == "jax" else on_device  # JAX would trace the counter
    X, y = _data(rng)
    poison = GradientPoison(at=3)
    model = nnx.Sequential(nnx.Dense(3, 6), nnx.Tanh(), poison, nnx.Dense(6, 1), backend=be, dtype="float64",
                           seed=0)
    snaps = Snapshots(be)
    with pytest.raises(FloatingPointError, match="at epoch 1, batch 3;"):
        model.fit(X, y, optimizer=optimizer, lr=0.01, epochs=1, batch_size=8, shuffle=False, callbacks=[snaps])
    weights, state, count, param_steps = snaps.states[(0, 1)]
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(be.to_host(value), weights[name], err_msg=name)
    opt = model.optimizer
    assert (opt.step_count, opt.param_steps) == (count, param_steps)
    for key, arr in state.items():
        i, k = key.split(".", 1)
        np.testing.assert_array_equal(be.to_host(opt.state[int(i)][k]), arr, err_msg=key)


def test_deferred_check_reads_nothing_during_steps(on_device, rng, monkeypatch):
    snaps = Snapshots(on_device)
    original = on_device.to_host

    def counting(x):
        if snaps._counting:
            snaps.reads += 1
        return original(x)

    monkeypatch.setattr(on_device, "to_host", counting)
    monkeypatch.setattr(on_device, "to_float", lambda x: float(counting(x)))
    X, y = _data(rng)
    _model(on_device).fit(X, y, epochs=2, batch_size=8, callbacks=[snaps])
    assert snaps.reads == 0


class _CountingNamespace:
    """The backend's namespace, counting arrays made from Python numbers while a step runs."""

    def __init__(self, xp, snaps):
        self._xp, self._snaps, self.made, self.copies = xp, snaps, 0, 0

    def __getattr__(self, name):
        return getattr(self._xp, name)

    def asarray(self, obj, *args, **kwargs):
        if self._snaps._counting and isinstance(obj, (int, float)):
            self.made += 1  # on torch:cuda or CuPy, a synchronous host-to-device copy
        if self._snaps._counting and kwargs.get("copy"):
            self.copies += 1
        return self._xp.asarray(obj, *args, **kwargs)


def test_deferred_check_sends_no_host_number_to_the_device_per_step(on_device, rng, monkeypatch):
    """Issue 22 item 5: the step's index counts on the device; only an epoch's first step starts it from the host."""
    snaps = Snapshots(on_device)
    counting = _CountingNamespace(on_device.xp, snaps)
    monkeypatch.setattr(on_device, "xp", counting)
    X, y = _data(rng)
    epochs = 2
    _model(on_device).fit(X, y, epochs=epochs, batch_size=8, callbacks=[snaps])
    # an epoch's first step sends its index and the "none yet" marker; later steps (5 an epoch here) send none
    assert counting.made <= 2 * epochs, f"{counting.made} host numbers went to the device in {epochs} epochs"
    # issue 22 item 10: a deferred update selects between the rule's results and the old arrays; the rule is
    # pure, so nothing is copied to keep the old ones
    assert counting.copies == 0, f"{counting.copies} arrays copied during the steps"


@pytest.mark.parametrize("deferred", [False, True], ids=["per-step", "deferred"])
def test_terminate_on_nan_stops_quietly_under_either_check(backend, rng, deferred, monkeypatch):
    """A callback that handles a non-finite step (TerminateOnNaN) stops the fit where the per-step check would,
    with nothing updated by the bad step: the deferred check reads its verdict each step for it."""
    X, y = _data(rng, n=32)
    y[20, 0] = 1e200  # batch 3 of 4: an infinite loss
    if deferred:
        monkeypatch.setattr(type(backend), "arrays_on_host", property(lambda self: False))
    model = _model(backend)
    stop = nnx.callbacks.TerminateOnNaN()
    model.fit(X, y, loss="mse", optimizer="sgd", epochs=2, batch_size=8, shuffle=False, callbacks=[stop])
    assert stop.stopped_batch == 2 and model.optimizer.step_count == 2
