"""Layers: Dense, Dropout and the activation layers, each with forward and backward."""

from __future__ import annotations

import math
import numbers
from typing import Any

from . import activations as act
from .init import get_initializer
from .parameter import Parameter
from .regularizers import Regularizer, get_regularizer


class Layer:
    """One step of a `Sequential` model: `forward` maps X to Y, `backward` maps dY to dX.

    A layer is built by its model, which hands it the backend, dtype and host
    generator; `forward(training=True)` keeps what `backward` needs.
    """

    regularizer: Regularizer | None = None

    def __init__(self) -> None:
        self.backend: Any = None
        self.xp: Any = None
        self.dtype: Any = None
        self._params: list[Parameter] = []

    def build(self, backend: Any, dtype: Any, gen: Any, prefix: str, model_rng: Any = None) -> None:
        """Bind to a backend and create parameters; `prefix` names them (``"0."``)."""
        self.backend = backend
        self.xp = backend.xp
        self.dtype = dtype

    def parameters(self) -> list[Parameter]:
        """The layer's trainable parameters, weight before bias."""
        return list(self._params)

    def output_features(self, in_features: int | None) -> int | None:
        """Features out for `in_features` in; shape-preserving layers pass it through."""
        return in_features

    def forward(self, X: Any, training: bool = False) -> Any:
        """Output for a batch; with `training=True`, also keep what `backward` needs."""
        raise NotImplementedError

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        """Fill parameter gradients and return dL/dX (None when `need_dX` is False)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        """JSON-serialisable constructor arguments, with the class name under "type"."""
        return {"type": type(self).__name__}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items() if k != "type")
        return f"{type(self).__name__}({args})"


def _check_size(name: str, value: Any) -> int:
    # numbers.Integral: sizes computed with NumPy (np.int64) are ints too; stored as int for the JSON config
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return int(value)


class Dense(Layer):
    """Fully connected layer, ``Y = X @ weight + bias``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        init: weight initializer name (see `nnx.init.INITIALIZERS`); biases start at zero.
        regularizer: penalty on this layer's weight (`nnx.regularizers`), or None.
    """

    def __init__(self, in_features: int, out_features: int, init: str = "he",
                 regularizer: Regularizer | str | None = None) -> None:
        super().__init__()
        self.in_features = _check_size("in_features", in_features)
        self.out_features = _check_size("out_features", out_features)
        get_initializer(init)
        self.init = init
        self.regularizer = get_regularizer(regularizer)
        self._X: Any = None

    def build(self, backend: Any, dtype: Any, gen: Any, prefix: str, model_rng: Any = None) -> None:
        super().build(backend, dtype, gen, prefix)
        host_weight = get_initializer(self.init)(gen, self.in_features, self.out_features)
        weight = backend.asarray(host_weight, dtype=dtype, argname="weight")
        bias = self.xp.zeros((self.out_features,), dtype=backend.float_dtype(dtype), device=backend.device)
        self.weight = Parameter(prefix + "weight", weight, regularized=True)
        self.bias = Parameter(prefix + "bias", bias)
        self._params = [self.weight, self.bias]

    def output_features(self, in_features: int | None) -> int:
        if in_features is not None and in_features != self.in_features:
            raise ValueError(
                f"Dense({self.in_features}, {self.out_features}) expects {self.in_features} input "
                f"features but the layer before it gives {in_features}"
            )
        return self.out_features

    def forward(self, X: Any, training: bool = False) -> Any:
        if training:
            self._X = X
        return X @ self.weight.value + self.bias.value

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        xp, W = self.xp, self.weight.value
        grad_W = self._X.T @ dY
        if self.regularizer is not None:
            grad_W = grad_W + self.regularizer.gradient(W)
        self.weight.grad = grad_W
        self.bias.grad = xp.sum(dY, axis=0)
        self._X = None
        return dY @ W.T if need_dX else None

    def get_config(self) -> dict:
        reg = None if self.regularizer is None else self.regularizer.get_config()
        return {"type": "Dense", "in_features": self.in_features, "out_features": self.out_features,
                "init": self.init, "regularizer": reg}


class Dropout(Layer):
    """Inverted dropout: in training zero each unit with probability `rate`, scale the rest by 1/(1-rate).

    Args:
        rate: drop probability in [0, 1); identity at inference.
    """

    def __init__(self, rate: float = 0.5) -> None:
        super().__init__()
        if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout rate must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self._rng: Any = None
        self._mask: Any = None

    def build(self, backend: Any, dtype: Any, gen: Any, prefix: str, model_rng: Any = None) -> None:
        super().build(backend, dtype, gen, prefix)
        self._rng = model_rng

    def forward(self, X: Any, training: bool = False) -> Any:
        if not training:
            return X  # keep the mask: an inference pass between forward and backward must not change the gradient
        if self.rate == 0.0:
            self._mask = None
            return X
        self._mask = self._rng.uniform(tuple(X.shape), self.dtype) >= self.rate
        return self.xp.where(self._mask, X * (1.0 / (1.0 - self.rate)), 0.0)

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        if self._mask is None:
            return dY
        dX = self.xp.where(self._mask, dY * (1.0 / (1.0 - self.rate)), 0.0)
        self._mask = None
        return dX

    def get_config(self) -> dict:
        return {"type": "Dropout", "rate": self.rate}


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


class LeakyReLU(_Activation):
    """Leaky ReLU: x for x > 0, alpha * x otherwise.

    Args:
        alpha: slope for negative inputs, >= 0.
    """

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"LeakyReLU alpha must be a finite number >= 0, got {alpha!r}")
        self.alpha = float(alpha)

    def forward(self, X: Any, training: bool = False) -> Any:
        if training:
            self._cache = X
        return act.leaky_relu(X, self.alpha)

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        X, self._cache = self._cache, None
        return self.xp.where(X > 0.0, dY, self.alpha * dY)

    def get_config(self) -> dict:
        return {"type": "LeakyReLU", "alpha": self.alpha}


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


class Identity(_Activation):
    """Passes its input through; useful as an explicit linear output."""

    def forward(self, X: Any, training: bool = False) -> Any:
        return X

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        return dY


LAYERS: dict[str, type[Layer]] = {
    cls.__name__: cls for cls in (Dense, Dropout, Sigmoid, Tanh, ReLU, LeakyReLU, Softmax, Identity)
}
ACTIVATION_LAYERS: dict[str, type[Layer]] = {
    "sigmoid": Sigmoid, "logistic": Sigmoid, "tanh": Tanh, "relu": ReLU,
    "leaky_relu": LeakyReLU, "softmax": Softmax, "identity": Identity, "linear": Identity,
}


def layer_from_config(config: dict) -> Layer:
    """Rebuild a layer from `Layer.get_config()` output; unknown types raise ValueError."""
    if not isinstance(config, dict) or config.get("type") not in LAYERS:
        kind = config.get("type") if isinstance(config, dict) else config
        raise ValueError(f"unknown layer type {kind!r}; known layers: {sorted(LAYERS)}")
    kwargs = {k: v for k, v in config.items() if k != "type"}
    try:
        return LAYERS[config["type"]](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for layer {config['type']}: {exc}") from exc
