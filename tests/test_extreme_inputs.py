"""Layers and activations at the edges of the floating-point range, against torch.nn.

test_activations.py and test_numerics.py check finite inputs up to +-1e4; here the inputs are +-inf,
NaN, values near the dtype's range (1e30 in float32, 1e300 in float64), +-0.0, and statistics that
degenerate (a constant column or row). Where nnx claims torch's behaviour, it must give torch's
numbers there too: the same NaN where torch gives NaN, the same gradient at a kink or a NaN.
Subnormal inputs are left out: XLA's CPU code flushes them to zero, which nnx does not control.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import pytest

import nnx
from nnx import activations as A
from nnx import activations as act

DTYPES = ["float32", "float64"]


def _torch():
    torch = pytest.importorskip("torch")
    return torch, torch.nn


def _edges(dtype: str) -> np.ndarray:
    """One row of edge inputs: infinities, NaN, near-overflow values, signed zeros and saturating values."""
    big = 1e30 if dtype == "float32" else 1e300
    return np.array([[np.inf, -np.inf, np.nan, big, -big, 0.0, -0.0, 1.0, -1.0, 20.0, -20.0, 100.0, -100.0]],
                    dtype=dtype)


def _same(got, want, rtol, err_msg=""):
    """Equal up to `rtol`, NaN where the other is NaN, infinities equal; values below 1e-30 count as 0 (nnx keeps
    sigmoid's tail where torch underflows)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{err_msg}: NaN positions")
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-30, equal_nan=True, err_msg=err_msg)


@contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf - inf, inf * 0 in NumPy: the inputs doing their job
        yield


ELEMENTWISE = {
    "Sigmoid": (nnx.Sigmoid, lambda nn: nn.Sigmoid()),
    "Tanh": (nnx.Tanh, lambda nn: nn.Tanh()),
    "ReLU": (nnx.ReLU, lambda nn: nn.ReLU()),
    "LeakyReLU": (lambda: nnx.LeakyReLU(0.2), lambda nn: nn.LeakyReLU(0.2)),
    "LeakyReLU(0)": (lambda: nnx.LeakyReLU(0.0), lambda nn: nn.LeakyReLU(0.0)),
    "Softplus": (nnx.Softplus, lambda nn: nn.Softplus()),
    "Identity": (nnx.Identity, lambda nn: nn.Identity()),
}


@pytest.mark.parametrize("test_dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_layers_at_inf_nan_and_huge_inputs_match_torch(backend, test_dtype, name):
    torch, nn = _torch()
    make, make_ref = ELEMENTWISE[name]
    x = _edges(test_dtype)
    dy = np.full_like(x, 0.7)
    model = nnx.Sequential(make(), backend=backend, dtype=test_dtype)
    with _quiet():
        Y = backend.to_host(model.forward(backend.asarray(x, dtype=test_dtype), training=True))
        dX = backend.to_host(model.backward(backend.asarray(dy, dtype=test_dtype)))
    t = torch.tensor(x, requires_grad=True)
    make_ref(nn)(t).backward(torch.tensor(dy))
    rtol = 1e-6 if test_dtype == "float32" else 1e-12  # Softplus is exact beyond torch's threshold of 20
    _same(Y, make_ref(nn)(torch.tensor(x)).numpy(), rtol, "forward")
    _same(dX, t.grad.numpy(), rtol, "backward")


@pytest.mark.parametrize("test_dtype", DTYPES)
def test_relu_derivative_at_nan_is_the_layers_and_torchs(backend, test_dtype):
    """`nnx.activations.relu_derivative` is `nnx.ReLU.derivative`; torch's ReLU backward (and nnx.ReLU's) passes
    the gradient where the input is NaN (zero only where it is <= 0), but the function gave 0 there."""
    torch, _ = _torch()
    x = _edges(test_dtype)
    t = torch.tensor(x, requires_grad=True)
    torch.relu(t).sum().backward()
    got = backend.to_host(A.relu_derivative(backend.asarray(x, dtype=test_dtype)))
    np.testing.assert_array_equal(got, t.grad.numpy())
    model = nnx.Sequential(nnx.ReLU(), backend=backend, dtype=test_dtype)
    model.forward(backend.asarray(x, dtype=test_dtype), training=True)
    np.testing.assert_array_equal(backend.to_host(model.backward(backend.asarray(np.ones_like(x), dtype=test_dtype))),
                                  got)


def _softmax_rows(dtype: str) -> np.ndarray:
    big = 1e30 if dtype == "float32" else 1e300
    inf, nan = np.inf, np.nan
    return np.array([[big, 0.0, -big], [-inf, -inf, -inf], [1.0, inf, 2.0], [inf, inf, 0.0], [nan, 1.0, 2.0],
                     [0.0, -inf, 1.0], [big, big, big], [-inf, 0.0, inf]], dtype=dtype)


@pytest.mark.parametrize("test_dtype", DTYPES)
def test_softmax_and_log_softmax_rows_of_infinities_match_torch(backend, test_dtype):
    """A row of all -inf is NaN (torch's answer, not a uniform row); a masked (-inf) logit is exactly 0 with a 0
    gradient; a row with +inf is NaN; huge finite logits are exact."""
    torch, _ = _torch()
    x = _softmax_rows(test_dtype)
    dy = np.tile(np.array([[1.0, 2.0, 3.0]], dtype=test_dtype), (x.shape[0], 1))
    model = nnx.Sequential(nnx.Softmax(), backend=backend, dtype=test_dtype)
    with _quiet():
        Y = backend.to_host(model.forward(backend.asarray(x, dtype=test_dtype), training=True))
        dX = backend.to_host(model.backward(backend.asarray(dy, dtype=test_dtype)))
        log_Y = backend.to_host(A.log_softmax(backend.asarray(x, dtype=test_dtype)))
    t = torch.tensor(x, requires_grad=True)
    torch.softmax(t, -1).backward(torch.tensor(dy))
    rtol = 1e-6 if test_dtype == "float32" else 1e-12
    _same(Y, torch.softmax(torch.tensor(x), -1).numpy(), rtol, "softmax")
    _same(dX, t.grad.numpy(), rtol, "softmax backward")
    _same(log_Y, torch.log_softmax(torch.tensor(x), -1).numpy(), rtol, "log_softmax")


@pytest.mark.parametrize("test_dtype", DTYPES)
def test_batchnorm_degenerate_columns_match_torch(backend, test_dtype):
    """Columns: constant (variance 0: eps keeps it finite, the output is exactly the bias), a huge constant, an inf
    and a NaN (each spoils only its own column and its running statistics, as in torch), and an ordinary one."""
    torch, nn = _torch()
    big = 1e30 if test_dtype == "float32" else 1e300
    x = np.array([[3.0, big, np.inf, np.nan, 1.0],
                  [3.0, big, 0.0, 0.0, -2.0],
                  [3.0, big, 1.0, 1.0, 0.5],
                  [3.0, big, 2.0, 2.0, 4.0]], dtype=test_dtype)
    dy = np.array([[1.0, -2.0, 3.0, 0.5, 1.5]] * 2 + [[-1.0, 0.25, 2.0, 1.0, -0.5]] * 2, dtype=test_dtype)
    model = nnx.Sequential(nnx.BatchNorm(5), backend=backend, dtype=test_dtype)
    layer = model.layers[0]
    with _quiet():
        Y = backend.to_host(model.forward(backend.asarray(x, dtype=test_dtype), training=True))
        dX = backend.to_host(model.backward(backend.asarray(dy, dtype=test_dtype)))
    ref = nn.BatchNorm1d(5, dtype=getattr(torch, test_dtype))
    t = torch.tensor(x, requires_grad=True)
    out = ref(t)
    out.backward(torch.tensor(dy))
    want_Y = out.detach().numpy().copy()
    # torch's float32 mean of a constant column is off by rounding (3e-5 at 3.0) and its huge constant column
    # overflows in its variance pass (1e24 or 1e285 out): the exact answer there is the bias, 0
    want_Y[:, :2] = 0.0
    rtol = 1e-4 if test_dtype == "float32" else 1e-10
    _same(Y, want_Y, rtol, "forward")
    ok = [0, 2, 3, 4]  # torch's backward through its overflowed huge column is no reference
    _same(dX[:, ok], t.grad.numpy()[:, ok], rtol, "backward")
    _same(backend.to_host(layer.weight.grad)[ok], ref.weight.grad.numpy()[ok], rtol, "weight grad")
    running = {"running_mean": ref.running_mean.numpy(), "running_var": ref.running_var.numpy()}
    for name, want in running.items():
        _same(backend.to_host(getattr(layer, name).value), want, rtol, name)


@pytest.mark.parametrize("test_dtype", DTYPES)
def test_layernorm_constant_and_non_finite_rows_match_torch(backend, test_dtype):
    """A constant row normalises to exactly 0 (variance 0, eps keeps it finite) with a finite gradient; an inf or
    NaN spoils only its own row, as in torch."""
    torch, nn = _torch()
    x = np.array([[3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0], [np.inf, 0.0, 1.0, 2.0], [np.nan, 0.0, 1.0, 2.0],
                  [1e4 + 1, 1e4 - 1, 1e4, 1e4], [1.0, -2.0, 0.5, 4.0]], dtype=test_dtype)
    dy = np.tile(np.array([[1.0, -2.0, 3.0, 0.5]], dtype=test_dtype), (x.shape[0], 1))
    model = nnx.Sequential(nnx.LayerNorm(4), backend=backend, dtype=test_dtype)
    with _quiet():
        Y = backend.to_host(model.forward(backend.asarray(x, dtype=test_dtype), training=True))
        dX = backend.to_host(model.backward(backend.asarray(dy, dtype=test_dtype)))
    # the reference in float64: torch's float32 LayerNorm rounds the row of mean 1e4 (nnx's two passes do not)
    ref = nn.LayerNorm(4, dtype=torch.float64)
    t = torch.tensor(x.astype(np.float64), requires_grad=True)
    ref(t).backward(torch.tensor(dy.astype(np.float64)))
    rtol = 1e-3 if test_dtype == "float32" else 1e-9
    _same(Y, ref(torch.tensor(x.astype(np.float64))).detach().numpy(), rtol, "forward")
    np.testing.assert_array_equal(Y[:2], 0.0)
    _same(dX, t.grad.numpy(), rtol, "backward")


# Activation layers at extreme inputs against torch.
EXTREMES = [-np.inf, -1e30, -1e4, -100.0, -20.0, -1e-30, -0.0, 0.0, 1e-30, 20.0, 100.0, 1e4, 1e30, np.inf, np.nan]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "leaky_relu", "softplus"])
def test_activation_layers_agree_with_torch_at_extreme_inputs(name, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    reference = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
                 "leaky_relu": lambda t: F.leaky_relu(t, 0.01), "softplus": F.softplus}[name]
    x = np.array(EXTREMES, dtype=dtype)[None, :]
    model = nnx.Sequential(nnx.layers.ACTIVATIONS[name](), dtype=dtype, input_shape=(x.shape[1],))
    layer = model.layers[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-value warnings either
        Y = layer.forward(x, training=True)
        dX = layer.backward(np.ones_like(x))
        f, d = layer.function(x), layer.derivative(x)
    t = torch.tensor(x, requires_grad=True)
    ty = reference(t)
    ty.backward(torch.ones_like(ty))
    ry, rg = ty.detach().numpy(), t.grad.numpy()
    tiny = float(np.finfo(dtype).tiny)  # nnx keeps subnormal tails torch rounds to 0, and accurate sech^2 tails
    for ours in (Y, f):
        np.testing.assert_allclose(ours, ry, rtol=1e-6, atol=tiny)
        assert np.array_equal(np.isnan(ours), np.isnan(ry))
    for ours in (dX, d):
        np.testing.assert_allclose(ours, rg, rtol=1e-6, atol=1e-8)
        assert np.array_equal(np.isnan(ours), np.isnan(rg))


def test_softmax_rows_with_infinities_are_nan_where_torch_is():
    torch = pytest.importorskip("torch")
    x = np.array([[0.0, 1.0], [-np.inf, 0.0], [np.inf, 0.0], [np.nan, 0.0], [-np.inf, -np.inf], [1e30, -1e30]])
    with np.errstate(invalid="ignore"):
        ours = act.softmax(x)
    ref = torch.softmax(torch.tensor(x), -1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))
