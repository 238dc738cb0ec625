"""Normalization layers: BatchNorm (batch statistics, running estimates as buffers) and LayerNorm.

Both are written only against the public `Layer` API (`add_parameter`,
`add_buffer`, `output_shape`, `forward`/`backward` in `self.xp`), exactly as a
user's layer would be, and both have exact analytic backward passes.
"""

from __future__ import annotations

import inspect
from typing import Any, cast

from .. import _validate as check
from .base import Layer, Shape, constructor_config
from .passes import nothing_kept


class BatchNorm(Layer):
    """Batch normalization over the batch axis for ``(batch, features)`` input (torch.nn.BatchNorm1d).

    In training, each feature is normalised with the batch mean and the biased batch
    variance, and the running estimates are updated as
    ``running = (1 - momentum) * running + momentum * batch_statistic`` (the variance
    estimate uses the unbiased batch variance). At inference the running estimates are
    used. The output is ``weight * x_hat + bias``; ``weight`` starts at ones, ``bias`` at
    zeros, and neither is regularized. ``running_mean`` and ``running_var`` are buffers:
    saved, loaded and moved with the model, never trained.

    ``momentum`` is torch's: Keras's ``momentum=0.99`` moves the running mean as ``momentum=0.01``
    here does, but Keras keeps the biased batch variance in its moving variance (larger here by
    ``n/(n-1)`` per batch of ``n``) and defaults to ``epsilon=1e-3``. ``momentum`` and ``eps``
    are keyword-only: torch's positional order is ``(num_features, eps, momentum)``.

    Args:
        num_features: features per sample; None takes it from the input shape.
        momentum: weight of the newest batch in the running estimates, in [0, 1].
        eps: added to the variance before the square root, > 0.
    """

    def __init__(self, num_features: int | None = None, *, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = None if num_features is None else check.positive_int("num_features", num_features)
        self.momentum = check.real("BatchNorm momentum", momentum, 0.0, 1.0)
        self.eps = check.positive("BatchNorm eps", eps)
        self._cache: Any = None

    def expected_input_shape(self) -> Shape | None:
        return None if self.num_features is None else (self.num_features,)

    def output_shape(self, input_shape: Shape | None) -> Shape | None:
        if input_shape is None:
            return None if self.num_features is None else (self.num_features,)
        input_shape = tuple(input_shape)
        if len(input_shape) != 1:
            raise ValueError(f"BatchNorm normalises (batch, features) input, but gets samples of shape "
                             f"{input_shape}; put a Flatten before it")
        if self.num_features is not None and input_shape != (self.num_features,):
            raise ValueError(f"BatchNorm({self.num_features}) expects samples of shape ({self.num_features},) "
                             f"but gets {input_shape}")
        return input_shape

    def build(self, input_shape: Shape | None) -> None:
        if self.num_features is None:
            if input_shape is None:
                raise ValueError("BatchNorm() needs num_features when the input shape is not known; give "
                                 "BatchNorm(num_features) or the model's input_shape")
            self.num_features = int(input_shape[0])
        shape = (self.num_features,)
        self.weight = self.add_parameter("weight", shape, "ones", regularized=False)
        self.bias = self.add_parameter("bias", shape, "zeros", regularized=False)
        self.running_mean = self.add_buffer("running_mean", shape, "zeros")
        self.running_var = self.add_buffer("running_var", shape, "ones")

    def forward(self, X: Any, training: bool = False) -> Any:
        xp = self.xp
        if X.ndim != 2 or X.shape[1] != self.num_features:
            raise ValueError(f"BatchNorm({self.num_features}) expects input of shape (batch, {self.num_features}), "
                             f"got {tuple(X.shape)}")
        # the settings as Python floats: a NumPy float64 set after construction would make a float32 model's
        # outputs and running statistics float64 (NumPy's scalars keep their dtype; Python's take the array's)
        eps = float(self.eps)
        if not training:
            inv = 1.0 / xp.sqrt(self.running_var.value + eps)
            return (X - self.running_mean.value) * (inv * self.weight.value) + self.bias.value
        n = X.shape[0]
        if n < 2:
            raise ValueError(f"BatchNorm in training needs more than one sample per batch, got a batch of {n} (in "
                             "fit, the last batch holds the rows batch_size leaves over: choose a batch_size that "
                             "does not leave one)")
        mean = xp.mean(X, axis=0)
        centered = X - mean
        var = xp.mean(centered * centered, axis=0)
        inv = 1.0 / xp.sqrt(var + eps)
        X_hat = centered * inv
        m = float(self.momentum)
        # rebinding, never writing in place: JAX arrays are immutable, and a held state_dict must not change
        self.running_mean.value = (1.0 - m) * self.running_mean.value + m * mean
        self.running_var.value = (1.0 - m) * self.running_var.value + (m * n / (n - 1)) * var
        self._cache = (X_hat, inv)
        return X_hat * self.weight.value + self.bias.value

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        if self._cache is None:
            raise nothing_kept(self)
        xp = self.xp
        X_hat, inv = self._cache
        self._cache = None
        sum_dY = xp.sum(dY, axis=0)
        sum_dY_xhat = xp.sum(dY * X_hat, axis=0)
        self.weight.grad = sum_dY_xhat
        self.bias.grad = sum_dY
        if not need_dX:
            return None
        n = dY.shape[0]
        # d/dX of w * (X - mean) / std with the batch mean and variance depending on X:
        # dX = w * inv * (dY - mean(dY) - X_hat * mean(dY * X_hat))
        return (self.weight.value * inv) * (dY - sum_dY / n - X_hat * (sum_dY_xhat / n))

    def to_onnx(self, graph: Any, X: str) -> str:
        # inference mode, spelled out as forward computes it: (x - mean) * (weight / sqrt(var + eps)) + bias.
        # onnxruntime's BatchNormalization folds the mean into the bias, x * s + (bias - mean * s), which
        # cancels digits when a feature's mean is large next to its spread (2e-5 relative in float32 at mean
        # 10, 4e-10 in float64 at 1e5); its epsilon attribute is 32-bit too, eps here is in the model's dtype
        var = graph.add_node("Add", [graph.add_initializer(self.running_var), graph.add_initializer(self.eps, "eps")])
        inv = graph.add_node("Div", [graph.add_initializer(1.0, "one"), graph.add_node("Sqrt", [var])])
        scale = graph.add_node("Mul", [inv, graph.add_initializer(self.weight)])
        centered = graph.add_node("Sub", [X, graph.add_initializer(self.running_mean)])
        return graph.add_node("Add", [graph.add_node("Mul", [centered, scale]), graph.add_initializer(self.bias)],
                              name="BatchNorm")

    def get_config(self) -> dict:
        # the constructor's arguments (a subclass's own too) with the live settings and the resolved feature
        # count, so a saved model rebuilds even where the input shape is unknown; floats, as the constructor
        # keeps them: a NumPy float32 set after construction is no JSON value
        return _live(self, num_features=self.num_features, momentum=float(self.momentum), eps=float(self.eps))


class LayerNorm(Layer):
    """Layer normalization over the trailing axes of each sample (torch.nn.LayerNorm).

    Each sample is normalised with its own mean and biased variance over the last
    ``len(normalized_shape)`` axes, then scaled by ``weight`` (ones) and shifted by
    ``bias`` (zeros), both of shape ``normalized_shape``. Training and inference
    behave the same; there are no buffers.

    Args:
        normalized_shape: the trailing shape normalised over, an int for the last axis;
            None takes the last axis of the input shape.
        eps: added to the variance before the square root, > 0.
    """

    def __init__(self, normalized_shape: int | tuple[int, ...] | None = None, eps: float = 1e-5) -> None:
        super().__init__()
        if normalized_shape is None:
            self.normalized_shape: Shape | None = None
        elif isinstance(normalized_shape, (list, tuple)):
            if not normalized_shape:
                raise ValueError("LayerNorm normalized_shape must not be empty")
            self.normalized_shape = tuple(check.positive_int("normalized_shape", s) for s in normalized_shape)
        else:
            self.normalized_shape = (check.positive_int("normalized_shape", normalized_shape),)
        self.eps = check.positive("LayerNorm eps", eps)
        self._cache: Any = None

    def expected_input_shape(self) -> Shape | None:
        return self.normalized_shape

    def output_shape(self, input_shape: Shape | None) -> Shape | None:
        if input_shape is None:
            return None
        input_shape = tuple(input_shape)
        ns = self.normalized_shape
        if ns is not None and input_shape[len(input_shape) - len(ns):] != ns:
            raise ValueError(f"LayerNorm{ns} normalises over trailing axes of shape {ns}, but gets samples "
                             f"of shape {input_shape}")
        return input_shape

    def build(self, input_shape: Shape | None) -> None:
        if self.normalized_shape is None:
            if not input_shape:
                raise ValueError("LayerNorm() needs normalized_shape when the input shape is not known; give "
                                 "LayerNorm(normalized_shape) or the model's input_shape")
            self.normalized_shape = (int(input_shape[-1]),)
        self.weight = self.add_parameter("weight", self.normalized_shape, "ones", regularized=False)
        self.bias = self.add_parameter("bias", self.normalized_shape, "zeros", regularized=False)

    def _axes(self, X: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(normalised axes, the leading axes the parameter gradients sum over)."""
        ns = cast(Shape, self.normalized_shape)  # set by __init__ or build, before any forward/backward
        k = len(ns)
        if X.ndim <= k or tuple(X.shape[X.ndim - k:]) != ns:
            trailing = ", ".join(map(str, ns))
            raise ValueError(f"LayerNorm expects input of shape (batch, ..., {trailing}), got {tuple(X.shape)}")
        return tuple(range(X.ndim - k, X.ndim)), tuple(range(X.ndim - k))

    def forward(self, X: Any, training: bool = False) -> Any:
        xp = self.xp
        axes, _ = self._axes(X)
        mean = xp.mean(X, axis=axes, keepdims=True)
        centered = X - mean
        var = xp.mean(centered * centered, axis=axes, keepdims=True)
        inv = 1.0 / xp.sqrt(var + float(self.eps))  # a Python float, as BatchNorm's (see there)
        X_hat = centered * inv
        if training:
            self._cache = (X_hat, inv)
        return X_hat * self.weight.value + self.bias.value

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        if self._cache is None:
            raise nothing_kept(self)
        xp = self.xp
        X_hat, inv = self._cache
        self._cache = None
        axes, leading = self._axes(dY)
        self.weight.grad = xp.sum(dY * X_hat, axis=leading)
        self.bias.grad = xp.sum(dY, axis=leading)
        if not need_dX:
            return None
        g = dY * self.weight.value  # dL/dX_hat
        # dX = inv * (g - mean(g) - X_hat * mean(g * X_hat)), the means over the normalised axes
        return inv * (g - xp.mean(g, axis=axes, keepdims=True)
                      - X_hat * xp.mean(g * X_hat, axis=axes, keepdims=True))

    def to_onnx(self, graph: Any, X: str) -> str:
        # spelled out in two passes as forward computes it: onnxruntime's LayerNormalization takes the
        # variance as E[x^2] - E[x]^2, which loses float32 digits when a sample's mean is large next to its
        # spread (an error of 5e-4 at mean 100, spread 1)
        if self.normalized_shape is None:
            raise RuntimeError("LayerNorm.to_onnx needs a layer that is part of a model")
        axes = list(range(-len(self.normalized_shape), 0))

        def mean(T: str) -> str:
            if graph.opset >= 18:  # ReduceMean takes its axes as an input from opset 18 on
                return graph.add_node("ReduceMean", [T, graph.add_initializer(axes, "axes", dtype="int64")])
            return graph.add_node("ReduceMean", [T], axes=axes)

        centered = graph.add_node("Sub", [X, mean(X)])
        var = mean(graph.add_node("Mul", [centered, centered]))
        std = graph.add_node("Sqrt", [graph.add_node("Add", [var, graph.add_initializer(self.eps, "eps")])])
        inv = graph.add_node("Div", [graph.add_initializer(1.0, "one"), std])
        X_hat = graph.add_node("Mul", [centered, inv])
        scaled = graph.add_node("Mul", [X_hat, graph.add_initializer(self.weight)])
        return graph.add_node("Add", [scaled, graph.add_initializer(self.bias)], name="LayerNorm")

    def get_config(self) -> dict:
        shape = None if self.normalized_shape is None else list(self.normalized_shape)
        return _live(self, normalized_shape=shape, eps=float(self.eps))


def _live(layer: Layer, **settings: Any) -> dict:
    """`layer`'s constructor config with the live value of each of `settings` its constructor takes (every one,
    where it hands ``**kwargs`` on: a subclass passing ``*args`` through records no positional argument, and
    the live settings stand for them)."""
    parameters = inspect.signature(type(layer).__init__).parameters.values()
    any_name = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    config = constructor_config(layer, positional_kept=any_name)
    config.update((key, value) for key, value in settings.items() if key in config or any_name)
    return config
