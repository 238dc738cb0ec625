"""Activation layers: elementwise (Sigmoid, Tanh, ReLU, LeakyReLU, Softplus, Identity) and Softmax over the last axis.

`ACTIVATIONS` is nnx's one table of activation names (as scikit-learn and Keras
spell them) -> layer class. An elementwise layer class names its function and
derivative (`function`, `derivative`, from `nnx.activations`), so a plot or an
estimator that takes an activation by name finds everything through the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import _validate as check
from .. import activations as act
from .base import Layer
from .passes import nothing_kept


class _Activation(Layer):
    """An activation layer; an elementwise one sets `function` and `derivative` (None for Softmax)."""

    function: Callable[..., Any] | None = None
    """The activation as a plain function of an array (`nnx.activations`)."""
    derivative: Callable[..., Any] | None = None
    """Its derivative w.r.t. the input, elementwise."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: Any = None


class _WithTheLayersSlope:
    """A function of `nnx.activations` taking a slope: on the class, the plain function (default slope, for the
    activation table and `plot_activations`); on a layer, that function with the layer's `alpha` as it is when
    called, so ``layer.function(x)`` is what the layer computes (it was the default slope, 0.01, whatever the
    layer's). A slope passed (``layer.function(x, 0.2)``, as the plain function takes it) is used instead."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # a callable itself, as the declared attribute is
        return self.function(*args, **kwargs)

    def __get__(self, layer: Any, owner: Any = None) -> Callable[..., Any]:
        function = self.function
        if layer is None:
            return function

        def with_the_layers_slope(x: Any, alpha: float | None = None) -> Any:
            # a slope given is used, as the plain function (what this attribute was) takes one
            return function(x, float(layer.alpha) if alpha is None else alpha)

        with_the_layers_slope.__doc__ = function.__doc__
        return with_the_layers_slope


class Sigmoid(_Activation):
    """Logistic sigmoid, 1 / (1 + exp(-x)), computed without overflow."""

    function, derivative = staticmethod(act.sigmoid), staticmethod(act.sigmoid_derivative)

    def forward(self, X: Any, training: bool = False) -> Any:
        Y = act.sigmoid(X)
        if training:
            self._cache = Y
        return Y

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        Y, self._cache = self._cache, None
        if Y is None:
            raise nothing_kept(self)
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

    function, derivative = staticmethod(act.tanh), staticmethod(act.tanh_derivative)

    def forward(self, X: Any, training: bool = False) -> Any:
        Y = self.xp.tanh(X)
        if training:
            self._cache = Y
        return Y

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        Y, self._cache = self._cache, None
        if Y is None:
            raise nothing_kept(self)
        return dY * (1.0 - Y * Y)

    def to_onnx(self, graph: Any, X: str) -> str:
        return graph.add_node("Tanh", [X])


class ReLU(_Activation):
    """Rectified linear unit, max(x, 0); its derivative at 0 is taken as 0, as in PyTorch."""

    function, derivative = staticmethod(act.relu), staticmethod(act.relu_derivative)

    def forward(self, X: Any, training: bool = False) -> Any:
        Y = self.xp.maximum(X, 0.0)
        if training:
            self._cache = Y
        return Y

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        Y, self._cache = self._cache, None
        if Y is None:
            raise nothing_kept(self)
        # zero where the output is <= 0, as torch's backward: where it is NaN (a NaN input) the gradient passes
        return self.xp.where(Y <= 0.0, 0.0, dY)

    def to_onnx(self, graph: Any, X: str) -> str:
        return graph.add_node("Relu", [X])


class LeakyReLU(_Activation):
    """Leaky ReLU: x for x > 0, alpha * x otherwise.

    Args:
        alpha: slope for negative inputs, >= 0.
    """

    function, derivative = _WithTheLayersSlope(act.leaky_relu), _WithTheLayersSlope(act.leaky_relu_derivative)

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        self.alpha = check.non_negative("LeakyReLU alpha", alpha)

    @property
    def negative_slope(self) -> float:
        """torch's (and Keras 3's) name for `alpha`: the same setting, so code that sets it changes the slope."""
        return self.alpha

    @negative_slope.setter
    def negative_slope(self, value: float) -> None:
        self.alpha = value

    def forward(self, X: Any, training: bool = False) -> Any:
        if training:
            self._cache = X
        # float(): a NumPy float64 set after construction would make a float32 model's arrays float64 (NumPy's
        # scalars keep their dtype; Python's take the array's)
        return act.leaky_relu(X, float(self.alpha))

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        X, self._cache = self._cache, None
        if X is None:
            raise nothing_kept(self)
        return self.xp.where(X > 0.0, dY, float(self.alpha) * dY)

    def to_onnx(self, graph: Any, X: str) -> str:
        if graph.dtype == "float32":
            # a float: an int slope (layer.alpha = 2) would make an INT attribute, which LeakyRelu refuses
            return graph.add_node("LeakyRelu", [X], alpha=float(self.alpha))
        # LeakyRelu's alpha is a 32-bit attribute: a float64 model spells the op out with its exact slope
        positive = graph.add_node("Greater", [X, graph.add_initializer(0.0, "zero")])
        scaled = graph.add_node("Mul", [X, graph.add_initializer(self.alpha, "alpha")])
        return graph.add_node("Where", [positive, X, scaled], name="LeakyRelu")

    def get_config(self) -> dict:
        config = super().get_config()
        if "alpha" in config:  # the live slope: one set after construction is what copies, files and programs get
            config["alpha"] = float(self.alpha)
        return config


class Softplus(_Activation):
    """Softplus, log(1 + exp(x)), computed without overflow; a smooth ReLU."""

    function, derivative = staticmethod(act.softplus), staticmethod(act.softplus_derivative)

    def forward(self, X: Any, training: bool = False) -> Any:
        if training:
            self._cache = X
        return act.softplus(X)

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        X, self._cache = self._cache, None
        if X is None:
            raise nothing_kept(self)
        return dY * act.sigmoid(X)

    def to_onnx(self, graph: Any, X: str) -> str:
        # max(x, 0) + log1p(exp(-|x|)), as forward computes it: no exp of a large positive number. ONNX has
        # no Log1p, and Log(1 + t) rounds t away below the dtype's epsilon (0 for x < -17 in float32, a
        # relative error over 1e-5 from x < -5), so log1p(t) is log(u) * t / (u - 1) with u = 1 + t, which
        # is exact to a few ulps, and t itself where u rounds to 1 (Goldberg, "What every computer
        # scientist should know about floating-point arithmetic", theorem 4)
        tail = graph.add_node("Exp", [graph.add_node("Neg", [graph.add_node("Abs", [X])])])
        one = graph.add_initializer(1.0, "one")
        u = graph.add_node("Add", [one, tail])
        u_minus_1 = graph.add_node("Sub", [u, one])
        ratio = graph.add_node("Div", [tail, u_minus_1])  # inf or NaN where u - 1 is 0; Where drops it
        rounded_away = graph.add_node("Equal", [u_minus_1, graph.add_initializer(0.0, "zero")])
        log1p = graph.add_node("Where", [rounded_away, tail,
                                         graph.add_node("Mul", [graph.add_node("Log", [u]), ratio])], name="Log1p")
        relu = graph.add_node("Relu", [X])
        return graph.add_node("Add", [relu, log1p], name="Softplus")


class Softmax(_Activation):
    """Softmax over the feature axis; pair it with `CrossEntropy(from_logits=False)`."""

    def forward(self, X: Any, training: bool = False) -> Any:
        Y = act.softmax(X, axis=-1)
        if training:
            self._cache = Y
        return Y

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        Y, self._cache = self._cache, None
        if Y is None:
            raise nothing_kept(self)
        return act.softmax_vjp(Y, dY, axis=-1)

    def to_onnx(self, graph: Any, X: str) -> str:
        return graph.add_node("Softmax", [X], axis=-1)


class Identity(_Activation):
    """Passes its input through; useful as an explicit linear output."""

    function, derivative = staticmethod(act.identity), staticmethod(act.identity_derivative)

    def forward(self, X: Any, training: bool = False) -> Any:
        return X

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        return dY

    def to_onnx(self, graph: Any, X: str) -> str:
        return X


ACTIVATIONS: dict[str, type[_Activation]] = {
    "sigmoid": Sigmoid, "logistic": Sigmoid, "tanh": Tanh, "relu": ReLU, "leaky_relu": LeakyReLU,
    "softplus": Softplus, "softmax": Softmax, "identity": Identity, "linear": Identity,
}
"""Activation names (as scikit-learn and Keras spell them) -> layer class: nnx's one table of them."""
