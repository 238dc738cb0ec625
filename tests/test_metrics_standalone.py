"""nnx.metrics called directly by a researcher (not through fit/evaluate): inputs read as the losses read them.

Same refusals (a masked entry, a list y_pred), same conversions (a NumPy y_true or one on another device moved to
y_pred's, a matrix made a plain array), values equal to scikit-learn's in float64 on every backend, and inputs
left as they came.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import metrics

CLASSIFICATION = ("accuracy", "precision", "recall", "f1")
REGRESSION = ("mse", "mae", "rmse", "r2")
ALL = CLASSIFICATION + REGRESSION


def _fn(name):
    return getattr(metrics, name)


def _sk(name, y_true, y_pred):
    """scikit-learn's value for nnx's metric `name`, with the averaging nnx documents (binary for one output,
    macro over classes for several; regression targets of class indices read as one-hot rows)."""
    skm = pytest.importorskip("sklearn.metrics")
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    several = y_pred.ndim == 2 and y_pred.shape[1] > 1
    if name in CLASSIFICATION:
        if several:
            pred = y_pred.argmax(1)
            true = y_true.argmax(1) if y_true.ndim == 2 and y_true.shape[1] > 1 else y_true.reshape(-1)
            average = "macro"
        else:
            pred, true = (y_pred.reshape(-1) > 0.5).astype(int), (y_true.reshape(-1) > 0.5).astype(int)
            average = "binary"
        if name == "accuracy":
            return skm.accuracy_score(true, pred)
        fn = {"precision": skm.precision_score, "recall": skm.recall_score, "f1": skm.f1_score}[name]
        return fn(true.astype(int), pred, average=average, zero_division=0)
    if several and y_true.size == y_pred.shape[0]:
        y_true = np.eye(y_pred.shape[1])[y_true.reshape(-1).astype(int)]
    y_true = y_true.reshape(y_pred.shape)
    if name == "mse":
        return skm.mean_squared_error(y_true, y_pred)
    if name == "rmse":
        return np.sqrt(skm.mean_squared_error(y_true, y_pred))
    if name == "mae":
        return skm.mean_absolute_error(y_true, y_pred)
    return skm.r2_score(y_true, y_pred)


# One row count for the module: on JAX each operation compiles once per shape, so a test scoring N rows reuses
# the compiles of the cases before it
N = 23


def _cases(rng):
    n = N
    p1 = rng.random((n, 1))
    t1 = (rng.random((n, 1)) > 0.5).astype(np.float64)
    pk = rng.random((n, 3))
    tk = rng.integers(0, 3, n)
    return {
        "(n,1)": (t1, p1),
        "(n,)": (t1[:, 0], p1[:, 0]),
        "(n,) targets for (n,1)": (t1[:, 0], p1),
        "int labels": (t1.astype(np.int64), p1),
        "bool labels": (t1.astype(bool), p1),
        "(n,k) class indices": (tk, pk),
        "(n,k) class indices (n,1)": (tk[:, None], pk),
        "(n,k) one-hot": (np.eye(3)[tk], pk),
    }


@pytest.mark.parametrize("name", ALL)
def test_every_metric_equals_scikit_learn_on_every_shape_and_label_kind(backend, name, rng):
    fn = _fn(name)
    for case, (y_true, y_pred) in _cases(rng).items():
        t = backend.asarray(y_true) if y_true.dtype.kind in "bi" else backend.asarray(y_true, dtype="float64")
        p = backend.asarray(y_pred, dtype="float64")
        kept_t, kept_p = backend.to_host(t).copy(), backend.to_host(p).copy()
        got = float(backend.to_host(fn(backend.xp, t, p)))
        assert got == pytest.approx(_sk(name, y_true, y_pred), rel=1e-12, abs=1e-12), case
        # from NumPy, and from a Python list, as a researcher passes targets
        host = float(backend.to_host(fn(backend.xp, y_true, p)))
        listed = float(backend.to_host(fn(backend.xp, y_true.tolist(), p)))
        assert host == pytest.approx(got, rel=1e-12, abs=1e-12) and listed == pytest.approx(got, rel=1e-12, abs=1e-12)
        # never modified
        np.testing.assert_array_equal(backend.to_host(t), kept_t)
        np.testing.assert_array_equal(backend.to_host(p), kept_p)


@pytest.mark.parametrize("name", ALL)
def test_mismatched_lengths_name_both_shapes(backend, name):
    with pytest.raises(ValueError, match=r"\(5,\).*\(4, 1\)"):
        _fn(name)(backend.xp, backend.asarray(np.zeros(5)), backend.asarray(np.zeros((4, 1))))


@pytest.mark.parametrize("name", ALL)
def test_a_nan_output_scores_nan(backend, name):
    y_pred = np.linspace(0.1, 0.9, N)[:, None]
    y_pred[1, 0] = np.nan
    y_true = (np.arange(N) % 2).astype(np.float64)
    got = float(backend.to_host(_fn(name)(backend.xp, y_true, backend.asarray(y_pred, dtype="float64"))))
    assert np.isnan(got)


@pytest.mark.parametrize("name", ALL)
def test_a_list_prediction_is_refused_by_name(name):
    with pytest.raises(TypeError, match="y_pred must be an array, got list"):
        _fn(name)(nnx.get_backend("numpy").xp, [0.0, 1.0], [0.2, 0.7])


@pytest.mark.parametrize("name", ALL)
def test_targets_on_another_array_api_strict_device_are_moved_to_the_predictions(name):
    """A loss moves y_true to y_pred's device; a metric failed with array_api_strict's 'two different devices'."""
    xps = pytest.importorskip("array_api_strict")
    xp = nnx.get_backend("array_api_strict").xp
    y_true = np.array([[0.0], [1.0], [1.0], [0.0], [1.0]])
    y_pred = np.array([[0.2], [0.8], [0.3], [0.1], [0.9]])
    p = xps.asarray(y_pred, device=xps.Device("device1"))
    for t in (xps.asarray(y_true), xps.asarray(y_true, device=xps.Device("device1"))):
        got = _fn(name)(xp, t, p)
        assert float(got) == pytest.approx(_sk(name, y_true, y_pred), rel=1e-12)
        assert got.device == p.device


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("which", ["y_true", "y_pred"])
def test_masked_entries_are_refused_by_name_as_the_losses_refuse_them(name, which):
    """A masked y_pred scored its unmasked part (NumPy's masked operators skip masked entries)."""
    xp = nnx.get_backend("numpy").xp
    masked = np.ma.array([[0.2], [0.8], [0.6], [0.1]], mask=[[0], [0], [1], [0]])
    plain = np.array([[0.0], [1.0], [0.0], [0.0]])
    args = (masked, plain) if which == "y_true" else (plain, masked)
    with pytest.raises(ValueError, match=f"{which} is a masked array with 1 masked entry"):
        _fn(name)(xp, *args)
    if which == "y_pred":
        with pytest.raises(ValueError, match="y_pred is a masked array with 1 masked entry"):
            nnx.losses.MSE()(*args)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")  # NumPy, of np.matrix itself
@pytest.mark.parametrize("name", ALL)
def test_unmasked_masked_arrays_and_matrices_score_as_their_plain_values(name):
    """A matrix failed (its ** is a matrix power, and get_backend refused it); a mask hiding nothing is data."""
    xp = nnx.get_backend("numpy").xp
    y_true = np.array([[0.0], [1.0], [1.0], [0.0], [1.0]])
    y_pred = np.array([[0.2], [0.8], [0.3], [0.1], [0.9]])
    want = _sk(name, y_true, y_pred)
    for t, p in ((np.matrix(y_true), np.matrix(y_pred)), (y_true, np.matrix(y_pred)), (np.matrix(y_true), y_pred),
                 (np.ma.array(y_true), np.ma.array(y_pred))):
        got = _fn(name)(xp, t, p)
        assert type(got) is not np.matrix and not isinstance(got, np.ma.MaskedArray)
        assert float(got) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_a_torch_prediction_that_requires_grad_scores_as_its_values(name):
    torch = pytest.importorskip("torch")
    backend = nnx.get_backend("torch")
    y_true = np.array([[0.0], [1.0], [1.0], [0.0], [1.0]])
    y_pred = np.array([[0.2], [0.8], [0.3], [0.1], [0.9]])
    p = torch.tensor(y_pred, requires_grad=True)
    got = _fn(name)(backend.xp, y_true, p)
    assert float(got.detach()) == pytest.approx(_sk(name, y_true, y_pred), rel=1e-12)
    assert p.grad is None and p.requires_grad
