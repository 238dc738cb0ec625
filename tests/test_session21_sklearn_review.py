"""Session 21 review of the scikit-learn estimators and the training data sources, against scikit-learn 1.9.

Guards for what a scikit-learn user does with them: multi-label targets given as a sparse indicator matrix,
the schedules and counters across warm starts and `partial_fit`, and data read from memory maps or iterables
giving the same batches as arrays in memory.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import scipy.sparse as sp  # noqa: E402
from sklearn.datasets import make_classification, make_multilabel_classification  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402
from sklearn.neural_network import MLPRegressor as SkMLPRegressor  # noqa: E402

import nnx  # noqa: E402
from nnx.sklearn import MLPClassifier, MLPRegressor  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")]

RTOL = 1e-6


def _assert_same(ours, ref):
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=RTOL)
    for a, b in zip(ours.coefs_, ref.coefs_, strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-12)
    for a, b in zip(ours.intercepts_, ref.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-12)
    assert ours.n_iter_ == ref.n_iter_ and ours.t_ == ref.t_


@pytest.mark.parametrize("early_stopping", [False, True])
def test_sparse_multilabel_targets_fit_and_predict_as_sklearn(early_stopping):
    # scikit-learn takes a sparse indicator matrix as multi-label y (its LabelBinarizer does) and predicts
    # sparse labels back; nnx failed with "IndexError: tuple index out of range"
    X, Y = make_multilabel_classification(80, 5, n_classes=3, random_state=0)
    Y_sparse = sp.csr_matrix(Y)
    params = dict(hidden_layer_sizes=(4,), max_iter=8, random_state=0, early_stopping=early_stopping)
    ours, ref = MLPClassifier(**params).fit(X, Y_sparse), SkMLPClassifier(**params).fit(X, Y_sparse)
    _assert_same(ours, ref)
    if early_stopping:
        np.testing.assert_allclose(ours.validation_scores_, ref.validation_scores_, rtol=RTOL)
    predicted, expected = ours.predict(X), ref.predict(X)
    assert sp.issparse(predicted) and predicted.shape == expected.shape
    np.testing.assert_array_equal(predicted.toarray(), expected.toarray())
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), rtol=RTOL)
    assert ours.score(X, Y_sparse) == pytest.approx(ref.score(X, Y_sparse))
    # the same numbers as the dense indicator matrix gives, which predicts dense labels
    dense = MLPClassifier(**params).fit(X, Y)
    _assert_same(ours, dense)
    assert isinstance(dense.predict(X), np.ndarray)


def test_sparse_multilabel_targets_in_partial_fit_follow_sklearn():
    X, Y = make_multilabel_classification(60, 5, n_classes=3, random_state=1)
    params = dict(hidden_layer_sizes=(4,), random_state=0)
    ours, ref = MLPClassifier(**params), SkMLPClassifier(**params)
    for part in (slice(0, 30), slice(30, 60), slice(0, 60)):
        ours.partial_fit(X[part], sp.csr_matrix(Y[part]), classes=[0, 1, 2])
        ref.partial_fit(X[part], sp.csr_matrix(Y[part]), classes=[0, 1, 2])
    _assert_same(ours, ref)
    # the first call's targets were sparse: so are the predictions, as in scikit-learn
    predicted, expected = ours.predict(X), ref.predict(X)
    assert sp.issparse(predicted) and sp.issparse(expected)
    np.testing.assert_array_equal(predicted.toarray(), expected.toarray())


@pytest.mark.parametrize("learning_rate", ["invscaling", "adaptive"])
def test_sgd_schedules_across_warm_starts_and_partial_fit_follow_sklearn(learning_rate):
    # guard (passed as found): a warm start makes a new optimizer at learning_rate_init while t_ counts on,
    # and partial_fit keeps the optimizer, its reduced rate and the no-improvement count between calls
    X, y = make_classification(90, 6, random_state=1)
    w = np.random.RandomState(5).rand(90) * 2
    params = dict(hidden_layer_sizes=(6,), random_state=1, max_iter=12, n_iter_no_change=2, tol=1e-2,
                  solver="sgd", learning_rate=learning_rate)
    ours, ref = MLPClassifier(warm_start=True, **params), SkMLPClassifier(warm_start=True, **params)
    for _ in range(3):
        ours.fit(X, y)
        ref.fit(X, y)
        _assert_same(ours, ref)
        assert ours._optimizer.learning_rate == pytest.approx(ref._optimizer.learning_rate, rel=1e-12)
    ours, ref = MLPClassifier(**params), SkMLPClassifier(**params)
    for _ in range(20):
        ours.partial_fit(X, y, sample_weight=w, classes=[0, 1])
        ref.partial_fit(X, y, sample_weight=w, classes=[0, 1])
    _assert_same(ours, ref)
    assert ours._no_improvement_count == ref._no_improvement_count
    assert ours._optimizer.learning_rate == pytest.approx(ref._optimizer.learning_rate, rel=1e-12)


def test_pandas_inputs_with_shuffled_indexes_are_read_by_position_as_sklearn():
    # guard (passed as found): a DataFrame, a Series of string labels and a Series of weights, each with its
    # own shuffled index, pair up by position (as scikit-learn reads them), not by index label
    pd = pytest.importorskip("pandas")
    X, y = make_classification(90, 6, n_informative=4, n_classes=3, random_state=0)
    rng = np.random.RandomState(0)
    w = rng.rand(90)
    df = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)], index=rng.permutation(90))
    labels = pd.Series(np.array(["cat", "dog", "eel"])[y], index=rng.permutation(90))
    weights = pd.Series(w, index=rng.permutation(90))
    params = dict(hidden_layer_sizes=(6,), random_state=1, max_iter=10, early_stopping=True, n_iter_no_change=3)
    ours = MLPClassifier(**params).fit(df, labels, sample_weight=weights)
    ref = SkMLPClassifier(**params).fit(df, labels, sample_weight=weights)
    _assert_same(ours, ref)
    np.testing.assert_allclose(ours.validation_scores_, ref.validation_scores_, rtol=RTOL)
    np.testing.assert_array_equal(ours.predict(df), ref.predict(df))
    assert list(ours.feature_names_in_) == list(ref.feature_names_in_)
    Y = np.column_stack([y, -y]) / 3.0
    reg = MLPRegressor(**params).fit(df, pd.DataFrame(Y, index=rng.permutation(90)), sample_weight=w)
    ref_reg = SkMLPRegressor(**params).fit(df, pd.DataFrame(Y, index=rng.permutation(90)), sample_weight=w)
    _assert_same(reg, ref_reg)


def _small_model():
    return nnx.Sequential(nnx.Dense(5, 8), nnx.ReLU(), nnx.Dense(8, 3), backend="numpy", seed=3)


@pytest.mark.parametrize("validation_split", [0.0, 0.3])
def test_memmap_training_with_weights_split_and_class_weight_equals_arrays(tmp_path, validation_split):
    # guard (passed as found): a memory-mapped X, y and sample_weight give the batches of the same arrays in
    # memory: the same shuffle, the held-out rows from the end with their weights, class_weight on training only
    rng = np.random.RandomState(0)
    X = rng.randn(103, 5).astype(np.float32)
    y = rng.randint(0, 3, 103)
    w = rng.rand(103).astype(np.float32)
    maps = []
    for name, a in (("x", X), ("y", y), ("w", w)):
        np.save(tmp_path / f"{name}.npy", a)
        maps.append(np.load(tmp_path / f"{name}.npy", mmap_mode="r"))
    kwargs = dict(loss="cross_entropy", optimizer="sgd", epochs=3, batch_size=16, verbose=0,
                  class_weight={0: 1.0, 1: 2.0, 2: 0.5}, validation_split=validation_split)
    in_memory, mapped = _small_model(), _small_model()
    h1 = in_memory.fit(X, y, sample_weight=w, **kwargs)
    h2 = mapped.fit(maps[0], maps[1], sample_weight=maps[2], **kwargs)
    assert h1.history.keys() == h2.history.keys()
    for key in h1.history:
        np.testing.assert_allclose(h1.history[key], h2.history[key], rtol=1e-6)
    for p, q in zip(in_memory.parameters(), mapped.parameters(), strict=True):
        np.testing.assert_allclose(p.value, q.value, rtol=1e-6, atol=1e-7)


def test_iterables_of_weighted_batches_equal_unshuffled_arrays():
    # guard (passed as found): a list of (X, y, w) batches and a generator of them with steps_per_epoch train
    # and score as the same arrays with shuffle=False; predict reads a list or a generator of X batches in order
    rng = np.random.RandomState(0)
    X = rng.randn(50, 5).astype(np.float32)
    y = rng.randint(0, 3, 50)
    w = rng.rand(50).astype(np.float32)
    batches = [(X[i:i + 8], y[i:i + 8], w[i:i + 8]) for i in range(0, 50, 8)]
    kwargs = dict(loss="cross_entropy", optimizer="sgd", epochs=3, verbose=0, metrics=["accuracy"])
    arrays = _small_model()
    h_arrays = arrays.fit(X, y, sample_weight=w, batch_size=8, shuffle=False, **kwargs)
    listed = _small_model()
    h_listed = listed.fit(batches, **kwargs)
    generated = _small_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exactly steps_per_epoch batches each pass: no running-out warning
        h_generated = generated.fit((b for _ in range(3) for b in batches), steps_per_epoch=len(batches), **kwargs)
    for other, history in ((listed, h_listed), (generated, h_generated)):
        assert history.history == h_arrays.history
        for p, q in zip(arrays.parameters(), other.parameters(), strict=True):
            np.testing.assert_array_equal(p.value, q.value)
    # the same loss, to float32 rounding (summed in another order)
    assert arrays.evaluate(batches)["loss"] == pytest.approx(arrays.evaluate(X, y, sample_weight=w)["loss"], rel=1e-6)
    expected = arrays.predict(X)
    np.testing.assert_array_equal(arrays.predict([b[0] for b in batches]), expected)
    np.testing.assert_array_equal(arrays.predict(b[0] for b in batches), expected)
