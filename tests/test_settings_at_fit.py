"""A layer setting changed after construction to a value its constructor refuses is refused as fit starts.

`save` refused such a model (its file would never load), but `fit` trained it: a BatchNorm momentum of 1.5
corrupted the running statistics without a word (found in review).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from user_code import DoubledWithAFunction

import nnx


@pytest.mark.parametrize("layer, name, value", [
    (lambda: nnx.BatchNorm(4), "momentum", 1.5),
    (lambda: nnx.BatchNorm(4), "momentum", math.nan),
    (lambda: nnx.BatchNorm(4), "eps", -1e-5),
    (lambda: nnx.LayerNorm(4), "eps", -1e-5),
    (lambda: nnx.LeakyReLU(), "alpha", -0.1),
    (lambda: nnx.Dropout(0.2), "rate", 1.0),
], ids=["bn-momentum", "bn-momentum-nan", "bn-eps", "ln-eps", "leaky-alpha", "dropout-rate"])
def test_a_setting_its_constructor_refuses_is_refused_before_the_first_step(layer, name, value):
    model = nnx.Sequential(nnx.Dense(3, 4), layer(), nnx.Dense(4, 1), seed=0, dtype="float64")
    before = [np.array(p.value, copy=True) for p in model.parameters()]
    setattr(model.layers[1], name, value)
    X, y = np.random.default_rng(0).normal(size=(16, 3)), np.zeros(16)
    with pytest.raises(ValueError, match=rf"{name}.*changed after construction"):
        model.fit(X, y, loss="mse", epochs=1, batch_size=8, verbose=0)
    for p, old in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(np.asarray(p.value), old)  # not a step was taken


def test_a_layer_whose_config_is_not_json_still_trains():
    model = nnx.Sequential(nnx.Dense(3, 1), DoubledWithAFunction(fn=abs), seed=0, dtype="float64")
    history = model.fit(np.ones((8, 3)), np.ones(8), loss="mse", epochs=1, verbose=0)
    assert len(history["loss"]) == 1


class ScaledByPositiveFactors(nnx.Layer):
    """``X * factors``, one factor per column; its constructor refuses a factor that is not positive, and its
    config holds the live list (the list itself, as a user's `get_config` may return it)."""

    def __init__(self, factors=(1.0,)):
        super().__init__()
        if any(not f > 0 for f in factors):
            raise ValueError(f"factors must be positive, got {list(factors)}")
        self.factors = list(factors)

    def get_config(self):
        return {**super().get_config(), "factors": self.factors}

    def forward(self, X, training=False):
        return X * self.xp.asarray(self.factors, dtype=X.dtype)

    def backward(self, dY, need_dX=True):
        return dY * self.xp.asarray(self.factors, dtype=dY.dtype)


def test_a_setting_changed_after_a_fit_is_refused_at_the_next():
    # a fit checks the settings as they stand at each call, not once per model
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.BatchNorm(4), nnx.Dense(4, 1), seed=0, dtype="float64")
    X, y = np.random.default_rng(0).normal(size=(16, 3)), np.zeros(16)
    model.fit(X, y, loss="mse", epochs=1, batch_size=8, verbose=0)
    model.layers[1].momentum = 1.5
    with pytest.raises(ValueError, match="momentum.*changed after construction"):
        model.fit(X, y, loss="mse", epochs=1, batch_size=8, verbose=0)
    model.layers[1].momentum = 0.9
    model.fit(X, y, loss="mse", epochs=1, batch_size=8, verbose=0)


def test_a_list_setting_changed_in_place_after_a_fit_is_refused_at_the_next():
    model = nnx.Sequential(nnx.Dense(3, 2), ScaledByPositiveFactors([1.0, 2.0]), nnx.Dense(2, 1), seed=0,
                           dtype="float64")
    X, y = np.random.default_rng(0).normal(size=(16, 3)), np.zeros(16)
    model.fit(X, y, loss="mse", epochs=1, batch_size=8, verbose=0)
    model.layers[1].factors[0] = -1.0
    with pytest.raises(ValueError, match="factors must be positive.*changed after construction"):
        model.fit(X, y, loss="mse", epochs=1, batch_size=8, verbose=0)
