"""Review of the recorded passes (`nnx.training.recorded`, `nnx.backends.recording`): ways a replay could differ
from the plain passes that the first tests did not try. Each compares with the plain passes (the backend's `tape`
switched off) or checks what a replayed step must leave."""

from __future__ import annotations

import numpy as np
import pytest
from test_recorded import _bits, _data, _fit_twice

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


class Applies(nnx.Layer):
    """Applies a function it holds (a NumPy ufunc: not a setting `layer_settings` can describe)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, X, training=False):
        return self.fn(X)

    def backward(self, dY, need_dX=True):
        return dY


def test_a_function_a_layer_holds_swapped_between_fits_is_recorded_again(monkeypatch, recording_backend, rng):
    X, y = _data(rng, 32, 4, 1, "binary")

    def fits(plain):
        with monkeypatch.context() as m:
            if plain:
                m.setattr(type(recording_backend), "tape", lambda self: None)
            model = nnx.Sequential(nnx.Dense(4, 3), Applies(np.tanh), nnx.Dense(3, 1), backend=recording_backend,
                                   dtype="float64", seed=0)
            model.fit(X, y, loss="bce_with_logits", optimizer="sgd", epochs=1, batch_size=8)
            model.layers[1].fn = np.sin
            model.fit(X, y, epochs=1, batch_size=8)
            return [_bits(p.value) for p in model.parameters()]

    assert fits(plain=False) == fits(plain=True)


class ScaledByADict(nnx.Layer):
    """Keeps a setting in a dict (`layer_settings` passes dicts over: a layer's tables)."""

    def __init__(self):
        super().__init__()
        self.options = {"scale": 2.0}

    def forward(self, X, training=False):
        return X * self.options["scale"]

    def backward(self, dY, need_dX=True):
        return dY * self.options["scale"]


class _ScaleSchedule(nnx.callbacks.Callback):
    def on_batch_begin(self, batch, logs=None):
        self.model.layers[1].options["scale"] = 1.0 + batch % 3


def test_a_setting_kept_in_a_dict_changed_between_batches_records_again(monkeypatch, recording_backend, rng):
    def build(backend):
        return nnx.Sequential(nnx.Dense(4, 3), ScaledByADict(), nnx.Dense(3, 1), backend=backend, dtype="float64",
                              seed=0)
    X, y = _data(rng, 64, 4, 1, "binary")
    got, plain, _ = _fit_twice(monkeypatch, recording_backend, build,
                               dict(loss="bce_with_logits", epochs=1, batch_size=8, callbacks=[_ScaleSchedule()]),
                               (X, y))
    assert got == plain


class KeepsEveryOutput(nnx.Layer):
    """Appends each training forward's output to a list it keeps: Python state a replay would not change."""

    def __init__(self):
        super().__init__()
        self.outputs = []

    def forward(self, X, training=False):
        Y = X * 1.0
        if training:
            self.outputs.append(Y)
        return Y

    def backward(self, dY, need_dX=True):
        return dY


def test_a_layer_appending_to_a_list_it_keeps_is_not_replayed(monkeypatch, recording_backend, rng):
    X, y = _data(rng, 64, 4, 1, "binary")
    kept = []
    for plain in (False, True):
        with monkeypatch.context() as m:
            if plain:
                m.setattr(type(recording_backend), "tape", lambda self: None)
            layer = KeepsEveryOutput()
            outputs = layer.outputs
            model = nnx.Sequential(nnx.Dense(4, 3), layer, nnx.Dense(3, 1), backend=recording_backend,
                                   dtype="float64", seed=0)
            model.fit(X, y, loss="bce_with_logits", epochs=1, batch_size=8, shuffle=False)
            assert layer.outputs is outputs  # the list the layer keeps, as the plain passes leave it
            assert all(type(Y) is np.ndarray for Y in outputs)
            kept.append([_bits(Y) for Y in outputs])
    assert kept[0] == kept[1]


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
