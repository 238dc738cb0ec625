"""Review of steps run back to back (`TrainStep.back_to_back`): what a user's code inside a step changes.

Between two steps of an epoch with no per-batch callback and batches cut from arrays, none of the user's code
runs; inside a step it may: a user's layer, loss or regularizer runs in the passes wherever they are not replayed
(every step on torch and array_api_strict, and on NumPy once recording was refused). A rebinding made there is
seen at the update as the plain loop sees it.
"""

from __future__ import annotations

import numpy as np
import pytest
from user_code import PerEpoch, counted_calls

import nnx


class Noop(nnx.callbacks.Callback):
    """A per-batch hook that does nothing: the steps no longer run back to back, and every check runs."""

    def on_batch_end(self, batch, logs=None):
        pass


def _data(rng, n=50, features=5):
    X = rng.standard_normal((n, features))
    y = (rng.random((n, 1)) < 0.5).astype("float64")
    return X, y


class MomentumRestart(nnx.Layer):
    """A user's pass-through layer that restarts the momentum of the first weight every second training call, by
    rebinding the optimizer's state entry to a new array (as a warm restart written into the model would)."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.optimizer = None

    def output_shape(self, input_shape):
        return input_shape

    def forward(self, X, training=False):
        if training and self.optimizer is not None:
            self.calls += 1
            entry = self.optimizer.state.get(0)
            if self.calls % 2 == 0 and entry:
                entry["momentum_buffer"] = entry["momentum_buffer"] * 0.0
        return X

    def backward(self, dY, need_dX=True):
        return dY


def _fit_with_restarts(backend, X, y, callbacks):
    restart = MomentumRestart()
    model = nnx.Sequential(nnx.Dense(5, 6), restart, nnx.LeakyReLU(0.05), nnx.Dense(6, 1), nnx.Sigmoid(),
                           backend=backend, dtype="float64", seed=3)
    opt = nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    restart.optimizer = opt
    model.fit(X, y, loss="bce", optimizer=opt, epochs=3, batch_size=16, callbacks=callbacks)
    return [np.asarray(backend.to_host(p.value)) for p in model.parameters()]


def test_an_optimizer_state_entry_a_layer_rebinds_inside_the_step_is_updated_from(backend, rng):
    if backend.can_compile:
        pytest.skip("a compiled step runs the layer's Python only when it is traced")
    X, y = _data(rng)
    got = _fit_with_restarts(backend, X, y, [])
    checked = _fit_with_restarts(backend, X, y, [Noop()])  # a step after a per-batch hook checks everything
    plain = _fit_with_restarts(backend.with_fastpath(False), X, y, [])
    for a, b, c in zip(got, checked, plain, strict=True):
        np.testing.assert_allclose(b, c, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-14)


class RestartingMSE(nnx.losses.Loss):
    """A user's mean squared error that restarts the momentum of the first weight every second call, rebinding
    the optimizer's state entry, as `MomentumRestart` does from a layer."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.optimizer = None

    def rows(self, xp, y_true, y_pred):
        if self.optimizer is not None:
            self.calls += 1
            entry = self.optimizer.state.get(0)
            if self.calls % 2 == 0 and entry:
                entry["momentum_buffer"] = entry["momentum_buffer"] * 0.0
        d = y_pred - y_true
        return xp.sum(d * d, axis=1), 2.0 * d / y_pred.shape[0]


def _fit_with_a_restarting_loss(backend, X, y, callbacks):
    model = nnx.Sequential(nnx.Dense(5, 6), nnx.Tanh(), nnx.Dense(6, 1), backend=backend, dtype="float64", seed=3)
    opt = nnx.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss = RestartingMSE()
    loss.optimizer = opt
    model.fit(X, y, loss=loss, optimizer=opt, epochs=3, batch_size=16, callbacks=callbacks)
    return [np.asarray(backend.to_host(p.value)) for p in model.parameters()]


def test_an_optimizer_state_entry_a_loss_rebinds_inside_the_step_is_updated_from(backend, rng):
    if backend.can_compile:
        pytest.skip("a compiled step runs the loss's Python only when it is traced")
    X, y = _data(rng)
    got = _fit_with_a_restarting_loss(backend, X, y, [])
    plain = _fit_with_a_restarting_loss(backend.with_fastpath(False), X, y, [])
    for a, b in zip(got, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


class PureScale(nnx.Layer):
    """A user's layer with no side effects: its passes are recorded and replayed on NumPy."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def output_shape(self, input_shape):
        return input_shape

    def forward(self, X, training=False):
        return X * self.factor

    def backward(self, dY, need_dX=True):
        return dY * self.factor


def test_replayed_passes_of_a_users_layer_still_skip_the_state_check_back_to_back(monkeypatch, rng):
    from nnx.training import flat

    backend = nnx.get_backend("numpy")
    counter = counted_calls(monkeypatch, flat.FlatUpdate, "_in_place")
    per_epoch = PerEpoch(counter)
    model = nnx.Sequential(nnx.Dense(5, 6), PureScale(0.5), nnx.Tanh(), nnx.Dense(6, 1), nnx.Sigmoid(),
                           backend=backend, dtype="float64", seed=3)
    X, y = _data(rng)
    model.fit(X, y, loss="bce", optimizer=nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), epochs=3,
              batch_size=16, callbacks=[per_epoch])
    # the epoch's first step, and the smaller last batch's until its layout was recorded (epoch 0)
    assert per_epoch.per_epoch[1:] == [1, 1]
