"""The learning rate each step actually trains at, as a PyTorch or Keras user reads it off their own loop.

A one-layer linear model on MSE under plain SGD moves by ``lr * gradient``, so its weights after a few epochs,
set against the same steps written out in NumPy, show the rate every step used: per epoch from a schedule, per
batch from a callback, after ReduceLROnPlateau, across a second fit, after a rate set by hand between fits and
after an optimizer state restored. The History's ``"lr"`` must be the rate those steps used."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import nnx
from nnx.callbacks import Callback, CosineDecay, ExponentialDecay, LearningRateScheduler, ReduceLROnPlateau, StepDecay

RNG = np.random.default_rng(7)
X = RNG.normal(size=(16, 3))
Y = RNG.normal(size=(16, 1))
BATCH = 8  # two steps an epoch, in order (shuffle=False)


def _model(backend: str = "numpy") -> nnx.Sequential:
    return nnx.Sequential(nnx.Dense(3, 1), backend=backend, dtype="float64", seed=0)


def _weights(model: nnx.Sequential) -> tuple[np.ndarray, np.ndarray]:
    state = model.state_dict()
    return tuple(np.array(model.backend.to_host(state[k])) for k in ("0.weight", "0.bias"))  # type: ignore[return-value]


def _hand_sgd(weights: tuple[np.ndarray, np.ndarray], rates: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """`weights` after one SGD step per rate in `rates`, over the batches in order, MSE averaged over elements."""
    W, b = (w.copy() for w in weights)
    steps = len(X) // BATCH
    for k, lr in enumerate(rates):
        rows = slice((k % steps) * BATCH, (k % steps + 1) * BATCH)
        out = X[rows] @ W + b
        g = 2.0 * (out - Y[rows]) / out.size
        W, b = W - lr * (X[rows].T @ g), b - lr * g.sum(axis=0)
    return W, b


def _per_step(epoch_rates: list[float]) -> list[float]:
    return [lr for lr in epoch_rates for _ in range(len(X) // BATCH)]


def _assert_trained_at(model: nnx.Sequential, start: tuple[np.ndarray, np.ndarray], rates: list[float]) -> None:
    for got, want in zip(_weights(model), _hand_sgd(start, rates), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def _fit(model: nnx.Sequential, epochs: int, callbacks: list[Any], **kwargs: Any) -> nnx.training.History:
    return model.fit(X, Y, loss="mse", epochs=epochs, batch_size=BATCH, shuffle=False, callbacks=callbacks, **kwargs)


class _SchedulesReviewPerBatch(Callback):
    """A per-step warm-up set in on_batch_begin, as a Keras user writes one: 0.1 / (1 + global step)."""

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.model.optimizer.lr = 0.1 / (1 + batch + 2 * self.model.epochs_trained)


class _SchedulesReviewEpochEnd(Callback):
    """Lowers the rate at each epoch's end: the next epoch's steps (a compiled epoch's program too) use it."""

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.model.optimizer.lr = self.model.optimizer.lr * 0.3


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_every_step_trains_at_the_rate_set_for_it(backend: str) -> None:
    """The JAX compiled epoch reads the rate per program, the per-step paths per step: none bakes in a stale one."""
    if backend not in nnx.available_backends():
        pytest.skip(f"{backend} is not installed")
    cases = [
        ([StepDecay(1, 0.5)], _per_step([0.1, 0.05, 0.025])),
        ([_SchedulesReviewPerBatch()], [0.1 / (1 + k) for k in range(6)]),
        ([_SchedulesReviewEpochEnd()], _per_step([0.1, 0.03, 0.009])),
    ]
    for callbacks, rates in cases:
        model = _model(backend)
        start = _weights(model)
        history = _fit(model, 3, callbacks, optimizer="sgd", lr=0.1)
        _assert_trained_at(model, start, rates)
        if "lr" in history.history:
            assert history["lr"] == pytest.approx(rates[::2], rel=1e-15)


def test_a_rate_set_by_hand_between_fits_is_the_base_of_the_next_schedule() -> None:
    """``opt.lr = 0.02`` after a StepDecay fit, then a fit with a new StepDecay: the schedule put the old base's
    0.05 back, 2.5 times the rate set, without a word. It decays from 0.02 now, as ``fit(lr=0.02)`` does (and a
    torch scheduler made after ``group["lr"] = 0.02`` starts from 0.02); without a hand-set rate it goes on."""
    model = _model()
    start = _weights(model)
    first = _fit(model, 2, [StepDecay(2, 0.5)], optimizer="sgd", lr=0.1)
    model.optimizer.lr = 0.02
    second = _fit(model, 2, [StepDecay(2, 0.5)])
    third = _fit(model, 2, [StepDecay(2, 0.5)])
    assert first["lr"] + second["lr"] + third["lr"] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.005, 0.005])
    _assert_trained_at(model, start, _per_step([0.1, 0.1, 0.01, 0.01, 0.005, 0.005]))
    # the same through fit(lr=...), which already did so
    other = _model()
    _fit(other, 2, [StepDecay(2, 0.5)], optimizer="sgd", lr=0.1)
    assert _fit(other, 2, [StepDecay(2, 0.5)], lr=0.02)["lr"] == pytest.approx([0.01, 0.01])


def test_a_rate_set_by_a_callback_as_the_fit_begins_is_the_schedules_base() -> None:
    """A callback listed before the schedule that sets the rate in on_train_begin, on an optimizer a schedule
    already decayed: this fit's schedule decays from it; within the fit nothing resets the base."""

    class SchedulesReviewRestart(Callback):
        def on_train_begin(self, logs: dict | None = None) -> None:
            self.model.optimizer.lr = 0.04

    model = _model()
    _fit(model, 2, [ExponentialDecay(0.5)], optimizer="sgd", lr=0.1)
    history = _fit(model, 3, [SchedulesReviewRestart(), ExponentialDecay(0.5)])
    assert history["lr"] == pytest.approx([0.04 * 0.5**2, 0.04 * 0.5**3, 0.04 * 0.5**4])


@pytest.mark.parametrize("hand_set", [None, 0.04])
def test_a_restored_optimizer_state_goes_on_with_its_schedule(hand_set: float | None) -> None:
    """load_state_dict into a new optimizer: lr, initial_lr and the update counts come back, so the schedule goes
    on from the saved base (not the decayed rate it was saved with); a rate set by hand after loading is the base."""
    model = _model()
    start = _weights(model)
    _fit(model, 2, [StepDecay(1, 0.5)], optimizer="sgd", lr=0.1)
    saved = model.optimizer.state_dict()
    assert saved["hyperparams"]["lr"] == 0.05 and saved["initial_lr"] == 0.1 and saved["step"] == 4
    restored = nnx.optim.SGD(model.parameters(), lr=1.0)
    restored.load_state_dict(saved)
    assert (restored.lr, restored.initial_lr, restored.step_count, restored.param_steps) == (0.05, 0.1, 4, [4, 4])
    assert "scheduled_lr" not in restored.rule_constants()  # bookkeeping: a compiled program never retraces on it
    if hand_set is not None:
        restored.lr = hand_set
    history = _fit(model, 2, [StepDecay(1, 0.5)], optimizer=restored)
    base = 0.1 if hand_set is None else hand_set
    assert history["lr"] == pytest.approx([base * 0.25, base * 0.125])
    _assert_trained_at(model, start, _per_step([0.1, 0.05, base * 0.25, base * 0.125]))


@pytest.mark.parametrize("plateau_first", [True, False])
def test_history_lr_is_the_rate_the_epoch_trained_at_beside_plateau(plateau_first: bool) -> None:
    """Keras's ``lambda epoch, lr: lr * 0.9`` beside ReduceLROnPlateau, in either order: the reductions carry on
    under the schedule, and the History's rates, replayed by hand, give the weights the fit left."""
    model = _model()
    start = _weights(model)
    plateau = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)  # reduces every epoch
    schedule = LearningRateScheduler(lambda epoch, lr: lr * 0.9)
    history = _fit(model, 3, [plateau, schedule] if plateau_first else [schedule, plateau], optimizer="sgd", lr=0.1)
    expected = [0.09, 0.09 * 0.9, 0.09 * 0.9 * 0.5 * 0.9]  # epoch 0 improves on nothing; 1 and 2 reduce at their end
    assert history["lr"] == pytest.approx(expected, rel=1e-14)
    _assert_trained_at(model, start, _per_step(history["lr"]))


def _keras_exponential(base: float, rate: float, steps: float, staircase: bool, step: int) -> float:
    # keras.optimizers.schedules.ExponentialDecay, as its documentation writes it
    p = step / steps
    return base * rate ** (math.floor(p) if staircase else p)


def _keras_cosine(base: float, decay_steps: int, alpha: float, step: int) -> float:
    # keras.optimizers.schedules.CosineDecay without warm-up: the step is clamped at decay_steps (no restart)
    step = min(step, decay_steps)
    decayed = (1 - alpha) * 0.5 * (1 + math.cos(math.pi * step / decay_steps)) + alpha
    return base * decayed


def test_decays_follow_keras_formulas_per_epoch_and_past_their_end() -> None:
    """Counted in epochs from 0: epoch 0 trains at the base (no off-by-one), ExponentialDecay's staircase floors,
    CosineDecay stays at min_lr past decay_epochs as Keras's does (torch's recursive CosineAnnealingLR climbs
    back)."""
    epochs = 9
    cases = [
        (ExponentialDecay(0.5, decay_epochs=2), [_keras_exponential(0.1, 0.5, 2, False, e) for e in range(epochs)]),
        (ExponentialDecay(0.5, decay_epochs=2, staircase=True),
         [_keras_exponential(0.1, 0.5, 2, True, e) for e in range(epochs)]),
        (CosineDecay(4, min_lr=0.01), [_keras_cosine(0.1, 4, 0.1, e) for e in range(epochs)]),
        (StepDecay(3, 0.5), [0.1 * 0.5 ** (e // 3) for e in range(epochs)]),
    ]
    for schedule, expected in cases:
        model = nnx.Sequential(nnx.Dense(3, 1), seed=0)
        history = model.fit(X, Y, loss="mse", optimizer="sgd", lr=0.1, epochs=epochs, batch_size=16,
                            callbacks=[schedule])
        np.testing.assert_allclose(history["lr"], expected, rtol=1e-12, err_msg=repr(schedule))


def test_a_rate_set_by_hand_before_a_snapshot_is_the_base_after_loading_it() -> None:
    """``opt.lr = 0.02`` after a StepDecay fit, then the optimizer saved and loaded (a checkpoint between two
    sessions): the next schedule decays from 0.02, as it does when the same optimizer goes on in memory. The
    snapshot took the hand-set rate for the one the schedule last set, so the loaded run put 0.1's rates back."""
    rates = []
    for through_snapshot in (False, True):
        model = _model()
        _fit(model, 2, [StepDecay(2, 0.5)], optimizer="sgd", lr=0.1)
        model.optimizer.lr = 0.02
        optimizer = model.optimizer
        if through_snapshot:
            optimizer = nnx.optim.SGD(model.parameters(), lr=1.0)
            optimizer.load_state_dict(model.optimizer.state_dict())
        rates.append(_fit(model, 2, [StepDecay(2, 0.5)], optimizer=optimizer)["lr"])
    assert rates[0] == pytest.approx([0.01, 0.01])
    assert rates[1] == pytest.approx(rates[0])


def test_a_plateau_reduction_at_a_fits_end_is_no_hand_set_base_for_the_next() -> None:
    """StepDecay beside ReduceLROnPlateau (which warns that the schedule undoes the reductions): a reduction at the
    last epoch of a fit is the schedule's to undo at the next epoch, in a second fit as in one run. Taken for a rate
    set by hand, it made the next fit's schedule decay from the already decayed and reduced rate (0.0125 * 0.125)."""
    import warnings

    def run(splits: list[int]) -> list[float]:
        model = _model()
        plateau = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)  # reduces every epoch
        out: list[float] = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for i, epochs in enumerate(splits):
                kwargs: dict[str, Any] = {"optimizer": "sgd", "lr": 0.1} if i == 0 else {}
                out += _fit(model, epochs, [StepDecay(1, 0.5), plateau], **kwargs)["lr"]
        return out

    assert run([3, 2]) == pytest.approx(run([5]))


def test_a_new_schedule_for_a_later_phase_starts_at_start_epoch_as_torchs() -> None:
    """Found in review: a CosineDecay for a fine-tuning fit after 10 epochs counted the model's epochs, so it was
    past its end from the first epoch and trained at min_lr throughout without a word. Past its end at rate 0 it
    warns (with or without a new rate, a schedule before it, or initial_lr); with start_epoch=10 it gives the
    rates of a torch CosineAnnealingLR made then."""
    torch = pytest.importorskip("torch")
    for before, cosine in (([], CosineDecay(5)), ([StepDecay(2)], CosineDecay(5)),
                           ([], CosineDecay(5, initial_lr=0.01))):
        model = _model()
        _fit(model, 10, before, optimizer="sgd", lr=0.1)
        with pytest.warns(UserWarning, match=r"past its end\), so every epoch of this fit trains at rate 0; .* "
                                             r"start_epoch=10"):
            assert _fit(model, 2, [cosine], lr=0.01)["lr"] == [0.0, 0.0]
    model = _model()
    _fit(model, 10, [], optimizer="sgd", lr=0.1)
    start = _weights(model)
    history = _fit(model, 6, [CosineDecay(5, start_epoch=10)], lr=0.01)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5)  # eta_min 0, as CosineDecay's min_lr
    expected = []
    for _ in range(5):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        cosine.step()
    assert history["lr"] == pytest.approx([*expected, 0.0], rel=1e-12, abs=1e-18)  # then min_lr, as Keras holds it
    _assert_trained_at(model, start, _per_step(history["lr"]))


def test_a_cosine_min_lr_above_its_base_is_refused() -> None:
    """Found in review: CosineDecay's min_lr (1e-6 by default then) above a small base made the "decay" raise the
    rate, to twice the base at 5e-7."""
    model = _model()
    with pytest.raises(ValueError, match=r"min_lr=1e-06 is above its base rate 5e-07"):
        _fit(model, 2, [CosineDecay(4, min_lr=1e-6)], optimizer="sgd", lr=5e-7)
    assert CosineDecay(4).min_lr == 0.0
