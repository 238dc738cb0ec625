"""Initializers and activations as a PyTorch user reads them: torch.nn.init's fans and bounds, torch's functions.

test_init.py checks each initializer against its written-out formula and test_activations.py /
test_extreme_inputs.py check the activations at extreme inputs; here the reference is torch's own code
(`torch.nn.init` on a tensor laid out as torch lays it out, `torch.nn.functional` with its autograd), and an
activation layer's `function` / `derivative` are checked as what that layer computes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nnx
from nnx import activations as A


def _torch():
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


# -- an activation layer's function and derivative are the layer's -------------------------------------

@pytest.mark.parametrize("alpha", [0.2, 0.0, 1.5])
def test_leaky_relu_layers_function_and_derivative_use_its_slope(alpha):
    """`LeakyReLU(0.2).function(x)` (the attribute documented as "the activation as a plain function") used the
    default slope 0.01, so a user evaluating or plotting a layer's activation got another function than the layer's
    forward and backward, without a word."""
    torch, F = _torch()
    x = np.array([-3.0, -0.5, -0.0, 0.0, 0.5, 3.0, -np.inf, np.nan])
    t = torch.tensor(x, requires_grad=True)
    F.leaky_relu(t, alpha).backward(torch.ones_like(t))
    want_y, want_d = F.leaky_relu(torch.tensor(x), alpha).numpy(), t.grad.numpy()
    layer = nnx.Sequential(nnx.LeakyReLU(alpha), dtype="float64").layers[0]
    with np.errstate(invalid="ignore"):  # 0 * -inf, as torch's NaN
        np.testing.assert_array_equal(layer.function(x), want_y)
        np.testing.assert_array_equal(layer.derivative(x), want_d)
        np.testing.assert_array_equal(np.asarray(layer.forward(x, training=True)), want_y)
    np.testing.assert_array_equal(np.asarray(layer.backward(np.ones_like(x))), want_d)
    layer.negative_slope = 0.3  # set later, torch's name: the function follows the live setting
    np.testing.assert_array_equal(layer.function(np.array([-1.0, 2.0])), [-0.3, 2.0])
    np.testing.assert_array_equal(layer.derivative(np.array([-1.0, 2.0])), [0.3, 1.0])
    # the class still names the plain functions (the activation table, plot_activations)
    assert nnx.LeakyReLU.function is A.leaky_relu and nnx.LeakyReLU.derivative is A.leaky_relu_derivative
    assert nnx.ReLU().function is A.relu



def test_leaky_relu_layers_function_still_takes_a_slope_given_to_it():
    """Before the layer bound its own slope, ``layer.function`` was `nnx.activations.leaky_relu` itself, so code
    that passed the slope (``layer.function(x, layer.alpha)``, the way around the default-slope bug, or another
    one to compare) ran; binding the slope must not turn that call into a TypeError. A slope given is the one used,
    as the plain function takes it; without one the layer's live slope is."""
    layer = nnx.LeakyReLU(0.2)
    x = np.array([-1.0, 2.0])
    np.testing.assert_array_equal(layer.function(x, 0.2), A.leaky_relu(x, 0.2))
    np.testing.assert_array_equal(layer.function(x, alpha=0.5), [-0.5, 2.0])
    np.testing.assert_array_equal(layer.derivative(x, 0.3), [0.3, 1.0])
    np.testing.assert_array_equal(layer.function(x), [-0.2, 2.0])

# -- initializers against torch.nn.init ------------------------------------------------------------------

class InitVsTorchKernel(nnx.Layer):
    """Holds one parameter of `shape` drawn by `init`, laid out as nnx documents kernels: (*receptive, in, out)."""

    def __init__(self, shape=(3, 3, 16, 32), init="he"):
        super().__init__()
        self.shape, self.init = tuple(shape), init

    def build(self, input_shape):
        self.kernel = self.add_parameter("kernel", self.shape, init=self.init)

    def forward(self, X, training=False):
        return X


# nnx name -> torch.nn.init draw of a tensor in torch's layout (out, in, *receptive)
TORCH_INIT = {
    "he_normal": lambda init, t: init.kaiming_normal_(t, nonlinearity="relu"),
    "kaiming": lambda init, t: init.kaiming_normal_(t),  # torch's default: leaky_relu with a=0, gain sqrt(2)
    "he_uniform": lambda init, t: init.kaiming_uniform_(t, nonlinearity="relu"),
    "glorot_uniform": lambda init, t: init.xavier_uniform_(t),
    "xavier": lambda init, t: init.xavier_uniform_(t),
    "glorot_normal": lambda init, t: init.xavier_normal_(t),
    "lecun": lambda init, t: init.kaiming_normal_(t, nonlinearity="linear"),  # gain 1: std 1/sqrt(fan_in)
    "standard_normal": lambda init, t: init.normal_(t),
}
UNIFORM = {"he_uniform", "glorot_uniform", "xavier"}


def _torch_layout(shape):
    """nnx's (*receptive, in, out) as torch lays out the same weight: (out, in, *receptive)."""
    return (shape[-1], shape[-2], *shape[:-2])


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (5, 24, 48), (3, 3, 16, 32)],
                         ids=["dense-wide-in", "dense-wide-out", "conv1d", "conv2d"])
@pytest.mark.parametrize("name", sorted(TORCH_INIT))
def test_initializer_draws_torch_nn_inits_distribution(name, shape):
    """A weight drawn by name has the spread torch.nn.init gives the same weight in torch's layout: the fans
    (the receptive field counted in both), the gain and uniform's bound, not only the written-out formula."""
    torch, _ = _torch()
    torch.manual_seed(0)
    reference = TORCH_INIT[name](torch.nn.init, torch.empty(_torch_layout(shape), dtype=torch.float64)).numpy()
    if len(shape) == 2:  # through Dense, as users draw it
        model = nnx.Sequential(nnx.Dense(*shape, init=name), seed=0, dtype="float64")
        got = np.asarray(model.state_dict()["0.weight"])
    else:
        model = nnx.Sequential(InitVsTorchKernel(shape, name), seed=0, dtype="float64", input_shape=(2,))
        got = np.asarray(model.state_dict()["0.kernel"])
    assert got.shape == shape
    n = got.size
    assert got.std() == pytest.approx(reference.std(), rel=6 / math.sqrt(n))
    assert abs(got.mean()) < 5 * reference.std() / math.sqrt(n)
    if name in UNIFORM:  # the same bound: both reach within a hair of it, neither beyond
        bound = max(np.abs(reference).max(), np.abs(got).max())
        assert np.abs(got).max() > bound * (1 - 20 / n) and np.abs(reference).max() > bound * (1 - 20 / n)
    else:  # both untruncated normals
        assert np.abs(got).max() > 3.3 * got.std() and np.abs(reference).max() > 3.3 * reference.std()


@pytest.mark.parametrize("test_dtype", ["float32", "float64"])
def test_same_seed_same_initial_arrays_and_the_models_dtype_on_every_backend(backend, test_dtype):
    """Every parameter and buffer on every backend: the host's float64 draw of that seed, rounded once to the
    model's dtype, held in that dtype (a float64 weight in a float32 model would promote every activation)."""
    layers = lambda: [nnx.Dense(3, 5, init="glorot"), nnx.BatchNorm(5), nnx.LeakyReLU(0.2),  # noqa: E731
                      nnx.Dense(5, 4, init="he_uniform"), nnx.LayerNorm(4), nnx.Dense(4, 2, init="lecun")]
    host = nnx.Sequential(*layers(), seed=11, dtype="float64")
    model = nnx.Sequential(*layers(), backend=backend, seed=11, dtype=test_dtype)
    want_dtype = backend.float_dtype(test_dtype)
    state = model.state_dict()
    assert state.keys() == host.state_dict().keys()
    for key, value in state.items():
        assert value.dtype == want_dtype, key
        np.testing.assert_array_equal(np.asarray(backend.to_host(value)),
                                      np.asarray(host.state_dict()[key]).astype(test_dtype), err_msg=key)


class InitVsTorchFromArray(nnx.Layer):
    """One (2, 3) parameter whose `init` is whatever the test gives."""

    def __init__(self, init):
        super().__init__()
        self.init = init

    def build(self, input_shape):
        self.w = self.add_parameter("w", (2, 3), init=self.init)

    def forward(self, X, training=False):
        return X


@pytest.mark.parametrize("kind", ["numpy", "numpy-0d", "torch"])
def test_an_array_given_as_init_gets_an_error_that_says_how_to_start_from_it(kind):
    """A torch user starts a parameter from a tensor (``nn.Parameter(t)``); nnx's `init` takes no array. A NumPy
    array of more than one element was compared with "zeros" and raised NumPy's "truth value of an array ...
    is ambiguous", naming neither the parameter nor `init`; every array now gets the same TypeError, naming
    the parameter and the way to start from given values."""
    torch, _ = _torch()
    init = {"numpy": np.full((2, 3), 0.5), "numpy-0d": np.array(0.5), "torch": torch.full((2, 3), 0.5)}[kind]
    with pytest.raises(TypeError, match=r"init for '0\.w' .*got (ndarray|Tensor).*lambda rng, shape"):
        nnx.Sequential(InitVsTorchFromArray(init), seed=0, input_shape=(2,))
    # the way the message gives
    model = nnx.Sequential(InitVsTorchFromArray(lambda rng, shape: np.full(shape, 0.5)), seed=0, input_shape=(2,))
    np.testing.assert_array_equal(np.asarray(model.layers[0].w.value), np.full((2, 3), 0.5))


# -- activations at subnormal inputs and signed zeros against torch --------------------------------------

ELEMENTWISE = {  # name -> (nnx function, nnx derivative, torch function of (F, tensor))
    "sigmoid": (A.sigmoid, A.sigmoid_derivative, lambda F, t: t.sigmoid()),
    "tanh": (A.tanh, A.tanh_derivative, lambda F, t: t.tanh()),
    "relu": (A.relu, A.relu_derivative, lambda F, t: F.relu(t)),
    "leaky_relu": (lambda x: A.leaky_relu(x, 0.2), lambda x: A.leaky_relu_derivative(x, 0.2),
                   lambda F, t: F.leaky_relu(t, 0.2)),
    "softplus": (A.softplus, A.softplus_derivative, lambda F, t: F.softplus(t)),
    "log_sigmoid": (A.log_sigmoid, lambda x: A.sigmoid(-x), lambda F, t: F.logsigmoid(t)),
}


@pytest.mark.parametrize("test_dtype", ["float32", "float64"])
def test_elementwise_activations_at_subnormals_and_signed_zeros_match_torch(backend, test_dtype):
    """The smallest inputs, where a kink's subgradient is decided: a positive subnormal is > 0 (ReLU's derivative
    1, not the 0 of an input flushed to zero), -0.0 and 0.0 take the kink's value, as torch's autograd does."""
    if backend.name == "jax":
        pytest.skip("XLA's CPU code flushes subnormal inputs to zero, which nnx does not control")
    torch, F = _torch()
    tiny = np.finfo(test_dtype).smallest_subnormal
    x = np.array([-tiny, tiny, -4 * tiny, 4 * tiny, -0.0, 0.0], dtype=test_dtype)
    for name, (function, derivative, reference) in ELEMENTWISE.items():
        t = torch.tensor(x, requires_grad=True)
        reference(F, t).backward(torch.ones_like(t))
        xb = backend.asarray(x, dtype=test_dtype)
        y, d = backend.to_host(function(xb)), backend.to_host(derivative(xb))
        assert y.dtype == np.dtype(test_dtype) and d.dtype == np.dtype(test_dtype), name
        np.testing.assert_allclose(y, reference(F, torch.tensor(x)).numpy(), rtol=1e-6, atol=0, err_msg=name)
        np.testing.assert_allclose(d, t.grad.numpy(), rtol=1e-6, atol=0, err_msg=name)
