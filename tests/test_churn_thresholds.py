"""The churn guards' thresholds, each pinned where a mutation of it went unnoticed (tests/test_settings_churn.py holds
the cliffs they exist for).

A derived execution (JAX's compiled programs, NumPy's recorded passes) is given up where a setting changes faster
than a program pays for itself, and taken up again once the settings hold still. Giving up too early or waking too
late costs speed in fits that did nothing wrong; never giving up is the cliff. Each test here failed on a hand-made
mutant of one line that the older tests passed. `STEPS_TO_PAY` is made small so that the epochs stay short; the
numbers are always the plain loop's (NumPy's, the same batches).
"""

from __future__ import annotations

import numpy as np
import pytest
from threaded_ranks import run_ranks

import nnx
from nnx.backends import backend_status
from nnx.callbacks import Callback
from nnx.training import churn, compiled_inference, recorded, shared_programs
from nnx.training.churn import MAX_UNPAID, churn_of
from nnx.training.compiled import CompiledStep, compiled_step_of

ok, why = backend_status("jax")
needs_jax = pytest.mark.skipif(not ok, reason=f"jax not available: {why}")

BATCH = 16
PAY = 10  # STEPS_TO_PAY in these tests


@pytest.fixture
def traces(monkeypatch):
    """How often a step was traced, over every compiled step the test makes: [count]; `STEPS_TO_PAY` is `PAY`."""
    count = [0]
    gradients = CompiledStep._gradients
    shared_programs.clear()  # (programs other tests compiled for equal settings are taken without a trace)

    def counted(self, *args):
        count[0] += 1
        return gradients(self, *args)

    monkeypatch.setattr(CompiledStep, "_gradients", counted)
    monkeypatch.setattr(churn, "STEPS_TO_PAY", PAY)
    return count


def _data(rows: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((rows, 5))
    return X, (X[:, 0] - X[:, 1] > 0).astype(np.float64)


def _model(backend: str, cls: type = nnx.Sequential) -> nnx.Sequential:
    return cls(nnx.Dense(5, 8), nnx.LeakyReLU(0.1), nnx.Dense(8, 1), nnx.Sigmoid(), backend=backend, dtype="float64",
               seed=3)


class Anneal(Callback):
    """Sets the LeakyReLU's slope (a new value) as each epoch `e` with `when(e)` begins (no per-batch hook: on JAX
    each epoch runs as one program)."""

    def __init__(self, when) -> None:
        self.when = when

    def _set(self, epoch: int) -> None:
        if self.when(epoch):
            self.model.layers[1].alpha = 0.1 + 1e-3 * epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._set(epoch)


class AnnealAtFirstBatch(Anneal):
    """The same change, made at each epoch's first batch: a per-batch hook, so each step runs as its own program."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch = epoch

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if batch == 0:
            self._set(self.epoch)


class Toggle(Callback):
    """Switches the LeakyReLU's slope between two values as each epoch begins."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.layers[1].alpha = 0.2 if epoch % 2 else 0.1


class Resting(Callback):
    """Whether the model's compiled programs rest as each epoch ends, as a string ("." compiled, "R" resting)."""

    def __init__(self) -> None:
        self.log = ""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.log += "R" if churn_of(self.model).resting is not None else "."


def _fit_both(X, y, epochs: int, callbacks, cls: type = nnx.Sequential, **kwargs) -> nnx.Sequential:
    """The JAX model after the fit, checked against the same fit on NumPy."""
    models = []
    for name in ("numpy", "jax"):
        model = _model(name, cls)
        model.fit(X, y, loss="bce", optimizer="adam", lr=0.01, epochs=epochs, batch_size=BATCH,
                  callbacks=callbacks(), **kwargs)
        models.append(model)
    for p, q in zip(*(m.parameters() for m in models), strict=True):
        np.testing.assert_allclose(np.asarray(q.value), np.asarray(p.value), rtol=1e-10, atol=1e-12, err_msg=p.name)
    return models[1]


@needs_jax
@pytest.mark.parametrize("per_step", [False, True], ids=["epoch programs", "step programs"])
def test_programs_that_pay_are_made_at_every_change(traces, per_step):
    """A setting changed every epoch of more than `STEPS_TO_PAY` steps: each program pays, nothing is given up.
    (Mutants that gave up: the pay condition dropped, an epoch program counted as one step, the per-step program's
    steps not counted.)"""
    epochs = MAX_UNPAID + 4
    X, y = _data((PAY + 2) * BATCH)
    anneal = AnnealAtFirstBatch if per_step else Anneal
    model = _fit_both(X, y, epochs, lambda: [anneal(lambda e: True)])
    assert traces[0] == epochs and not compiled_step_of(model).resting


@needs_jax
def test_a_setting_never_still_for_long_enough_keeps_resting(traces):
    """Changed every other epoch of `PAY // 2 - 1` steps: no program pays, and the settings are never still for
    `STEPS_TO_PAY` updates, so the steps rest for good. (Mutants that woke again and again: the still count kept
    over a change, the last look not moved.)"""
    log = []

    def callbacks():
        log.append(Resting())
        return [Anneal(lambda e: e % 2 == 0), log[-1]]

    X, y = _data((PAY // 2 - 1) * BATCH)
    epochs = 4 * MAX_UNPAID
    _fit_both(X, y, epochs, callbacks)
    assert traces[0] == MAX_UNPAID + 1
    rests_from = 2 * (MAX_UNPAID + 1)  # the change at this epoch is the first refused
    assert log[-1].log == "." * rests_from + "R" * (epochs - rests_from), log[-1].log


@needs_jax
def test_the_steps_wake_after_exactly_steps_to_pay_still_updates_and_a_later_change_must_pay_at_once(traces):
    """A warm-up, then still: compiled again at the first epoch start with `STEPS_TO_PAY` still updates behind it,
    not one epoch later; then a second warm-up: the first program after the wake is free, and the next change is
    refused unless the program paid already. (Mutants: `<=` for `<`, the last program's settings forgotten on a
    refusal, the counters reset to 0 on waking.)"""
    per_epoch = PAY // 2  # two still epochs make STEPS_TO_PAY updates
    warm = MAX_UNPAID + 2  # epochs 0..5 change: the fifth change (epoch 5) is refused
    log = []

    def callbacks():
        log.append(Resting())
        return [Anneal(lambda e: e < warm or 10 <= e < 13), log[-1]]

    X, y = _data(per_epoch * BATCH)
    _fit_both(X, y, 16, callbacks)
    # the change at epoch 5 is refused: 5 and 6 rest (10 still updates), 7 wakes with its first program free and
    # the programs' budget at par; epochs 7-9 ran 15 steps, enough for the programs of the changes at 10 and 11;
    # the change at 12 is refused: 12 and 13 rest, 14 wakes
    assert log[-1].log == "....." + "RR" + "....." + "RR" + "..", log[-1].log
    assert traces[0] == MAX_UNPAID + 1 + 1 + 2 + 1  # the warm-up's, the wake's, epochs 10 and 11, the last wake's


class Executions(Callback):
    """How each epoch ran, as `History` says at its end: (execution, mode, whether the reason says it rests)."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str, bool]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        h = self.model.history
        self.log.append((h.execution, h.execution_mode, churn.RESTING in h.execution_reason))


@needs_jax
def test_a_fit_that_starts_resting_runs_epoch_programs_once_it_wakes_and_says_how_each_epoch_ran(traces):
    """Found by review: a fit that started while its step rested ran step by step to its end, also after the step
    woke (no epoch program was planned); and `History` said the steps ran op by op after they woke mid-fit."""
    per_epoch = PAY // 2
    X, y = _data(per_epoch * BATCH)
    models = {name: _model(name) for name in ("numpy", "jax")}
    for fit in range(MAX_UNPAID + 2):  # a change before each fit of one epoch: the last is refused
        for model in models.values():
            model.layers[1].alpha = 0.1 + 1e-3 * fit
            model.fit(X, y, loss="bce", optimizer=model.optimizer or "adam", lr=0.01, epochs=1, batch_size=BATCH)
    assert compiled_step_of(models["jax"]).resting
    seen = {}
    for name, model in models.items():
        seen[name] = Executions()
        history = model.fit(X, y, loss="bce", optimizer=model.optimizer, epochs=4, batch_size=BATCH,
                            callbacks=[seen[name]])
    for p, q in zip(models["numpy"].parameters(), models["jax"].parameters(), strict=True):
        np.testing.assert_allclose(np.asarray(q.value), np.asarray(p.value), rtol=1e-10, atol=1e-12)
    # one still epoch rested before this fit (5 updates), the first of this one makes 10: the second wakes
    assert seen["jax"].log == [("plain", "step", True)] + [("compiled", "epoch", False)] * 3, seen["jax"].log
    assert (history.execution, history.execution_mode) == ("compiled", "epoch")


@needs_jax
def test_the_compiled_step_run_per_step_wakes_too(traces):
    """With a per-batch callback (each step its own program), a warm-up then still: the compiled step runs again.
    (Mutants: the loop no longer waking the step at an epoch's start, the step not swapped back when it wakes.)"""

    class Look(Callback):
        def on_batch_begin(self, batch, logs=None):
            pass

    log = []

    def callbacks():
        log.append(Resting())
        return [Anneal(lambda e: e <= MAX_UNPAID + 1), Look(), log[-1]]

    X, y = _data(PAY // 2 * BATCH)
    model = _fit_both(X, y, MAX_UNPAID + 5, callbacks)
    step = compiled_step_of(model)
    assert "R" in log[-1].log and log[-1].log.endswith(".."), log[-1].log
    assert not step.resting and churn_of(model).steps_run > churn.STEPS_TO_PAY * MAX_UNPAID


@needs_jax
def test_a_model_of_its_users_class_is_guarded_too(traces):
    """A user's `Sequential` subclass shares no programs (it has no definition); a change every batch must still be
    given up. (Mutant: a change counted as known where there is no definition: one compile a step, the cliff.)"""

    class Mine(nnx.Sequential):
        pass

    class EachBatch(Callback):
        def __init__(self):
            self.n = 0

        def on_batch_begin(self, batch, logs=None):
            self.n += 1
            self.model.layers[1].alpha = 0.1 + 1e-3 * self.n

    X, y = _data(6 * BATCH)
    model = _fit_both(X, y, 3, lambda: [EachBatch()], cls=Mine)
    assert traces[0] == MAX_UNPAID + 1 and compiled_step_of(model).resting


@needs_jax
@pytest.mark.parametrize("case", ["warm-up", "pays", "toggle"])
def test_data_parallel_passes_rest_and_wake_as_the_step_does(traces, case):
    """The passes' programs of 2 ranks: woken after a warm-up, kept where each pays, and a toggle between two kept
    programs is no change. (Mutants: the step's wake not waking its passes, their steps not counted, `known`
    asked of the step's definition rather than the passes'.)"""
    per_epoch, epochs, anneal = {"warm-up": (PAY // 2, MAX_UNPAID + 6, lambda: Anneal(lambda e: e <= MAX_UNPAID + 1)),
                                 "pays": (PAY + 2, MAX_UNPAID + 3, lambda: Anneal(lambda e: True)),
                                 "toggle": (3, 2 * MAX_UNPAID + 2, Toggle)}[case]
    X, y = _data(per_epoch * 2 * BATCH)

    def rank(comm):
        model = _model("jax")
        log, executions = Resting(), Executions()
        model.fit(X, y, loss="bce", optimizer="adam", lr=0.01, epochs=epochs, batch_size=2 * BATCH,
                  distributed=comm, callbacks=[anneal(), log, executions])
        # (found by review: the reason said the passes ran as one program while they rested)
        assert [rests for _, _, rests in executions.log] == [r == "R" for r in log.log], executions.log
        return log.log

    logs = run_ranks(2, rank)
    assert logs[0] == logs[1] and logs[0].endswith("."), logs
    assert ("R" in logs[0]) == (case == "warm-up"), logs


@needs_jax
def test_validation_toggled_between_two_values_keeps_its_programs(monkeypatch):
    """Validation with a setting toggled each epoch: both programs are kept, so nothing is given up. (Mutant: the
    inference guard not asking `known`: it rested, and validation ran op by op.)"""
    shared_programs.clear()
    X, y = _data(3 * BATCH)
    model = _model("jax")
    model.fit(X, y, loss="bce", optimizer="adam", lr=0.01, epochs=2 * MAX_UNPAID + 2, batch_size=BATCH,
              validation_data=(X, y), callbacks=[Toggle()])
    held = compiled_inference._CHURN.get(model)
    assert held is not None and held.resting is None and held.plain_batches == 0


@needs_jax
def test_validation_passes_of_many_batches_pay_at_every_change(monkeypatch):
    """Validation of more than `STEPS_TO_PAY` batches a pass, with a setting changed every epoch: each program pays.
    (Mutant: the batches a program ran not counted: validation rested and ran op by op.)"""
    monkeypatch.setattr(churn, "STEPS_TO_PAY", PAY)
    shared_programs.clear()
    X, y = _data(3 * BATCH)
    model = _model("jax")
    model.fit(X, y, loss="bce", optimizer="adam", lr=0.01, epochs=MAX_UNPAID + 3, batch_size=BATCH,
              validation_data=_data((PAY + 2) * BATCH), callbacks=[Anneal(lambda e: True)])
    held = compiled_inference._CHURN.get(model)
    assert held is not None and held.resting is None and held.plain_batches == 0


@pytest.fixture
def recordings(monkeypatch):
    """How many recordings NumPy's recorded passes made: [count]."""
    count = [0]
    record = recorded.RecordedPasses._record

    def counted(self, *args):
        made = record(self, *args)
        count[0] += made is not None
        return made

    monkeypatch.setattr(recorded.RecordedPasses, "_record", counted)
    return count


def test_numpy_batch_sizes_within_the_layouts_kept_wake_the_recording_again(recordings):
    """Exactly `MAX_RECORDINGS` batch sizes (each dividing the rows: one layout a fit), cycled while a setting
    changed, then still: recorded again once still, since the still steps fall within the layouts a model keeps.
    (Mutant: `>=` for `>`, which never woke with exactly that many.)"""
    sizes = (16, 32, 48, 24)
    assert len(sizes) == recorded.MAX_RECORDINGS
    X, y = _data(96)
    model = _model("numpy")
    changing = 12
    for fit in range(60):
        if fit < changing:
            model.layers[1].alpha = 0.1 + 1e-3 * fit
        model.fit(X, y, loss="bce", optimizer=model.optimizer or "adam", lr=0.01, epochs=1,
                  batch_size=sizes[fit % len(sizes)])
    assert recordings[0] == recorded.MAX_UNPAID + len(sizes)  # refused while changing, then one a layout again


def test_numpy_recordings_that_pay_are_replayed_at_every_change(recordings, monkeypatch):
    """A setting changed every epoch of more than `REPLAYS_TO_PAY` batches: each recording pays, and every batch but
    the recorded one replays. (Mutant: the replays not counted, which refused recording after `MAX_UNPAID` and ran
    `REPLAYS_TO_PAY` batches of each later epoch plainly before recording again.)"""
    monkeypatch.setattr(recorded, "REPLAYS_TO_PAY", 4)
    replays = [0]
    replay = recorded.RecordedPasses._replay

    def counted(self, *args):
        replays[0] += 1
        return replay(self, *args)

    monkeypatch.setattr(recorded.RecordedPasses, "_replay", counted)
    epochs, per_epoch = recorded.MAX_UNPAID + 4, 8
    X, y = _data(per_epoch * BATCH)
    model = _model("numpy")
    model.fit(X, y, loss="bce", optimizer="adam", lr=0.01, epochs=epochs, batch_size=BATCH,
              callbacks=[Anneal(lambda e: True)])
    # (the fit's first batch runs plainly, with its input checks, and the second is recorded)
    assert (recordings[0], replays[0]) == (epochs, epochs * (per_epoch - 1) - 1)
