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
from user_code import PerEpoch, UserDense, counted_calls

import nnx
from nnx.training import flat, shared_programs


def _data(rng, n=50, features=5):
    X = rng.standard_normal((n, features))
    y = (rng.random((n, 1)) < 0.5).astype("float64")
    return X, y


def _model(backend, seed=3):
    return nnx.Sequential(nnx.Dense(5, 6), nnx.LeakyReLU(0.05), nnx.Dense(6, 1), nnx.Sigmoid(),
                          backend=backend, dtype="float64", seed=seed)


def test_the_recorded_passes_read_the_settings_once_an_epoch(monkeypatch, backend, rng):
    if backend.tape() is None:
        pytest.skip(f"{backend.name}'s arrays do not tell what is done to them: nothing is recorded")
    counter = counted_calls(monkeypatch, shared_programs.SettingsWatch, "current")
    per_epoch = PerEpoch(counter)
    model = _model(backend)
    # batches of 16, 16, 16 and 2 rows: the first batch of an epoch reads the settings; the smaller last one's
    # recording is checked against what it read
    model.fit(*_data(rng), loss="bce", optimizer="sgd", epochs=4, batch_size=16, callbacks=[per_epoch])
    assert per_epoch.per_epoch[1:] == [1, 1, 1]


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


class SlopeSettingSGD(nnx.optim.SGD):
    """SGD whose own step also sets a layer's slope once, after its third update (a schedule written into the
    optimizer): code of the user's that runs between two steps of an epoch, after the update."""

    def __init__(self, params, lr, layer):
        """SGD at rate `lr`, setting `layer`'s slope after the third update."""
        super().__init__(params, lr)
        self.layer = layer

    def step(self):
        """The SGD update, then the slope once the third update is done."""
        super().step()
        if self.step_count == 3:
            self.layer.alpha = 0.05


def test_a_setting_an_optimizers_own_step_changes_is_seen_at_the_next_step(backend, rng):
    """On NumPy the passes are replayed, and back to back a replay followed the last without looking at the
    layers' settings: a slope an overridden `step` set (the user's code between two steps) was ignored."""
    X = rng.standard_normal((48, 5))
    y = (X[:, :1] > 0).astype("float64")

    def run(be):
        model = nnx.Sequential(nnx.Dense(5, 6), nnx.LeakyReLU(0.3), nnx.Dense(6, 1), nnx.Sigmoid(), backend=be,
                               dtype="float64", seed=3)
        opt = SlopeSettingSGD(model.parameters(), 0.1, model.layers[1])
        model.fit(X, y, loss="bce", optimizer=opt, epochs=2, batch_size=8)
        return [np.asarray(be.to_host(p.value)) for p in model.parameters()]

    for got, plain in zip(run(backend), run(backend.with_fastpath(False)), strict=True):
        np.testing.assert_allclose(got, plain, rtol=1e-12, atol=1e-14)


# What a user's code inside a step changes back to back: a user's layer, loss or regularizer runs in the passes
# wherever they are not replayed (every step on torch and array_api_strict, and on NumPy once recording was refused),
# and a rebinding made there is seen at the update as the plain loop sees it.
class Noop(nnx.callbacks.Callback):
    """A per-batch hook that does nothing: the steps no longer run back to back, and every check runs."""

    def on_batch_end(self, batch, logs=None):
        pass


class MomentumRestart(nnx.Layer):
    """A user's pass-through layer that restarts the momentum of the first weight every second training call, by
    rebinding the optimizer's state entry to a new array (as a warm restart written into the model would)."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.optimizer = None

    def output_shape(self, input_shape):
        return input_shape

    def forward(self, X, training=False):
        if training and self.optimizer is not None:
            self.calls += 1
            entry = self.optimizer.state.get(0)
            if self.calls % 2 == 0 and entry:
                entry["momentum_buffer"] = entry["momentum_buffer"] * 0.0
        return X

    def backward(self, dY, need_dX=True):
        return dY


def _fit_with_restarts(backend, X, y, callbacks):
    restart = MomentumRestart()
    model = nnx.Sequential(nnx.Dense(5, 6), restart, nnx.LeakyReLU(0.05), nnx.Dense(6, 1), nnx.Sigmoid(),
                           backend=backend, dtype="float64", seed=3)
    opt = nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    restart.optimizer = opt
    model.fit(X, y, loss="bce", optimizer=opt, epochs=3, batch_size=16, callbacks=callbacks)
    return [np.asarray(backend.to_host(p.value)) for p in model.parameters()]


def test_an_optimizer_state_entry_a_layer_rebinds_inside_the_step_is_updated_from(backend, rng):
    if backend.can_compile:
        pytest.skip("a compiled step runs the layer's Python only when it is traced")
    X, y = _data(rng)
    got = _fit_with_restarts(backend, X, y, [])
    checked = _fit_with_restarts(backend, X, y, [Noop()])  # a step after a per-batch hook checks everything
    plain = _fit_with_restarts(backend.with_fastpath(False), X, y, [])
    for a, b, c in zip(got, checked, plain, strict=True):
        np.testing.assert_allclose(b, c, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(a, c, rtol=1e-12, atol=1e-14)


class RestartingMSE(nnx.losses.Loss):
    """A user's mean squared error that restarts the momentum of the first weight every second call, rebinding
    the optimizer's state entry, as `MomentumRestart` does from a layer."""

    def __init__(self):
        super().__init__()
        self.calls = 0
        self.optimizer = None

    def rows(self, xp, y_true, y_pred):
        if self.optimizer is not None:
            self.calls += 1
            entry = self.optimizer.state.get(0)
            if self.calls % 2 == 0 and entry:
                entry["momentum_buffer"] = entry["momentum_buffer"] * 0.0
        d = y_pred - y_true
        return xp.sum(d * d, axis=1), 2.0 * d / y_pred.shape[0]


def _fit_with_a_restarting_loss(backend, X, y, callbacks):
    model = nnx.Sequential(nnx.Dense(5, 6), nnx.Tanh(), nnx.Dense(6, 1), backend=backend, dtype="float64", seed=3)
    opt = nnx.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss = RestartingMSE()
    loss.optimizer = opt
    model.fit(X, y, loss=loss, optimizer=opt, epochs=3, batch_size=16, callbacks=callbacks)
    return [np.asarray(backend.to_host(p.value)) for p in model.parameters()]


def test_an_optimizer_state_entry_a_loss_rebinds_inside_the_step_is_updated_from(backend, rng):
    if backend.can_compile:
        pytest.skip("a compiled step runs the loss's Python only when it is traced")
    X, y = _data(rng)
    got = _fit_with_a_restarting_loss(backend, X, y, [])
    plain = _fit_with_a_restarting_loss(backend.with_fastpath(False), X, y, [])
    for a, b in zip(got, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


class PureScale(nnx.Layer):
    """A user's layer with no side effects: its passes are recorded and replayed on NumPy."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def output_shape(self, input_shape):
        return input_shape

    def forward(self, X, training=False):
        return X * self.factor

    def backward(self, dY, need_dX=True):
        return dY * self.factor


def test_replayed_passes_of_a_users_layer_still_skip_the_state_check_back_to_back(monkeypatch, rng):
    from nnx.training import flat

    backend = nnx.get_backend("numpy")
    counter = counted_calls(monkeypatch, flat.FlatUpdate, "_in_place")
    per_epoch = PerEpoch(counter)
    model = nnx.Sequential(nnx.Dense(5, 6), PureScale(0.5), nnx.Tanh(), nnx.Dense(6, 1), nnx.Sigmoid(),
                           backend=backend, dtype="float64", seed=3)
    X, y = _data(rng)
    model.fit(X, y, loss="bce", optimizer=nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), epochs=3,
              batch_size=16, callbacks=[per_epoch])
    # the epoch's first step, and the smaller last batch's until its layout was recorded (epoch 0)
    assert per_epoch.per_epoch[1:] == [1, 1]


class ScaledBCE(nnx.losses.BinaryCrossEntropy):
    """A user's loss with a scale set outside its config: a new object each fit, as ``loss="bce"`` makes."""

    def __init__(self, scale=1.0):
        super().__init__()
        self.scale = scale
        self.notes = {"scale": scale}

    def rows(self, xp, y_true, y_pred):
        losses, grad = super().rows(xp, y_true, y_pred)
        return losses * self.scale, grad * self.scale


@pytest.mark.parametrize("second", [1.0, 2.0, -0.0], ids=["equal", "other scale", "negative zero"])
def test_a_new_loss_of_a_later_fit_is_used_as_it_is(backend, rng, second):
    """Each fit gets a new loss object; one equal to the last fit's (the same class and plain settings) keeps the
    recorded and compiled passes, and one that differs in a setting, even only as -0.0 from 0.0 does, is
    used with its own: the numbers equal the plain loop's."""
    X, y = _data(rng, n=48)

    def run(be):
        model = _model(be)
        opt = nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for scale in (1.0, second, 0.0, second):
            model.fit(X, y, loss=ScaledBCE(scale), optimizer=opt, epochs=1, batch_size=16, shuffle=False)
        return [np.asarray(be.to_host(p.value)) for p in model.parameters()]

    for a, b in zip(run(backend), run(backend.with_fastpath(False)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_the_watch_of_a_loss_describes_a_new_equal_object_as_the_last_and_any_other_anew():
    """`AttributeWatch` (the object's description, then the outside values its class reads) gives a new object
    of the last one's class with equal plain attributes the last one's description without describing it again;
    a setting told apart by `described` (-0.0, a float for an int, a dict's entry), an array attribute or another
    class is described anew."""
    from nnx.training.trace_state import AttributeWatch, described_with_attributes

    watch = AttributeWatch()
    first = watch.current(ScaledBCE(1.0))
    assert watch.current(ScaledBCE(1.0)) is first
    for other in (ScaledBCE(2.0), ScaledBCE(1), ScaledBCE(-0.0), ScaledBCE(0.0)):
        assert watch.current(other)[0] == described_with_attributes(other)
        assert watch.current(other) != first
    changed = ScaledBCE(1.0)
    changed.notes["scale"] = 3.0
    watch.current(ScaledBCE(1.0))
    assert watch.current(changed)[0] == described_with_attributes(changed) != first[0]
    # the last object's dict changed in place after it was described, and a new object equal to it now: described
    # anew (the last description is of the dict as it was)
    last = ScaledBCE(1.0)
    described_last = watch.current(last)
    last.notes["scale"] = 3.0
    assert watch.current(changed) is not described_last
    assert watch.current(changed)[0] == described_with_attributes(changed)
    held = ScaledBCE(1.0)
    held.table = np.ones(3)
    watch.current(held)
    again = ScaledBCE(1.0)
    again.table = np.zeros(3)
    assert watch.current(again)[0] == described_with_attributes(again) != watch.current(held)[0]
    assert watch.current(nnx.losses.MSE())[0] == described_with_attributes(nnx.losses.MSE())


# -- a step back to back in one call (`TrainStep.run_back_to_back`) ----------------------------------------------------


class HalfSquaredB2B(nnx.losses.Loss):
    """A user's loss through the public API: half the squared error per row."""

    name = "half_squared_test_back_to_back"

    def rows(self, xp, y_true, y_pred):
        diff = y_pred - y_true
        return xp.sum(diff * diff, axis=1) / 2, diff / y_pred.shape[0]


def _in_one_call(backend):
    """Whether a step back to back runs in one call here: not where the whole step is compiled."""
    return not backend.can_compile


def _counted_again(monkeypatch, off=False):
    """Count the steps `TrainStep.run_back_to_back` ran (or, `off`, make it run none: every step then runs the
    stages)."""
    from nnx.training.step import TrainStep

    taken = []
    again = TrainStep.run_back_to_back

    def counting(step, *args, **kwargs):
        out = None if off else again(step, *args, **kwargs)
        taken.append(out is not None and (out[2] or "not finite"))
        return out
    monkeypatch.setattr(TrainStep, "run_back_to_back", counting)
    return taken


def _state_bits(model, opt):
    arrays = [p.value for p in model.parameters()] + [b.value for b in model.buffers()]
    arrays += [a for entry in opt.state.values() for a in entry.values()]
    host = [np.asarray(model.backend.to_host(a)) for a in arrays]
    return [(a.dtype.str, a.shape, a.tobytes()) for a in host], opt.step_count, list(opt.param_steps)


B2B_CASES = {
    "sgd momentum, bce": (lambda be: _model(be), "bce", lambda ps: nnx.optim.SGD(ps, lr=0.1, momentum=0.9), False),
    "adam, batch norm, L2, sample weights": (
        lambda be: nnx.Sequential(nnx.Dense(5, 6, regularizer=nnx.regularizers.L2(0.01)), nnx.BatchNorm(6),
                                  nnx.Tanh(), nnx.Dense(6, 1), backend=be, dtype="float64", seed=4),
        "mse", lambda ps: nnx.optim.Adam(ps, lr=0.01), True),
    "user layers and loss, rmsprop": (
        lambda be: nnx.Sequential(UserDense(5, 7), nnx.Softplus(), UserDense(7, 1), backend=be, dtype="float64",
                                  seed=6),
        HalfSquaredB2B(), lambda ps: nnx.optim.RMSprop(ps, lr=0.01, momentum=0.5), False),
}


def _b2b_fit(monkeypatch, backend, case, X, y, off, **fit_args):
    build, loss, make_opt, weighted = B2B_CASES[case]
    with monkeypatch.context() as patch:
        taken = _counted_again(patch, off)
        model = build(backend)
        opt = make_opt(model.parameters())
        w = np.linspace(0.5, 1.5, len(X)) if weighted else None
        error = None
        try:
            model.fit(X, y, loss=loss, optimizer=opt, epochs=3, batch_size=8, sample_weight=w, shuffle=False,
                      **fit_args)
        except nnx.training.NonFiniteStep as exc:
            error = str(exc)
        return _state_bits(model, opt), error, taken


@pytest.mark.parametrize("case", list(B2B_CASES))
def test_a_step_back_to_back_in_one_call_gives_the_stages_numbers_bit_for_bit(monkeypatch, backend, rng, case):
    X, y = _data(rng, n=44)  # batches of 8 and a last one of 4: the last runs the stages
    got, error, taken = _b2b_fit(monkeypatch, backend, case, X, y, off=False)
    staged, staged_error, _ = _b2b_fit(monkeypatch, backend, case, X, y, off=True)
    assert error is None and staged_error is None
    assert got == staged
    # at least every later epoch's 2nd to 5th steps (replayed, the 1st and the smaller 6th run the stages)
    if _in_one_call(backend):
        assert taken.count(True) >= 2 * 4


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NumPy's overflow warnings, the same in both fits
@pytest.mark.parametrize("case", list(B2B_CASES))
@pytest.mark.parametrize("check_finite", [True, False], ids=["checked", "unchecked"])
def test_a_non_finite_step_back_to_back_is_refused_or_applied_as_by_the_stages(monkeypatch, backend, rng, case,
                                                                             check_finite):
    X, y = _data(rng, n=44)
    X[8 * 3 + 3] = 1e308  # from the fourth batch of the first epoch on, the steps overflow
    got, error, taken = _b2b_fit(monkeypatch, backend, case, X, y, off=False, check_finite=check_finite)
    staged, staged_error, _ = _b2b_fit(monkeypatch, backend, case, X, y, off=True, check_finite=check_finite)
    assert got == staged  # (NaN's bits included: the same operations ran)
    assert error == staged_error
    if check_finite:
        assert "at epoch 1, batch 4;" in error
    if check_finite and _in_one_call(backend):
        assert taken[-1] == "not finite"  # met in one call, then refused as the stages refuse it


def test_finite_gradients_whose_probe_overflows_are_applied_back_to_back(monkeypatch, backend, rng):
    """The probe (the gradients' dot product with themselves on NumPy) overflows for float32 gradients near 1e20;
    the check then confirms them finite element by element, and the step is applied as the stages apply it."""
    X = (rng.standard_normal((40, 3)) * 1e10).astype("float32")
    y = (rng.standard_normal((40, 1)) * 1e10).astype("float32")

    def fit(off):
        with monkeypatch.context() as patch:
            taken = _counted_again(patch, off)
            model = nnx.Sequential(nnx.Dense(3, 1), backend=backend, dtype="float32", seed=2)
            opt = nnx.optim.SGD(model.parameters(), lr=1e-25)
            model.fit(X, y, loss="mse", optimizer=opt, epochs=2, batch_size=8)
            return _state_bits(model, opt), taken.count(True)

    (got, count, _), taken = fit(False)
    (staged, staged_count, _), _ = fit(True)
    assert got == staged and count == staged_count == 10
    if _in_one_call(backend):
        assert taken >= 4


class SlopeAtEpochEnd(nnx.callbacks.Callback):
    """Sets the LeakyReLU's slope after each epoch: no per-batch hook, so the steps of an epoch still run back to
    back, and the smaller last batch's recording, made in the first epoch, no longer holds in the second."""

    def on_epoch_end(self, epoch, logs=None):
        self.model.layers[1].alpha = 0.1 * (epoch + 2)


def test_a_smaller_last_batch_back_to_back_is_checked_against_the_epochs_settings(monkeypatch, backend, rng):
    X, y = _data(rng, n=44)  # batches of 8 and a last one of 4

    def fit(b, off=False):
        with monkeypatch.context() as patch:
            taken = _counted_again(patch, off)
            model = _model(b)
            opt = nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            model.fit(X, y, loss="bce", optimizer=opt, epochs=3, batch_size=8, shuffle=False,
                      callbacks=[SlopeAtEpochEnd()])
            return _state_bits(model, opt)[0], taken

    got, taken = fit(backend)
    assert got == fit(backend, off=True)[0]
    plain = fit(backend.with_fastpath(False))[0]  # the plain loop: nothing derived, nothing skipped
    for (_, _, a), (_, _, b) in zip(got, plain, strict=True):
        np.testing.assert_allclose(np.frombuffer(a), np.frombuffer(b), rtol=1e-12, atol=1e-14)
    if backend.tape() is not None:
        # in the second and third epochs, the first step records the new slope's passes and the second replays
        # them; the 3rd to 5th run in one call; the smaller last one's recording (of the last epoch's slope) no
        # longer holds: it records again, as the stages do
        assert taken[5:] == [False, True, True, True, False] * 2
    elif _in_one_call(backend):  # nothing recorded: the layers run as in the stages, every step back to back
        assert taken == [True] * 15


FROZEN = {
    "the last layer frozen": lambda model: model.layers[0].parameters(),
    "the first layer frozen": lambda model: model.layers[2].parameters(),
}


@pytest.mark.parametrize("frozen", list(FROZEN))
def test_an_optimizer_over_some_of_the_parameters_trains_as_the_stages_and_the_plain_loop(monkeypatch, backend, rng,
                                                                                          frozen):
    """A frozen layer's parameters are left out of the optimizer: the update gathers only the others' gradients
    (a step in one call gathered every parameter's, and a rule over the wrong length raised mid-fit)."""
    X, y = _data(rng, n=44)

    def fit(b, off=False):
        with monkeypatch.context() as patch:
            taken = _counted_again(patch, off)
            model = _model(b)
            opt = nnx.optim.SGD(FROZEN[frozen](model), lr=0.1, momentum=0.9)
            model.fit(X, y, loss="bce", optimizer=opt, epochs=3, batch_size=8, shuffle=False)
            return _state_bits(model, opt), taken

    (got, count, steps), taken = fit(backend)
    assert (got, count, steps) == fit(backend, off=True)[0]
    assert count == 18 and steps == [18, 18]
    plain = fit(backend.with_fastpath(False))[0][0]  # the plain loop: nothing derived, nothing skipped
    for (_, _, a), (_, _, b) in zip(got, plain, strict=True):
        np.testing.assert_allclose(np.frombuffer(a), np.frombuffer(b), rtol=1e-12, atol=1e-14)
    if _in_one_call(backend):
        assert taken.count(True) >= 2 * 4


def test_a_frozen_layer_beside_an_update_that_offers_gradient_buffers_trains_as_the_plain_loop(backend, rng):
    """From 131,072 updated parameters the flat update offers a buffer the replayed passes write the gradients
    into; a frozen layer's gradient has no place there and is a new array (a KeyError before)."""
    X = rng.standard_normal((12, 370))
    y = (rng.random((12, 1)) < 0.5).astype("float64")

    def fit(b):
        model = nnx.Sequential(nnx.Dense(370, 360), nnx.Tanh(), nnx.Dense(360, 1), nnx.Sigmoid(), backend=b,
                               dtype="float64", seed=1)
        opt = nnx.optim.Adam(model.layers[0].parameters(), lr=1e-3)
        model.fit(X, y, loss="bce", optimizer=opt, epochs=2, batch_size=4, shuffle=False)
        return [np.asarray(b.to_host(p.value)) for p in model.parameters()]

    for a, b in zip(fit(backend), fit(backend.with_fastpath(False)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_a_step_back_to_back_that_writes_its_gradients_where_the_update_offers_gives_the_stages_numbers(
        monkeypatch, backend, rng):
    """From 131,072 parameters the flat update offers a new buffer each step, which the replayed passes (or a
    Dense kernel) write the gradients into; a step in one call takes it too."""
    X = rng.standard_normal((20, 370))
    y = (rng.random((20, 1)) < 0.5).astype("float64")

    def fit(off):
        with monkeypatch.context() as patch:
            taken = _counted_again(patch, off)
            model = nnx.Sequential(nnx.Dense(370, 360), nnx.Tanh(), nnx.Dense(360, 1), nnx.Sigmoid(), backend=backend,
                                   dtype="float64", seed=1)
            opt = nnx.optim.Adam(model.parameters(), lr=1e-3)
            model.fit(X, y, loss="bce", optimizer=opt, epochs=2, batch_size=4, shuffle=False)
            return _state_bits(model, opt), taken

    (got, count, _), taken = fit(False)
    (staged, staged_count, _), _ = fit(True)
    assert got == staged and count == staged_count == 10
    if _in_one_call(backend):
        assert taken.count(True) >= 4
