"""nnx.sklearn under scikit-learn's array-API dispatch: data stays in its namespace and on its device.

`SCIPY_ARRAY_API=1` must be set before SciPy and scikit-learn are imported, so the tests
that need it run in a child pytest (started by `test_array_api_suite_in_a_subprocess`)
and the rest of the suite keeps its environment. Run them directly with
``SCIPY_ARRAY_API=1 NNX_SKLEARN_ARRAY_API_CHILD=1 pytest tests/test_sklearn_array_api.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

CHILD = os.environ.get("NNX_SKLEARN_ARRAY_API_CHILD") == "1"
child_only = pytest.mark.skipif(not CHILD, reason="runs in the SCIPY_ARRAY_API=1 child started by "
                                                  "test_array_api_suite_in_a_subprocess")
pytestmark = [pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]


@pytest.mark.skipif(CHILD, reason="this is the child")
def test_array_api_suite_in_a_subprocess():
    pytest.importorskip("array_api_strict")
    # NNX_TEST_BACKEND: the child's tests choose their backends themselves, so conftest's `backend` cases need
    # not import and probe every installed library (JAX alone took seconds of the child's start)
    env = dict(os.environ, SCIPY_ARRAY_API="1", NNX_SKLEARN_ARRAY_API_CHILD="1", OMP_NUM_THREADS="1",
               NNX_TEST_BACKEND="numpy")
    cmd = [sys.executable, "-m", "pytest", str(Path(__file__)), "-q", "-n", "0", "-p", "no:cacheprovider", "-rs"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert " passed" in out and "failed" not in out


# -- in the child ---------------------------------------------------------------------------------------

def _estimators():
    from nnx.sklearn import MLPClassifier, MLPRegressor

    return [MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0),
            MLPRegressor(hidden_layer_sizes=(8,), max_iter=20, random_state=0)]


def _array_api_checks():
    if not CHILD:
        return []
    from sklearn.utils._array_api import yield_namespace_device_dtype_combinations
    from sklearn.utils.estimator_checks import _yield_array_api_checks, check_array_api_input_and_values

    cases = []
    for est in _estimators():
        for check in _yield_array_api_checks(est):
            cases.append((est, check))
        # stricter than the checks scikit-learn yields: the fitted numbers too, in float64
        for ns, device, dtype in yield_namespace_device_dtype_combinations():
            if dtype == "float64":
                cases.append((est, partial(check_array_api_input_and_values, array_namespace=ns,
                                           device_name=device, dtype_name=dtype)))
    return cases


def _case_id(case):
    est, check = case
    kw = "-".join(str(v) for v in check.keywords.values() if v is not None and not isinstance(v, bool))
    return f"{type(est).__name__}-{check.func.__name__}-{kw}"


@pytest.fixture(autouse=True)
def _one_torch_thread():
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@child_only
@pytest.mark.parametrize("case", _array_api_checks(), ids=_case_id)
def test_sklearn_array_api_checks(case):
    """scikit-learn's own array-API estimator checks (numpy, array_api_strict, torch; others skip themselves)."""
    from sklearn.base import clone

    est, check = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(type(est).__name__, clone(est))


@child_only
def test_array_api_tag_is_declared():
    from sklearn.utils import get_tags

    assert all(get_tags(est).array_api_support for est in _estimators())


def _torch_data(dtype="float64"):
    torch = pytest.importorskip("torch")
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=80, n_features=6, n_informative=4, n_classes=3, random_state=0)
    return torch, X, y, torch.asarray(X.astype(dtype)), torch.asarray(y)


@child_only
def test_issue_case_torch_tensors_fit_and_predict_as_torch():
    """The issue's case: MLPClassifier().fit(X_torch, y_torch) under dispatch (it raised TypeError)."""
    import sklearn

    from nnx.sklearn import MLPClassifier

    torch, X, y, Xt, yt = _torch_data()
    with sklearn.config_context(array_api_dispatch=True):
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0).fit(Xt, yt)
        pred, proba = clf.predict(Xt), clf.predict_proba(Xt)
        log_proba = clf.predict_log_proba(Xt)
        score = clf.score(Xt, yt)
        coefs = clf.coefs_
    assert clf.model_.backend.name == "torch"  # X's backend, as nothing else was asked for
    assert isinstance(pred, torch.Tensor) and pred.dtype == torch.int64
    assert isinstance(proba, torch.Tensor) and proba.dtype == torch.float64 and tuple(proba.shape) == (80, 3)
    assert isinstance(log_proba, torch.Tensor) and isinstance(score, float)
    assert all(isinstance(c, torch.Tensor) for c in coefs)
    assert type(clf.classes_) is np.ndarray
    # the same numbers as the NumPy fit: the same init, batches and steps, on another backend
    ref = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, random_state=0).fit(X, y)
    np.testing.assert_allclose(proba.numpy(), ref.predict_proba(X), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(clf.loss_curve_, ref.loss_curve_, rtol=1e-9)
    # without dispatch, tensors are read as NumPy and answers are NumPy (scikit-learn's default)
    assert type(clf.predict(Xt)) is np.ndarray


@child_only
def test_binary_probabilities_under_dispatch_are_the_numpy_fits():
    """Found by mutation testing: only three classes were fit under dispatch, so a binary classifier's two
    probability columns swapped (0.81 off) went unseen. Columns follow `classes_`, as the NumPy fit's do."""
    import sklearn
    from sklearn.datasets import make_classification

    from nnx.sklearn import MLPClassifier

    torch = pytest.importorskip("torch")
    X, y = make_classification(n_samples=60, n_features=5, random_state=1)
    labels = np.array(["no", "yes"])[y]  # string classes: the columns' order is classes_', not the codes'
    with sklearn.config_context(array_api_dispatch=True):
        clf = MLPClassifier(hidden_layer_sizes=(6,), max_iter=20, random_state=0).fit(torch.asarray(X), labels)
        proba, log_proba = clf.predict_proba(torch.asarray(X)), clf.predict_log_proba(torch.asarray(X))
    ref = MLPClassifier(hidden_layer_sizes=(6,), max_iter=20, random_state=0).fit(X, labels)
    assert list(clf.classes_) == list(ref.classes_) == ["no", "yes"]
    np.testing.assert_allclose(proba.numpy(), ref.predict_proba(X), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(log_proba.numpy(), ref.predict_log_proba(X), rtol=1e-9, atol=1e-12)


@child_only
def test_pipeline_standard_scaler_then_classifier_on_torch():
    import sklearn
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from nnx.sklearn import MLPClassifier

    torch, X, y, Xt, yt = _torch_data("float32")
    with sklearn.config_context(array_api_dispatch=True):
        pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(16,), max_iter=60,
                                                             learning_rate_init=0.01, random_state=0))
        pipe.fit(Xt, yt)
        pred = pipe.predict(Xt)
        proba = pipe.predict_proba(Xt)
        score = pipe.score(Xt, yt)
    mlp = pipe[-1]
    assert mlp.model_.backend.name == "torch" and mlp.model_.dtype == "float32"  # the data's dtype
    assert isinstance(pred, torch.Tensor) and isinstance(proba, torch.Tensor) and proba.dtype == torch.float32
    assert score > 0.8


@child_only
def test_backend_parameter_wins_and_outputs_follow_the_input():
    import sklearn

    from nnx.sklearn import MLPRegressor

    torch, X, _, Xt, _ = _torch_data()
    target = X[:, 0] - 2 * X[:, 1]
    with sklearn.config_context(array_api_dispatch=True):
        reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=20, random_state=0, backend="numpy")
        reg.fit(Xt, torch.asarray(target))
        out = reg.predict(Xt)
        with pytest.raises(ValueError, match=r"MLPRegressor.predict\(\) must use the same namespace"):
            reg.predict(X)
    assert reg.model_.backend.name == "numpy"
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (80,)


@child_only
def test_array_api_strict_second_device_stays_there():
    xps = pytest.importorskip("array_api_strict")
    import sklearn

    from nnx.sklearn import MLPClassifier

    _, X, y, _, _ = _torch_data()
    device = xps.Device("device1")
    Xs, ys = xps.asarray(X.astype("float32"), device=device), xps.asarray(y, device=device)
    with sklearn.config_context(array_api_dispatch=True):
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=10, random_state=0).fit(Xs, ys)
        proba = clf.predict_proba(Xs)
        pred = clf.predict(Xs)
    assert proba.device == device and pred.device == device and proba.dtype == xps.float32
    assert clf.model_.backend.name == "array_api_strict"


@child_only
@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_a_copied_estimator_keeps_the_namespace_and_device_of_its_fit(how):
    """Pickled or deep-copied, the estimator still answers in its fit's namespace, as scikit-learn's own do."""
    import copy
    import pickle

    import sklearn

    from nnx.sklearn import MLPClassifier

    torch, X, y, Xt, yt = _torch_data()
    with sklearn.config_context(array_api_dispatch=True):
        clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, random_state=0).fit(Xt, yt)
        twin = pickle.loads(pickle.dumps(clf)) if how == "pickle" else copy.deepcopy(clf)
        assert all(isinstance(c, torch.Tensor) for c in twin.coefs_ + twin.intercepts_)
        assert torch.equal(twin.predict_proba(Xt), clf.predict_proba(Xt))
        with pytest.raises(ValueError, match=r"MLPClassifier.predict\(\) must use the same namespace"):
            twin.predict(X)  # NumPy in, after a torch fit: refused, as before the copy
