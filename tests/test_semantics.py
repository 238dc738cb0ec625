"""Aliasing and random-stream rules that must read the same on every backend, fast path on or off."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.backends import host_rng, stream_rng


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
    """The dropout stream must not replay the initialisation stream (they once started in the same state).

    A correlation limit cannot tell: normal weights and uniform draws made from one generator state
    correlate by 0.12 at most. So the first dropout draws are compared with what a stream starting in
    each other stream's state (or in the bare seed's) would draw: equal means shared state.
    """
    seed, n = 3, 256
    model = nnx.Sequential(nnx.Dense(4, 64), nnx.Dropout(0.5), backend=backend, dtype="float64", seed=seed)
    draws = np.asarray(backend.to_host(model.dropout_rng.uniform((n,), "float64"))).ravel()
    starts = {"init": stream_rng(seed, 0), "shuffle": stream_rng(seed, 1), "bare seed": host_rng(seed)}
    for name, start in starts.items():
        assert not np.allclose(draws, start.random(n)), name
    bare = np.asarray(backend.to_host(backend.rng(seed).uniform((n,), "float64"))).ravel()
    assert not np.allclose(draws, bare), "the dropout stream is the device stream of the bare seed"
    assert not np.allclose(model.shuffle_rng.random(n), draws)


def test_same_seed_same_streams_on_every_backend(backend):
    here = nnx.Sequential(nnx.Dense(4, 5), backend=backend, dtype="float64", seed=11)
    ref = nnx.Sequential(nnx.Dense(4, 5), backend="numpy", dtype="float64", seed=11)
    np.testing.assert_array_equal(backend.to_host(here.parameters()[0].value), ref.parameters()[0].value)
    np.testing.assert_array_equal(here.shuffle_rng.permutation(20), ref.shuffle_rng.permutation(20))
