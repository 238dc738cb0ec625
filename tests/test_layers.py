"""Every layer: finite-difference gradient checks in float64 on every backend, and forward semantics."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

import nnx
from nnx.backends import host_rng
from nnx.gradcheck import numerical_gradient
from nnx.layers import LAYERS, BuildContext, layer_from_config
from nnx.regularizers import L1, L2, ElasticNet

TOL = 1e-6


def _norm_rel(analytic, numeric) -> float:
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    assert a.shape == n.shape
    scale = np.linalg.norm(a) + np.linalg.norm(n)
    return 0.0 if scale == 0 else float(np.linalg.norm(a - n) / scale)


def _build(layer, backend, dtype="float64", seed=0, input_shape=None):
    context = BuildContext(backend, dtype, host_rng(seed), backend.rng(seed), "0.")
    layer.attach(context, input_shape)
    return layer


# -- model-level checks: each layer inside a small model, through nnx.check_gradients -------------

def _model_cases():
    """(id, layers factory, loss, target kind).

    One hidden width (4) and, in the tests below, one batch (6 rows of 3 features): on JAX each operation compiles
    once per shape, so the cases share their Dense layers' compiled operations."""
    return [
        ("dense", lambda: [nnx.Dense(3, 2)], "mse", "reg"),
        ("dense-l1", lambda: [nnx.Dense(3, 4, regularizer=L1(0.05)), nnx.Tanh(), nnx.Dense(4, 2)], "mse", "reg"),
        ("dense-l2", lambda: [nnx.Dense(3, 4, regularizer=L2(0.3)), nnx.Tanh(), nnx.Dense(4, 2)], "mse", "reg"),
        ("dense-elasticnet", lambda: [nnx.Dense(3, 4), nnx.Tanh(),
                                      nnx.Dense(4, 2, regularizer=ElasticNet(0.05, 0.2))], "mse", "reg"),
        ("sigmoid", lambda: [nnx.Dense(3, 4), nnx.Sigmoid(), nnx.Dense(4, 2)], "mse", "reg"),
        ("sigmoid-bce", lambda: [nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 1), nnx.Sigmoid()], "bce", "binary"),
        ("tanh", lambda: [nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 2)], "mse", "reg"),
        ("relu", lambda: [nnx.Dense(3, 4), nnx.ReLU(), nnx.Dense(4, 2)], "mse", "reg"),
        ("leaky_relu", lambda: [nnx.Dense(3, 4), nnx.LeakyReLU(0.1), nnx.Dense(4, 2)], "mse", "reg"),
        ("softmax-mse", lambda: [nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 3), nnx.Softmax()], "mse", "reg3"),
        ("softmax-ce", lambda: [nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 3), nnx.Softmax()],
         nnx.losses.CrossEntropy(from_logits=False), "classes3"),
        ("logits-ce", lambda: [nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 3)], "cross_entropy", "classes3"),
        ("logits-bce", lambda: [nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 1)], "bce_with_logits", "binary"),
        ("identity", lambda: [nnx.Dense(3, 4), nnx.Identity(), nnx.Dense(4, 2), nnx.Identity()], "mse", "reg"),
        ("dropout", lambda: [nnx.Dense(3, 4), nnx.Tanh(), nnx.Dropout(0.5), nnx.Dense(4, 2)], "mse", "reg"),
        ("deep-mixed", lambda: [nnx.Dense(3, 4, init="glorot"), nnx.Sigmoid(), nnx.Dropout(0.3),
                                nnx.Dense(4, 4), nnx.LeakyReLU(0.2), nnx.Dense(4, 1)], "mae", "reg1"),
        ("batchnorm", lambda: [nnx.Dense(3, 4), nnx.BatchNorm(), nnx.Tanh(), nnx.Dense(4, 2)], "mse", "reg"),
        ("batchnorm-first", lambda: [nnx.BatchNorm(3), nnx.Dense(3, 2)], "mse", "reg"),
        ("layernorm", lambda: [nnx.Dense(3, 4), nnx.LayerNorm(), nnx.Tanh(), nnx.Dense(4, 2)], "mse", "reg"),
        ("layernorm-first", lambda: [nnx.LayerNorm(3), nnx.Dense(3, 2)], "mse", "reg"),
        ("flatten", lambda: [nnx.Flatten(), nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 2)], "mse", "reg"),
    ]


def _targets(kind: str, rng, n: int):
    return {
        "reg": lambda: rng.standard_normal((n, 2)),
        "reg1": lambda: rng.standard_normal((n, 1)),
        "reg3": lambda: rng.random((n, 3)),
        "binary": lambda: (rng.random((n, 1)) > 0.5).astype(np.float64),
        "classes3": lambda: np.array([0, 2, 1, 1, 0, 2][:n]),
    }[kind]()


@pytest.mark.parametrize("case", _model_cases(), ids=lambda c: c[0])
def test_check_gradients_each_layer_in_a_model(backend, case):
    _, make_layers, loss, kind = case
    rng = np.random.default_rng(1)
    model = nnx.Sequential(*make_layers(), backend=backend, dtype="float64", seed=3)
    X = rng.standard_normal((6, 3))
    y = _targets(kind, rng, 6)
    err = nnx.check_gradients(model, X, y, loss)
    assert err < TOL, f"relative error {err:.2e}"


def test_check_gradients_model_wide_regularizer(backend):
    model = nnx.Sequential(nnx.Dense(3, 4, regularizer=L1(0.02)), nnx.ReLU(), nnx.Dense(4, 2),
                           backend=backend, dtype="float64", seed=4, regularizer=L2(0.5))
    rng = np.random.default_rng(2)
    err = nnx.check_gradients(model, rng.standard_normal((6, 3)), rng.standard_normal((6, 2)), "mse")
    assert err < TOL


def test_check_gradients_flags_a_wrong_gradient(backend, monkeypatch):
    """The check is not vacuous: a deliberately wrong Tanh backward is caught."""
    # patched on the class: check_gradients works on a copy rebuilt from the model's config
    right = nnx.Tanh.backward
    monkeypatch.setattr(nnx.Tanh, "backward", lambda self, dY, need_dX=True: 1.5 * right(self, dY, need_dX))
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 2), backend=backend,
                           dtype="float64", seed=0)
    rng = np.random.default_rng(0)
    err = nnx.check_gradients(model, rng.standard_normal((6, 3)), rng.standard_normal((6, 2)), "mse")
    assert err > 1e-3


def test_check_gradients_float32_model_checked_in_float64(backend):
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 1), backend=backend,
                           dtype="float32", seed=0)
    before = {k: backend.to_host(v).copy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    err = nnx.check_gradients(model, rng.standard_normal((6, 3)), rng.standard_normal((6, 1)))
    assert err < TOL
    assert model.dtype == "float32"  # the check works on a float64 copy
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(backend.to_host(v), before[k])


# -- layer-level checks: dX and parameter gradients of a single built layer -------------------

def _layer_cases():
    return [
        ("dense", lambda: nnx.Dense(3, 4)),
        ("dense-l1", lambda: nnx.Dense(3, 4, regularizer=L1(0.1))),
        ("dense-l2", lambda: nnx.Dense(3, 4, regularizer=L2(0.4))),
        ("dense-elasticnet", lambda: nnx.Dense(3, 4, regularizer=ElasticNet(0.1, 0.3))),
        ("dropout", lambda: nnx.Dropout(0.4)),
        ("sigmoid", nnx.Sigmoid),
        ("tanh", nnx.Tanh),
        ("relu", nnx.ReLU),
        ("leaky_relu", lambda: nnx.LeakyReLU(0.15)),
        ("softplus", nnx.Softplus),
        ("softmax", nnx.Softmax),
        ("identity", nnx.Identity),
        ("batchnorm", lambda: nnx.BatchNorm(3, momentum=0.3)),
        ("batchnorm-inferred", nnx.BatchNorm),
        ("layernorm", lambda: nnx.LayerNorm(3)),
        ("layernorm-inferred", nnx.LayerNorm),
        ("flatten", nnx.Flatten),
    ]


@pytest.mark.parametrize("case", _layer_cases(), ids=lambda c: c[0])
def test_layer_gradients_against_finite_differences(backend, case):
    """L = sum(layer(X) * G) (+ the layer's weight penalty): dL/dX and dL/dparams vs central differences."""
    _, make = case
    layer = _build(make(), backend, input_shape=(3,))
    xp = backend.xp
    rng = np.random.default_rng(7)
    for p in layer.parameters():  # away from the ones/zeros a norm layer starts at, so every term is tested
        p.value = backend.asarray(rng.standard_normal(p.shape), dtype="float64")
    X_host = rng.standard_normal((6, 3))  # the model-level checks' batch: one compile per operation on JAX
    out_shape = (6, 4) if isinstance(layer, nnx.Dense) else (6, 3)
    G = backend.asarray(rng.standard_normal(out_shape), dtype="float64")
    rng_state = layer.rng.get_state() if isinstance(layer, nnx.Dropout) else None

    def loss(X):
        if rng_state is not None:
            layer.rng.set_state(rng_state)  # the same dropout mask every time
        value = xp.sum(layer.forward(X, training=True) * G)
        if layer.regularizer is not None:
            value = value + layer.regularizer.penalty(layer.weight.value)
        return value

    X = backend.asarray(X_host, dtype="float64")
    loss(X)
    dX = layer.backward(G)
    assert tuple(dX.shape) == (6, 3)
    assert backend.owns(dX)
    analytic = [(p, backend.to_host(p.grad)) for p in layer.parameters()]

    numeric_dX = numerical_gradient(lambda x: backend.to_float(loss(backend.asarray(x))), X_host)
    assert _norm_rel(backend.to_host(dX), numeric_dX) < TOL
    np.testing.assert_allclose(backend.to_host(dX), numeric_dX, rtol=1e-5, atol=1e-7)

    for p, grad in analytic:
        original = p.value
        assert tuple(grad.shape) == p.shape

        def at(w, p=p):
            p.value = backend.asarray(w, dtype="float64")
            return backend.to_float(loss(X))

        numeric = numerical_gradient(at, backend.to_host(original))
        p.value = original
        assert _norm_rel(grad, numeric) < TOL, p.name
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7, err_msg=p.name)


def test_layer_backward_without_dX(backend):
    layer = _build(nnx.Dense(3, 2), backend)
    X = backend.asarray(np.ones((4, 3)), dtype="float64")
    layer.forward(X, training=True)
    assert layer.backward(backend.asarray(np.ones((4, 2)), dtype="float64"), need_dX=False) is None
    np.testing.assert_allclose(backend.to_host(layer.weight.grad), np.full((3, 2), 4.0))
    np.testing.assert_allclose(backend.to_host(layer.bias.grad), [4.0, 4.0])


# -- forward semantics ---------------------------------------------------------------

def test_dense_shapes_and_forward(backend, dtype):
    layer = _build(nnx.Dense(3, 5), backend, dtype)
    assert layer.weight.shape == (3, 5) and layer.bias.shape == (5,)
    assert layer.weight.name == "0.weight" and layer.bias.name == "0.bias"
    assert layer.weight.regularized and not layer.bias.regularized
    np.testing.assert_array_equal(backend.to_host(layer.bias.value), np.zeros(5))
    layer.bias.value = backend.asarray(np.arange(5.0), dtype=dtype)
    X = np.random.default_rng(0).standard_normal((4, 3))
    Y = layer.forward(backend.asarray(X, dtype=dtype))
    assert Y.dtype == backend.float_dtype(dtype)
    expected = X.astype(dtype) @ backend.to_host(layer.weight.value) + np.arange(5.0)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(backend.to_host(Y), expected, rtol=rtol, atol=rtol)


class TakesAnyShape(nnx.Layer):
    """Takes any sample shape: the model before a Dense does not know what reaches it."""

    def forward(self, X, training=False):
        return 2.0 * X

    def backward(self, dY, need_dX=True):
        return 2.0 * dY


@pytest.mark.parametrize("shape", [(4, 2, 3), (4, 5)], ids=["3d", "5_features"])
def test_dense_refuses_input_it_was_not_built_for_by_name(backend, shape):
    """A (batch, k, features) input would give (batch, k, out) outputs the model does not declare and, in a
    backward, a weight gradient of the wrong shape; a wrong feature count a backend's own matmul error."""
    model = nnx.Sequential(TakesAnyShape(), nnx.Dense(3, 2), backend=backend, dtype="float64", seed=0)
    X = model.backend.asarray(np.ones(shape), dtype="float64")
    message = rf"Dense\(3, 2\) takes input of shape \(batch, 3\) but gets {re.escape(str(shape))}"
    with pytest.raises(ValueError, match=message):
        model.predict(X)
    with pytest.raises(ValueError, match=message):
        model.forward(X, training=True)
    with pytest.raises(ValueError, match=message):
        model.fit(X, np.ones((4, 2)), epochs=1)


@pytest.mark.parametrize("name, layer, ref", [
    ("sigmoid", nnx.Sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    ("tanh", nnx.Tanh, np.tanh),
    ("relu", nnx.ReLU, lambda x: np.maximum(x, 0)),
    ("leaky_relu", lambda: nnx.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    ("softplus", nnx.Softplus, lambda x: np.logaddexp(0.0, x)),
    ("softmax", nnx.Softmax, lambda x: np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)),
    ("identity", nnx.Identity, lambda x: x),
], ids=lambda v: v if isinstance(v, str) else "")
def test_activation_layer_forward(backend, dtype, name, layer, ref):
    layer = _build(layer(), backend, dtype)
    X = np.random.default_rng(0).standard_normal((6, 4)) * 3
    Y = layer.forward(backend.asarray(X, dtype=dtype))
    assert Y.dtype == backend.float_dtype(dtype)
    tol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(backend.to_host(Y), ref(X), rtol=tol, atol=tol)


def test_sigmoid_and_softmax_do_not_overflow(backend, dtype):
    X = backend.asarray(np.array([[-1000.0, 0.0, 1000.0]]), dtype=dtype)
    s = backend.to_host(_build(nnx.Sigmoid(), backend, dtype).forward(X))
    np.testing.assert_allclose(s, [[0.0, 0.5, 1.0]])
    p = backend.to_host(_build(nnx.Softmax(), backend, dtype).forward(X))
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, [[0.0, 0.0, 1.0]])


def test_dropout_identity_at_inference(backend, dtype):
    layer = _build(nnx.Dropout(0.5), backend, dtype)
    X = backend.asarray(np.random.default_rng(0).standard_normal((8, 5)), dtype=dtype)
    np.testing.assert_array_equal(backend.to_host(layer.forward(X, training=False)), backend.to_host(X))
    with pytest.raises(RuntimeError, match=r"backward needs a forward\(X, training=True\) first"):
        layer.backward(X)  # inference keeps no mask to backpropagate through, as for every layer


def test_dropout_zero_rate_is_identity_in_training(backend, dtype):
    layer = _build(nnx.Dropout(0.0), backend, dtype)
    X = backend.asarray(np.ones((3, 3)), dtype=dtype)
    np.testing.assert_array_equal(backend.to_host(layer.forward(X, training=True)), np.ones((3, 3)))


@pytest.mark.parametrize("rate", [1.0, -0.5, 1.5, float("nan")])
def test_dropout_refuses_a_rate_set_outside_0_1_after_construction(backend, rate):
    """The constructor checks the rate, a rate set later was used as it came: 1.0 divided by zero, and -0.5 or 1.5
    scaled every unit by 1/1.5 or -2 without a word. fit refuses it before its first step (it rebuilds the layers
    from their configs as it starts), and a training forward outside fit refuses it when it runs."""
    model = nnx.Sequential(nnx.Dense(3, 2), nnx.Dropout(0.5), backend=backend, seed=0)
    model.layers[1].rate = rate
    X = np.ones((4, 3))
    model.predict(X)  # inference ignores the rate
    with pytest.raises(ValueError, match=r"Dropout rate must be a finite number in \[0, 1\), got .*changed after "
                                         r"construction"):
        model.fit(X, np.ones((4, 2)), epochs=1)
    with pytest.raises(ValueError, match=r"Dropout rate must be a number in \[0, 1\) when it runs, got"):
        model.layers[1].forward(backend.asarray(np.ones((4, 2))), training=True)


@pytest.mark.parametrize("rate", [0.2, 0.5, 0.8])
def test_dropout_is_inverted_in_training(backend, dtype, rate):
    layer = _build(nnx.Dropout(rate), backend, dtype, seed=11)
    X_host = np.random.default_rng(3).uniform(1.0, 2.0, size=(200, 100))
    X = backend.asarray(X_host, dtype=dtype)
    Y = backend.to_host(layer.forward(X, training=True))
    assert Y.dtype == np.dtype(dtype)
    kept = Y != 0
    # the zero fraction is close to the rate (20,000 draws: sd ~ 0.0035)
    assert abs((1 - kept.mean()) - rate) < 0.02
    # survivors are scaled by 1/(1-rate)
    tol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(Y[kept], X_host.astype(dtype)[kept] / (1 - rate), rtol=tol)
    # so the mean is preserved
    assert abs(Y.mean() / X_host.mean() - 1) < 0.05
    # backward uses the same mask and scale
    dX = backend.to_host(layer.backward(backend.asarray(np.ones((200, 100)), dtype=dtype)))
    np.testing.assert_array_equal(dX != 0, kept)
    np.testing.assert_allclose(dX[kept], 1 / (1 - rate), rtol=tol)


def test_dropout_masks_change_between_steps(backend, dtype):
    layer = _build(nnx.Dropout(0.5), backend, dtype)
    X = backend.asarray(np.ones((10, 10)), dtype=dtype)
    a = backend.to_host(layer.forward(X, training=True))
    b = backend.to_host(layer.forward(X, training=True))
    assert not np.array_equal(a, b)


def test_layer_config_roundtrip():
    layers = [nnx.Dense(3, 4, init="glorot", regularizer=L2(0.1)), nnx.Dropout(0.25), nnx.Sigmoid(),
              nnx.Tanh(), nnx.ReLU(), nnx.LeakyReLU(0.3), nnx.Softplus(), nnx.Softmax(), nnx.Identity(),
              nnx.BatchNorm(4, momentum=0.2, eps=1e-3), nnx.LayerNorm((2, 3), eps=1e-6), nnx.Flatten()]
    for layer in layers:
        config = layer.get_config()
        rebuilt = layer_from_config(config)
        assert type(rebuilt) is type(layer)
        assert rebuilt.get_config() == config
    assert set(LAYERS) >= {"Dense", "Dropout", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "Softmax", "Identity",
                           "BatchNorm", "LayerNorm", "Flatten"}
    assert repr(nnx.Dense(2, 3)).startswith("Dense(in_features=2, out_features=3")
    with pytest.raises(ValueError, match=r"unknown layer 'Conv2d'; valid names: \[.*'Dense'.*registers itself"):
        layer_from_config({"type": "Conv2d"})
    with pytest.raises(ValueError, match=r"bad arguments for layer Dense"):
        layer_from_config({"type": "Dense", "in_features": 2})


@pytest.mark.parametrize("init", ["he", "he_uniform", "glorot", "glorot_normal", "lecun", "normal",
                                  "standard_normal", "xavier", "kaiming"])
def test_initializers_scale(init):
    layer = _build(nnx.Dense(400, 300, init=init), nnx.get_backend("numpy"))
    W = layer.weight.value
    expected_std = {
        "he": np.sqrt(2 / 400), "kaiming": np.sqrt(2 / 400), "he_uniform": np.sqrt(2 / 400),
        "glorot": np.sqrt(2 / 700), "xavier": np.sqrt(2 / 700), "glorot_normal": np.sqrt(2 / 700),
        "lecun": np.sqrt(1 / 400), "normal": 0.01, "standard_normal": 1.0,
    }[init]
    assert abs(W.std() / expected_std - 1) < 0.03
    assert abs(W.mean()) < 0.01 * max(expected_std, 0.1)


class FanProbe(nnx.Layer):
    """A layer holding one parameter of any shape, to read the initializers' fans off it."""

    def __init__(self, shape, init):
        super().__init__()
        self.shape, self.init = tuple(shape), init

    def build(self, input_shape):
        self.w = self.add_parameter("w", self.shape, self.init)

    def forward(self, X, training=False):
        return X

    def backward(self, dY, need_dX=True):
        return dY


@pytest.mark.parametrize("shape, init, expected_std", [
    # a kernel laid out (..., in, out): the receptive field counts in both fans, as Keras and torch.nn.init count it
    ((3, 3, 16, 32), "glorot_normal", np.sqrt(2 / (9 * 16 + 9 * 32))),
    ((3, 3, 16, 32), "glorot", np.sqrt(2 / (9 * 16 + 9 * 32))),
    ((3, 3, 16, 32), "he", np.sqrt(2 / (9 * 16))),
    ((5, 64, 8), "lecun", np.sqrt(1 / (5 * 64))),
    ((400,), "he", np.sqrt(2 / 400)),  # one axis: fan_in = fan_out = its size (Keras)
    ((400,), "glorot_normal", np.sqrt(2 / 800)),
])
def test_initializer_fans_of_other_shapes(shape, init, expected_std):
    layer = _build(FanProbe(shape, init), nnx.get_backend("numpy"))
    W = layer.w.value
    assert W.shape == shape
    assert abs(W.std() / expected_std - 1) < 0.1


def test_callable_init_of_another_shape_is_refused():
    """An init callable that returns the transposed matrix was reshaped into the parameter, scrambling it."""
    backend = nnx.get_backend("numpy")
    with pytest.raises(ValueError, match=r"init of '0.w' returned shape \(4, 3\), but the parameter has shape "
                                         r"\(3, 4\)"):
        _build(FanProbe((3, 4), lambda rng, shape: rng.normal(size=shape[::-1])), backend)
    layer = _build(FanProbe((3, 4), lambda rng, shape: np.arange(12.0).reshape(shape)), backend)
    np.testing.assert_array_equal(layer.w.value, np.arange(12.0).reshape(3, 4))


def test_settings_set_after_construction_are_used_moved_and_saved(backend, tmp_path):
    """A Dropout rate or LeakyReLU slope set on the layer after construction is the one that predict and fit
    run (a compiled program too), and that `to()` and save/load keep. Their configs held the constructor's
    values, so JAX kept running the program compiled before the change, and copies went back to the old ones."""
    rng = np.random.default_rng(0)
    # the gradient checks' 6 rows of 3 features, in one batch: on JAX the plain run's operations compile once
    X, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 4))
    runs = []
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(3, 4), nnx.LeakyReLU(0.1), nnx.Dropout(0.3),
                               backend=backend.with_fastpath(fast), dtype="float64", seed=0)
        model.fit(X, y, loss="mse", optimizer="sgd", lr=0.1, epochs=1, batch_size=6, verbose=0)
        model.predict(X)  # programs compiled with the first settings
        model.layers[1].alpha, model.layers[2].rate = 0.9, 0.0
        W, b = (backend.to_host(p.value) for p in model.layers[0].parameters())
        Z = X @ W + b
        np.testing.assert_allclose(backend.to_host(model.predict(X)), np.where(Z > 0, Z, 0.9 * Z), rtol=1e-12)
        model.save(tmp_path / "m.npz")
        for copy in (model.to(backend), nnx.load(tmp_path / "m.npz")):
            assert (copy.layers[1].alpha, copy.layers[2].rate) == (0.9, 0.0)
        model.fit(X, y, loss="mse", optimizer="sgd", lr=0.1, epochs=1, batch_size=6, verbose=0)
        runs.append([backend.to_host(p.value) for p in model.parameters()])
    for derived, plain in zip(*runs, strict=True):
        np.testing.assert_allclose(derived, plain, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("cls", "name"), [(nnx.BatchNorm, "momentum"), (nnx.BatchNorm, "eps"), (nnx.LayerNorm, "eps"),
                                          (nnx.Dropout, "rate"), (nnx.LeakyReLU, "alpha")],
                         ids=lambda v: getattr(v, "__name__", v))
def test_a_numpy_setting_set_after_construction_saves_as_a_float(cls, name, tmp_path):
    """A setting set on the layer from a NumPy float32 after construction is saved as a Python float: a BatchNorm
    momentum or a BatchNorm/LayerNorm eps failed the save with "Object of type float32 is not JSON serializable"."""
    model = nnx.Sequential(nnx.Dense(3, 4), cls(), backend="numpy", dtype="float32", seed=0)
    setattr(model.layers[1], name, np.float32(0.25))
    model.save(tmp_path / "m.npz")
    value = getattr(nnx.load(tmp_path / "m.npz").layers[1], name)
    assert type(value) is float and value == 0.25


@pytest.mark.parametrize("layer", [lambda: nnx.Dense(3, 2), lambda: nnx.ReLU(), lambda: nnx.Flatten(),
                                   lambda: nnx.BatchNorm(), lambda: nnx.LayerNorm()], ids=lambda f: type(f()).__name__)
def test_a_layer_used_outside_a_model_says_so(layer):
    """A layer called on its own, as torch's and Keras's are, failed with what its unbuilt state gave:
    "'Dense' object has no attribute 'weight'", "'NoneType' object has no attribute 'maximum'", or BatchNorm's
    "expects input of shape (batch, None)". The error now says the layer is not part of a model and how to
    use it; a layer that computes without its model's backend (Sigmoid) still does."""
    X = np.ones((4, 3))
    with pytest.raises(RuntimeError, match=r"is not part of a model.*nnx\.Sequential"):
        layer().forward(X)
    np.testing.assert_allclose(nnx.Sigmoid().forward(np.zeros((2, 3))), 0.5)


SETTINGS_SET_LATER = [
    (lambda: nnx.Dropout(0.2), "rate", 0.3),
    (lambda: nnx.LeakyReLU(0.1), "alpha", 0.2),
    (lambda: nnx.BatchNorm(4), "momentum", 0.2),
    (lambda: nnx.BatchNorm(4), "eps", 1e-3),
    (lambda: nnx.LayerNorm(4), "eps", 1e-3),
]


@pytest.mark.parametrize("make, name, value", SETTINGS_SET_LATER, ids=["Dropout.rate", "LeakyReLU.alpha",
                                                                       "BatchNorm.momentum", "BatchNorm.eps",
                                                                       "LayerNorm.eps"])
def test_a_numpy_float64_setting_set_later_keeps_a_float32_model_float32(backend, make, name, value):
    # found in review: NumPy's scalars keep their dtype, so a rate or an eps set from a NumPy schedule made a
    # float32 model's masks, outputs and running statistics float64 on NumPy (the numbers unchanged)
    layer = make()
    model = nnx.Sequential(nnx.Dense(3, 4), layer, nnx.Dense(4, 1), backend=backend, dtype="float32", seed=0)
    setattr(layer, name, np.float64(value))
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(16, 3)), rng.normal(size=(16, 1))
    model.fit(X, y, loss="mse", optimizer="sgd", epochs=1, batch_size=8, verbose=0)
    assert {nnx.backends.dtype_name(v.dtype) for v in model.state_dict().values()} == {"float32"}
    assert nnx.backends.dtype_name(model.predict(X).dtype) == "float32"


@pytest.mark.parametrize("make", [lambda: L1(0.01), lambda: L2(0.01), lambda: ElasticNet(0.01, 0.01)],
                         ids=["L1", "L2", "ElasticNet"])
def test_a_numpy_float64_strength_set_later_keeps_a_float32_model_training(backend, make):
    # found in review: a NumPy float64 strength made the gradients float64, and fit failed naming the parameter's
    # gradient dtype, not the regularizer
    reg = make()
    for attr in [a for a in ("l", "l1", "l2") if hasattr(reg, a)]:
        setattr(reg, attr, np.float64(0.02))
    model = nnx.Sequential(nnx.Dense(3, 4, regularizer=reg), nnx.Dense(4, 1), backend=backend, dtype="float32",
                           seed=0)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(16, 3)), rng.normal(size=(16, 1))
    model.fit(X, y, loss="mse", optimizer="sgd", epochs=1, batch_size=8, verbose=0)
    assert {nnx.backends.dtype_name(v.dtype) for v in model.state_dict().values()} == {"float32"}


def test_torch_attribute_names_of_dropout_and_leaky_relu_set_the_layer(backend: Any) -> None:
    # a torch dropout schedule sets `module.p` (LeakyReLU's slope is `negative_slope`, in Keras 3 too); on nnx's
    # layers those were new attributes nothing read, so training went on at the old rate without a word
    X = np.ones((64, 8))
    model = nnx.Sequential(nnx.Dense(8, 8), nnx.Dropout(0.5), nnx.LeakyReLU(0.1), backend=backend,
                           dtype="float64", seed=0)
    dropout, leaky = model.layers[1], model.layers[2]
    assert (dropout.p, leaky.negative_slope) == (0.5, 0.1)
    dropout.p, leaky.negative_slope = 0.0, 0.25
    assert (dropout.rate, leaky.alpha) == (0.0, 0.25)
    H = model.layers[0].forward(model.backend.asarray(X), training=True)
    np.testing.assert_array_equal(_writable_host(model, dropout.forward(H, training=True)), _writable_host(model, H))
    assert dropout.get_config()["rate"] == 0.0 and leaky.get_config()["alpha"] == 0.25


def _writable_host(model: Any, value: Any) -> np.ndarray:
    return np.array(model.backend.to_host(value))  # a writable copy (JAX's host view is read-only)
