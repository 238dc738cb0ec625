"""A second look at ReduceLROnPlateau, ProgressBar without a terminal, the sklearn estimators' per-batch gather,
losses and metrics on NumPy subclasses, and check_gradients' unresolved list, on every installed backend."""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
import pytest
from user_code import keras_plateau_rates

import nnx
from nnx import losses, metrics
from nnx.callbacks import EarlyStopping, LearningRateScheduler, ProgressBar, ReduceLROnPlateau
from nnx.training import data as data_module


def _xy(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5)).astype("float32")
    return X, (X @ rng.normal(size=(5, 1))).astype("float32")


def _model(backend, **kwargs):
    return nnx.Sequential(nnx.Dense(5, 8), nnx.ReLU(), nnx.Dense(8, 1), backend=backend, seed=0, **kwargs)


class _Optimizer:
    lr = 0.1


class _Model:
    optimizer = _Optimizer()


@pytest.mark.parametrize("patience,cooldown,min_lr", [(0, 0, 0.0), (1, 1, 0.0), (2, 0, 0.004), (3, 2, 0.02)])
def test_reduce_lr_on_plateau_counts_as_keras_on_random_plateaus(patience, cooldown, min_lr):
    rng = np.random.default_rng(patience * 10 + cooldown)
    values = list(np.round(rng.uniform(0, 1, 40), 1))  # many ties: plateaus of every length
    cb = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=patience, cooldown=cooldown, min_lr=min_lr,
                           min_delta=0.05)
    model = _Model()
    model.optimizer.lr = 0.1
    cb.set_model(model)
    cb.on_train_begin({})
    rates = []
    for epoch, value in enumerate(values):
        logs = {"loss": value}
        cb.on_epoch_end(epoch, logs)
        rates.append(logs["lr"])
    assert rates == keras_plateau_rates(values, 0.1, 0.5, patience, cooldown, min_lr, min_delta=0.05)


def test_reduced_rates_train_as_the_same_rates_set_by_a_schedule(backend):
    """The rate a reduction sets is the one the next epoch trains with, also in JAX's compiled epoch (the rate is
    an argument of the program), with EarlyStopping beside it."""
    X, y = _xy()
    model = _model(backend)
    plateau = ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1, min_delta=1e9)
    history = model.fit(X, y, loss="mse", optimizer="adam", lr=0.05, epochs=5, batch_size=16, validation_split=0.25,
                        callbacks=[EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True), plateau])
    rates = history.history["lr"]
    assert rates == [0.05, 0.05, 0.025, 0.0125, 0.00625]
    if backend.name == "jax":
        assert history.execution_mode == "epoch"
    again = _model(backend)
    scheduled = again.fit(X, y, loss="mse", optimizer="adam", lr=0.05, epochs=5, batch_size=16, validation_split=0.25,
                          callbacks=[LearningRateScheduler(lambda epoch: rates[epoch])])
    np.testing.assert_array_equal(history.history["loss"], scheduled.history["loss"])
    assert model.optimizer.lr == 0.003125  # kept by the optimizer for a later fit


def test_a_bar_reused_after_a_fit_without_terminal_draws_again_when_asked(backend):
    pytest.importorskip("tqdm")
    X, y = _xy()
    model = _model(backend)
    out = io.StringIO()
    bar = ProgressBar(file=out)
    history = model.fit(X, y, loss="mse", epochs=2, batch_size=16, callbacks=[bar])
    assert out.getvalue().count("epoch ") == 2
    if backend.name == "jax":
        assert history.execution_mode == "epoch"  # lines only: the epoch stays one program
    bar.use_tqdm = True
    drawn = io.StringIO()
    bar.file = drawn
    model.fit(X, y, epochs=1, batch_size=16, callbacks=[bar])
    assert "4/4" in drawn.getvalue()  # its four batches moved the bar


def test_masked_and_matrix_targets_read_alike_by_losses_and_metrics(backend):
    y_true = np.array([[0.0], [1.0], [2.0], [3.0]])
    y_pred = backend.asarray(np.array([[0.5], [1.0], [2.5], [2.0]]))
    xp = backend.xp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix
        for given in (np.ma.array(y_true), np.matrix(y_true)):
            assert float(losses.MSE()(given, y_pred)) == pytest.approx(0.375)
            if xp is not None:
                assert float(metrics.mse(xp, given, y_pred)) == pytest.approx(0.375)
                assert float(metrics.r2(xp, given, y_pred)) == pytest.approx(0.7)
        masked = np.ma.array(y_true, mask=[[0], [0], [1], [0]])
        with pytest.raises(ValueError, match="masked"):
            losses.MSE()(masked, y_pred)
        if xp is not None:
            with pytest.raises(ValueError, match="masked"):
                metrics.mse(xp, masked, y_pred)
        with pytest.raises(ValueError, match="sample_weight is a masked"):
            weights = np.ma.array([1.0, 1, 5, 1], mask=[0, 0, 1, 0])
            losses.MSE(reduction="mean_with_sample_weight")(y_true, y_pred, sample_weight=weights)


def test_sklearn_gathered_batches_give_the_copied_epochs_numbers(backend, monkeypatch):
    from nnx.sklearn import MLPClassifier, MLPRegressor

    rng = np.random.default_rng(0)
    X = rng.normal(size=(72, 6))  # batches of 32 and a short one, with and without the validation split's rows
    y = X[:, 0] - X[:, 1]
    sw = rng.uniform(0.5, 2.0, 72)

    def curves(limit):
        monkeypatch.setattr(data_module, "COPY_LIMIT", limit)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_iter reached
            r = MLPRegressor(hidden_layer_sizes=(8,), max_iter=3, batch_size=32, early_stopping=True, random_state=0,
                             backend=backend.name, warm_start=True)
            r.fit(X, y, sample_weight=sw)
            r.fit(X, y, sample_weight=sw)
            c = MLPClassifier(hidden_layer_sizes=(8,), batch_size=32, random_state=0, backend=backend.name)
            for _ in range(2):
                c.partial_fit(X, (y > 0).astype(int), classes=[0, 1])
        return r.loss_curve_ + r.validation_scores_ + c.loss_curve_

    assert curves(0) == curves(1 << 40)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_ordinary_models_leave_no_gradient_unresolved(backend, dtype):
    # check_gradients perturbs every parameter and input entry in turn: 8 rows and 5 hidden units keep that count
    # (and the time) small
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(8, 6)), rng.normal(size=(8, 2))
    cases = [
        (nnx.Sequential(nnx.Dense(6, 5), nnx.BatchNorm(5), nnx.ReLU(), nnx.Dense(5, 2), backend=backend,
                        dtype=dtype, seed=0), "mse", y),
        (nnx.Sequential(nnx.Dense(6, 5), nnx.Tanh(), nnx.Dense(5, 3), backend=backend, dtype=dtype, seed=0), "ce",
         rng.integers(0, 3, 8)),
        (nnx.Sequential(nnx.Dense(6, 5), nnx.Tanh(), nnx.Dense(5, 2), backend=backend, dtype=dtype, seed=0), "mse",
         y * 1e3),
    ]
    for model, loss, target in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            result = nnx.check_gradients(model, X, target, loss)
        assert result.unresolved == []
        assert float(result) < 1e-6


@pytest.mark.parametrize("first", ["plateau", "schedule"])
def test_the_logged_rate_is_the_one_the_epoch_trained_with_whatever_the_callbacks_order(backend, first):
    """A warm-up schedule beside ReduceLROnPlateau (a common Keras pairing): the schedule logged the optimizer's
    rate at the epoch's end, so listed after the plateau callback it logged the rate just reduced for the next
    epoch, not the one this epoch trained with."""
    from nnx.callbacks import StepDecay

    X, y = _xy()

    def warm(epoch, lr):
        return 0.01 * (epoch + 1) / 2 if epoch < 2 else lr

    plateau = ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)
    schedule = LearningRateScheduler(warm)
    history = _model(backend).fit(X, y, loss="mse", optimizer="sgd", lr=0.01, epochs=5, batch_size=16,
                                  callbacks=[plateau, schedule] if first == "plateau" else [schedule, plateau])
    assert history.history["lr"] == [0.005, 0.01, 0.005, 0.0025, 0.00125]
    # a decay that undoes every reduction trains at its own rate, which is what is logged (and it warns)
    with pytest.warns(UserWarning, match="undoes the reductions"):
        history = _model(backend).fit(X, y, loss="mse", optimizer="sgd", lr=0.01, epochs=3, batch_size=16,
                                      callbacks=[ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0,
                                                                   min_delta=1e9), StepDecay(10)])
    assert history.history["lr"] == [0.01, 0.01, 0.01]


def test_a_schedule_that_decays_from_the_current_rate_keeps_the_reductions_without_a_warning(backend):
    """Keras's own LearningRateScheduler example, ``lambda epoch, lr: lr * exp(-0.1)``, decays from the rate it is
    given, so ReduceLROnPlateau's reductions carry on under it: no warning that the schedule undoes them."""
    X, y = _xy()
    decay = math.exp(-0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        history = _model(backend).fit(
            X, y, loss="mse", optimizer="sgd", lr=0.01, epochs=4, batch_size=16,
            callbacks=[LearningRateScheduler(lambda epoch, lr: lr * decay),
                       ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)])
    expected, rate = [], 0.01
    for epoch in range(4):
        rate *= decay
        expected.append(rate)
        if epoch >= 1:  # every epoch after the first is a plateau
            rate *= 0.5
    np.testing.assert_allclose(history.history["lr"], expected, rtol=1e-12)
