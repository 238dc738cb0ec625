"""Dense: the fully connected layer, ``Y = X @ weight + bias``."""

from __future__ import annotations

from typing import Any

from .. import _validate as check
from ..init import Initializer, initializer_name
from ..registry import recorded_args
from ..regularizers import Regularizer, get_regularizer, require_regularizer
from .base import Layer, Shape, constructor_config
from .passes import nothing_kept


class Dense(Layer):
    """Fully connected layer, ``Y = X @ weight + bias`` on ``(batch, in_features)`` inputs.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        init: weight initializer: a name in `nnx.init.INITIALIZERS` or one of `nnx.init`'s functions
            (``nnx.init.he_uniform``); biases start at zero. The default ``"he"`` is He normal,
            N(0, 2 / in_features), as ``torch.nn.init.kaiming_normal_`` draws it: not the default of
            torch's ``nn.Linear`` (uniform within +-1/sqrt(in_features), bias too) nor of Keras's
            ``Dense`` (``"glorot_uniform"``). ``"normal"`` is N(0, 0.01^2), not torch's N(0, 1) nor
            Keras's N(0, 0.05^2).
        regularizer: penalty on this layer's weight (`nnx.regularizers`), or None.
    """

    def __init__(self, in_features: int, out_features: int, init: str | Initializer = "he",
                 regularizer: Regularizer | str | None = None) -> None:
        super().__init__()
        self.in_features = check.positive_int("in_features", in_features)
        self.out_features = check.positive_int("out_features", out_features)
        self.init = initializer_name(init)  # saved in the config by name
        self.regularizer = get_regularizer(regularizer)
        self._X: Any = None

    def expected_input_shape(self) -> Shape:
        return (self.in_features,)

    def output_shape(self, input_shape: Shape | None) -> Shape:
        if input_shape is not None and len(input_shape) != 1:
            raise ValueError(f"Dense({self.in_features}, {self.out_features}) takes flat samples (batch, features) "
                             f"but gets samples of shape {tuple(input_shape)}; put a Flatten before it")
        if input_shape is not None and input_shape[0] != self.in_features:
            raise ValueError(f"Dense({self.in_features}, {self.out_features}) expects {self.in_features} input "
                             f"features but the layer before it gives {input_shape[0]}")
        return (self.out_features,)

    def build(self, input_shape: Shape | None) -> None:
        self.weight = self.add_parameter("weight", (self.in_features, self.out_features), self.init,
                                         regularized=True)
        self.bias = self.add_parameter("bias", (self.out_features,), "zeros")

    def forward(self, X: Any, training: bool = False) -> Any:
        check_input(self, X)
        if training:
            self._X = X
        return X @ self.weight.value + self.bias.value

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        if self._X is None:
            raise nothing_kept(self)
        W = self.weight.value
        grad_W = self._X.T @ dY
        if self.regularizer is not None:
            grad_W = grad_W + self.regularizer.gradient(W)
        self.weight.grad = grad_W
        self.bias.grad = self.xp.sum(dY, axis=0)
        self._X = None
        return dY @ W.T if need_dX else None

    def to_onnx(self, graph: Any, X: str) -> str:
        return graph.add_node("Gemm", [X, graph.add_initializer(self.weight), graph.add_initializer(self.bias)])

    def get_config(self) -> dict:
        # init by name: one of nnx.init's functions given itself is saved as the name it is registered under
        config = constructor_config(self, leave_out=("init",))
        if "init" in recorded_args(self):
            config["init"] = self.init
        if "regularizer" in config:  # the live one: a regularizer set after construction is part of the model
            reg = require_regularizer(f"{type(self).__name__}.regularizer", self.regularizer)
            config["regularizer"] = None if reg is None else reg.get_config()
        return config


def check_input(layer: Dense, X: Any) -> None:
    """ValueError naming `layer` unless X is ``(batch, in_features)``: a 3-D X would broadcast through the product
    into outputs the model does not declare (and a weight gradient of the wrong shape in backward)."""
    if X.ndim != 2 or X.shape[1] != layer.in_features:
        raise ValueError(f"Dense({layer.in_features}, {layer.out_features}) takes input of shape (batch, "
                         f"{layer.in_features}) but gets {tuple(X.shape)}"
                         + ("; put a Flatten before it" if X.ndim > 2 else ""))
