"""Shape layers: Flatten, which turns (batch, d1, d2, ...) samples into (batch, d1*d2*...)."""

from __future__ import annotations

import math
from typing import Any

from .base import Layer, Shape
from .passes import nothing_kept


class Flatten(Layer):
    """Flattens every axis after the batch axis: ``(batch, d1, d2, ...) -> (batch, d1*d2*...)``.

    Put it in front of a `Dense` to feed it images or other multi-axis samples; give the
    model its ``input_shape`` (e.g. ``Sequential(Flatten(), Dense(784, 10), input_shape=(28, 28))``)
    so shapes are checked when the model is built.
    """

    def __init__(self) -> None:
        super().__init__()
        self._shape: Any = None

    def output_shape(self, input_shape: Shape | None) -> Shape | None:
        if input_shape is None:
            return None
        return (math.prod(int(s) for s in input_shape),)

    def forward(self, X: Any, training: bool = False) -> Any:
        if X.ndim < 2:
            raise ValueError(f"Flatten expects input with a batch axis and at least one more, got shape "
                             f"{tuple(X.shape)}")
        if training:
            self._shape = tuple(X.shape)
        # explicit sizes, not -1: a batch of 0 samples leaves -1 undetermined
        return self.xp.reshape(X, (X.shape[0], math.prod(X.shape[1:])))

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        if self._shape is None:
            raise nothing_kept(self)
        shape, self._shape = self._shape, None
        return self.xp.reshape(dY, shape) if need_dX else None

    def to_onnx(self, graph: Any, X: str) -> str:
        return graph.add_node("Flatten", [X], axis=1)
