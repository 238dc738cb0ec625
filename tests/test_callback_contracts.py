"""Callback contracts an experienced Keras / PyTorch user relies on, checked against their documented numbers:
EarlyStopping's patience, min_delta and restore_best_weights, ModelCheckpoint's best file, the decays against
torch.optim.lr_scheduler's formulas, and ReduceLROnPlateau (patience, cooldown, min_lr) as Keras documents it."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
from user_code import keras_plateau_rates

import nnx
from nnx.callbacks import (
    Callback,
    CosineDecay,
    EarlyStopping,
    ExponentialDecay,
    ModelCheckpoint,
    ReduceLROnPlateau,
    StepDecay,
)

RNG = np.random.default_rng(0)
X = RNG.standard_normal((64, 3)).astype(np.float32)
Y = (X[:, :1] > 0).astype(np.float32)


def small_model(backend: str = "numpy") -> nnx.Sequential:
    return nnx.Sequential(nnx.Dense(3, 4), nnx.ReLU(), nnx.Dense(4, 1), nnx.Sigmoid(), backend=backend, seed=1)


class Scripted(Callback):
    """Writes a scripted value under "score" into each epoch's logs (counted from this fit's first epoch)."""

    adds_logs = ("score",)

    def __init__(self, values: list[float]) -> None:
        self.values = values

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.first = self.model.epochs_trained

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        assert logs is not None
        logs["score"] = self.values[epoch - self.first]


def fit_scripted(values: list[float], *callbacks: Callback, lr: float = 0.1) -> nnx.training.History:
    return small_model().fit(X, Y, loss="bce", optimizer="sgd", lr=lr, epochs=len(values), batch_size=32,
                             callbacks=[Scripted(values), *callbacks])


# Keras's EarlyStopping on the same sequences: (stopped_epoch or None, best_epoch)
@pytest.mark.parametrize("values, patience, min_delta, mode, expected", [
    ([1.0, 0.9, 0.95, 0.96, 0.97, 0.5], 2, 0.0, "min", (3, 1)),
    ([1.0, 0.95, 0.92, 0.85, 0.8], 2, 0.1, "min", (2, 0)),      # min_delta: 0.95 and 0.92 are no improvement
    ([0.5, 0.6, 0.65, 0.66, 0.9], 1, 0.05, "max", (2, 1)),
    ([1.0, 1.0, 1.0, 1.0], 0, 0.0, "min", (1, 0)),
    ([3.0, 2.0, 1.0], 1, 0.0, "min", (None, 2)),
])
def test_early_stopping_counts_patience_as_keras(values, patience, min_delta, mode, expected):
    stop = EarlyStopping("score", patience=patience, min_delta=min_delta, mode=mode)
    history = fit_scripted(values, stop)
    assert (stop.stopped_epoch, stop.best_epoch) == expected
    assert len(history) == (len(values) if expected[0] is None else expected[0] + 1)


@pytest.mark.parametrize("stops", [True, False])
def test_restore_best_weights_when_stopping_and_when_not(tmp_path, stops):
    snapshots = []

    class Snap(Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(self.model.state_dict(copy=True))

    values = [1.0, 0.5, 0.7, 0.8, 0.9] if stops else [1.0, 0.5, 0.7, 0.6, 0.9]
    stop = EarlyStopping("score", patience=3 if stops else 10, mode="min", restore_best_weights=True)
    model = small_model()
    model.fit(X, Y, loss="bce", optimizer="sgd", lr=0.5, epochs=len(values), batch_size=16,
              callbacks=[Scripted(values), Snap(), stop])
    assert stop.best_epoch == 1 and (stop.stopped_epoch == 4) == stops
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(snapshots[1][name]))


def test_checkpoint_best_file_holds_the_best_epoch_and_names_it(tmp_path):
    pattern = str(tmp_path / "m-{epoch:02d}-{val_loss:.4f}.npz")
    best = ModelCheckpoint(tmp_path / "best.npz", monitor="val_accuracy", save_best_only=True)
    named = ModelCheckpoint(pattern, save_best_only=True)
    model = small_model()
    history = model.fit(X, Y, loss="bce", optimizer="sgd", lr=0.5, epochs=6, batch_size=16,
                        validation_data=(X[:32], Y[:32]), metrics=["accuracy"], callbacks=[best, named])
    val_loss, val_acc = history["val_loss"], history["val_accuracy"]
    improving = [i for i in range(6) if val_loss[i] < min(val_loss[:i], default=math.inf)]
    assert [os.path.basename(p) for p in named.saved] == [f"m-{i + 1:02d}-{val_loss[i]:.4f}.npz" for i in improving]
    assert best.best == max(val_acc)
    loaded = nnx.load(tmp_path / "best.npz")
    assert loaded.evaluate(X[:32], Y[:32], metrics=["accuracy"])["accuracy"] == pytest.approx(max(val_acc))


def test_resumed_fit_gives_the_uninterrupted_numbers(tmp_path):
    def model() -> nnx.Sequential:
        return nnx.Sequential(nnx.Dense(3, 8), nnx.ReLU(), nnx.Dropout(0.2), nnx.Dense(8, 1), nnx.Sigmoid(),
                              backend="numpy", seed=3)

    kwargs = dict(batch_size=16, validation_data=(X[:16], Y[:16]))
    whole = model().fit(X, Y, loss="bce", optimizer="adam", lr=1e-2, epochs=6, callbacks=[StepDecay(2, 0.5)],
                        **kwargs)
    first = model().fit(X, Y, loss="bce", optimizer="adam", lr=1e-2, epochs=3,
                        callbacks=[StepDecay(2, 0.5), ModelCheckpoint(tmp_path / "last.npz")], **kwargs)
    resumed = nnx.load(tmp_path / "last.npz")
    rest = resumed.fit(X, Y, epochs=3, callbacks=[StepDecay(2, 0.5)], **kwargs)
    assert rest.epoch == [3, 4, 5]
    assert first["loss"] + rest["loss"] == whole["loss"]
    assert rest["lr"] == whole["lr"][3:]


def _torch_rates(make, epochs: int, lr: float = 0.1) -> list[float]:
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    sched = make(torch.optim.lr_scheduler, opt)
    rates = []
    for _ in range(epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize("schedule, torch_make, epochs", [
    (StepDecay(3, 0.5), lambda s, o: s.StepLR(o, 3, 0.5), 10),
    (ExponentialDecay(0.9), lambda s, o: s.ExponentialLR(o, 0.9), 10),
    (CosineDecay(8, min_lr=1e-3), lambda s, o: s.CosineAnnealingLR(o, 8, eta_min=1e-3), 9),  # torch cycles after
])
def test_decays_match_torch_lr_scheduler(schedule, torch_make, epochs):
    history = fit_scripted([0.0] * epochs, schedule)
    np.testing.assert_allclose(history["lr"], _torch_rates(torch_make, epochs), rtol=1e-12)


@pytest.mark.parametrize("patience, cooldown, min_lr", [(1, 0, 0.0), (2, 0, 0.0), (1, 2, 0.0), (0, 1, 0.004),
                                                         (2, 1, 0.02)])
def test_reduce_lr_on_plateau_follows_keras(patience, cooldown, min_lr):
    values = [1.0, 0.9, 0.9, 0.95, 0.8, 0.85, 0.86, 0.87, 0.7, 0.71, 0.72, 0.73, 0.74]
    plateau = ReduceLROnPlateau("score", mode="min", factor=0.5, patience=patience, cooldown=cooldown, min_lr=min_lr,
                                min_delta=0.01)
    history = fit_scripted(values, plateau)
    expected = keras_plateau_rates(values, 0.1, 0.5, patience, cooldown, min_lr, min_delta=0.01)
    np.testing.assert_allclose(history["lr"], expected, rtol=1e-12)


def test_reduce_lr_on_plateau_checks_its_arguments_and_monitor():
    for bad in (1.0, 1.5, 0.0, -0.1):
        with pytest.raises(ValueError, match="factor"):
            ReduceLROnPlateau(factor=bad)
    with pytest.raises(ValueError, match="val_loss"):  # no validation data: val_loss is never recorded
        small_model().fit(X, Y, loss="bce", epochs=1, callbacks=[ReduceLROnPlateau()])


def test_reduce_lr_on_plateau_warns_when_a_schedule_undoes_it():
    plateau = ReduceLROnPlateau("score", mode="min", factor=0.5, patience=0)
    with pytest.warns(UserWarning, match="undoes"):
        fit_scripted([1.0, 2.0, 3.0], plateau, StepDecay(10, 0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        history = fit_scripted([1.0, 2.0, 3.0], ReduceLROnPlateau("score", mode="min", factor=0.5, patience=0))
    assert history["lr"] == [0.1, 0.1, 0.05]  # epoch 0 improves on nothing; epoch 1 does not: halved
