"""Initializers and activations as a PyTorch user reads them: torch.nn.init's fans and bounds, torch's functions.

test_init.py checks each initializer against its written-out formula and test_activations.py /
test_extreme_inputs.py check the activations at extreme inputs; here the reference is torch's own code
(`torch.nn.init` on a tensor laid out as torch lays it out, `torch.nn.functional` with its autograd), and an
activation layer's `function` / `derivative` are checked as what that layer computes.
"""

from __future__ import annotations

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
