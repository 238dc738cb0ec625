"""Data as users hand it over (pandas, lists, odd dtypes, class labels): what fit, evaluate, predict and the
metrics make of it, compared with the plain NumPy float arrays it stands for."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nnx
from nnx import metrics as M

REGRESSION_METRICS = ["mse", "mae", "rmse", "r2"]
CLASS_METRICS = ["accuracy", "precision", "recall", "f1"]


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


@pytest.mark.parametrize("name", CLASS_METRICS + REGRESSION_METRICS)
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


def test_weights_given_as_strings_are_not_told_to_encode_class_labels():
    """The hint for strings is about class labels and categorical features; weights read as text are neither."""
    X, y = np.zeros((4, 3)), np.zeros(4)
    model = nnx.Sequential(nnx.Dense(3, 1), nnx.Sigmoid(), seed=0)
    with pytest.raises(TypeError, match=r"sample_weight must hold numbers, got dtype <U3 \(strings\): pass "
                                        r"the weights as numbers$"):
        model.fit(X, y, sample_weight=np.array(["1.0"] * 4))


def test_a_dataframe_of_nullable_integer_columns_is_named_in_the_hint():
    """Two Int64 columns make NumPy an object array, though no two columns differ in kind: the hint says so."""
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame({c: pd.array([1, 2, 3, 4], dtype="Int64") for c in "abc"})
    model = nnx.Sequential(nnx.Dense(3, 1), seed=0)
    with pytest.raises(TypeError, match=r"to_numpy\(dtype=float\)\), and so do columns of pandas' nullable dtypes"):
        model.predict(X)
    assert np.allclose(model.predict(X.to_numpy(dtype=float)), model.predict(np.arange(1.0, 5.0)[:, None] * [1, 1, 1]))
