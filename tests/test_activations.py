"""Activation functions and derivatives: values against torch, gradients against finite
differences, and finite, accurate, warning-free results at extreme inputs on every backend."""

from __future__ import annotations

import warnings

import array_api_compat
import numpy as np
import pytest

import nnx
from nnx import activations as A
from nnx.gradcheck import numerical_gradient, relative_error

ALPHA = 0.2  # a non-default slope, so a forgotten `alpha` argument shows

# name -> (nnx function of x, torch reference of (torch.nn.functional, a float64 tensor))
FUNCTIONS = {
    "sigmoid": (A.sigmoid, lambda F, t: t.sigmoid()),
    "tanh": (A.tanh, lambda F, t: t.tanh()),
    "relu": (A.relu, lambda F, t: F.relu(t)),
    "leaky_relu": (lambda x: A.leaky_relu(x, ALPHA), lambda F, t: F.leaky_relu(t, ALPHA)),
    "softplus": (A.softplus, lambda F, t: F.softplus(t)),
    "log_sigmoid": (A.log_sigmoid, lambda F, t: F.logsigmoid(t)),
    "identity": (A.identity, lambda F, t: t),
    "softmax": (A.softmax, lambda F, t: F.softmax(t, dim=-1)),
    "log_softmax": (A.log_softmax, lambda F, t: F.log_softmax(t, dim=-1)),
}


def _torch():
    """(torch, torch.nn.functional) for a test that compares with torch; skips it where torch is missing."""
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional

# name -> (function, derivative), elementwise only
DERIVATIVES = {
    "sigmoid": (A.sigmoid, A.sigmoid_derivative),
    "tanh": (A.tanh, A.tanh_derivative),
    "relu": (A.relu, A.relu_derivative),
    "leaky_relu": (lambda x: A.leaky_relu(x, ALPHA), lambda x: A.leaky_relu_derivative(x, ALPHA)),
    "softplus": (A.softplus, A.softplus_derivative),
    "identity": (A.identity, A.identity_derivative),
}


def _points(rng, shape=(3, 4)):
    """Random points in [-3, 3] kept at least 0.1 away from the kink at 0."""
    x = rng.uniform(0.1, 3.0, size=shape)
    return x * rng.choice([-1.0, 1.0], size=shape)


# -- values ------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_values_match_torch(backend, rng, name):
    torch, F = _torch()
    fn, ref = FUNCTIONS[name]
    x = rng.normal(scale=3.0, size=(4, 5))
    got = backend.to_host(fn(backend.asarray(x, dtype="float64")))
    want = ref(F, torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_dtype_shape_and_device_preserved(backend, dtype, name):
    fn = FUNCTIONS[name][0]
    x = backend.asarray(np.linspace(-2.0, 2.0, 6).reshape(2, 3), dtype=dtype)
    y = fn(x)
    assert y.dtype == x.dtype
    assert tuple(y.shape) == (2, 3)
    assert backend.owns(y)
    assert str(array_api_compat.device(y)) == str(backend.device)


@pytest.mark.parametrize("name", sorted(DERIVATIVES))
def test_derivative_dtype_and_device_preserved(backend, dtype, name):
    x = backend.asarray(np.linspace(-2.0, 2.0, 6).reshape(2, 3), dtype=dtype)
    d = DERIVATIVES[name][1](x)
    assert d.dtype == x.dtype
    assert tuple(d.shape) == (2, 3)
    assert str(array_api_compat.device(d)) == str(backend.device)


@pytest.mark.parametrize("alpha", [np.float64(0.2), np.float32(0.2)], ids=["np.float64", "np.float32"])
def test_leaky_relu_with_a_numpy_scalar_slope_keeps_the_dtype(backend, dtype, alpha):
    """A slope read from a config or a NumPy array: alpha * x promoted a float32 x to float64 on NumPy and JAX
    (a float64 activation in a float32 model) and raised TypeError on array_api_strict."""
    x = backend.asarray(np.array([-2.0, 0.0, 3.0]), dtype=dtype)
    y, d = A.leaky_relu(x, alpha), A.leaky_relu_derivative(x, alpha)
    assert y.dtype == x.dtype and d.dtype == x.dtype
    np.testing.assert_allclose(backend.to_host(y), [-2 * float(alpha), 0.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(backend.to_host(d), [float(alpha), float(alpha), 1.0], rtol=1e-6)


def test_softmax_axis(backend, rng):
    torch, F = _torch()
    x = rng.normal(size=(3, 4))
    xb = backend.asarray(x, dtype="float64")
    for axis in (0, 1, -1):
        got = backend.to_host(A.softmax(xb, axis=axis))
        np.testing.assert_allclose(got, F.softmax(torch.from_numpy(x), dim=axis).numpy(), rtol=1e-12)
        np.testing.assert_allclose(got.sum(axis=axis), 1.0, rtol=1e-12)
        got_log = backend.to_host(A.log_softmax(xb, axis=axis))
        np.testing.assert_allclose(got_log, F.log_softmax(torch.from_numpy(x), dim=axis).numpy(), rtol=1e-12)


def test_kinks_follow_pytorch(backend):
    x = backend.asarray(np.array([-1.0, 0.0, 1.0]), dtype="float64")
    np.testing.assert_array_equal(backend.to_host(A.relu_derivative(x)), [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(backend.to_host(A.leaky_relu_derivative(x, ALPHA)), [ALPHA, ALPHA, 1.0])
    np.testing.assert_array_equal(backend.to_host(A.leaky_relu_derivative(x)), [0.01, 0.01, 1.0])
    np.testing.assert_array_equal(backend.to_host(A.identity_derivative(x)), [1.0, 1.0, 1.0])
    assert A.identity(x) is x


def test_one_activation_table_names_layers_and_their_functions():
    table = nnx.layers.ACTIVATIONS
    assert set(table) == {"sigmoid", "logistic", "tanh", "relu", "leaky_relu", "softplus", "softmax", "identity",
                          "linear"}
    assert table["logistic"] is nnx.Sigmoid and table["linear"] is nnx.Identity and table["softmax"] is nnx.Softmax
    for name, cls in table.items():
        assert issubclass(cls, nnx.Layer)
        if cls is not nnx.Softmax:  # softmax couples its inputs: a VJP, no elementwise derivative
            assert callable(cls.function) and callable(cls.derivative), name
    assert (nnx.Sigmoid.function, nnx.Sigmoid.derivative) == (A.sigmoid, A.sigmoid_derivative)
    assert (nnx.Softplus.function, nnx.Softplus.derivative) == (A.softplus, A.softplus_derivative)


# -- gradients -----------------------------------------------------------------

def _gradcheck(backend, rng, fn, analytic, x):
    """Compare `analytic` with the finite-difference gradient of sum(fn(x) * w), evaluated on `backend`."""
    w = rng.normal(size=x.shape)
    w_b = backend.asarray(w, dtype="float64")
    xp = backend.xp

    def scalar(x_host):
        return backend.to_float(xp.sum(fn(backend.asarray(x_host, dtype="float64")) * w_b))

    numeric = numerical_gradient(scalar, x)
    got = backend.to_host(analytic(backend.asarray(x, dtype="float64"), w_b))
    assert relative_error(got, numeric) < 1e-6


@pytest.mark.parametrize("name", sorted(DERIVATIVES))
def test_derivative_gradcheck(backend, rng, name):
    fn, deriv = DERIVATIVES[name]
    _gradcheck(backend, rng, fn, lambda x, w: deriv(x) * w, _points(rng))


@pytest.mark.parametrize("axis", [0, -1])
def test_softmax_vjp_gradcheck(backend, rng, axis):
    x = rng.normal(size=(3, 4))
    _gradcheck(backend, rng, lambda x: A.softmax(x, axis=axis),
               lambda x, w: A.softmax_vjp(A.softmax(x, axis=axis), w, axis=axis), x)


def test_log_sigmoid_gradient_is_sigmoid_of_minus_x(backend, rng):
    _gradcheck(backend, rng, A.log_sigmoid, lambda x, w: A.sigmoid(-x) * w, _points(rng))


@pytest.mark.parametrize("name", sorted(DERIVATIVES))
def test_derivative_matches_torch_autograd(backend, rng, name):
    torch, F = _torch()
    fn, deriv = DERIVATIVES[name]
    torch_fn = dict(FUNCTIONS, identity=(None, lambda F, t: t * 1.0))[name][1]
    x = _points(rng)
    t = torch.from_numpy(x).requires_grad_(True)
    torch_fn(F, t).sum().backward()
    got = backend.to_host(deriv(backend.asarray(x, dtype="float64")))
    np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_softmax_vjp_matches_torch_autograd(backend, rng):
    torch, F = _torch()
    x, dY = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    t = torch.from_numpy(x).requires_grad_(True)
    F.softmax(t, dim=-1).backward(torch.from_numpy(dY))
    y = A.softmax(backend.asarray(x, dtype="float64"))
    got = backend.to_host(A.softmax_vjp(y, backend.asarray(dY, dtype="float64")))
    np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-10, atol=1e-15)


# -- extremes ------------------------------------------------------------------

EXTREMES = np.array([-1e4, -1e3, -100.0, -30.0, -5.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 5.0, 30.0, 100.0, 1e3, 1e4])
SOFTMAX_ROWS = np.array([
    [-1e4, 0.0, 1e4],
    [1e4, 9999.0, 9998.0],
    [-1e4, -9999.0, -1e4],
    [1e3, -1e3, 0.0],
])

# Reference values in 60-digit arithmetic (mpmath), rounded once to float64.
_MP_ELEMENTWISE = {
    "sigmoid": lambda mp, x: 1 / (1 + mp.exp(-x)),
    "sigmoid_derivative": lambda mp, x: mp.exp(-x) / (1 + mp.exp(-x)) ** 2,
    "tanh": lambda mp, x: mp.tanh(x),
    "tanh_derivative": lambda mp, x: mp.sech(x) ** 2,
    "relu": lambda mp, x: max(x, 0),
    "relu_derivative": lambda mp, x: mp.mpf(1 if x > 0 else 0),
    "leaky_relu": lambda mp, x: x if x > 0 else ALPHA * x,
    "leaky_relu_derivative": lambda mp, x: mp.mpf(1 if x > 0 else ALPHA),
    "softplus": lambda mp, x: mp.log1p(mp.exp(x)),
    "softplus_derivative": lambda mp, x: 1 / (1 + mp.exp(-x)),
    "log_sigmoid": lambda mp, x: -mp.log1p(mp.exp(-x)),
    "identity": lambda mp, x: x,
    "identity_derivative": lambda mp, x: mp.mpf(1),
}
_NNX_ELEMENTWISE = {
    "sigmoid": A.sigmoid,
    "sigmoid_derivative": A.sigmoid_derivative,
    "tanh": A.tanh,
    "tanh_derivative": A.tanh_derivative,
    "relu": A.relu,
    "relu_derivative": A.relu_derivative,
    "leaky_relu": lambda x: A.leaky_relu(x, ALPHA),
    "leaky_relu_derivative": lambda x: A.leaky_relu_derivative(x, ALPHA),
    "softplus": A.softplus,
    "softplus_derivative": A.softplus_derivative,
    "log_sigmoid": A.log_sigmoid,
    "identity": A.identity,
    "identity_derivative": A.identity_derivative,
}


def _mp_softmax_rows(mp, rows, log):
    out = []
    for row in rows:
        m = max(row)
        total = mp.fsum(mp.exp(v - m) for v in row)
        out.append([(v - m - mp.log(total)) if log else mp.exp(v - m) / total for v in row])
    return out


def _reference(name, x):
    """float64 reference for inputs `x` (already rounded to the dtype under test); skips without mpmath."""
    mp = pytest.importorskip("mpmath")
    with mp.workdps(60):
        if name in ("softmax", "log_softmax"):
            rows = [[mp.mpf(float(v)) for v in row] for row in x]
            return np.array(_mp_softmax_rows(mp, rows, log=name == "log_softmax"), dtype=np.float64)
        f = _MP_ELEMENTWISE[name]
        return np.array([float(f(mp, mp.mpf(float(v)))) for v in x], dtype=np.float64)


def _tolerances(dtype):
    # A few ulps relative; absolute only below the smallest normal number, where
    # the dtype itself cannot hold relative accuracy.
    info = np.finfo(dtype)
    return {"rtol": 16 * float(info.eps), "atol": float(info.tiny)}


def _evaluate_quietly(fn, x):
    """fn(x) with every warning and every NumPy overflow/invalid/divide-by-zero turned into an error."""
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        return fn(x)


@pytest.mark.parametrize("test_dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(_NNX_ELEMENTWISE))
def test_elementwise_extremes_finite_accurate_no_warnings(backend, test_dtype, name):
    x_host = EXTREMES.astype(test_dtype)
    got = backend.to_host(_evaluate_quietly(_NNX_ELEMENTWISE[name], backend.asarray(x_host, dtype=test_dtype)))
    assert got.dtype == np.dtype(test_dtype)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got.astype(np.float64), _reference(name, x_host), **_tolerances(test_dtype))


@pytest.mark.parametrize("test_dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_extremes_finite_accurate_no_warnings(backend, test_dtype, name):
    x_host = SOFTMAX_ROWS.astype(test_dtype)
    fn = getattr(A, name)
    got = backend.to_host(_evaluate_quietly(fn, backend.asarray(x_host, dtype=test_dtype)))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got.astype(np.float64), _reference(name, x_host), **_tolerances(test_dtype))


@pytest.mark.parametrize("test_dtype", ["float32", "float64"])
def test_softmax_vjp_extremes_finite(backend, test_dtype):
    x = backend.asarray(SOFTMAX_ROWS, dtype=test_dtype)
    dY = backend.asarray(np.ones_like(SOFTMAX_ROWS) * 1e3, dtype=test_dtype)
    got = backend.to_host(_evaluate_quietly(lambda x: A.softmax_vjp(A.softmax(x), dY), x))
    assert np.all(np.isfinite(got))
    # A constant upstream gradient is orthogonal to the softmax Jacobian's range.
    np.testing.assert_allclose(got, 0.0, atol=1e-3 if test_dtype == "float32" else 1e-9)


@pytest.mark.parametrize("fast", [True, False], ids=["kernels", "plain"])
def test_relu_backward_passes_the_gradient_where_its_input_is_nan_as_torch_does(backend, dtype, fast):
    """torch's ReLU backward zeroes the gradient where the output is <= 0, so a NaN input passes it on; nnx gave 0
    there (its select kept the gradient where the output is > 0), on every backend and in the torch kernel."""
    torch, F = _torch()
    x = np.array([[np.nan, -1.0, 0.0, -0.0, 2.0, np.inf, -np.inf]])
    dy = np.array([[3.0, 3.0, 3.0, 3.0, 3.0, np.nan, 3.0]])
    t = torch.tensor(x, requires_grad=True)
    F.relu(t).backward(torch.tensor(dy))
    model = nnx.Sequential(nnx.ReLU(), backend=backend.with_fastpath(fast), dtype=dtype)
    model.forward(model.backend.asarray(x, dtype=dtype), training=True)
    got = backend.to_host(model.backward(model.backend.asarray(dy, dtype=dtype)))
    np.testing.assert_array_equal(got, t.grad.numpy().astype(got.dtype))
