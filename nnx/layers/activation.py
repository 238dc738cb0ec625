"""Activation layers: elementwise (Sigmoid, Tanh, ReLU, LeakyReLU, Identity) and Softmax over the last axis."""

from __future__ import annotations

from typing import Any

from .. import _validate as check
from .. import activations as act
from .base import Layer


class _Activation(Layer):
    """An elementwise activation; subclasses set `_forward` and the backward rule."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: Any = None


class Sigmoid(_Activation):
    """Logistic sigmoid, 1 / (1 + exp(-x)), computed without overflow."""

    def forward(self, X: Any, training: bool = False) -> Any:
        Y = act.sigmoid(X)
        if training:
            self._cache = Y
        return Y

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        Y, self._cache = self._cache, None
        return dY * (Y * (1.0 - Y))

    def to_onnx(self, graph: Any, X: str) -> str:
        # spelled out as forward computes it: onnxruntime's Sigmoid kernel keeps only absolute accuracy
        # in the negative tail (in float32 off by up to 17% of the value near x = -15)
        e = graph.add_node("Exp", [graph.add_node("Neg", [graph.add_node("Abs", [X])])])
        one = graph.add_initializer(1.0, "one")
        denominator = graph.add_node("Add", [one, e])
        positive = graph.add_node("GreaterOrEqual", [X, graph.add_initializer(0.0, "zero")])
        return graph.add_node("Where", [positive, graph.add_node("Div", [one, denominator]),
                                        graph.add_node("Div", [e, denominator])], name="Sigmoid")


class Tanh(_Activation):
    """Hyperbolic tangent."""

    def forward(self, X: Any, training: bool = False) -> Any:
        Y = self.xp.tanh(X)
        if training:
            self._cache = Y
        return Y

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        Y, self._cache = self._cache, None
        return dY * (1.0 - Y * Y)

    def to_onnx(self, graph: Any, X: str) -> str:
        return graph.add_node("Tanh", [X])


class ReLU(_Activation):
    """Rectified linear unit, max(x, 0); its derivative at 0 is taken as 0, as in PyTorch."""

    def forward(self, X: Any, training: bool = False) -> Any:
        Y = self.xp.maximum(X, 0.0)
        if training:
            self._cache = Y
        return Y

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        Y, self._cache = self._cache, None
        return self.xp.where(Y > 0.0, dY, 0.0)

    def to_onnx(self, graph: Any, X: str) -> str:
        return graph.add_node("Relu", [X])


class LeakyReLU(_Activation):
    """Leaky ReLU: x for x > 0, alpha * x otherwise.

    Args:
        alpha: slope for negative inputs, >= 0.
    """

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = check.non_negative("LeakyReLU alpha", alpha)

    def forward(self, X: Any, training: bool = False) -> Any:
        if training:
            self._cache = X
        return act.leaky_relu(X, self.alpha)

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        X, self._cache = self._cache, None
        return self.xp.where(X > 0.0, dY, self.alpha * dY)

    def to_onnx(self, graph: Any, X: str) -> str:
        if graph.dtype == "float32":
            return graph.add_node("LeakyRelu", [X], alpha=self.alpha)
        # LeakyRelu's alpha is a 32-bit attribute: a float64 model spells the op out with its exact slope
        positive = graph.add_node("Greater", [X, graph.add_initializer(0.0, "zero")])
        scaled = graph.add_node("Mul", [X, graph.add_initializer(self.alpha, "alpha")])
        return graph.add_node("Where", [positive, X, scaled], name="LeakyRelu")


class Softmax(_Activation):
    """Softmax over the feature axis; pair it with `CrossEntropy(from_logits=False)`."""

    def forward(self, X: Any, training: bool = False) -> Any:
        Y = act.softmax(X, axis=-1)
        if training:
            self._cache = Y
        return Y

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        Y, self._cache = self._cache, None
        return act.softmax_vjp(Y, dY, axis=-1)

    def to_onnx(self, graph: Any, X: str) -> str:
        return graph.add_node("Softmax", [X], axis=-1)


class Identity(_Activation):
    """Passes its input through; useful as an explicit linear output."""

    def forward(self, X: Any, training: bool = False) -> Any:
        return X

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        return dY

    def to_onnx(self, graph: Any, X: str) -> str:
        return X


ACTIVATION_LAYERS: dict[str, type[Layer]] = {
    "sigmoid": Sigmoid, "logistic": Sigmoid, "tanh": Tanh, "relu": ReLU,
    "leaky_relu": LeakyReLU, "softmax": Softmax, "identity": Identity, "linear": Identity,
}
"""Activation names (as scikit-learn and Keras spell them) -> layer class."""
