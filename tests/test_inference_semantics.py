"""predict, evaluate and model(X) as Keras, PyTorch and scikit-learn users call them: shapes at the edges (0 rows,
one row, one sample without its batch axis), data kinds (lists, DataFrames, generators, torch tensors that require
grad), independence of batch_size, and evaluate's weighted loss against History's validation numbers."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import nnx

pd = pytest.importorskip("pandas")


def _model(backend="numpy", dtype="float64", outputs=1):
    """BatchNorm and Dropout, whose inference modes (running statistics, identity) make batches independent."""
    return nnx.Sequential(nnx.Dense(3, 5), nnx.BatchNorm(5), nnx.ReLU(), nnx.Dropout(0.3), nnx.Dense(5, outputs),
                          nnx.Sigmoid(), backend=backend, dtype=dtype, seed=0)


def _data(rng, n=20):
    X = rng.standard_normal((n, 3))
    return X, (X[:, :1] > 0).astype(float)


def _host(model, a):
    return np.asarray(model.backend.to_host(a))


def test_predict_at_the_edges_of_the_batch_axis(backend, dtype, rng):
    """0 rows give (0, outputs) as Keras and torch do, through predict (in batches too) and model(X); one row gives
    one."""
    model = _model(backend, dtype, outputs=2)
    X, _ = _data(rng)
    for out in (model.predict(X[:0]), model.predict(X[:0], batch_size=4), model(X[:0])):
        assert tuple(out.shape) == (0, 2)
    assert tuple(model.predict(X[:1]).shape) == (1, 2)


def test_one_sample_without_its_batch_axis_and_extra_columns_are_refused(rng):
    """A single sample without its batch axis (and a pandas Series, one row of a frame) is refused, never read as a
    batch of scalars; more columns than the model takes are refused by their count."""
    model = _model(outputs=2)
    X, _ = _data(rng)
    for one_sample in (X[0], pd.DataFrame(X, columns=list("abc")).iloc[0]):
        with pytest.raises(ValueError, match=r"2-D \(samples, features\), got shape \(3,\)"):
            model.predict(one_sample)
    with pytest.raises(ValueError, match="X has 4 features but the model expects 3"):
        model.predict(np.c_[X, X[:, :1]])


def test_predict_is_the_same_for_every_layout_kind_and_batch_size(rng):
    """F-ordered, strided, list and tuple inputs, batch sizes 1, 3, n and beyond, model(X), and a generator of
    batches whose last one is partial all give predict's numbers in row order (BatchNorm and Dropout in inference)."""
    model = _model()
    X, y = _data(rng)
    model.fit(X, y, epochs=2, batch_size=8)
    expected = model.predict(X)
    wide = np.repeat(X, 2, axis=1)[:, ::2]  # a strided view
    assert not wide.flags.c_contiguous
    same = [np.asfortranarray(X), wide, X.tolist(), tuple(X)]
    for X_alike in same:
        np.testing.assert_array_equal(model.predict(X_alike), expected)
    for batch_size in (1, 3, 20, 64):
        np.testing.assert_allclose(model.predict(X, batch_size=batch_size), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(model(X), expected)
    holed = X.copy()
    holed[0, 0] = np.nan  # model(X) is the bare forward, checking nothing (docs/training.md); predict refuses it
    assert np.isnan(model(holed)[0]).all() and not np.isnan(model(holed)[1:]).any()
    with pytest.raises(ValueError, match="NaN"):
        model.predict(holed)
    batches = (X[i:i + 6] for i in range(0, 20, 6))  # 6, 6, 6, 2
    np.testing.assert_array_equal(model.predict(batches), expected)
    pairs = ((X[i:i + 6], y[i:i + 6]) for i in range(0, 20, 6))
    np.testing.assert_array_equal(model.predict(pairs), expected)


def test_evaluate_loss_is_the_row_weighted_loss_of_all_rows_for_any_batch_size(backend, dtype, rng):
    """evaluate's loss is sum(w * loss) / rows over all rows, as Keras weights it, whatever the batch size and for a
    generator of batches; metrics are unweighted; the dict holds Python floats, loss first; and it equals the
    val_ numbers History records for the same data after the last epoch."""
    model = nnx.Sequential(nnx.Dense(3, 1), nnx.Sigmoid(), backend=backend, dtype="float64", seed=0)
    X, y = _data(rng)
    w = rng.uniform(0.1, 2.0, size=20)
    history = model.fit(X, y, epochs=1, batch_size=10, validation_data=(X, y, w), metrics=["accuracy"])
    p = _host(model, model.predict(X))[:, 0]
    rows = -(y[:, 0] * np.log(p) + (1 - y[:, 0]) * np.log1p(-p))
    accuracy = float(np.mean((p > 0.5) == (y[:, 0] > 0.5)))
    compiles = backend.name == "jax"  # each batch shape is a program to compile there: whole arrays only
    for batch_size in (None,) if compiles else (None, 1, 7, 100):
        logs = model.evaluate(X, y, metrics=["accuracy"], sample_weight=w, batch_size=batch_size)
        assert list(logs) == ["loss", "accuracy"] and all(type(v) is float for v in logs.values())
        assert logs["loss"] == pytest.approx(np.sum(w * rows) / 20, rel=1e-12)
        assert logs["accuracy"] == pytest.approx(accuracy, rel=1e-12)  # JAX's mean: 0.15000000000000002
    batches = [(X[i:i + 6], y[i:i + 6], w[i:i + 6]) for i in range(0, 20, 6)]
    over_batches = None if compiles else model.evaluate(batches, metrics=["accuracy"])["loss"]
    assert compiles or over_batches == pytest.approx(np.sum(w * rows) / 20, rel=1e-12)
    assert history.history["val_loss"][-1] == pytest.approx(logs["loss"], rel=1e-12, abs=0)
    assert history.history["val_accuracy"][-1] == logs["accuracy"]


def test_evaluate_without_data_rows_or_a_fit(rng):
    """0 rows are refused by name; a model never fit is scored with the loss its output layer implies (BCE after a
    Sigmoid), the same number as naming that loss; after a fit, with that fit's loss and no metrics unless given."""
    model = _model()
    X, y = _data(rng)
    with pytest.raises(ValueError, match="0 samples"):
        model.evaluate(X[:0], y[:0])
    assert model.evaluate(X, y) == model.evaluate(X, y, loss="bce")
    model.fit(X, y, loss="mse", epochs=1, metrics=["accuracy"])  # no compile: fit's metrics are not evaluate's
    assert list(model.evaluate(X, y)) == ["loss"]
    assert model.evaluate(X, y)["loss"] == model.evaluate(X, y, loss="mse")["loss"]


def test_torch_tensors_that_require_grad_and_no_grad_blocks():
    """A tensor requiring grad is read as data, inside torch.no_grad() or not: the outputs record nothing and equal
    those of the plain tensor."""
    torch = pytest.importorskip("torch")
    model = _model("torch")
    X = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    y = (X.detach()[:, :1] > 0).double()
    expected = model.predict(X.detach())
    for out in (model.predict(X), model(X)):
        assert not out.requires_grad
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model.predict(X), expected, rtol=0, atol=0)
        assert model.evaluate(X, y) == model.evaluate(X.detach(), y)


def test_a_dataframe_with_its_columns_in_another_order_than_fit_is_refused_by_name(rng, tmp_path):
    """A model fit on a DataFrame keeps its column names, as scikit-learn keeps ``feature_names_in_``: predict,
    evaluate, model(X), validation data and a later fit refuse a DataFrame whose columns are others or in another
    order (read by position, it gave other numbers without a word). The names go along with to(), deepcopy and
    save/load; a NumPy array, or the same columns, are read as before."""
    model = _model()
    X, y = _data(rng)
    frame = pd.DataFrame(X, columns=["age", "income", "score"])
    model.fit(frame, y, epochs=1, batch_size=8)
    assert model.feature_names_in_ == ("age", "income", "score")
    expected = model.predict(X)
    np.testing.assert_array_equal(model.predict(frame), expected)
    reordered = frame[["score", "age", "income"]]
    copies = [model, model.to("numpy"), copy.deepcopy(model)]
    model.save(tmp_path / "model.npz")
    copies.append(nnx.load(tmp_path / "model.npz"))
    for m in copies:
        with pytest.raises(ValueError, match=r"columns.*another order.*'age', 'income', 'score'"):
            m.predict(reordered)
        np.testing.assert_array_equal(m.predict(frame), expected)
    for call in (lambda: model.evaluate(reordered, y), lambda: model(reordered),
                 lambda: model.fit(reordered, y, epochs=1), lambda: model.fit(X, y, validation_data=(reordered, y))):
        with pytest.raises(ValueError, match="another order"):
            call()
    with pytest.raises(ValueError, match=r"'height'.*not among.*'income'"):
        model.predict(frame.rename(columns={"income": "height"}))
    assert model.fit(frame, y, epochs=1).history["loss"]  # the same columns train on
