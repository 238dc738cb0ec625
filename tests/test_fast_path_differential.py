"""User code the derived fast paths once got wrong: each fit runs with them on and off and must agree.

Found by a differential fuzz of NumPy's recorded passes (`nnx.training.recorded`) against the plain loop
(`Backend.with_fastpath(False)`): a setting kept on an object a layer holds, an array a layer keeps as state
between steps, and a NumPy array a callback writes into in place (one in a layer's dict, on a regularizer a layer
holds, or a module global a layer reads), were read once when recorded and never again.
"""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest

import nnx
from nnx import optim
from nnx.training import recorded


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
    _assert_same(backend, fast, h_fast, plain, h_plain)
    return fast


def _assert_same(backend, fast, h_fast, plain, h_plain):
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


class ScaledByConfig(nnx.Layer):
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
    _assert_same_fits(recording_backend, ScaledByConfig, change)


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


class DictRunningCenter(nnx.Layer):
    """`RunningCenter` with its running mean kept in a dict: ``self.stats["mu"] = 0.9 * self.stats["mu"] + ...``."""

    def __init__(self):
        super().__init__()
        self.stats = {"mu": np.zeros(8)}

    def forward(self, X, training=False):
        if training:
            self.stats["mu"] = 0.9 * self.stats["mu"] + 0.1 * self.xp.mean(X, axis=0)
        return X - self.stats["mu"]

    def backward(self, dY, need_dX=True):
        return dY


@pytest.mark.parametrize("middle", [PreviousBatch, RunningCenter, DictRunningCenter])
def test_an_array_a_layer_reads_and_rebinds_is_state_carried_between_steps(recording_backend, middle):
    """A kept array the passes read and then rebind was taken for a cache: replays read the recorded one forever,
    where the plain loop reads what the last step left."""
    _assert_same_fits(recording_backend, middle)


class DictCache(nnx.Layer):
    """tanh, keeping its input in a dict in the forward for the backward: a cache, written before it is read."""

    def __init__(self):
        super().__init__()
        self.cache = {"X": np.zeros((8, 8))}

    def forward(self, X, training=False):
        self.cache["X"] = X
        return self.xp.tanh(X)

    def backward(self, dY, need_dX=True):
        return dY * (1.0 - self.xp.tanh(self.cache["X"]) ** 2)


def test_an_array_a_layer_keeps_in_a_dict_as_a_cache_is_replayed(recording_backend):
    """Only an item read before it is rebound is state: a dict the forward writes and the backward reads replays."""
    fast = _assert_same_fits(recording_backend, DictCache)
    passes = recorded._PASSES.get(fast)
    assert passes.refusal is None and passes.replayed


class DictTable(nnx.Layer):
    """Scales by ``1 + tables["s"]``, a NumPy array kept in a dict."""

    def __init__(self):
        super().__init__()
        self.tables = {"s": np.ones(8)}

    def forward(self, X, training=False):
        return X * (self.tables["s"] + 1.0)

    def backward(self, dY, need_dX=True):
        return dY * (self.tables["s"] + 1.0)


_TABLE = np.ones(8)  # a module global a layer reads (reset by each `GlobalTable`)


class GlobalTable(nnx.Layer):
    """Scales by ``1 + _TABLE``, a NumPy array in its module."""

    def __init__(self):
        super().__init__()
        _TABLE[...] = 1.0

    def forward(self, X, training=False):
        return X * (_TABLE + 1.0)

    def backward(self, dY, need_dX=True):
        return dY * (_TABLE + 1.0)


def _write_in_place(where):
    def make(layer):
        class WriteInPlace(nnx.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                {"dict": lambda: layer.tables["s"], "regularizer": lambda: layer.for_first.columns,
                 "global": lambda: _TABLE}[where]()[...] *= 1.5
        return WriteInPlace()
    return make


@pytest.mark.parametrize("where, middle",
                         [("dict", DictTable), ("regularizer", ScaledByConfig), ("global", GlobalTable)])
def test_a_numpy_array_a_layer_reads_written_in_place_by_a_callback_is_read_anew(recording_backend, where, middle):
    """The watches compared the array in a layer's dict, on the regularizer a layer holds, and in a module by
    identity (or not at all): what the recorded passes computed from it (``1 + table``) stayed the first values."""
    _assert_same_fits(recording_backend, middle, _write_in_place(where))
