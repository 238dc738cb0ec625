"""Derived executions where a callback changes a setting they hold faster than making them again pays.

JAX's compiled programs hold the layers' settings as constants and are compiled again when one changes; NumPy's
recorded passes are recorded again. A callback annealing a setting every batch compiled a program every step on
JAX (242x the plain loop at a small MLP), one changing it every epoch of a few batches a program every epoch, and
NumPy recorded every epoch (1.4x the plain loop). After a few such programs or recordings that did not pay, the
plain stages run until the settings hold still long enough to pay again. The numbers stay the plain loop's
throughout (NumPy's, the same batches), and a step refused before the switch is still the error the fit raises.
"""

from __future__ import annotations

import numpy as np
import pytest
from threaded_ranks import run_ranks

import nnx
from nnx.backends import backend_status
from nnx.callbacks import Callback
from nnx.training import compiled_inference, recorded, shared_programs
from nnx.training.churn import MAX_UNPAID, STEPS_TO_PAY
from nnx.training.compiled import CompiledStep, compiled_step_of

ok, why = backend_status("jax")
needs_jax = pytest.mark.skipif(not ok, reason=f"jax not available: {why}")

BATCH = 16


class ChurnEachBatch(Callback):
    """Anneals the LeakyReLU's slope before every batch (a new value each time)."""

    def __init__(self) -> None:
        self.changes = 0

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.changes += 1
        self.model.layers[1].alpha = 0.1 + 1e-3 * self.changes


class ChurnEachEpoch(Callback):
    """Anneals the LeakyReLU's slope as each of the first `until` epochs begins, then leaves it."""

    def __init__(self, until: int = 10**9) -> None:
        self.until = until

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch < self.until:
            self.model.layers[1].alpha = 0.1 + 1e-3 * epoch


@pytest.fixture
def traces(monkeypatch):
    """How often a step was traced (a program compiled for it, alone or inside an epoch's), over every compiled step
    of every model the test makes: [count]."""
    count = [0]
    gradients = CompiledStep._gradients
    shared_programs.clear()  # (programs other tests compiled for equal settings are taken without a trace)

    def counted(self, *args):
        count[0] += 1
        return gradients(self, *args)

    monkeypatch.setattr(CompiledStep, "_gradients", counted)
    return count


def _data(rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, 5))
    return X, (X[:, 0] - X[:, 1] > 0).astype(np.float64)


def _model(backend: str) -> nnx.Sequential:
    return nnx.Sequential(nnx.Dense(5, 8), nnx.LeakyReLU(0.1), nnx.Dense(8, 1), nnx.Sigmoid(), backend=backend,
                          dtype="float64", seed=3)


def _fit(backend: str, X, y, callback: Callback, epochs: int) -> nnx.Sequential:
    model = _model(backend)
    model.fit(X, y, loss="bce", optimizer="adam", lr=0.01, epochs=epochs, batch_size=BATCH, callbacks=[callback])
    return model


def _assert_same(a: nnx.Sequential, b: nnx.Sequential) -> None:
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_allclose(np.asarray(q.value), np.asarray(p.value), rtol=1e-10, atol=1e-12, err_msg=p.name)


@needs_jax
def test_a_setting_changed_every_batch_compiles_a_bounded_number_of_programs(traces):
    X, y = _data(6 * BATCH)  # 6 steps an epoch, 18 changes
    plain = _fit("numpy", X, y, ChurnEachBatch(), epochs=3)
    model = _fit("jax", X, y, ChurnEachBatch(), epochs=3)
    _assert_same(plain, model)
    assert traces[0] == MAX_UNPAID + 1  # was 18: one program a step
    step = compiled_step_of(model)
    assert step is not None and step.resting  # still changing: the plain stages run


@needs_jax
def test_a_setting_changed_every_epoch_of_few_batches_stops_compiling_epoch_programs(traces):
    X, y = _data(3 * BATCH)
    plain = _fit("numpy", X, y, ChurnEachEpoch(), epochs=12)
    model = _fit("jax", X, y, ChurnEachEpoch(), epochs=12)
    _assert_same(plain, model)
    assert traces[0] == MAX_UNPAID + 1  # was 12
    step = compiled_step_of(model)
    assert step is not None and step.resting


@needs_jax
def test_programs_run_again_once_the_settings_hold_still(traces):
    """A warm-up that anneals a setting over its first epochs, then leaves it: compiled again after STEPS_TO_PAY
    still steps, for the rest of the fit, and for the next fit."""
    per_epoch = 25
    X, y = _data(per_epoch * BATCH)
    still_epochs = -(-STEPS_TO_PAY // per_epoch)
    epochs = MAX_UNPAID + 2 + 1 + still_epochs + 2  # churn, one more change while resting, still, compiled again
    plain = _fit("numpy", X, y, ChurnEachEpoch(until=MAX_UNPAID + 3), epochs=epochs)
    model = _fit("jax", X, y, ChurnEachEpoch(until=MAX_UNPAID + 3), epochs=epochs)
    _assert_same(plain, model)
    step = compiled_step_of(model)
    assert step is not None and not step.resting
    assert traces[0] == MAX_UNPAID + 2  # one program again, for the settings that held still
    history = model.fit(X, y, loss="bce", optimizer=model.optimizer, epochs=2, batch_size=BATCH)
    plain.fit(X, y, loss="bce", optimizer=plain.optimizer, epochs=2, batch_size=BATCH)
    _assert_same(plain, model)
    assert history.execution_mode == "epoch" and traces[0] == MAX_UNPAID + 2  # nothing changed: no trace


@needs_jax
def test_fits_of_one_epoch_with_a_setting_changed_between_them_stop_compiling(traces):
    X, y = _data(3 * BATCH)
    models = {name: _model(name) for name in ("numpy", "jax")}
    for fit in range(3 * MAX_UNPAID):
        for model in models.values():
            model.layers[1].alpha = 0.1 + 1e-3 * fit
            model.fit(X, y, loss="bce", optimizer=model.optimizer or "adam", lr=0.01, epochs=1, batch_size=BATCH)
    _assert_same(models["numpy"], models["jax"])
    assert traces[0] == MAX_UNPAID + 1  # was one a fit
    step = compiled_step_of(models["jax"])
    assert step is not None and step.resting


@needs_jax
def test_fits_that_each_bring_a_new_optimizer_compile_again_once_the_settings_hold_still(traces):
    """Found by review: waking counted the optimizer's updates since the last look, and each fit's new optimizer
    counts from 0, so one-epoch fits each given a new optimizer rested for good (6x a compiled fit). While resting,
    the fit also said its model did not trace."""
    X, y = _data(4 * BATCH)
    models = {name: _model(name) for name in ("numpy", "jax")}
    histories = {}
    for fit in range(MAX_UNPAID + 2):  # a setting changed between fits: the steps rest
        for name, model in models.items():
            model.layers[1].alpha = 0.1 + 1e-3 * fit
            histories[name] = model.fit(X, y, loss="bce", optimizer=nnx.optim.Adam(model.parameters(), lr=0.01),
                                        epochs=1, batch_size=BATCH)
    assert compiled_step_of(models["jax"]).resting
    assert "too often" in histories["jax"].execution_reason, histories["jax"].execution_reason
    still_fits = -(-STEPS_TO_PAY // 4)  # 4 updates a fit
    for _ in range(still_fits + 1):  # (the fit after the still ones wakes)
        for name, model in models.items():
            histories[name] = model.fit(X, y, loss="bce", optimizer=nnx.optim.Adam(model.parameters(), lr=0.01),
                                        epochs=1, batch_size=BATCH)
    _assert_same(models["numpy"], models["jax"])
    assert histories["jax"].execution == "compiled", histories["jax"].execution_reason


class ToggleEachEpoch(Callback):
    """Switches the LeakyReLU's slope between two values as each epoch begins."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.layers[1].alpha = 0.2 if epoch % 2 else 0.1


class ToggleEachBatch(Callback):
    """Switches the LeakyReLU's slope between two values before every batch."""

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.model.layers[1].alpha = 0.2 if batch % 2 else 0.1


@needs_jax
@pytest.mark.parametrize("toggle", [ToggleEachEpoch, ToggleEachBatch])
def test_a_setting_toggled_between_two_values_keeps_its_two_programs(traces, toggle):
    """Both programs are kept once compiled: taking one again compiles nothing, so nothing is given up."""
    X, y = _data(3 * BATCH)
    plain = _fit("numpy", X, y, toggle(), epochs=12)
    model = _fit("jax", X, y, toggle(), epochs=12)
    _assert_same(plain, model)
    assert traces[0] == 2
    step = compiled_step_of(model)
    assert step is not None and not step.resting


@needs_jax
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_a_step_refused_before_the_switch_is_still_the_error_the_fit_raises():
    """The compiled steps keep their verdict on the device until the epoch ends: a switch to the plain stages after
    a refused step must not drop it (the plain loop stopped at that step)."""
    X, y = _data(8 * BATCH)
    y[3 * BATCH + 2] = 1e200  # in the fourth batch, before the fifth change would stop the compiling: its square
    # overflows
    errors, models = [], []
    for name in ("numpy", "jax"):
        model = _model(name)
        with pytest.raises(nnx.training.NonFiniteStep) as info:
            model.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=1, batch_size=BATCH, shuffle=False,
                      callbacks=[ChurnEachBatch()])
        errors.append(str(info.value))
        models.append(model)
    assert errors[0] == errors[1] and "batch 4" in errors[0]
    _assert_same(*models)


@needs_jax
def test_data_parallel_passes_of_a_setting_changed_every_batch_compile_a_bounded_number_of_programs(traces):
    """Two threaded ranks run each batch's passes as one program between their all-reduces
    (`nnx.training.compiled_passes`); a setting changed every batch compiled them every step on each rank."""
    X, y = _data(6 * BATCH)

    def fit(backend):
        def rank(comm):
            model = _model(backend)
            model.fit(X, y, loss="bce", optimizer="adam", lr=0.01, epochs=3, batch_size=2 * BATCH, distributed=comm,
                      callbacks=[ChurnEachBatch()])
            return model
        return run_ranks(2, rank)

    plain = fit(nnx.get_backend("jax").with_fastpath(False))
    traces[0] = 0
    ranks = fit("jax")
    for model in ranks:
        _assert_same(plain[0], model)
    assert traces[0] == 2 * (MAX_UNPAID + 1)  # was 16: one program a step on each rank after its first


@needs_jax
def test_validation_of_a_setting_changed_every_epoch_compiles_a_bounded_number_of_programs(monkeypatch):
    """The validation pass is a program of its own (`nnx.training.compiled_inference`), keyed by the settings too:
    it compiled every epoch where the training steps had stopped compiling."""
    inference = compiled_inference._Program
    count, pure = [0], inference._pure

    def counted(self, *args):
        count[0] += 1
        return pure(self, *args)

    monkeypatch.setattr(inference, "_pure", counted)
    shared_programs.clear()
    X, y = _data(3 * BATCH)
    histories = []
    for backend in ("numpy", "jax"):
        model = _model(backend)
        histories.append(model.fit(X, y, loss="bce", optimizer="adam", lr=0.01, epochs=16, batch_size=BATCH,
                                   validation_data=_data(BATCH), metrics=["accuracy"], callbacks=[ChurnEachEpoch()]))
    np.testing.assert_allclose(histories[1].history["val_loss"], histories[0].history["val_loss"], rtol=1e-10)
    assert histories[1].history["val_accuracy"] == histories[0].history["val_accuracy"]
    assert 0 < count[0] <= 2 * (MAX_UNPAID + 1)  # was 32: the loss's and the metrics' programs, every epoch


@needs_jax
def test_validation_compiles_again_once_the_settings_hold_still_for_enough_batches():
    """A warm-up that anneals a setting over its first epochs: the validation passes run op by op meanwhile, and
    compile again once the settings held still for as many of their batches as a program takes to pay."""
    X, y = _data(3 * BATCH)
    validation = _data(2 * STEPS_TO_PAY)  # evaluated in batches of the fit's size: 12 a pass
    until = MAX_UNPAID + 2
    histories, models = [], []
    for backend in ("numpy", "jax"):
        model = _model(backend)
        histories.append(model.fit(X, y, loss="bce", optimizer="adam", lr=0.01, epochs=until + 12, batch_size=BATCH,
                                   validation_data=validation, callbacks=[ChurnEachEpoch(until)]))
        models.append(model)
    np.testing.assert_allclose(histories[1].history["val_loss"], histories[0].history["val_loss"], rtol=1e-10)
    churn = compiled_inference._CHURN.get(models[1])
    assert churn is not None and churn.remade > 0 and churn.resting is None


@pytest.fixture
def recordings(monkeypatch):
    """How often NumPy's passes were recorded, over every model the test makes: [count]."""
    count = [0]
    record = recorded.RecordedPasses._record

    def counted(self, *args):
        made = record(self, *args)
        count[0] += made is not None
        return made

    monkeypatch.setattr(recorded.RecordedPasses, "_record", counted)
    return count


def test_numpy_records_a_setting_changed_every_epoch_of_few_batches_a_bounded_number_of_times(recordings):
    X, y = _data(6 * BATCH)  # 5 replays a recording, under what pays
    plain = _fit(nnx.get_backend("numpy").with_fastpath(False), X, y, ChurnEachEpoch(), epochs=20)
    model = _fit("numpy", X, y, ChurnEachEpoch(), epochs=20)
    _assert_same(plain, model)
    assert recordings[0] == recorded.MAX_UNPAID  # was 20: one an epoch


def test_numpy_records_again_once_the_settings_hold_still(recordings):
    X, y = _data(6 * BATCH)
    until = recorded.MAX_UNPAID + 2
    still_epochs = -(-recorded.REPLAYS_TO_PAY // 6)
    plain = _fit(nnx.get_backend("numpy").with_fastpath(False), X, y, ChurnEachEpoch(until), epochs=until + 1)
    model = _fit("numpy", X, y, ChurnEachEpoch(until), epochs=until + 1)
    assert recordings[0] == recorded.MAX_UNPAID  # refused, still changing
    for m in (plain, model):
        m.fit(X, y, loss="bce", optimizer=m.optimizer, epochs=still_epochs + 2, batch_size=BATCH)
    _assert_same(plain, model)
    assert recordings[0] == recorded.MAX_UNPAID + 1  # recorded once more, for the settings that held still


def test_numpy_batch_sizes_that_keep_changing_are_not_recorded_again_and_again(recordings):
    """More batch layouts than the recordings kept, settings unchanged: refused once, as before, not recorded again
    each time the settings held still for a while (the layouts would evict the recordings again)."""
    X, y = _data(10 * BATCH)
    sizes = (16, 20, 25, 35, 15)
    model = _model("numpy")
    for fit in range(60):
        model.fit(X, y, loss="bce", optimizer=model.optimizer or "adam", lr=0.01, epochs=1,
                  batch_size=sizes[fit % len(sizes)])
    assert recordings[0] == recorded.MAX_UNPAID
