"""Numerics at the extremes, at the level of models and training, on every backend and dtype.

The function-level checks (each activation and loss at +-1e4) live in
test_activations.py and test_losses.py; here the same guarantees are checked
through what users call: layers inside a model, `evaluate` and `fit` with
the fused sigmoid/softmax heads, and whole float32 training runs with every
floating-point warning turned into an error.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import pytest

import nnx
from nnx.losses import BinaryCrossEntropy, CrossEntropy

DTYPES = ["float32", "float64"]
EXTREMES = np.array([-1e4, -1e3, -100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 1e3, 1e4])


@contextmanager
def no_fp_warnings():
    """Every NumPy floating-point warning (and any other warning) raises instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            yield


def _host(model, x) -> np.ndarray:
    return np.asarray(model.backend.to_host(x), dtype=np.float64)


def _set(model, **weights) -> None:
    """Set named parameters (e.g. ``w0=[[1000.0]]`` for "0.weight") from nested lists."""
    state = {k: model.backend.to_host(v) for k, v in model.state_dict().items()}
    for key, value in weights.items():
        index, kind = key[1:], {"w": "weight", "b": "bias"}[key[0]]
        state[f"{index}.{kind}"] = np.array(value, dtype=np.float64)
    model.load_state_dict(state)


# -- activation layers inside a model -----------------------------------------------------

def _ref_sigmoid(x):
    return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


LAYER_CASES = {
    "sigmoid": (nnx.Sigmoid, _ref_sigmoid, lambda x: _ref_sigmoid(x) * _ref_sigmoid(-x)),
    "tanh": (nnx.Tanh, np.tanh, lambda x: 4 * np.exp(-2 * np.abs(x)) / (1 + np.exp(-2 * np.abs(x))) ** 2),
    "relu": (nnx.ReLU, lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float)),
    "leaky_relu": (lambda: nnx.LeakyReLU(0.1), lambda x: np.where(x > 0, x, 0.1 * x),
                   lambda x: np.where(x > 0, 1.0, 0.1)),
    "identity": (nnx.Identity, lambda x: x, np.ones_like),
}


@pytest.mark.parametrize("test_dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_activation_layers_at_extremes(backend, test_dtype, name):
    make, ref, dref = LAYER_CASES[name]
    model = nnx.Sequential(make(), backend=backend, dtype=test_dtype)
    X = np.stack([EXTREMES, -EXTREMES])
    with np.errstate(under="ignore"), no_fp_warnings():
        Y = _host(model, model.forward(X, training=True))
        dX = _host(model, model.backward(np.ones_like(X)))
        P = _host(model, model.predict(X))
    assert np.all(np.isfinite(Y)) and np.all(np.isfinite(dX))
    eps = float(np.finfo(test_dtype).eps)
    np.testing.assert_allclose(Y, ref(X), rtol=4 * eps, atol=4 * eps * 1e-30)
    np.testing.assert_array_equal(P, Y)
    # Derivatives to absolute precision: where they underflow they may be 0, never NaN.
    np.testing.assert_allclose(dX, dref(X), rtol=0, atol=4 * eps)


@pytest.mark.parametrize("test_dtype", DTYPES)
def test_softmax_layer_at_extremes(backend, test_dtype):
    model = nnx.Sequential(nnx.Softmax(), backend=backend, dtype=test_dtype)
    X = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4], [1e4, 1e4 - 1, 0.0], [3.0, 1.0, 0.2]])
    with no_fp_warnings():
        Y = _host(model, model.forward(X, training=True))
        dX = _host(model, model.backward(np.array([[1.0, 2.0, 3.0]] * 4)))
    assert np.all(np.isfinite(Y)) and np.all(np.isfinite(dX))
    z = X - X.max(axis=1, keepdims=True)
    want = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    eps = float(np.finfo(test_dtype).eps)
    np.testing.assert_allclose(Y, want, rtol=8 * eps, atol=8 * eps)
    np.testing.assert_allclose(Y.sum(axis=1), 1.0, rtol=8 * eps)


@pytest.mark.parametrize("test_dtype", DTYPES)
def test_deep_saturating_network_stays_finite(backend, test_dtype):
    """Huge inputs through sigmoid/tanh/softmax stacks: outputs and gradients stay finite."""
    model = nnx.Sequential(nnx.Dense(3, 8, init="standard_normal"), nnx.Tanh(),
                           nnx.Dense(8, 8, init="standard_normal"), nnx.Sigmoid(),
                           nnx.Dense(8, 3, init="standard_normal"), nnx.Softmax(),
                           backend=backend, dtype=test_dtype, seed=1)
    # four rows of three, the softmax test's shape: on JAX the Softmax layer's operations are compiled already
    X = np.array([[1e4, -1e4, 3e3], [-1e4, 1e4, 0.0], [0.0, 0.0, 0.0], [3e3, 0.0, -1e4]])
    with np.errstate(under="ignore"), no_fp_warnings():
        Y = _host(model, model.predict(X))
        model.forward(X, training=True)
        dX = _host(model, model.backward(np.ones((4, 3))))
        grads = [_host(model, p.grad) for p in model.parameters()]
    assert np.all(np.isfinite(Y)) and np.all(np.isfinite(dX))
    assert all(np.all(np.isfinite(g)) for g in grads)
    np.testing.assert_allclose(Y.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("test_dtype", DTYPES)
def test_dropout_propagates_nan_and_inf_in_dropped_units_as_torch(backend, test_dtype):
    """Training dropout multiplies by the kept mask, as torch and Keras do: a dropped inf or NaN is NaN, not a
    clean 0 that hides it; the backward likewise (a NaN gradient stays NaN)."""
    model = nnx.Sequential(nnx.Dropout(0.5), backend=backend, dtype=test_dtype, input_shape=(64,), seed=0)
    X = np.tile([np.inf, -np.inf, np.nan, 2.0], (2, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf * 0 in NumPy
        Y = _host(model, model.forward(X, training=True))
        dX = _host(model, model.backward(np.full(X.shape, np.nan)))
    finite = X == 2.0
    assert (finite & (Y == 0.0)).any() and (finite & (Y == 4.0)).any()  # both kinds among the finite inputs
    assert not np.isfinite(Y[~finite]).any()  # inf kept is +-inf, dropped is NaN: none comes out finite
    assert np.isnan(Y[np.isnan(X)]).all()
    assert np.isnan(dX).all()


# -- losses through the model: the fused heads are exact at extreme logits -----------------------

@pytest.mark.parametrize("test_dtype", DTYPES)
@pytest.mark.parametrize("head", ["sigmoid_bce", "logits_bce"])
def test_bce_at_extreme_logits_through_the_model(backend, test_dtype, head):
    layers = [nnx.Dense(1, 1)] + ([nnx.Sigmoid()] if head == "sigmoid_bce" else [])
    loss = "bce" if head == "sigmoid_bce" else BinaryCrossEntropy(from_logits=True)
    model = nnx.Sequential(*layers, backend=backend, dtype=test_dtype, seed=0)
    _set(model, w0=[[1000.0]], b0=[0.0])
    with no_fp_warnings():
        assert model.evaluate([[1.0]], [0.0], loss=loss)["loss"] == 1000.0  # logit 1000, target 0
        assert model.evaluate([[-1.0]], [1.0], loss=loss)["loss"] == 1000.0  # logit -1000, target 1
        assert model.evaluate([[1.0]], [1.0], loss=loss)["loss"] == 0.0
        assert model.evaluate([[10.0]], [0.0], loss=loss)["loss"] == 1e4
        # The gradient there is exactly (sigmoid(z) - y) * x = 1: one SGD step moves w by lr.
        model.fit([[1.0]], [0.0], loss=loss, optimizer="sgd", lr=0.5, epochs=1, shuffle=False)
    assert _host(model, model.parameters()[0].value)[0, 0] == 999.5
    assert _host(model, model.parameters()[1].value)[0] == -0.5


@pytest.mark.parametrize("test_dtype", DTYPES)
@pytest.mark.parametrize("head", ["softmax", "logits"])
def test_cross_entropy_at_extreme_logits_through_the_model(backend, test_dtype, head):
    layers = [nnx.Dense(1, 3)] + ([nnx.Softmax()] if head == "softmax" else [])
    loss = CrossEntropy(from_logits=head == "logits")
    model = nnx.Sequential(*layers, backend=backend, dtype=test_dtype, seed=0)
    _set(model, w0=[[1000.0, 0.0, -1000.0]], b0=[0.0, 0.0, 0.0])  # logits (1000, 0, -1000) x
    with no_fp_warnings():
        assert model.evaluate([[1.0]], [0], loss=loss)["loss"] == 0.0
        assert model.evaluate([[1.0]], [1], loss=loss)["loss"] == 1000.0
        assert model.evaluate([[1.0]], [2], loss=loss)["loss"] == 2000.0
        assert model.evaluate([[1.0], [1.0]], [2, 0], loss=loss)["loss"] == 1000.0
        assert model.evaluate([[1.0]], [[0.0, 0.0, 1.0]], loss=loss)["loss"] == 2000.0  # one-hot
        model.fit([[1.0]], [2], loss=loss, optimizer="sgd", lr=1.0, epochs=1, shuffle=False)
    # gradient of the logits is softmax - onehot = (1, 0, -1): w moves by (-1, 0, +1)
    np.testing.assert_array_equal(_host(model, model.parameters()[0].value), [[999.0, 0.0, -999.0]])
    acc = model.evaluate([[1.0]], [0], loss=loss, metrics=["accuracy"])["accuracy"]
    assert acc == 1.0


@pytest.mark.parametrize("test_dtype", DTYPES)
def test_bce_on_probabilities_exactly_zero_and_one(backend, test_dtype):
    """Probabilities of exactly 0 or 1: from the loss directly, and from an unfused output (Identity after a
    Sigmoid) in evaluate and fit. (A plain linear output is refused with BCE: tests/test_loss_fit.py.)"""
    y = np.array([1.0, 0.0])  # p = 0 with target 1, p = 1 with target 0
    loss = nnx.losses.BinaryCrossEntropy()
    p = backend.asarray(np.array([0.0, 1.0]), dtype=test_dtype)
    with no_fp_warnings():
        value, grad = loss.value_and_grad(y, p)
    assert np.isfinite(float(_host_be(backend, value))) and float(_host_be(backend, value)) > 10
    assert np.all(np.isfinite(_host_be(backend, grad)))
    saturated = nnx.Sequential(nnx.Dense(1, 1), nnx.Sigmoid(), nnx.Identity(), backend=backend, dtype=test_dtype)
    _set(saturated, w0=[[1000.0]], b0=[0.0])
    model, X = saturated, np.array([[-1.0], [1.0]])
    p = _host(model, model.predict(X))[:, 0]
    assert set(p.tolist()) == {0.0, 1.0}
    with no_fp_warnings():
        value = model.evaluate(X, y, loss="bce")["loss"]
        history = model.fit(X, y, loss="bce", optimizer="sgd", lr=1e-3, epochs=2, batch_size=2)
    assert np.isfinite(value) and value > 10, "a confident wrong prediction costs a lot, finitely"
    assert all(np.isfinite(history["loss"]))
    for param in model.parameters():
        assert np.all(np.isfinite(_host(model, param.value)))
        assert np.all(np.isfinite(_host(model, param.grad)))


def _host_be(backend, x):
    return np.asarray(backend.to_host(x))


# -- whole float32 training runs, warnings as errors ------------------------------------

def _datasets():
    gen = np.random.default_rng(0)
    X_xor = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    out = {"xor": (X_xor, np.array([0, 1, 1, 0.0]))}
    try:
        from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits
    except ImportError:  # scikit-learn is a test dependency, but keep the rest running without it
        load_breast_cancer = load_diabetes = load_digits = None
    if load_breast_cancer is not None:
        cancer = load_breast_cancer()
        out["breast_cancer_raw"] = (cancer.data, 1.0 - cancer.target)  # unscaled: features up to ~4000
        diabetes = load_diabetes()
        out["diabetes_raw_targets"] = (diabetes.data, diabetes.target)  # targets 25..346, MSE ~ 3e4
        digits = load_digits()
        out["digits_raw"] = (digits.data, digits.target)  # pixels 0..16, 10 classes
    else:
        X = gen.normal(size=(200, 30)) * 1000
        out["breast_cancer_raw"] = (X, (X[:, 0] > 0).astype(float))
    return out


SETUPS = {
    # name: (dataset, layers(n_in, n_out) builder, loss, optimizer, lr)
    "sigmoid_neuron": ("xor", lambda: [nnx.Dense(2, 1), nnx.Sigmoid()], "bce", "sgd", 0.5),
    "xor_tanh": ("xor", lambda: [nnx.Dense(2, 4), nnx.Tanh(), nnx.Dense(4, 1), nnx.Sigmoid()], "bce", "adam", 0.05),
    "breast_cancer_unscaled": ("breast_cancer_raw",
                               lambda: [nnx.Dense(30, 16), nnx.ReLU(), nnx.Dense(16, 8), nnx.ReLU(),
                                        nnx.Dense(8, 1), nnx.Sigmoid()], "bce", "adam", 1e-3),
    "breast_cancer_sigmoid_hidden": ("breast_cancer_raw",
                                     lambda: [nnx.Dense(30, 16, init="standard_normal"), nnx.Sigmoid(),
                                              nnx.Dense(16, 1), nnx.Sigmoid()], "bce", "rmsprop", 1e-2),
    "diabetes_regression": ("diabetes_raw_targets",
                            lambda: [nnx.Dense(10, 32), nnx.ReLU(), nnx.Dense(32, 1)], "mse", "adam", 1e-2),
    "digits_softmax": ("digits_raw",
                       lambda: [nnx.Dense(64, 32), nnx.LeakyReLU(0.01), nnx.Dropout(0.2), nnx.Dense(32, 10),
                                nnx.Softmax()], "cross_entropy", "adam", 1e-3),
}


@pytest.fixture(scope="module")
def datasets():
    return _datasets()


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_float32_training_has_no_fp_warnings(backend, datasets, setup):
    data_name, layers, loss, optimizer, lr = SETUPS[setup]
    if data_name not in datasets:
        pytest.skip(f"{data_name} needs scikit-learn")
    X, y = datasets[data_name]
    X, y = X[:128], y[:128]  # four batches of 32
    model = nnx.Sequential(*layers(), backend=backend, dtype="float32", seed=0,
                           regularizer=nnx.regularizers.L2(1e-4))
    with np.errstate(under="ignore"), no_fp_warnings():  # validated on X itself: evaluate's shape, one JAX program
        history = model.fit(X, y, loss=loss, optimizer=optimizer, lr=lr, epochs=2, batch_size=32,
                            metrics=["accuracy"] if loss != "mse" else ["mae"], validation_data=(X, y))
        scores = model.evaluate(X, y, loss=loss)
        out = _host(model, model.predict(X))
    assert all(np.isfinite(history["loss"])) and all(np.isfinite(history["val_loss"]))
    assert np.isfinite(scores["loss"]) and np.all(np.isfinite(out))
    assert history["loss"][-1] < history["loss"][0] * 1.5, "training did not blow up"


def test_divergence_is_reported_not_silent(backend):
    """A learning rate far too large: fit stops with FloatingPointError naming epoch and batch."""
    gen = np.random.default_rng(0)
    X = gen.normal(size=(64, 4)) * 100
    y = X @ gen.normal(size=(4, 1)) * 100
    model = nnx.Sequential(nnx.Dense(4, 8), nnx.ReLU(), nnx.Dense(8, 1), backend=backend, dtype="float32", seed=0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FloatingPointError, match=r"epoch \d+, batch \d+"):
            model.fit(X, y, loss="mse", optimizer="sgd", lr=10.0, epochs=50, batch_size=16)
        # and with the check off it runs to the end, reporting the non-finite loss it reached
        model = nnx.Sequential(nnx.Dense(4, 8), nnx.ReLU(), nnx.Dense(8, 1), backend=backend, dtype="float32",
                               seed=0)
        history = model.fit(X, y, loss="mse", optimizer="sgd", lr=10.0, epochs=20, batch_size=16, check_finite=False)
    assert len(history) == 20 and not np.isfinite(history["loss"][-1])
