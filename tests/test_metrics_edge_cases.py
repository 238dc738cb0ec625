"""Metrics at their edges: no rows, targets that are no labels or class distributions, targets of another
sample shape, string labels, constant targets, and scores gathered over iterables of batches."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import nnx
from nnx import metrics as M


@pytest.mark.parametrize("name", ["accuracy", "precision", "recall", "f1", "label_accuracy", "label_f1", "mse", "mae"])
def test_metrics_of_no_rows_are_nan_without_a_warning(backend: Any, name: str) -> None:
    # NaN on no rows is the answer asked for (60ca4ca), but the means of nothing also warned "Mean of empty slice"
    # and "invalid value encountered" on NumPy and array_api_strict: the suite, which ends with no warnings,
    # printed eight
    import warnings

    from nnx import metrics

    fn = getattr(metrics, name)
    width = 1 if name in ("mse", "mae") else 3
    y_pred = backend.asarray(np.zeros((0, width)), dtype="float64")
    y_true = backend.asarray(np.zeros((0,) if name in ("accuracy", "precision", "recall", "f1") else (0, width)),
                             dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = float(backend.to_host(fn(backend.xp, y_true, y_pred)))
    assert np.isnan(got)


CLASS_METRICS = (M.accuracy, M.precision, M.recall, M.f1)


LABEL_METRICS = (M.label_accuracy, M.label_precision, M.label_recall, M.label_f1)


def _score(backend, fn, y_true, y_pred):
    return float(backend.to_host(fn(backend.xp, y_true, y_pred)))


def test_class_and_label_metrics_of_no_rows_are_nan(backend, dtype):
    # on 0 rows, accuracy gave NaN (the mean of nothing) but precision, recall and f1 gave 0.0,
    # a score that only looks like one (scikit-learn refuses empty input); every built-in metric is now NaN there
    for outputs, targets in ((np.zeros((0, 3)), np.zeros((0,))), (np.zeros((0, 1)), np.zeros((0, 1)))):
        y_pred = backend.asarray(outputs, dtype=dtype)
        for fn in CLASS_METRICS:
            assert math.isnan(_score(backend, fn, backend.asarray(targets, dtype=dtype), y_pred)), fn.__name__
    y_pred = backend.asarray(np.zeros((0, 3)), dtype=dtype)
    for fn in LABEL_METRICS:
        assert math.isnan(_score(backend, fn, backend.asarray(np.zeros((0, 3)), dtype=dtype), y_pred)), fn.__name__


def test_label_metrics_of_targets_that_are_no_labels_are_nan(backend, dtype):
    # the per-label metrics (what "accuracy", "precision", ... score with a BCE loss) filed any
    # target under 0/1 by a 0.5 threshold: y_true 7 or -1 scored label accuracy 1.0, where the class metrics give
    # NaN for targets that are no class (and scikit-learn refuses them)
    rng = np.random.default_rng(3)
    y_pred = backend.asarray(rng.uniform(size=(6, 2)), dtype=dtype)
    labels = (rng.uniform(size=(6, 2)) > 0.5).astype(np.float64)
    for fn in LABEL_METRICS:
        assert math.isfinite(_score(backend, fn, backend.asarray(labels, dtype=dtype), y_pred)), fn.__name__
        assert math.isfinite(_score(backend, fn, labels > 0.5, y_pred)), fn.__name__  # bool labels
        for bad in (7.0, -1.0, 0.3):
            wrong = labels.copy()
            wrong[2, 1] = bad
            got = _score(backend, fn, backend.asarray(wrong, dtype=dtype), y_pred)
            assert math.isnan(got), (fn.__name__, bad, got)
    # the one-output class metrics already say so: the two agree
    one = backend.asarray(rng.uniform(size=(6, 1)), dtype=dtype)
    for fn in (M.accuracy, M.label_accuracy):
        assert math.isnan(_score(backend, fn, backend.asarray(np.full((6, 1), 7.0), dtype=dtype), one))


def test_evaluate_with_bce_labels_still_scores(backend, dtype):
    # the fix above leaves 0/1 targets of a BCE model scored per label, as scikit-learn's multi-label scores
    skm = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(5)
    X = rng.normal(size=(40, 4))
    Y = (rng.uniform(size=(40, 3)) < 0.5).astype(np.float64)
    model = nnx.Sequential(nnx.Dense(4, 3), nnx.Sigmoid(), backend=backend, dtype=dtype, seed=0)
    result = model.evaluate(X, Y, loss="bce", metrics=["accuracy", "f1"])
    P = (backend.to_host(model.predict(X)) > 0.5).astype(int)
    assert result["accuracy"] == pytest.approx(skm.accuracy_score(Y, P), rel=1e-5)
    assert result["f1"] == pytest.approx(skm.f1_score(Y, P, average="macro", zero_division=0), rel=1e-5)


def test_class_metrics_of_rows_that_are_no_class_distribution_are_nan(backend, dtype):
    # metrics=["accuracy"] on a regression model of several outputs read its continuous targets,
    # negative ones included, as probability rows by their argmax and reported 0.43 (f1 0.42); one output gave NaN,
    # as scikit-learn refuses such targets. Rows with a negative entry, which cross-entropy refuses as targets, are
    # now NaN too; one-hot and probability rows (cross-entropy's) still score by their argmax
    rng = np.random.default_rng(6)
    X = rng.normal(size=(30, 3))
    Y = X @ rng.normal(size=(3, 2))
    model = nnx.Sequential(nnx.Dense(3, 2), backend=backend, dtype=dtype, seed=0)
    result = model.evaluate(X, Y, loss="mse", metrics=["accuracy", "precision", "recall", "f1", "mse"])
    assert all(math.isnan(result[name]) for name in ("accuracy", "precision", "recall", "f1")), result
    assert math.isfinite(result["mse"])
    outputs = backend.asarray(rng.normal(size=(6, 3)), dtype=dtype)
    onehot = np.eye(3)[rng.integers(0, 3, 6)]
    smooth = onehot * 0.9 + 0.1 / 3
    for fn in CLASS_METRICS:
        assert math.isfinite(_score(backend, fn, backend.asarray(onehot, dtype=dtype), outputs)), fn.__name__
        assert math.isfinite(_score(backend, fn, backend.asarray(smooth, dtype=dtype), outputs)), fn.__name__
        for bad in (-0.5, math.nan):
            wrong = onehot.copy()
            wrong[1, 2] = bad
            assert math.isnan(_score(backend, fn, backend.asarray(wrong, dtype=dtype), outputs)), (fn.__name__, bad)


def test_one_output_class_metrics_check_rows_against_the_outputs_own(backend, dtype):
    # outputs of shape (n, 2, 1) were flattened to 2n rows before y_true was checked against them,
    # so targets of 2n rows (another data set's) were scored without a word, while the targets of the outputs' own
    # shape were refused, the error naming a y_pred shape (8, 1) the caller never passed
    rng = np.random.default_rng(7)
    outputs = rng.uniform(size=(4, 2, 1))
    y_pred = backend.asarray(outputs, dtype=dtype)
    for fn in CLASS_METRICS:
        with pytest.raises(ValueError, match=r"y_true .*\(8,\) for y_pred \(4, 2, 1\)"):
            fn(backend.xp, backend.asarray(rng.integers(0, 2, 8).astype(np.float64), dtype=dtype), y_pred)
    labels = (rng.uniform(size=(4, 2, 1)) > 0.5).astype(np.float64)
    want = np.mean((outputs > 0.5) == (labels > 0.5))
    assert _score(backend, M.accuracy, backend.asarray(labels, dtype=dtype), y_pred) == pytest.approx(want)


def test_metric_targets_of_another_sample_shape_are_refused_not_reshaped(backend, dtype):
    # the metrics reshaped y_true to y_pred's shape whenever the rows and the number of values
    # agreed, so per-sample targets given transposed ((n, 3, 2) for outputs (n, 2, 3)) were scored scrambled without
    # a word (the losses refuse them); only trailing axes of length 1 ((n,) for (n, 1), and back) are reshaped now
    rng = np.random.default_rng(9)
    outputs = rng.normal(size=(4, 2, 3))
    y_pred = backend.asarray(outputs, dtype=dtype)
    for wrong in (np.swapaxes(outputs, 1, 2), outputs.reshape(4, 6)):
        y_true = backend.asarray(wrong, dtype=dtype)
        for fn in (M.mse, M.mae, M.rmse, M.r2, *LABEL_METRICS):
            with pytest.raises(ValueError, match=r"y_true.*rows"):
                fn(backend.xp, y_true, y_pred)
    # what fit passes for one output, and its reverse, still go through
    column = backend.asarray(rng.normal(size=(5, 1)), dtype=dtype)
    flat = backend.asarray(rng.normal(size=(5,)), dtype=dtype)
    assert math.isfinite(_score(backend, M.mse, flat, column)) and math.isfinite(_score(backend, M.mse, column, flat))
    assert math.isfinite(_score(backend, M.r2, backend.asarray(rng.normal(size=(5, 1, 1)), dtype=dtype), flat))


# Data as users hand it over (lists, strings, class labels) to the metrics, against the plain NumPy float arrays it
# stands for.
REGRESSION_METRICS = ["mse", "mae", "rmse", "r2"]


CLASSIFICATION_METRICS = ["accuracy", "precision", "recall", "f1"]


def _outputs(backend, dtype):
    rng = np.random.default_rng(0)
    return backend.asarray(rng.standard_normal((6, 3)), dtype=dtype)


@pytest.mark.parametrize("name", REGRESSION_METRICS)
@pytest.mark.parametrize("labels", [[0, 2, 1, 1, 0, 3], [0, 2, 1, -1, 0, 2], [0, 2, 1.5, 1, 0, 2]],
                         ids=["beyond", "negative", "fraction"])
def test_regression_metric_of_labels_that_are_no_class_is_nan(backend_case, name, labels):
    """A regression metric reads class indices as the one-hot rows cross-entropy makes of them; an index that is no
    class of the outputs (cross-entropy refuses it) had no 1 in its row and was scored as a real target."""
    backend, dtype = backend_case
    y_pred = _outputs(backend, dtype)
    fn = M.METRICS.lookup(name)
    assert math.isnan(float(backend.to_host(fn(backend.xp, np.array(labels), y_pred))))
    # the same labels, all classes, still score
    good = np.array([0, 2, 1, 1, 0, 2])
    assert math.isfinite(float(backend.to_host(fn(backend.xp, good, y_pred))))


@pytest.mark.parametrize("name", CLASSIFICATION_METRICS + REGRESSION_METRICS)
def test_metric_of_string_labels_says_so(backend_case, name):
    """String labels given to a metric directly: the TypeError the losses and fit raise, naming the dtype, not
    NumPy's "could not convert string to float" or JAX's "not a valid JAX array type"."""
    backend, dtype = backend_case
    fn = M.METRICS.lookup(name)
    with pytest.raises(TypeError, match=r"y_true must hold numbers, got dtype <U1 \(strings\)"):
        fn(backend.xp, np.array(list("abcabc")), _outputs(backend, dtype))


def test_r2_of_a_nan_output_for_a_constant_target_is_nan(backend_case):
    """A constant target scores 1 if predicted exactly, else 0; a NaN output is neither, and scored 0 it looked
    like a result (the other metrics give NaN for it)."""
    backend, dtype = backend_case
    y_pred = backend.asarray(np.array([[1.0], [math.nan], [1.0]]), dtype=dtype)
    assert math.isnan(float(backend.to_host(M.r2(backend.xp, np.ones(3), y_pred))))


# Scores over iterables of batches, as a Keras or torch DataLoader user hands them over.
def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (np.abs(X[:, 0]) * 2).astype(np.int64) % 3
    return X, y


def _classifier(backend="numpy", dtype="float64"):
    return nnx.Sequential(nnx.Dense(4, 8), nnx.Tanh(), nnx.Dense(8, 3), backend=backend, dtype=dtype, seed=0)


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict", "jax"])
def test_class_indices_in_some_batches_and_one_hot_rows_in_others_score_together(backend):
    """Cross-entropy reads indices and one-hot rows alike (docs/training.md), batch by batch; the epoch's
    metrics joined the batches' targets as given and failed after the whole epoch, in the backend's words."""
    pytest.importorskip(backend)
    X, y = _data(31)
    onehot = np.eye(3)[y]
    spans = [(0, 10), (10, 11), (11, 21), (21, 31)]  # batches of two shapes (10 and 1 rows): fewer JAX compiles
    mixed = [(X[a:b], y[a:b] if i % 2 == 0 else onehot[a:b]) for i, (a, b) in enumerate(spans)]
    plain = [(X[a:b], y[a:b]) for a, b in spans]
    got = _classifier(backend).fit(mixed, loss="ce", epochs=1, metrics=["accuracy", "f1"], verbose=0).history
    want = _classifier(backend).fit(plain, loss="ce", epochs=1, metrics=["accuracy", "f1"], verbose=0).history
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, err_msg=key)
    m = _classifier(backend)
    got_eval = m.evaluate(mixed, loss="ce", metrics=["accuracy", "f1"])
    assert got_eval == m.evaluate(plain, loss="ce", metrics=["accuracy", "f1"])
    # as validation_data too (the metrics of evaluate above: on JAX its programs serve the validation passes)
    h = _classifier(backend).fit(plain, loss="ce", validation_data=mixed, metrics=["accuracy", "f1"], verbose=0)
    h_plain = _classifier(backend).fit(plain, loss="ce", validation_data=plain, metrics=["accuracy", "f1"], verbose=0)
    assert h.history == h_plain.history
