"""What training records and reports, against what a Keras user reads from it: the History of each fit, the epoch
logs' loss as the row-weighted mean of the epoch (a short last batch, sample weights, a penalty), validation from a
split or from data, CSVLogger's file, EarlyStopping's bests (mode "max", min_delta, baseline, start_from_epoch),
ModelCheckpoint's formatted names and GradientAnalyzer's statistics against a gradient computed by hand.

The behaviour is the loop's and the callbacks', the same on every backend: NumPy alone, small shapes."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

import nnx
from nnx.callbacks import Callback, CSVLogger, EarlyStopping, GradientAnalyzer, ModelCheckpoint

RNG = np.random.default_rng(7)
X = RNG.standard_normal((23, 3)).astype(np.float32)  # 23 rows: batches of 10, 10 and a short one of 3
Y = RNG.standard_normal((23, 1)).astype(np.float32)
W = RNG.uniform(0.1, 2.0, 23).astype(np.float32)
FROZEN = 1e-30  # a learning rate that leaves float32 weights as they are: every epoch logs the same weights


def regression(seed: int = 0, **kwargs) -> nnx.Sequential:
    return nnx.Sequential(nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 1), backend="numpy", seed=seed, **kwargs)


class Scripted(Callback):
    """Writes `values[i]` under `key` into the logs of this fit's i-th epoch."""

    def __init__(self, key: str, values: list[float]) -> None:
        self.key, self.values = key, values
        self.adds_logs = (key,)

    def on_train_begin(self, logs=None):
        self.first = self.model.epochs_trained

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch - self.first]


def test_each_fit_returns_its_own_history_numbered_on_from_the_last():
    model = regression()
    first = model.fit(X, Y, loss="mse", epochs=2, batch_size=10, validation_split=0.25, metrics=["mae"])
    second = model.fit(X, Y, epochs=3, batch_size=10)
    assert first is not second and model.history is second
    assert first.epoch == [0, 1] and second.epoch == [2, 3, 4] and len(second) == 3
    assert list(first.history) == ["loss", "mae", "val_loss", "val_mae"]
    assert all(len(v) == 2 for v in first.history.values())
    assert list(second.history) == ["loss"] and len(second["loss"]) == 3
    assert all(type(v) is float for values in first.history.values() for v in values)
    with pytest.raises(KeyError, match="'val_loss' was not recorded"):
        second["val_loss"]


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "mean_with_sample_weight"])
@pytest.mark.parametrize("weighted", [False, True])
def test_logged_loss_is_the_epochs_row_weighted_mean_with_a_short_last_batch(reduction, weighted):
    """A plain mean of the three batch losses would count the last 3 rows as much as each 10; the loss of the epoch
    is the loss of all its rows at once (sample weights and the penalty included), as evaluate gives it."""
    model = regression(regularizer=nnx.regularizers.L2(0.1))
    loss = nnx.losses.MSE(reduction=reduction)
    w = W if weighted else None
    history = model.fit(X, Y, loss=loss, optimizer="sgd", lr=FROZEN, epochs=2, batch_size=10, sample_weight=w,
                        metrics=["mae"])
    whole = model.evaluate(X, Y, sample_weight=w, loss=loss, metrics=["mae"])
    np.testing.assert_allclose(history["loss"], [whole["loss"]] * 2, rtol=1e-6)
    np.testing.assert_allclose(history["mae"], [whole["mae"]] * 2, rtol=1e-6)


def test_validation_split_weighs_the_held_out_rows_by_their_sample_weight_but_not_by_class_weight():
    """Keras splits sample_weight with the data (the validation loss is weighted by the held-out rows' weights) and
    applies class_weight to training only."""
    y01 = (Y > 0).astype(np.float32)
    model = nnx.Sequential(nnx.Dense(3, 1), nnx.Sigmoid(), backend="numpy", seed=0)
    n = int(23 * 0.7)  # Keras trains on the first floor(n * (1 - split)) rows
    history = model.fit(X, y01, loss="bce", optimizer="sgd", lr=FROZEN, epochs=1, batch_size=8, sample_weight=W,
                        class_weight={0: 1.0, 1: 5.0}, validation_split=0.3)
    held_out = model.evaluate(X[n:], y01[n:], sample_weight=W[n:])["loss"]
    assert history["val_loss"][0] == pytest.approx(held_out, rel=1e-6)
    assert held_out != pytest.approx(model.evaluate(X[n:], y01[n:])["loss"], rel=1e-3)


def test_csv_logger_separator_append_with_new_columns_and_non_finite_values(tmp_path):
    path = tmp_path / "log.tsv"
    model = regression()
    model.fit(X, Y, loss="mse", epochs=2, batch_size=10, callbacks=[CSVLogger(path, separator="\t")])
    odd = Scripted("odd", [math.nan, math.inf])
    later = model.fit(X, Y, epochs=2, batch_size=10, validation_data=(X, Y),
                      callbacks=[CSVLogger(path, separator="\t", append=True), odd])
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    assert rows[0] == ["epoch", "loss", "val_loss", "odd"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "4"]  # the epochs counted from 1 over the whole training
    assert rows[1][2:] == ["", ""] and rows[2][2:] == ["", ""]  # columns first logged later: empty before
    assert [float(r[1]) for r in rows[3:]] == later["loss"] and [r[3] for r in rows[3:]] == ["nan", "inf"]
    with pytest.raises(ValueError, match="first line is not a header"):  # another separator: no header read
        model.fit(X, Y, epochs=1, callbacks=[CSVLogger(path, separator=";", append=True)])


def test_csv_logger_keeps_the_finished_epochs_and_closes_its_file_on_ctrl_c(tmp_path):
    class CtrlC(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt

    logger = CSVLogger(tmp_path / "log.csv")
    history = regression().fit(X, Y, loss="mse", epochs=5, batch_size=10, callbacks=[logger, CtrlC()])
    assert history.interrupted and history.epoch == [0, 1]
    assert logger._file is None  # closed by on_train_end
    with open(tmp_path / "log.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert [r[0] for r in rows] == ["epoch", "1", "2"] and [float(r[1]) for r in rows[1:]] == history["loss"]


@pytest.mark.parametrize("values, baseline, min_delta, stopped, best_epoch", [
    ([0.5, 0.6, 0.62, 0.64, 0.9], None, 0.05, 3, 1),  # max: +0.02 and +0.04 over the best are under min_delta
    ([0.5, 0.6, 0.62, 0.64, 0.9], 0.7, 0.0, 1, 1),  # not above the baseline for patience epochs: stops
    ([0.8, 0.7, 0.85, 0.6, 0.5], 0.75, 0.0, 4, 2),  # above it from the start: the plain rule
])
def test_early_stopping_in_mode_max(values, baseline, min_delta, stopped, best_epoch):
    stop = EarlyStopping("score", mode="max", patience=2, min_delta=-min_delta, baseline=baseline)
    regression().fit(X, Y, loss="mse", epochs=len(values), batch_size=10,
                     callbacks=[Scripted("score", values), stop])
    assert stop.stopped_epoch == stopped
    assert stop.best_epoch == best_epoch and stop.best == values[best_epoch]


def test_early_stopping_start_from_epoch_is_a_warm_up_it_does_not_monitor():
    """Keras's start_from_epoch: the epochs before it are neither bests nor count towards patience."""
    values = [0.1, 0.2, 0.9, 0.8, 0.85, 0.95]
    stop = EarlyStopping("score", mode="min", patience=2, start_from_epoch=2, restore_best_weights=True)
    model = regression()
    snapshots = []

    class Snap(Callback):
        def on_epoch_end(self, epoch, logs=None):
            snapshots.append(self.model.state_dict(copy=True))

    history = model.fit(X, Y, loss="mse", optimizer="sgd", lr=0.05, epochs=6, batch_size=10,
                        callbacks=[Scripted("score", values), Snap(), stop])
    assert (stop.best_epoch, stop.best, stop.stopped_epoch, len(history)) == (3, 0.8, 5, 6)
    for name, value in model.state_dict().items():  # the best epoch after the warm-up, not the warm-up's 0.1
        np.testing.assert_array_equal(value, snapshots[3][name])
    with pytest.raises(ValueError, match="start_from_epoch"):
        EarlyStopping(start_from_epoch=-1)


def test_early_stopping_start_from_epoch_counts_the_models_epochs():
    """The index is the one the hooks and History.epoch give, over the model's whole training."""
    model = regression()
    model.fit(X, Y, loss="mse", epochs=2, batch_size=10)
    stop = EarlyStopping("score", patience=1, mode="min", start_from_epoch=3)
    model.fit(X, Y, epochs=4, batch_size=10, callbacks=[Scripted("score", [0.1, 0.5, 0.6, 0.7]), stop])
    assert (stop.best_epoch, stop.stopped_epoch) == (3, 4)


def test_checkpoint_names_the_best_epochs_with_keras_placeholders(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path / "m-{epoch:02d}-{val_loss:.2f}.npz", save_best_only=True)
    values = [0.9, 0.5, 0.7, 0.4, 0.4]
    regression().fit(X, Y, loss="mse", epochs=5, batch_size=10, validation_data=(X, Y),
                     callbacks=[Scripted("val_loss", values), checkpoint])
    assert [p.rsplit("/", 1)[-1] for p in checkpoint.saved] == ["m-01-0.90.npz", "m-02-0.50.npz", "m-04-0.40.npz"]
    assert checkpoint.best == 0.4


def test_gradient_analyzer_records_the_mse_gradient_computed_by_hand_unclipped():
    """One step of Dense(3, 1) under MSE: dW = 2/n X^T r, db = 2/n sum(r); mean, max and L2 norm of |g|, before
    clip_norm shrinks it."""
    model = nnx.Sequential(nnx.Dense(3, 1), backend="numpy", dtype="float64", seed=3)
    weight, bias = (np.asarray(v, dtype=np.float64) for v in model.state_dict().values())
    Xd, Yd = X[:8].astype(np.float64), Y[:8].astype(np.float64)
    r = Xd @ weight + bias - Yd
    grad_w, grad_b = np.abs(2 / 8 * Xd.T @ r), np.abs(2 / 8 * r.sum(axis=0))
    analyzer = GradientAnalyzer(warn=False)
    model.fit(Xd, Yd, loss="mse", optimizer="sgd", lr=0.1, epochs=1, batch_size=8, clip_norm=1e-3,
              callbacks=[analyzer])
    stats = {k: v[0, 0] for k, v in analyzer.history().items()}
    expected = {"weight_mean": grad_w.mean(), "weight_max": grad_w.max(), "weight_norm": np.sqrt((grad_w ** 2).sum()),
                "bias_mean": grad_b.mean(), "bias_max": grad_b.max(), "bias_norm": grad_b.max()}
    for name, value in expected.items():
        assert stats[name] == pytest.approx(value, rel=1e-12), name
    assert analyzer.step_epochs == [0] and analyzer.layer_names == ["0:Dense(3, 1)"]


def test_early_stopping_takes_numpy_numbers_as_reduce_lr_on_plateau_does():
    """patience from np.arange and a float32 min_delta were refused as 'must be an int >= 0, got np.int64(3)' and
    'must be a finite number, got np.float32(0.01)', which they are."""
    stop = EarlyStopping("loss", patience=np.int64(3), min_delta=np.float32(-0.25))
    assert (stop.patience, stop.min_delta) == (3, 0.25) and type(stop.patience) is int
    with pytest.raises(ValueError, match="EarlyStopping patience must be >= 0"):
        EarlyStopping(patience=-1)
    with pytest.raises(TypeError, match="EarlyStopping patience must be an int"):
        EarlyStopping(patience=2.0)
    with pytest.raises(ValueError, match="EarlyStopping min_delta must be a finite number"):
        EarlyStopping(min_delta=math.inf)


def test_checkpoint_save_freq_takes_a_numpy_integer(tmp_path):
    checkpoint = ModelCheckpoint(tmp_path / "m{epoch}.npz", save_freq=np.int64(2))
    regression().fit(X, Y, loss="mse", epochs=4, batch_size=10, callbacks=[checkpoint])
    assert [p.rsplit("/", 1)[-1] for p in checkpoint.saved] == ["m2.npz", "m4.npz"]
