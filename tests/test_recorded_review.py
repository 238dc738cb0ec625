"""Review of the recorded passes (`nnx.training.recorded`, `nnx.backends.recording`): ways a replay could differ
from the plain passes that the first tests did not try. Each compares with the plain passes (the backend's `tape`
switched off) or checks what a replayed step must leave."""

from __future__ import annotations

import numpy as np
import pytest
from test_recorded import _data

import nnx
from nnx.backends.recording import Noted, Tape


@pytest.fixture
def recording_backend(backend):
    if backend.tape() is None:
        pytest.skip(f"{backend.name}'s arrays do not tell what is done to them: nothing is recorded")
    return backend


def test_a_view_of_a_result_written_in_place_leaves_as_a_new_array():
    """``g = (a @ b).T; g *= 2``: the output is a view of the product, so the product must be made anew by every
    call, not written into a buffer the next call overwrites."""
    tape = Tape()
    a, b = tape.note(np.arange(6.0).reshape(2, 3)), tape.note(np.ones((3, 2)))
    g = (a @ b).T
    g *= 2.0
    replayed = tape.compile([g])
    first = replayed(np.arange(6.0).reshape(2, 3), np.ones((3, 2)))[0]
    kept = first.copy()
    replayed(np.arange(6.0).reshape(2, 3) * 10, np.ones((3, 2)))
    assert np.array_equal(first, kept)


class InterruptedWhileRecorded(nnx.Layer):
    """Stands for Ctrl-C pressed while the passes are recorded (fit stops and returns; the model is used on)."""

    def forward(self, X, training=False):
        if type(X) is Noted:
            raise KeyboardInterrupt
        return X

    def backward(self, dY, need_dX=True):
        return dY


def test_an_interrupt_while_recorded_leaves_the_models_own_arrays(recording_backend, rng):
    X, y = _data(rng, 64, 4, 1, "binary")
    model = nnx.Sequential(nnx.Dense(4, 3), nnx.BatchNorm(3), InterruptedWhileRecorded(), nnx.Dense(3, 1),
                           backend=recording_backend, dtype="float64", seed=0)
    history = model.fit(X, y, loss="bce_with_logits", epochs=1, batch_size=8)  # fit hands back what it has
    assert history.interrupted
    assert all(type(b.value) is np.ndarray for b in model.buffers())
    assert all(type(p.value) is np.ndarray for p in model.parameters())
    model.predict(X)  # and the model still runs
