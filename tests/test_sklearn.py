"""nnx.sklearn: scikit-learn's estimator contract, its MLP parameters' meaning, any backend behind NumPy I/O."""

from __future__ import annotations

import pickle
import unittest
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
from tally import write_counts  # noqa: E402

import nnx  # noqa: E402
from nnx.sklearn import MLPClassifier, MLPRegressor  # noqa: E402
from nnx.sklearn.base import _PickledBackend  # noqa: E402

# Short max_iter keeps these quick; that the optimizer "hasn't converged" is expected, not news.
pytestmark = [pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
              # scikit-learn's estimator checks feed a DOK sparse matrix on purpose, and its own validation
              # says it cannot look for NaN there: a note about the check's input, not about nnx
              pytest.mark.filterwarnings("ignore:Can't check dok sparse matrix for nan or inf:UserWarning")]


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
# Small max_iter and a larger step keep the ~120 checks quick while they still reach the
# accuracy (> 0.83) and R^2 (> 0.5) that check_classifiers_train / check_regressors_train demand.

_ESTIMATORS = [
    MLPClassifier(max_iter=50, learning_rate_init=0.01, random_state=0),
    MLPRegressor(max_iter=50, learning_rate_init=0.01, random_state=0),
]

# Parameters for single checks, as scikit-learn gives its own estimators (its PER_ESTIMATOR_CHECK_PARAMS,
# which third-party estimators cannot use yet). The sample-weight equivalence checks compare the model fitted
# on weighted rows with the one fitted on repeated rows at rtol=1e-7, finer than float32 resolves: the repeated
# rows sit in another order, so float32 sums round differently and 50 steps carry that to ~1e-6. scikit-learn's
# MLP computes in X's float64 there; so do we (test_sample_weight_equals_repetition shows float32 to ~1e-5).
_CHECK_PARAMS = {
    "check_sample_weight_equivalence_on_dense_data": {"dtype": "float64"},
    "check_sample_weight_equivalence_on_sparse_data": {"dtype": "float64"},
}

SAMPLE_WEIGHT_CHECKS = {
    "check_sample_weights_pandas_series", "check_sample_weights_not_an_array", "check_sample_weights_list",
    "check_all_zero_sample_weights_error", "check_sample_weights_shape", "check_sample_weights_not_overwritten",
    "check_sample_weight_equivalence_on_dense_data", "check_sample_weight_equivalence_on_sparse_data",
}


def _check_name(check):
    return getattr(check, "func", check).__name__


# outcome -> [estimator:check], for the closing tally (NNX_HYPOTHESIS_COUNTS, see tests/tally.py)
CHECK_OUTCOMES: dict[str, list[str]] = {"passed": [], "failed": [], "skipped": []}


@pytest.fixture(scope="module", autouse=True)
def _report_check_outcomes():
    yield
    counts = {k: len(v) for k, v in CHECK_OUTCOMES.items()}
    weights = {k: sum(any(c.endswith(":" + w) for w in SAMPLE_WEIGHT_CHECKS) for c in v)
               for k, v in CHECK_OUTCOMES.items()}
    write_counts({"file": "test_sklearn", "check_estimator": {"run": sum(counts.values()), **counts, "xfailed": 0},
                  "sample_weight_checks": weights, "not_passed": CHECK_OUTCOMES["failed"] + CHECK_OUTCOMES["skipped"]})


@parametrize_with_checks(_ESTIMATORS)
def test_sklearn_estimator_checks(estimator, check):
    name = _check_name(check)
    label = f"{type(estimator).__name__}:{name}"
    estimator = clone(estimator).set_params(**_CHECK_PARAMS.get(name, {}))
    outcome = "failed"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            check(estimator)
        outcome = "passed"
    except unittest.SkipTest:
        outcome = "skipped"  # scikit-learn's own skips (pandas missing, SCIPY_ARRAY_API unset, ...)
        raise
    finally:
        CHECK_OUTCOMES[outcome].append(label)


def test_every_sample_weight_check_is_collected():
    """scikit-learn runs its sample-weight checks only where fit takes `sample_weight`: all of them run here."""
    from sklearn.utils.validation import has_fit_parameter

    params = parametrize_with_checks(_ESTIMATORS).args[1]
    for est in _ESTIMATORS:
        assert has_fit_parameter(est, "sample_weight")
        names = {_check_name(p.values[1] if hasattr(p, "values") else p[1]) for p in params
                 if (p.values[0] if hasattr(p, "values") else p[0]) is est}
        assert SAMPLE_WEIGHT_CHECKS <= names, SAMPLE_WEIGHT_CHECKS - names
        assert set(_CHECK_PARAMS) <= names  # a renamed check would silently lose its parameters
    assert "check_classifiers_one_label_sample_weights" in {_check_name(p[1]) for p in params}
    # no check is marked as an expected failure
    assert not any(getattr(p, "marks", ()) for p in params)


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


def test_pickled_estimator_continues_with_the_same_dropout_masks(backend):
    # a copy (pickle, joblib, deepcopy) resumes the dropout stream where the original is, not from its seed
    import copy

    X, y = _blobs()  # with 8 hidden units, the classifier test's data and network: no JAX op shapes of its own
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, dropout=0.3, random_state=0,
                        backend=backend.spec).fit(X, y)
    copies = [pickle.loads(pickle.dumps(clf)), copy.deepcopy(clf)]
    for est in (clf, *copies):
        est.partial_fit(X, y)
    for again in copies:
        assert again.loss_curve_ == clf.loss_curve_
        for a, b in zip(again.coefs_, clf.coefs_, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_backend_object_as_parameter_clones_and_pickles(backend):
    # backend=nnx.get_backend(...) is as valid as its name; GridSearchCV clones it and n_jobs pickles it
    import copy

    X, y = _blobs()  # with 8 hidden units, the classifier test's data and network: no JAX op shapes of its own
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=2, random_state=0, backend=backend)
    assert clone(clf).get_params()["backend"] == backend
    assert pickle.loads(pickle.dumps(clf)).get_params()["backend"] == backend
    clf.fit(X, y)
    for again in (pickle.loads(pickle.dumps(clf)), copy.deepcopy(clf)):
        assert again.backend == backend and again.model_.backend == backend
        np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    slow = pickle.loads(pickle.dumps(clf.set_params(backend=backend.with_fastpath(False))))
    assert slow.backend == backend and slow.backend.fastpath_enabled is False


def _unavailable_backend() -> str:
    for spec in ("cupy", "torch:cuda", "jax:gpu"):
        try:
            nnx.get_backend(spec)
        except nnx.BackendUnavailableError:
            return spec
        except ValueError:
            continue
    pytest.skip("every accelerator backend runs here: no pickle from an unavailable one to load")


def test_an_estimator_fitted_where_its_backend_cannot_run_here_loads_on_the_host_with_a_warning():
    # fitted on a GPU and unpickled without one: the network's NumPy weights load on the host, as skorch does
    spec = _unavailable_backend()
    X, y = _blobs(classes=2)
    clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit(X, y)
    for param in (spec, _PickledBackend(spec, True)):
        state = clf.__getstate__()
        state["_model_portable"]["backend"], state["backend"] = spec, param
        again = MLPClassifier.__new__(MLPClassifier)
        with pytest.warns(UserWarning, match=f"fitted on backend '{spec}', which cannot run here"):
            again.__setstate__(state)
        np.testing.assert_allclose(again.predict_proba(X), clf.predict_proba(X), rtol=1e-12, atol=1e-15)
        assert again.get_params()["backend"] == spec  # the parameter still says where it was fitted
        with pytest.raises(nnx.BackendUnavailableError, match=spec):
            again.fit(X, y)


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
    with pytest.raises(ValueError, match="Unknown label type"):
        MLPClassifier().fit(X, np.linspace(0, 1, 90))


def test_single_class_is_fitted_as_in_sklearn():
    """One class in y: scikit-learn fits one logistic unit towards its binarizer's 0 and always predicts the class."""
    X, _ = _blobs(classes=2)
    y = np.full(90, "only")
    ours = MLPClassifier(hidden_layer_sizes=(5,), max_iter=20, random_state=0).fit(X, y)
    theirs = SkMLPClassifier(hidden_layer_sizes=(5,), max_iter=20, random_state=0).fit(X, y)
    assert list(ours.classes_) == list(theirs.classes_) == ["only"]
    assert ours.n_outputs_ == theirs.n_outputs_ == 1 and ours.out_activation_ == theirs.out_activation_
    assert (ours.predict(X) == "only").all()
    proba = ours.predict_proba(X)
    assert proba.shape == theirs.predict_proba(X).shape == (90, 2)
    np.testing.assert_allclose(proba, theirs.predict_proba(X), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(ours.loss_curve_, theirs.loss_curve_, rtol=1e-6)


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
        assert ours.loss_ == pytest.approx(ref.loss_, rel=1e-6)  # scikit-learn's half squared error
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
    # as in scikit-learn: n_iter_ counts this call's epochs, the curve and t_ the whole history
    assert warm.n_iter_ == 5 and len(warm.loss_curve_) == 10 and not np.array_equal(first, warm.coefs_[0])
    assert warm.t_ == 2 * 5 * 90
    with pytest.raises(ValueError, match="same classes"):
        warm.fit(X[y < 2], y[y < 2])

    inc = MLPClassifier(hidden_layer_sizes=(6,), random_state=0)
    with pytest.raises(ValueError, match="classes must be passed"):
        inc.partial_fit(X, y)
    inc.partial_fit(X[y == 0], y[y == 0], classes=[0, 1, 2])
    inc.partial_fit(X, y)
    assert inc.n_iter_ == 1 and inc.t_ == 90 + np.sum(y == 0) and list(inc.classes_) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"^`classes=\[0, 1\]` is not the same .* was: \[0, 1, 2\]$"):
        inc.partial_fit(X, y, classes=np.array([0, 1]))  # the labels as written, not as [np.int64(0), ...]
    assert not hasattr(MLPClassifier(solver="lbfgs"), "partial_fit")

    lb = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=100, random_state=0).fit(X, y)
    assert lb.score(X, y) > 0.95 and not hasattr(lb, "loss_curve_")
    with pytest.raises(ValueError, match="dropout needs a stochastic solver"):
        MLPClassifier(solver="lbfgs", dropout=0.5).fit(X, y)


@pytest.mark.parametrize("limit, advice, not_advice", [({"max_iter": 2}, "(max_iter=2)", "max_fun"),
                                                       ({"max_fun": 3}, "(max_fun=3)", "max_iter")])
def test_lbfgs_convergence_warning_names_the_limit_that_stopped_it(limit, advice, not_advice):
    """Stopped by max_fun, the warning used to advise raising max_iter, which changes nothing."""
    X, y = _blobs(n=40)
    with pytest.warns(ConvergenceWarning) as record:
        MLPRegressor(hidden_layer_sizes=(4,), solver="lbfgs", random_state=0, **limit).fit(X, y.astype(float))
    message = str(record[0].message)
    assert message.startswith("lbfgs failed to converge after ") and advice in message
    assert not_advice not in message


def test_weights_copied_from_a_fitted_estimator_are_not_tied_to_it():
    # new.coefs_ = fitted.coefs_ on an unfitted estimator: editing or training `new` leaves `fitted` alone
    X, y = _blobs(classes=2)
    fitted = MLPClassifier(hidden_layer_sizes=(3,), max_iter=3, random_state=0).fit(X, y)
    before = [w.copy() for w in fitted.coefs_]
    new = MLPClassifier(hidden_layer_sizes=(3,), random_state=1)
    new.coefs_, new.intercepts_ = fitted.coefs_, fitted.intercepts_
    new.coefs_[0] = np.zeros((4, 3))
    assert not np.any(new.coefs_[0])
    new.partial_fit(X, y, classes=[0, 1])
    for a, b in zip(fitted.coefs_, before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("params, match", [
    ({"activation": "swish"}, "activation must be one of"),
    ({"solver": "newton"}, "solver must be one of"),
    ({"hidden_layer_sizes": (10, 0)}, "hidden_layer_sizes must be > 0"),
    ({"batch_size": 0}, "batch_size must be 'auto' or an int >= 1"),
    ({"validation_fraction": 1.0}, r"validation_fraction must be a finite number in \[0, 1\)"),
    ({"n_iter_no_change": 2.5}, r"n_iter_no_change \(an int or inf\) must be an int, got float 2.5"),
    ({"dtype": "float16"}, "dtype must be None \\(the data's\\), 'float32' or 'float64'"),
    ({"dropout": 1.0}, "dropout must be a finite number in \\[0, 1\\)"),
    ({"backend": "tensorflow"}, "unknown backend 'tensorflow'"),
])
def test_bad_parameters_fail_in_fit_naming_them(params, match):
    X, y = _blobs(n=20)
    clf = MLPClassifier(**params)  # scikit-learn's rule: __init__ only stores
    with pytest.raises(ValueError, match=match):
        clf.fit(X, y)


def test_dtype_given_as_a_dtype_object_is_taken_as_nnx_sequential_takes_it():
    """``dtype=np.float32`` (how scikit-learn's own ``check_array(dtype=...)`` is written) was refused with
    "dtype must be None (the data's), 'float32' or 'float64'", though ``nnx.Sequential`` takes it and every
    dtype object of the two; refusals stay the same for the dtypes neither takes."""
    X, y = _blobs(n=20)
    for given, name in ((np.float32, "float32"), (np.dtype("float64"), "float64")):
        clf = MLPClassifier(hidden_layer_sizes=(3,), max_iter=3, dtype=given).fit(X, y)
        assert clf.model_.dtype == name and clf.coefs_[0].dtype == np.dtype(name)
        clf.set_params(warm_start=True).fit(X, y)  # the fitted network matches the dtype it was asked for
    with pytest.raises(ValueError, match="dtype must be None \\(the data's\\), 'float32' or 'float64', got "):
        MLPClassifier(dtype=np.float16).fit(X, y)

def test_poisson_head_gradients_on_every_backend(backend):
    """The exp output layer and the half Poisson deviance of loss="poisson": backprop equals central differences."""
    from nnx.sklearn.poisson import Exp, HalfPoissonDeviance

    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 3))
    y = rng.poisson(1.5, size=(6, 2)).astype(float)  # zeros included: y log(y / mu) is 0 there
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 2), Exp(), backend=backend.spec,
                           dtype="float64", seed=0)
    assert nnx.check_gradients(model, X, y, HalfPoissonDeviance()) < 1e-6


def test_poisson_loss_called_and_trained_is_one_formula():
    """From a readability review: the half Poisson deviance had a weighted mean of its own for `__call__`,
    `gradient` and `value_and_grad`, beside the base class's, which the training step uses: two formulas for one
    loss, an ulp apart, and without the base class's input checks. It now writes `rows` only."""
    from nnx.sklearn.poisson import HalfPoissonDeviance

    rng = np.random.default_rng(0)
    y, mu, w = rng.poisson(2, (7, 2)).astype(float), rng.random((7, 2)) + 0.1, rng.random(7)
    loss = HalfPoissonDeviance(reduction="mean_with_sample_weight")
    value, grad = loss.value_and_grad_prepared(np, y, mu, w)
    assert loss(y, mu, w) == value and np.array_equal(loss.gradient(y, mu, w), grad)
    with pytest.raises(ValueError, match="sample_weight must be finite, got NaN"):  # the base class's checks
        loss(y, mu, np.full(7, np.nan))


def test_poisson_gradient_stays_finite_where_exp_underflows(backend):
    """loss="poisson" steps along scikit-learn's (mu - y) / n w.r.t. the log of the mean: where exp underflows to
    0 (a raw output of -200 in float32) that is -y / n, not (1 - y / 0) * 0 = NaN, which stopped the fit as diverged."""
    X = np.ones((4, 2), dtype=np.float32)
    y = np.array([1.0, 2.0, 0.5, 3.0])
    fitted = []
    for Estimator in (MLPRegressor, SkMLPRegressor):
        kwargs = {"backend": backend.spec} if Estimator is MLPRegressor else {}
        est = Estimator(loss="poisson", hidden_layer_sizes=(3,), solver="sgd", learning_rate_init=1e-3, momentum=0.0,
                        shuffle=False, **kwargs)
        est.coefs_ = [np.full((2, 3), 0.1, np.float32), np.full((3, 1), 0.1, np.float32)]
        est.intercepts_ = [np.zeros(3, np.float32), np.array([-200.0], np.float32)]
        if Estimator is SkMLPRegressor:  # scikit-learn continues assigned weights only with its bookkeeping set
            est.n_layers_, est.out_activation_, est.n_outputs_, est.t_, est.n_iter_ = 3, "exp", 1, 0, 0
            est.loss_curve_, est._no_improvement_count, est.best_loss_ = [], 0, np.inf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # scikit-learn's own y / 0 in its loss value
            fitted.append(est.partial_fit(X, y))
    ours, ref = fitted
    assert ours.loss_ == ref.loss_ == np.inf  # the deviance of a zero mean, as scikit-learn reports it
    for a, b in zip([*ours.coefs_, *ours.intercepts_], [*ref.coefs_, *ref.intercepts_], strict=True):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-6)
    assert ours.intercepts_[1][0] > -200.0  # the step raised the mean


def test_partial_fit_refuses_classes_that_miss_a_multilabel_column():
    """scikit-learn refuses partial_fit(classes=[0, 1]) on three indicator columns; nnx fitted three outputs while
    classes_ said two."""
    from sklearn.datasets import make_multilabel_classification

    X, Y = make_multilabel_classification(n_samples=20, n_classes=3, random_state=0)
    for Estimator in (MLPClassifier, SkMLPClassifier):
        with pytest.raises(ValueError, match=r"`y` has classes not in `self.classes_`"):
            Estimator(hidden_layer_sizes=(3,)).partial_fit(X, Y, classes=[0, 1])
    clf = MLPClassifier(hidden_layer_sizes=(3,), random_state=0).partial_fit(X, Y, classes=[0, 1, 2])
    assert clf.classes_.tolist() == [0, 1, 2] and clf.predict_proba(X).shape == (20, 3)


def test_regressor_refuses_an_unknown_loss():
    X, y = _blobs(n=20)
    with pytest.raises(ValueError, match=r"loss must be one of \['squared_error', 'poisson'\], got 'huber'"):
        MLPRegressor(loss="huber").fit(X, y.astype(float))


def _values_sklearn_accepts(constraint):
    """Values at the closed ends and inside of one of scikit-learn's parameter constraints."""
    from sklearn.utils._param_validation import Interval, Options, StrOptions, generate_valid_param, make_constraint

    constraint = make_constraint(constraint)
    values = [generate_valid_param(constraint)]
    if isinstance(constraint, Interval):
        values += [end for end, closed in ((constraint.left, constraint.closed in ("left", "both")),
                                           (constraint.right, constraint.closed in ("right", "both")))
                   if closed and end is not None]
    elif isinstance(constraint, (Options, StrOptions)):
        values += sorted(constraint.options, key=str)
    return values


@pytest.mark.parametrize("Estimator, SkEstimator", [(MLPClassifier, SkMLPClassifier), (MLPRegressor, SkMLPRegressor)])
def test_every_parameter_value_sklearn_accepts_is_accepted(Estimator, SkEstimator):
    """Each value scikit-learn's own constraints accept, at both closed ends of its intervals, fits here too."""
    pytest.importorskip("sklearn.utils._param_validation")
    X, y = _blobs(n=30, classes=2)
    y = y if Estimator is MLPClassifier else y.astype(float)
    base = dict(hidden_layer_sizes=(3,), max_iter=2, random_state=0)
    tried = 0
    for name, constraints in SkEstimator._parameter_constraints.items():
        for constraint in constraints:
            for value in _values_sklearn_accepts(constraint):
                Estimator(**{**base, name: value}).fit(X, y)
                tried += 1
    assert tried > 40


@pytest.mark.parametrize("name, value", [("early_stopping", "no"), ("shuffle", "no"), ("warm_start", "yes"),
                                         ("nesterovs_momentum", None), ("verbose", "yes"), ("verbose", -1)])
def test_flags_sklearn_refuses_are_refused_not_read_as_truthy(name, value):
    """early_stopping="no" used to turn early stopping on: bool("no") is True. scikit-learn refuses these."""
    X, y = _blobs(n=30, classes=2)
    with pytest.raises(ValueError, match=name):
        MLPClassifier(hidden_layer_sizes=(3,), max_iter=2, **{name: value}).fit(X, y)
    for ok in (np.True_, False, 1) if name != "verbose" else (np.int64(2), True):
        MLPClassifier(hidden_layer_sizes=(3,), max_iter=1, **{name: ok}).fit(X, y)


def test_signatures_follow_the_installed_sklearn():
    """The same parameters in the same positions as scikit-learn's (MLPRegressor(loss, hidden_layer_sizes, ...))."""
    import inspect

    for ours, theirs in ((MLPClassifier, SkMLPClassifier), (MLPRegressor, SkMLPRegressor)):
        mine = [(p.name, p.kind, p.default) for p in inspect.signature(ours).parameters.values()]
        sk = [(p.name, p.kind, p.default) for p in inspect.signature(theirs).parameters.values()]
        assert mine[:len(sk)] == sk
        assert [name for name, _, _ in mine[len(sk):]] == ["backend", "dtype", "dropout"]


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


def test_nnx_solvers_take_the_estimators_optimizer_parameters():
    """momentum drives solver="momentum", and beta_1/beta_2/epsilon drive "adamw" (epsilon also "rmsprop" and
    "adagrad"), as they drive scikit-learn's sgd and adam; they were accepted and then ignored."""
    X, y = _blobs()
    kw = dict(hidden_layer_sizes=(4,), max_iter=5, learning_rate_init=0.05, random_state=0)
    momentum = MLPClassifier(solver="momentum", momentum=0.3, **kw).fit(X, y)
    # Momentum's rule is scikit-learn's SGD without Nesterov: the same weights
    sgd = MLPClassifier(solver="sgd", momentum=0.3, nesterovs_momentum=False, **kw).fit(X, y)
    for a, b in zip(momentum.coefs_, sgd.coefs_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    adamw = MLPClassifier(solver="adamw", beta_1=0.5, beta_2=0.9, epsilon=1e-3, **kw).fit(X, y)
    assert adamw.model_.optimizer.betas == (0.5, 0.9) and adamw.model_.optimizer.eps == 1e-3
    for solver in ("rmsprop", "adagrad"):
        assert MLPClassifier(solver=solver, epsilon=1e-3, **kw).fit(X, y).model_.optimizer.eps == 1e-3


@pytest.mark.parametrize("change", [{"activation": "tanh"}, {"hidden_layer_sizes": (4,)}, {"dropout": 0.2},
                                    {"backend": "array_api_strict"}, {"dtype": "float32"}])
def test_continuing_a_network_that_no_longer_matches_the_parameters_is_refused(change):
    """warm_start and partial_fit continue the fitted network; a changed architecture was ignored without a word."""
    X, y = _blobs()
    kw = dict(hidden_layer_sizes=(3,), max_iter=2, random_state=0, warm_start=True)
    clf = MLPClassifier(**kw).fit(X, y)
    before = [c.copy() for c in clf.coefs_]
    clf.set_params(**change)
    name = next(iter(change))
    for resume in (lambda: clf.fit(X, y), lambda: clf.partial_fit(X, y)):
        with pytest.raises(ValueError, match=f"{name}=.*does not match the fitted network"):
            resume()
    for a, b in zip(clf.coefs_, before, strict=True):
        np.testing.assert_array_equal(a, b)
    clf.set_params(warm_start=False).fit(X, y)  # a new network follows the parameters
    clf.set_params(warm_start=True).fit(X, y)  # and is continued


# -- sample weights: scikit-learn's meaning, a weight of 2 is the row repeated ---------------------------------

def _weighted_data(seed=0, n=40):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    y_reg = X @ rng.normal(size=5) + 0.1 * rng.normal(size=n)
    y_clf = np.digitize(X[:, 0] + X[:, 1], [-0.5, 0.5])  # 3 classes
    w = rng.integers(0, 4, size=n)  # zeros included: a zero weight is a removed row
    return X, y_reg, y_clf, w


# batch_size=200 is larger than the weighted data on purpose (one batch holds every row), and
# scikit-learn's own warning about clipping it, which nnx repeats, says exactly that
@pytest.mark.filterwarnings("ignore:Got `batch_size` less than 1 or larger than sample size:UserWarning")
@pytest.mark.parametrize("solver", ["lbfgs", "adam", "sgd"])
@pytest.mark.parametrize("Estimator", [MLPClassifier, MLPRegressor])
def test_sample_weight_equals_repetition(Estimator, solver):
    """Full batch (lbfgs, or one batch that holds every row): weighted rows fit exactly as repeated rows."""
    X, y_reg, y_clf, w = _weighted_data()
    y = y_clf if Estimator is MLPClassifier else y_reg
    # float32 rounds the differently ordered sums differently; L-BFGS's line searches can turn that into
    # another path, so float32 is compared for the stochastic solvers only
    for dtype, tol in (("float64", 1e-9), ("float32", 2e-4))[:1 if solver == "lbfgs" else 2]:
        params = dict(hidden_layer_sizes=(7,), solver=solver, alpha=0.3, max_iter=40, batch_size=200,
                      random_state=0, dtype=dtype, learning_rate_init=0.01)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            weighted = Estimator(**params).fit(X, y, sample_weight=w)
            repeated = Estimator(**params).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
        out = "predict_proba" if Estimator is MLPClassifier else "predict"
        np.testing.assert_allclose(getattr(weighted, out)(X), getattr(repeated, out)(X), rtol=tol, atol=tol)
        if solver != "lbfgs":
            np.testing.assert_allclose(weighted.loss_curve_, repeated.loss_curve_, rtol=tol)
        else:
            np.testing.assert_allclose(weighted.loss_, repeated.loss_, rtol=tol)


def test_lbfgs_weighted_objective_is_sklearns():
    """No hidden layer makes the problem convex: weighted L-BFGS lands where scikit-learn's weighted fit does.

    SciPy stops both runs on a small relative decrease of the objective, a little apart: the objectives
    agree to 1e-8, the softmax probabilities (a flat direction: biases are not penalised) to ~1e-4.
    """
    X, y_reg, y_clf, w = _weighted_data(seed=1, n=60)
    w = w + 0.5  # fractional weights too
    common = dict(hidden_layer_sizes=(), solver="lbfgs", max_iter=3000, tol=1e-12, random_state=0)
    for alpha in (0.0, 3.0):
        ours = MLPRegressor(alpha=alpha, dtype="float64", **common).fit(X, y_reg, sample_weight=w)
        ref = SkMLPRegressor(alpha=alpha, **common).fit(X, y_reg, sample_weight=w)
        np.testing.assert_allclose(ours.coefs_[0], ref.coefs_[0], atol=1e-5)
        assert ours.loss_ == pytest.approx(ref.loss_, rel=1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            ours = MLPClassifier(alpha=alpha + 0.1, dtype="float64", **common).fit(X, y_clf, sample_weight=w)
            ref = SkMLPClassifier(alpha=alpha + 0.1, **common).fit(X, y_clf, sample_weight=w)
        np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-3)
        assert ours.loss_ == pytest.approx(ref.loss_, rel=1e-6)


def _folded_head_keeps_reduction():
    """Whether folding a final Sigmoid into the BCE (computed from logits) keeps the loss's reduction."""
    model = nnx.Sequential(nnx.Dense(1, 1), nnx.Sigmoid())
    loss = nnx.losses.BinaryCrossEntropy(reduction="mean_with_sample_weight")
    return model.output_head(loss)[1].reduction == loss.reduction


def _copy_sklearn_weights(ours, ref):
    state = {}
    for i, (W, b) in enumerate(zip(ref.coefs_, ref.intercepts_, strict=True)):
        state[f"{2 * i}.weight"], state[f"{2 * i}.bias"] = W, b
    ours.model_.load_state_dict(state)


@pytest.mark.parametrize("Estimator, SkEstimator", [(MLPRegressor, SkMLPRegressor),
                                                    (MLPClassifier, SkMLPClassifier)])
def test_minibatches_are_normalised_by_their_own_weights_like_sklearn(Estimator, SkEstimator):
    """Each minibatch's loss is divided by that batch's sum of weights, as in scikit-learn's MLP.

    Plain SGD from the same weights over the same unshuffled batches takes the same steps.
    """
    if Estimator is MLPClassifier and not _folded_head_keeps_reduction():
        pytest.xfail("Sequential.output_head builds the from-logits loss afresh and drops "
                     "reduction='mean_with_sample_weight': batches are normalised by rows * mean weight instead")
    X, y_reg, y_clf, w = _weighted_data(seed=2, n=30)
    w = w + np.linspace(0.0, 2.0, 30)  # batches with very different sums of weights
    y = y_clf if Estimator is MLPClassifier else y_reg
    common = dict(hidden_layer_sizes=(6,), solver="sgd", momentum=0.0, nesterovs_momentum=False, alpha=0.0,
                  batch_size=7, shuffle=False, random_state=0)
    ours = Estimator(learning_rate_init=0.05, dtype="float64", **common)
    ref = SkEstimator(learning_rate_init=0.05, **common)
    first = {"classes": [0, 1, 2]} if Estimator is MLPClassifier else {}
    ref.partial_fit(X, y, **first)
    ours.partial_fit(X, y, **first)
    _copy_sklearn_weights(ours, ref)
    for _ in range(3):
        ref.partial_fit(X, y, sample_weight=w)
        ours.partial_fit(X, y, sample_weight=w)
    for a, b in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_score_and_early_stopping_use_the_weights(monkeypatch):
    X, y_reg, y_clf, w = _weighted_data(seed=3, n=80)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=30, learning_rate_init=0.05, random_state=0)
    clf.fit(X, y_clf, sample_weight=w)
    from sklearn.metrics import accuracy_score, r2_score

    assert clf.score(X, y_clf, sample_weight=w) == pytest.approx(accuracy_score(y_clf, clf.predict(X),
                                                                                sample_weight=w))
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=30, learning_rate_init=0.05, random_state=0)
    reg.fit(X, y_reg, sample_weight=w)
    assert reg.score(X, y_reg, sample_weight=w) == pytest.approx(r2_score(y_reg, reg.predict(X), sample_weight=w))
    # early stopping splits the weights with the rows and scores the held-out part with its weights
    seen = []
    es = MLPClassifier(hidden_layer_sizes=(8,), max_iter=5, early_stopping=True, validation_fraction=0.25,
                       random_state=0)
    original = es._score_model
    monkeypatch.setattr(es, "_score_model", lambda X, y, sample_weight=None: (
        seen.append(sample_weight), original(X, y, sample_weight))[1])
    es.fit(X, y_clf, sample_weight=w)
    assert len(seen) == es.n_iter_ and all(s is not None and s.shape == (20,) for s in seen)
    assert set(np.unique(seen[0])) <= set(np.unique(w))


def test_partial_fit_and_warm_start_take_weights():
    X, y_reg, y_clf, w = _weighted_data(seed=4)
    inc = MLPClassifier(hidden_layer_sizes=(6,), random_state=0)
    inc.partial_fit(X, y_clf, sample_weight=w, classes=[0, 1, 2])
    inc.partial_fit(X, y_clf, w)  # positionally, as scikit-learn orders it: (X, y, sample_weight, classes)
    assert inc.n_iter_ == 1 and inc.t_ == 80  # scikit-learn's counts
    import inspect

    for ours, ref in ((MLPClassifier, SkMLPClassifier), (MLPRegressor, SkMLPRegressor)):
        for method in ("fit", "partial_fit", "score"):
            ours_params = list(inspect.signature(getattr(ours, method)).parameters)
            assert ours_params == list(inspect.signature(getattr(ref, method)).parameters)
    warm = MLPRegressor(hidden_layer_sizes=(6,), max_iter=3, warm_start=True, random_state=0)
    warm.fit(X, y_reg, sample_weight=w)
    warm.fit(X, y_reg, sample_weight=2 * w)
    assert warm.n_iter_ == 3 and len(warm.loss_curve_) == 6


@pytest.mark.parametrize("bad, match", [
    (np.ones(39), r"sample_weight has shape \(39,\), expected \(40,\)"),
    (np.ones((40, 1)), "sample_weight must be 1-D"),
    (-np.ones(40), "sample_weight must be >= 0"),
    (np.r_[np.nan, np.ones(39)], "sample_weight"),
    (np.zeros(40), "at least one non-zero"),
])
def test_bad_sample_weights_fail_naming_them(bad, match):
    X, y_reg, y_clf, _ = _weighted_data()
    for est, y in ((MLPClassifier(max_iter=2), y_clf), (MLPRegressor(max_iter=2, solver="lbfgs"), y_reg)):
        with pytest.raises(ValueError, match=match):
            est.fit(X, y, sample_weight=bad)
    # every training row weighted zero after the early-stopping split: nothing to fit, said so
    w = np.zeros(40)
    w[0] = 1.0
    es = MLPClassifier(max_iter=2, early_stopping=True, validation_fraction=0.5, random_state=0)
    for seed in range(20):  # a split that puts the one weighted row in the validation part
        es.set_params(random_state=seed)
        try:
            es.fit(X, y_clf, sample_weight=w)
        except ValueError as exc:
            assert "sample weights of the training set are all zero" in str(exc)
            break
    else:
        pytest.fail("no split put the weighted row in the validation part")


def test_a_validation_set_of_zero_weights_fails_naming_it():
    """Every validation row weighted zero: no score to stop on. It used to fail in the first epoch's score with
    the metric's "Sample weights must contain at least one non-zero number", which names no validation set."""
    X, _, y_clf, _ = _weighted_data()
    w = np.zeros(40)
    w[::2] = 1.0
    es = MLPClassifier(hidden_layer_sizes=(3,), max_iter=2, early_stopping=True, validation_fraction=0.1)
    for seed in range(60):
        es.set_params(random_state=seed)
        try:
            es.fit(X, y_clf, sample_weight=w)
        except ValueError as exc:
            assert "sample weights of the validation set are all zero" in str(exc)
            break
    else:
        pytest.fail("no split put only zero-weight rows in the validation part")


@pytest.mark.parametrize("alpha", [0.0, 1e-4])
def test_a_minibatch_of_zero_weights_fails_naming_it(alpha):
    """A batch whose weights sum to 0 has no per-batch mean (scikit-learn divides by 0 there too): it used to
    raise a bare ZeroDivisionError from inside the training step."""
    X, y_reg, y_clf, _ = _weighted_data()
    w = np.ones(40)
    w[5] = 0.0
    for Estimator, y in ((MLPClassifier, y_clf), (MLPRegressor, y_reg)):
        est = Estimator(hidden_layer_sizes=(3,), batch_size=1, max_iter=1, shuffle=False, alpha=alpha)
        with pytest.raises(ValueError, match=r"sample weights of a mini-batch sum to zero.*batch_size=1"):
            est.fit(X, y, sample_weight=w)


def test_sample_weight_on_every_backend(backend, dtype):
    """Weighted rows equal repeated rows on every backend, NumPy weights in, NumPy out."""
    X, y = _blobs()
    # weights 0, 1 and 2, thirty rows each: the repeated rows are as many as the weighted ones, and X and the
    # network are test_classifier_on_every_backend's, so JAX compiles the network's operations for one shape
    w = np.random.default_rng(5).permutation(np.repeat([0, 1, 2], 30))
    # L-BFGS (weights on the device, the loss called directly) where float64 makes it comparable, else Adam
    # (weights through model.fit); see test_sample_weight_equals_repetition
    solver, tol = ("lbfgs", 1e-9) if dtype == "float64" else ("adam", 2e-4)
    params = dict(hidden_layer_sizes=(8,), solver=solver, max_iter=15, learning_rate_init=0.01, random_state=0,
                  backend=backend.spec, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        weighted = MLPClassifier(**params).fit(X, y, sample_weight=w)
        repeated = MLPClassifier(**params).fit(np.repeat(X, w, axis=0), np.repeat(y, w))
    assert weighted.model_.backend == backend
    np.testing.assert_allclose(weighted.predict_proba(X), repeated.predict_proba(X), rtol=tol, atol=tol)
