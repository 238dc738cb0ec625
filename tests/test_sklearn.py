"""nnx.sklearn: scikit-learn's estimator contract, its MLP parameters' meaning, any backend behind NumPy I/O."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_blobs, make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning, NotFittedError  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import nnx  # noqa: E402
from nnx.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

# Short max_iter keeps these quick; that the optimizer "hasn't converged" is expected, not news.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These networks are tiny; on a busy 2-core machine torch's thread pool costs milliseconds per matmul."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- scikit-learn's own estimator checks ---------------------------------------------------------
# Small max_iter and a larger step keep the ~110 checks quick while they still reach the
# accuracy (> 0.83) and R^2 (> 0.5) that check_classifiers_train / check_regressors_train demand.

@parametrize_with_checks([
    MLPClassifier(max_iter=50, learning_rate_init=0.01, random_state=0),
    MLPRegressor(max_iter=50, learning_rate_init=0.01, random_state=0),
])
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


# -- any backend behind NumPy in, NumPy out -----------------------------------------------------------

def _blobs(n=90, classes=3, seed=0):
    X, y = make_blobs(n_samples=n, centers=classes, n_features=4, random_state=seed)
    return StandardScaler().fit_transform(X), y


def test_classifier_on_every_backend(backend, dtype):
    X, y = _blobs()
    labels = np.array(["ant", "bee", "cat"])[y]
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, learning_rate_init=0.05, random_state=0,
                        backend=backend.spec, dtype=dtype).fit(X, labels)
    assert clf.model_.backend == backend
    pred, proba = clf.predict(X), clf.predict_proba(X)
    assert type(pred) is np.ndarray and type(proba) is np.ndarray
    assert pred.dtype == labels.dtype and proba.shape == (90, 3) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert (pred == labels).mean() > 0.9
    assert list(clf.classes_) == ["ant", "bee", "cat"]
    assert clf.n_iter_ == len(clf.loss_curve_) <= 30 and clf.n_features_in_ == 4
    assert [c.shape for c in clf.coefs_] == [(4, 8), (8, 3)] and type(clf.coefs_[0]) is np.ndarray
    # pickling moves the network as plain NumPy and rebuilds it on the same backend
    again = pickle.loads(pickle.dumps(clf))
    assert again.model_.backend == backend
    np.testing.assert_array_equal(again.predict_proba(X), proba)
    assert clone(clf).get_params() == clf.get_params()


def test_regressor_on_every_backend(backend, dtype):
    X, Y = make_regression(n_samples=90, n_features=4, n_targets=2, noise=1.0, random_state=0)
    Y = Y / Y.std(axis=0)
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=60, learning_rate_init=0.05, random_state=0,
                       backend=backend.spec, dtype=dtype).fit(X, Y)
    out = reg.predict(X)
    assert type(out) is np.ndarray and out.shape == (90, 2) and out.dtype == np.float64
    assert reg.score(X, Y) > 0.9 and reg.n_outputs_ == 2
    assert reg.predict(X.astype(np.float32)).dtype == np.float32  # X's float dtype is kept, as in sklearn
    again = pickle.loads(pickle.dumps(reg))
    np.testing.assert_array_equal(again.predict(X), out)
    # a pickled estimator keeps training where it stopped (optimizer state travelled too)
    reg.partial_fit(X, Y)
    again.partial_fit(X, Y)
    np.testing.assert_allclose(again.predict(X), reg.predict(X), rtol=1e-6, atol=1e-6)


# -- what scikit-learn users rely on ---------------------------------------------------------------------

def test_pipeline_gridsearch_and_clone():
    X, y = make_classification(n_samples=120, n_features=6, random_state=0)
    pipe = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0))
    grid = GridSearchCV(pipe, {"mlpclassifier__alpha": [1e-4, 1e-1],
                               "mlpclassifier__learning_rate_init": [1e-3, 3e-2]}, cv=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        grid.fit(X, y)
    assert grid.best_params_["mlpclassifier__learning_rate_init"] == 3e-2
    assert grid.score(X, y) > 0.85
    fresh = clone(grid.best_estimator_)
    assert not hasattr(fresh[-1], "model_")


def test_binary_labels_of_any_type_and_multilabel():
    X, y = _blobs(classes=2)
    for labels in (np.array([-1, 1])[y], np.array([False, True])[y], np.array(["no", "yes"], dtype=object)[y]):
        clf = MLPClassifier(hidden_layer_sizes=(6,), max_iter=40, learning_rate_init=0.05, random_state=0)
        clf.fit(X, labels)
        assert clf.out_activation_ == "logistic" and clf.n_outputs_ == 1
        assert clf.predict_proba(X).shape == (90, 2)
        assert (clf.predict(X) == labels).mean() > 0.95
        np.testing.assert_array_equal(clf.classes_, np.unique(labels))
    Y = np.column_stack([y, 1 - y, X[:, 0] > 0]).astype(int)
    ml = MLPClassifier(hidden_layer_sizes=(8,), max_iter=80, learning_rate_init=0.05, random_state=0).fit(X, Y)
    assert ml.predict(X).shape == (90, 3) and set(np.unique(ml.predict(X))) <= {0, 1}
    assert ml.predict_proba(X).shape == (90, 3) and ml.score(X, Y) > 0.8
    with pytest.raises(ValueError, match="only one class"):
        MLPClassifier().fit(X, np.zeros(90))
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier().fit(X, np.linspace(0, 1, 90))


def test_alpha_means_what_it_means_in_sklearn():
    """With no hidden layer the problem is convex: L-BFGS lands where scikit-learn's does, for any alpha."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4))
    y_reg = X @ rng.normal(size=4) + 0.1 * rng.normal(size=80)
    y_clf = (X[:, 0] + X[:, 1] > 0.3).astype(int)
    common = dict(hidden_layer_sizes=(), solver="lbfgs", max_iter=3000, tol=1e-12, random_state=0)
    for alpha in (0.0, 1.0, 30.0):
        ours = MLPRegressor(alpha=alpha, dtype="float64", **common).fit(X, y_reg)
        ref = SkMLPRegressor(alpha=alpha, **common).fit(X, y_reg)
        np.testing.assert_allclose(ours.coefs_[0], ref.coefs_[0], atol=1e-4)
        assert ours.loss_ == pytest.approx(2 * ref.loss_, rel=1e-6)  # MSE, not half of it
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for alpha in (1e-2, 3.0):
            ours = MLPClassifier(alpha=alpha, dtype="float64", **common).fit(X, y_clf)
            ref = SkMLPClassifier(alpha=alpha, **common).fit(X, y_clf)
            np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-4)
            assert ours.loss_ == pytest.approx(ref.loss_, rel=1e-5)


def test_stopping_rules_early_stopping_and_convergence_warning(capsys):
    X, y = _blobs(n=150)
    with pytest.warns(ConvergenceWarning, match=r"Maximum iterations \(3\) reached"):
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=3, random_state=0).fit(X, y)
    # training loss stops improving by tol -> stop after n_iter_no_change + 1 stale epochs
    clf = MLPClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.05, max_iter=500, tol=0.05,
                        n_iter_no_change=3, random_state=0, verbose=True).fit(X, y)
    assert clf.n_iter_ < 500 and clf.best_loss_ == min(clf.loss_curve_) and clf.validation_scores_ is None
    out = capsys.readouterr().out
    assert "Iteration 1, loss = " in out and "Stopping." in out
    es = MLPClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.05, max_iter=300, early_stopping=True,
                       validation_fraction=0.2, n_iter_no_change=4, random_state=0).fit(X, y)
    assert es.best_loss_ is None and len(es.validation_scores_) == es.n_iter_ < 300
    assert es.best_validation_score_ == max(es.validation_scores_)
    with pytest.raises(ValueError, match="partial_fit does not support early_stopping"):
        es.partial_fit(X, y)


def test_warm_start_partial_fit_and_lbfgs():
    X, y = _blobs()
    warm = MLPClassifier(hidden_layer_sizes=(6,), max_iter=5, warm_start=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warm.fit(X, y)
        first = warm.coefs_[0].copy()
        warm.fit(X, y)
    assert warm.n_iter_ == 10 and len(warm.loss_curve_) == 10 and not np.array_equal(first, warm.coefs_[0])
    with pytest.raises(ValueError, match="same classes"):
        warm.fit(X[y < 2], y[y < 2])

    inc = MLPClassifier(hidden_layer_sizes=(6,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        inc.partial_fit(X, y)
    inc.partial_fit(X[y == 0], y[y == 0], classes=[0, 1, 2])
    inc.partial_fit(X, y)
    assert inc.n_iter_ == 2 and list(inc.classes_) == [0, 1, 2]
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")

    lb = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=100, random_state=0).fit(X, y)
    assert lb.score(X, y) > 0.95 and not hasattr(lb, "loss_curve_")
    with pytest.raises(ValueError, match="dropout needs a stochastic solver"):
        MLPClassifier(solver="lbfgs", dropout=0.5).fit(X, y)


@pytest.mark.parametrize("params, match", [
    ({"activation": "swish"}, "activation must be one of"),
    ({"solver": "newton"}, "solver must be one of"),
    ({"hidden_layer_sizes": (10, 0)}, "hidden_layer_sizes must be > 0"),
    ({"batch_size": 0}, "batch_size must be 'auto' or an int >= 1"),
    ({"validation_fraction": 1.0}, r"validation_fraction must be a number in \(0.0, 1.0\)"),
    ({"dtype": "float16"}, "dtype must be 'float32' or 'float64'"),
    ({"dropout": 1.0}, "dropout must be a number"),
    ({"backend": "tensorflow"}, "unknown backend 'tensorflow'"),
])
def test_bad_parameters_fail_in_fit_naming_them(params, match):
    X, y = _blobs(n=20)
    clf = MLPClassifier(**params)  # scikit-learn's rule: __init__ only stores
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y)


def test_unfitted_and_dropout_and_sgd_schedules():
    X, y = _blobs()
    with pytest.raises(NotFittedError):
        MLPClassifier().predict(X)
    drop = MLPClassifier(hidden_layer_sizes=(16,), dropout=0.3, max_iter=60, learning_rate_init=0.05,
                         random_state=0).fit(X, y)
    assert any(isinstance(layer, nnx.Dropout) for layer in drop.model_.layers)
    np.testing.assert_array_equal(drop.predict_proba(X), drop.predict_proba(X))  # dropout is off at inference
    assert drop.score(X, y) > 0.9
    for schedule in ("invscaling", "adaptive"):
        sgd = MLPRegressor(hidden_layer_sizes=(8,), solver="sgd", learning_rate=schedule, learning_rate_init=0.01,
                           max_iter=40, n_iter_no_change=2, tol=1.0, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sgd.fit(X, y.astype(float))
        assert sgd.model_.optimizer.lr < 0.01  # the schedule lowered the rate
