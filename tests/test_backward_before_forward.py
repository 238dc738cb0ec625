"""Every layer's backward, built-in or a user's, fails the same clear way when no training forward came first."""

from __future__ import annotations

import numpy as np
import pytest

import nnx

# every built-in layer, made to take and give 4 features
BUILT_INS = {
    "Dense": lambda: nnx.Dense(4, 4),
    "Dropout": lambda: nnx.Dropout(0.5),
    "LeakyReLU": lambda: nnx.LeakyReLU(0.1),
    "ReLU": nnx.ReLU,
    "Sigmoid": nnx.Sigmoid,
    "Softplus": nnx.Softplus,
    "Tanh": nnx.Tanh,
    "Softmax": nnx.Softmax,
    "Identity": nnx.Identity,
    "BatchNorm": lambda: nnx.BatchNorm(4),
    "LayerNorm": lambda: nnx.LayerNorm(4),
    "Flatten": nnx.Flatten,
    "Residual": lambda: nnx.Residual(nnx.Dense(4, 4), nnx.Tanh()),
    "Sequential": lambda: nnx.Sequential(nnx.Dense(4, 4), nnx.Tanh()),
}


class Doubling(nnx.Layer):
    """A user's layer that keeps its input in forward and trusts it to be there in backward."""

    def forward(self, X, training=False):
        if training:
            self.kept = X
        return 2.0 * X

    def backward(self, dY, need_dX=True):
        return 2.0 * dY + 0.0 * self.kept


def test_the_table_holds_every_built_in_layer():
    exported = {name for name in nnx.__all__ if isinstance(getattr(nnx, name), type)
                and issubclass(getattr(nnx, name), nnx.Layer) and name != "Layer"}
    assert exported == set(BUILT_INS)


@pytest.mark.parametrize("name", [*BUILT_INS, "user layer"])
def test_backward_before_a_training_forward_raises_one_clear_error(backend, name):
    layer = Doubling() if name == "user layer" else BUILT_INS[name]()
    model = nnx.Sequential(nnx.Dense(4, 4), layer, backend=backend, dtype="float64", seed=0)
    X = model.backend.asarray(np.ones((3, 4)), dtype="float64")
    expected = rf"{type(layer).__name__}\.backward needs a forward\(X, training=True\) first"
    with pytest.raises(RuntimeError, match=expected):
        layer.backward(X)
    layer.forward(X)  # inference keeps nothing to backpropagate
    with pytest.raises(RuntimeError, match=expected):
        layer.backward(X)
    layer.forward(X, training=True)
    assert tuple(layer.backward(X).shape) == (3, 4)


@pytest.mark.parametrize("name", [name for name in BUILT_INS if name != "Identity"])  # Identity keeps nothing
def test_a_second_backward_of_one_training_forward_raises_the_same_error(backend, name):
    """Each training forward is backpropagated once, as the model's own backward says: a second backward gave a
    bare AttributeError or TypeError (Dense, the activations), or, for Dropout, dY itself without the mask.
    A container's error names the layer inside it that found nothing kept."""
    layer = BUILT_INS[name]()
    model = nnx.Sequential(nnx.Dense(4, 4), layer, backend=backend, dtype="float64", seed=0)
    X = model.backend.asarray(np.ones((3, 4)), dtype="float64")
    layer.forward(X, training=True)
    layer.backward(X)
    with pytest.raises(RuntimeError, match=r"\w+\.backward needs a forward\(X, training=True\) first.*once"):
        layer.backward(X)


def test_a_model_called_in_training_mode_may_backpropagate(backend):
    model = nnx.Sequential(nnx.Dense(4, 2), nnx.Tanh(), backend=backend, dtype="float64", seed=0)
    X = np.ones((3, 4))
    model(X, training=True)  # `__call__` is `forward`, the same training forward
    assert tuple(model.backward(np.ones((3, 2))).shape) == (3, 4)


class Halving(nnx.Layer):
    """A user's layer whose backward names its second argument its own way and takes one more."""

    def forward(self, X, training=False):
        return X / 2

    def backward(self, grad, input_grad=True, scale=1.0):
        return grad / 2 * scale if input_grad else None


def test_the_checking_wrappers_pass_every_argument_through():
    layer = nnx.Sequential(Halving(), backend="numpy", input_shape=(2,)).layers[0]
    X = np.ones((1, 2))
    layer.forward(X, training=True)
    assert layer.backward(X)[0, 0] == 0.5  # need_dX left to the layer's own default
    assert layer.backward(X, False) is None and layer.backward(X, need_dX=False) is None
    assert layer.backward(X, True, 4.0)[0, 0] == 2.0 and layer.backward(X, scale=4.0)[0, 0] == 2.0
    assert layer.backward(X, input_grad=True, scale=4.0)[0, 0] == 2.0
    assert layer.forward(X, True)[0, 0] == layer.forward(X, training=True)[0, 0] == 0.5
