"""A user's layer that keeps a running array outside a Buffer (read, then rebound, every step) trains as the plain loop
does on every backend: a compiled program would read the array it was traced with at every step, so JAX runs such a
step plainly, and says why; a cache the layer rebinds before reading it (``self.X = X`` for its backward) still
compiles. Float64, to 1e-12."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import nnx
from nnx.backends import backend_status

TOL = 1e-12


class CarriedMean(nnx.Layer):
    """Subtracts a running mean of its inputs kept as a plain attribute (first set on the first training call)."""

    def __init__(self) -> None:
        super().__init__()
        self.mu = None

    def forward(self, X, training=False):
        if training:
            batch_mean = self.xp.mean(X, axis=0)
            self.mu = batch_mean if self.mu is None else 0.9 * self.mu + 0.1 * batch_mean
        return X if self.mu is None else X - self.mu

    def backward(self, dY, need_dX=True):
        return dY


class CarriedInDict(nnx.Layer):
    """The same running mean kept as an item of a dict attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.stats = {"mu": None}

    def forward(self, X, training=False):
        mu = self.stats["mu"]
        if training:
            batch_mean = self.xp.mean(X, axis=0)
            mu = self.stats["mu"] = batch_mean if mu is None else 0.9 * mu + 0.1 * batch_mean
        return X if mu is None else X - mu

    def backward(self, dY, need_dX=True):
        return dY


class CachedScale(nnx.Layer):
    """Keeps its input for the backward, rebound before it is read: a cache, not carried state."""

    def forward(self, X, training=False):
        if training:
            self.X = X
        return X * 2.0

    def backward(self, dY, need_dX=True):
        return dY * 2.0 + 0.0 * self.X


class RunningScaledMSE(nnx.losses.Loss):
    """MSE weighted by a running mean of the squared error, kept by the loss as a plain attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = None

    def rows(self, xp, y_true, y_pred):
        d = y_pred - y_true
        s = xp.mean(d * d)
        self.scale = s if self.scale is None else 0.9 * self.scale + 0.1 * s
        w = 1.0 / (1.0 + self.scale)
        return xp.mean(w * d * d, axis=1), 2.0 * w * d / d.shape[1]


class CachedInDict(nnx.Layer):
    """Keeps its input in a dict for the backward, in inference too (a cache, whatever the mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.cache = {}

    def forward(self, X, training=False):
        self.cache["X"] = X
        return X * 2.0

    def backward(self, dY, need_dX=True):
        return dY * 2.0 + 0.0 * self.cache["X"]


def _fit(backend, layer, epochs=3, loss="mse"):
    rng = np.random.default_rng(0)
    # one width and one batch shape throughout: JAX compiles the plain loop's ops once per shape
    X, y = rng.standard_normal((16, 4)), rng.standard_normal((16, 4))
    model = nnx.Sequential(nnx.Dense(4, 4), layer, nnx.Tanh(), nnx.Dense(4, 4), backend=backend, dtype="float64",
                           seed=1)
    history = model.fit(X, y, loss=loss, optimizer=nnx.optim.SGD(model.parameters(), lr=0.05), epochs=epochs,
                        batch_size=8, shuffle=False)
    return model, history


def _same_training(backend, make_layer, make_loss=lambda: "mse"):
    fast, history = _fit(backend, make_layer(), loss=make_loss())
    plain, plain_history = _fit(backend.with_fastpath(False), make_layer(), loss=make_loss())
    for p, q in zip(fast.parameters(), plain.parameters(), strict=True):
        np.testing.assert_allclose(backend.to_host(p.value), backend.to_host(q.value), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(history.history["loss"], plain_history.history["loss"], rtol=TOL, atol=TOL)
    return fast, plain, history


def test_a_running_array_kept_outside_a_buffer_trains_as_the_plain_loop(backend):
    fast, plain, _ = _same_training(backend, CarriedMean)
    np.testing.assert_allclose(backend.to_host(fast.layers[1].mu), backend.to_host(plain.layers[1].mu), rtol=TOL,
                               atol=TOL)


@pytest.mark.skipif(not backend_status("jax")[0], reason="jax not available")
def test_jax_runs_a_step_carrying_state_in_an_attribute_or_a_dict_plainly_and_says_why():
    jax = nnx.get_backend("jax")
    for make_layer, where in ((CarriedMean, "'mu'"), (CarriedInDict, "'stats'['mu']")):
        fast, plain, history = _same_training(jax, make_layer)
        assert history.execution != "compiled", history.execution
        assert f"reads and rebinds the array it keeps in {where}" in history.execution_reason, history.execution_reason


@pytest.mark.skipif(not backend_status("jax")[0], reason="jax not available")
def test_jax_still_compiles_a_layer_whose_rebound_array_is_a_cache():
    _, _, history = _same_training(nnx.get_backend("jax"), CachedScale)
    assert history.execution == "compiled", (history.execution, history.execution_reason)


def test_a_loss_keeping_a_running_array_trains_as_the_plain_loop(backend):
    fast, plain, _ = _same_training(backend, CachedScale, RunningScaledMSE)
    np.testing.assert_allclose(float(backend.to_host(fast.loss.scale)), float(backend.to_host(plain.loss.scale)),
                               rtol=TOL, atol=TOL)


def test_a_cache_in_a_dict_holds_the_backends_arrays_after_fit_and_predict(backend, tmp_path):
    """A compiled pass once left its traced values in the dict (JAX): copying or saving the model then failed."""
    layer = CachedInDict()
    model, _ = _fit(backend, layer, epochs=1)
    model.predict(np.ones((8, 4)))
    model.evaluate(np.ones((8, 4)), np.ones((8, 4)), loss="mse")
    cached = layer.cache.get("X")
    assert cached is None or backend.owns(cached), type(cached)
    copy.deepcopy(model)
    model.save(tmp_path / "cached.npz")
