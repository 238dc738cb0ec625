"""JAX's compiled inference (evaluate, a fit's validation and metrics) against JAX's plain loop
(``with_fastpath(False)``) where a user's loss or metric reads a setting outside its instance: float64, to 1e-12."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.backends import backend_status

ok, why = backend_status("jax")
pytestmark = pytest.mark.skipif(not ok, reason=f"jax not available: {why}")

TOL = 1e-12
SCALE = 1.0  # read by MoreGlobalMSE
THRESHOLD = 0.0  # read by more_threshold_accuracy


class MoreGlobalMSE(nnx.losses.Loss):
    """MSE times a module global."""

    def rows(self, xp, y_true, y_pred):
        d = y_pred - y_true
        return SCALE * xp.mean(d * d, axis=1), 2.0 * SCALE * d / (d.shape[0] * d.shape[1])


def more_threshold_accuracy(xp, y_true, y_pred, from_logits):
    return xp.mean(xp.astype((y_pred > THRESHOLD) == (y_true > 0.5), y_pred.dtype))


class MoreSetGlobals(nnx.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        global SCALE, THRESHOLD
        SCALE, THRESHOLD = 1.0 + epoch, 0.2 * (epoch + 1)


def _data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(24, 3))
    return X, (X[:, :1] + 0.3 * X[:, 1:2] > 0).astype(float)


def _model(fast: bool):
    return nnx.Sequential(nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 1),
                          backend=nnx.get_backend("jax").with_fastpath(fast), dtype="float64", seed=1)


def _shifted_mean():
    """A metric reading a closure variable, and its setter."""
    shift = 0.0

    def shifted(xp, y_true, y_pred, from_logits):
        return xp.mean(y_pred + shift)

    def set_shift(value):
        nonlocal shift
        shift = value

    return shifted, set_shift


def _close(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=TOL, atol=TOL, err_msg=k)


def test_evaluate_reads_globals_of_users_loss_and_metric_again():
    """evaluate's compiled program held the module global a user's loss or metric function reads (and a closure
    variable of a metric) as the constant of its first call: changed between calls, it gave the old value."""
    global SCALE, THRESHOLD
    X, y = _data()
    X, y = X[18:], y[18:]  # the shape of the fit's validation rows below: JAX compiles the plain pass's ops once
    results = []
    for fast in (True, False):
        SCALE, THRESHOLD = 1.0, 0.0
        model = _model(fast)
        shifted, set_shift = _shifted_mean()
        metrics = [("t", more_threshold_accuracy), ("s", shifted)]
        first = model.evaluate(X, y, loss=MoreGlobalMSE(), metrics=metrics)
        SCALE, THRESHOLD = 3.0, 0.3
        set_shift(2.0)
        results.append((first, model.evaluate(X, y, loss=MoreGlobalMSE(), metrics=metrics)))
    for a, b in zip(*results, strict=True):
        _close(a, b)
    assert results[0][1]["loss"] == pytest.approx(3.0 * results[0][0]["loss"], rel=1e-12)


def test_fit_validation_and_metrics_read_globals_a_callback_changes():
    """A callback changing the global a user's loss and metric read: the compiled epochs' validation loss and
    metrics kept the first epoch's values, where the plain loop's history follows the change."""
    global SCALE, THRESHOLD
    X, y = _data()
    histories = []
    for fast in (True, False):
        SCALE, THRESHOLD = 1.0, 0.0
        model = _model(fast)
        history = model.fit(X, y, loss=MoreGlobalMSE(), optimizer=nnx.optim.SGD(model.parameters(), lr=0.05),
                            epochs=2, batch_size=6, validation_split=0.25, metrics=[("t", more_threshold_accuracy)],
                            callbacks=[MoreSetGlobals()])
        histories.append(history.history)
    _close(*histories)
