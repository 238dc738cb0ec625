"""User code the derived fast paths once got wrong: each fit runs with them on and off and must agree.

Found by a differential fuzz of NumPy's recorded passes (`nnx.training.recorded`) against the plain loop
(`Backend.with_fastpath(False)`): a setting kept on an object a layer holds, and an array a layer keeps as state
between steps, were read once when recorded and never again.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest

import nnx
from nnx import optim


@pytest.fixture
def recording_backend(backend):
    if backend.tape() is None:
        pytest.skip(f"{backend.name} has no recorded passes")
    return backend


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((32, 6)), rng.standard_normal((32, 3))


def _fit(backend, fast, middle, callback=None):
    """A 6-8-3 model with `middle()` after the first Dense, 3 epochs of SGD in batches of 8, unshuffled."""
    layer = middle()
    model = nnx.Sequential(nnx.Dense(6, 8, regularizer=getattr(layer, "for_first", None)), layer, nnx.Tanh(),
                           nnx.Dense(8, 3), backend=backend.with_fastpath(fast), dtype="float64", seed=1)
    X, y = _data()
    history = model.fit(X, y, loss="mse", optimizer=optim.SGD(model.parameters(), lr=0.05), epochs=3, batch_size=8,
                        shuffle=False, callbacks=[callback(layer)] if callback else [], verbose=0)
    return model, history


def _assert_same_fits(backend, middle, callback=None):
    (fast, h_fast), (plain, h_plain) = (_fit(backend, on, middle, callback) for on in (True, False))
    np.testing.assert_allclose(h_fast["loss"], h_plain["loss"], rtol=1e-12)
    for a, b in zip(fast.parameters(), plain.parameters(), strict=True):
        np.testing.assert_allclose(backend.to_host(a.value), backend.to_host(b.value), rtol=1e-12, err_msg=a.name)
        np.testing.assert_allclose(backend.to_host(a.grad), backend.to_host(b.grad), rtol=1e-12, err_msg=a.name)


class ColumnL2(nnx.regularizers.Regularizer):
    """A user's L2 with a per-column scale it keeps as an array: nnx cannot describe it as a setting."""

    def __init__(self, l=0.05):
        self.l = l
        self.columns = np.ones(1)

    def penalty(self, W):
        return 0.5 * self.l * array_api_compat.array_namespace(W).sum(W * W * self.columns)

    def gradient(self, W):
        return W * (self.columns * self.l)


class Gain:
    """A config object a layer holds: a gain, and a table that makes it indescribable."""

    def __init__(self):
        self.gain, self.table = 1.0, np.ones(8)


class Scaled(nnx.Layer):
    """``X * cfg.gain``; carries a per-layer regularizer for the Dense before it (`for_first`)."""

    def __init__(self):
        super().__init__()
        self.cfg = Gain()
        self.for_first = ColumnL2()

    def forward(self, X, training=False):
        return X * self.cfg.gain

    def backward(self, dY, need_dX=True):
        return dY * self.cfg.gain


def _gain_up(layer):
    class GainUp(nnx.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            layer.cfg.gain *= 1.5
    return GainUp()


def _strength_up(layer):
    class StrengthUp(nnx.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            layer.for_first.l *= 4.0
    return StrengthUp()


@pytest.mark.parametrize("change", [_gain_up, _strength_up], ids=["config-object", "layer-regularizer"])
def test_a_setting_changed_on_an_object_a_layer_holds_is_what_the_next_step_uses(recording_backend, change):
    """An object a layer holds that nnx cannot describe (it holds an array) was compared by identity only: a
    float changed on it by a callback (a gain, a per-layer regularizer's strength) kept the recorded value."""
    _assert_same_fits(recording_backend, Scaled, change)


class PreviousBatch(nnx.Layer):
    """Adds a tenth of the previous training batch, kept as a plain array attribute."""

    def __init__(self):
        super().__init__()
        self.prev = None

    def forward(self, X, training=False):
        out = X if self.prev is None else X + 0.1 * self.prev
        if training:
            self.prev = X
        return out

    def backward(self, dY, need_dX=True):
        return dY


class RunningCenter(nnx.Layer):
    """Subtracts a running mean of its inputs kept as a plain array (not a Buffer), rebound every training call."""

    def __init__(self):
        super().__init__()
        self.mu = None

    def forward(self, X, training=False):
        if self.mu is None:
            self.mu = self.xp.zeros((X.shape[1],), dtype=X.dtype)
        if training:
            self.mu = 0.9 * self.mu + 0.1 * self.xp.mean(X, axis=0)
        return X - self.mu

    def backward(self, dY, need_dX=True):
        return dY


@pytest.mark.parametrize("middle", [PreviousBatch, RunningCenter])
def test_an_array_a_layer_reads_and_rebinds_is_state_carried_between_steps(recording_backend, middle):
    """A kept array the passes read and then rebind was taken for a cache: replays read the recorded one forever,
    where the plain loop reads what the last step left."""
    _assert_same_fits(recording_backend, middle)
