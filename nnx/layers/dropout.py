"""Dropout: inverted dropout, active only in training."""

from __future__ import annotations

from typing import Any

from .. import _validate as check
from .base import Layer


class Dropout(Layer):
    """Inverted dropout: in training zero each unit with probability `rate`, scale the rest by 1/(1-rate).

    Args:
        rate: drop probability in [0, 1); identity at inference.
    """

    def __init__(self, rate: float = 0.5) -> None:
        super().__init__()
        self.rate = check.probability("Dropout rate", rate)
        self._mask: Any = None

    def forward(self, X: Any, training: bool = False) -> Any:
        if not training:
            return X  # keep the mask: an inference pass between forward and backward must not change the gradient
        if not 0.0 <= self.rate < 1.0:  # one set after construction (NaN fails it too)
            raise ValueError(f"Dropout rate must be a number in [0, 1) when it runs, got {self.rate!r}")
        if self.rate == 0.0:
            self._mask = None
            return X
        self._mask = self.rng.uniform(tuple(X.shape), self.dtype) >= self.rate
        return self.xp.where(self._mask, X * (1.0 / (1.0 - self.rate)), 0.0)

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        if self._mask is None:
            return dY
        dX = self.xp.where(self._mask, dY * (1.0 / (1.0 - self.rate)), 0.0)
        self._mask = None
        return dX

    def to_onnx(self, graph: Any, X: str) -> str:
        return X  # an inference graph: dropout is the identity

    def get_config(self) -> dict:
        config = super().get_config()
        if "rate" in config:  # the live rate: one set after construction is what copies, files and programs get
            config["rate"] = float(self.rate)
        return config
