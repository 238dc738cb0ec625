"""Aliasing and random-stream rules that must read the same on every backend, fast path on or off."""

from __future__ import annotations

import numpy as np
import pytest

import nnx


def _model(backend, dtype, fast, dropout=0.0):
    be = backend.with_fastpath(fast)
    layers = [nnx.Dense(3, 8), nnx.ReLU()]
    if dropout:
        layers.append(nnx.Dropout(dropout))
    layers += [nnx.Dense(8, 1)]
    return nnx.Sequential(*layers, backend=be, dtype=dtype, seed=7)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "portable"])
def test_a_held_state_dict_never_follows_training(backend, dtype, fast, rng):
    model = _model(backend, dtype, fast)
    X, y = rng.standard_normal((40, 3)), rng.standard_normal((40, 1))
    model.fit(X, y, optimizer="sgd", lr=0.05, epochs=1, batch_size=8)  # lays out the fast path's buffers
    held = model.state_dict()
    snapshot = {k: np.array(backend.to_host(v), copy=True) for k, v in held.items()}
    model.fit(X, y, epochs=2, batch_size=8)
    for name, value in held.items():
        np.testing.assert_array_equal(backend.to_host(value), snapshot[name], err_msg=name)
    assert any(not np.array_equal(backend.to_host(v), snapshot[k]) for k, v in model.state_dict().items())


def test_state_dict_is_not_the_parameters_themselves(backend, dtype):
    model = _model(backend, dtype, fast=True)
    state = model.state_dict()
    for p in model.parameters():
        assert state[p.name] is not p.value


def test_init_shuffle_and_dropout_streams_are_independent(backend):
    """The dropout stream must not replay the initialisation stream (they once started in the same state)."""
    model = nnx.Sequential(nnx.Dense(4, 64), nnx.Dropout(0.5), backend=backend, dtype="float64", seed=3)
    first_weight = backend.to_host(model.parameters()[0].value).ravel()
    draws = backend.to_host(model.dropout_rng.uniform((first_weight.size,), "float64")).ravel()
    assert abs(np.corrcoef(first_weight, draws)[0, 1]) < 0.3
    shuffle = model.shuffle_rng.random(first_weight.size)
    assert not np.allclose(shuffle, draws)


def test_same_seed_same_streams_on_every_backend(backend):
    here = nnx.Sequential(nnx.Dense(4, 5), backend=backend, dtype="float64", seed=11)
    ref = nnx.Sequential(nnx.Dense(4, 5), backend="numpy", dtype="float64", seed=11)
    np.testing.assert_array_equal(backend.to_host(here.parameters()[0].value), ref.parameters()[0].value)
    np.testing.assert_array_equal(here.shuffle_rng.permutation(20), ref.shuffle_rng.permutation(20))
