"""Steps run back to back (`TrainStep.back_to_back`).

Where none of the user's code runs between two steps of an epoch (no per-batch callback, no gradient transform,
batches the library cuts from arrays itself), a step does not look again at what only such code could change:
the recorded passes' watches and the flat update's check that its views are still bound run once an epoch
instead of every step. Wherever a user's code does run between steps, they still run, and what it changed is
seen from the next step on, as in the plain loop.
"""

from __future__ import annotations

import numpy as np
import pytest
from user_code import PerEpoch, counted_calls

import nnx
from nnx.training import flat, shared_programs


def _data(rng, n=50, features=5):
    X = rng.standard_normal((n, features))
    y = (rng.random((n, 1)) < 0.5).astype("float64")
    return X, y


def _model(backend, seed=3):
    return nnx.Sequential(nnx.Dense(5, 6), nnx.LeakyReLU(0.05), nnx.Dense(6, 1), nnx.Sigmoid(),
                          backend=backend, dtype="float64", seed=seed)


def test_the_recorded_passes_read_the_settings_once_an_epoch_and_layout(monkeypatch, backend, rng):
    if backend.tape() is None:
        pytest.skip(f"{backend.name}'s arrays do not tell what is done to them: nothing is recorded")
    counter = counted_calls(monkeypatch, shared_programs.SettingsWatch, "current")
    per_epoch = PerEpoch(counter)
    model = _model(backend)
    # batches of 16, 16, 16 and 2 rows: the first batch of an epoch and the smaller last one read the settings
    model.fit(*_data(rng), loss="bce", optimizer="sgd", epochs=4, batch_size=16, callbacks=[per_epoch])
    assert per_epoch.per_epoch[1:] == [2, 2, 2]


def test_the_flat_update_checks_its_views_once_an_epoch(monkeypatch, backend, rng):
    counter = counted_calls(monkeypatch, flat.FlatUpdate, "_in_place")
    per_epoch = PerEpoch(counter)
    model = _model(backend)
    history = model.fit(*_data(rng), loss="bce", optimizer=nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                        epochs=3, batch_size=16, callbacks=[per_epoch])
    if history.execution != "flat":
        pytest.skip(f"the step runs {history.execution!r} on {backend.name}, not with the flat update")
    assert per_epoch.per_epoch == [1, 1, 1]


class SlopeInSecondEpoch(nnx.callbacks.Callback):
    """Changes a setting after the second batch of the second epoch, where the step before replayed what the
    step after would replay again."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 1:
            self.model.layers[1].alpha = 0.4


class RebindWeightAfterFirstBatch(nnx.callbacks.Callback):
    def on_batch_end(self, batch, logs=None):
        if batch == 0:
            weight = self.model.layers[0].weight
            weight.value = weight.value * 0.5  # a new array: the flat update's view is no longer bound


class ResetMomentumAfterFirstBatch(nnx.callbacks.Callback):
    def __init__(self, optimizer):
        super().__init__()
        self.optimizer = optimizer

    def on_batch_end(self, batch, logs=None):
        if batch == 0:
            state = self.optimizer.state_dict()
            self.optimizer.load_state_dict(dict(state, state={}))  # momentum starts again from the next step


class SlopeChangingBatches:
    """An iterable of batches whose iteration, the user's code, changes a layer's setting before the third batch
    of the second epoch (as `SlopeInSecondEpoch` does)."""

    def __init__(self, model, X, y):
        self.model, self.X, self.y = model, X, y
        self.epoch = -1

    def __iter__(self):
        self.epoch += 1
        for b, start in enumerate(range(0, len(self.X), 16)):
            if self.epoch == 1 and b == 2:
                self.model.layers[1].alpha = 0.4
            yield self.X[start:start + 16], self.y[start:start + 16]


WAYS = ["a callback changes a setting", "a callback rebinds a weight", "a callback loads the optimizer's state",
        "the batches' iteration changes a setting"]


def _fit(backend, way, X, y):
    model = _model(backend)
    opt = nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    callbacks = {WAYS[0]: [SlopeInSecondEpoch()], WAYS[1]: [RebindWeightAfterFirstBatch()],
                 WAYS[2]: [ResetMomentumAfterFirstBatch(opt)]}.get(way, [])
    if way == WAYS[3]:
        # read in this thread (no prefetch): each change lands between the same two steps in both fits
        model.fit(SlopeChangingBatches(model, X, y), loss="bce", optimizer=opt, epochs=3, prefetch=False)
    else:
        model.fit(X, y, loss="bce", optimizer=opt, epochs=3, batch_size=16, shuffle=False, callbacks=callbacks)
    return [np.asarray(backend.to_host(p.value)) for p in model.parameters()]


@pytest.mark.parametrize("way", WAYS)
def test_what_the_users_code_changes_between_steps_is_seen_at_the_next(backend, rng, way):
    if way == WAYS[3] and backend.can_compile:
        pytest.skip("a compiled epoch reads batches of an iterable ahead, in chunks (docs/training.md): the "
                    "change lands before steps it follows in the plain loop")
    X, y = _data(rng, n=48)
    got = _fit(backend, way, X, y)
    plain = _fit(backend.with_fastpath(False), way, X, y)  # the plain loop: nothing derived, nothing skipped
    for a, b in zip(got, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
