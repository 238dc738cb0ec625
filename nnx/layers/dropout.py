"""Dropout: inverted dropout, active only in training."""

from __future__ import annotations

from typing import Any

from .. import _validate as check
from .base import Layer
from .passes import nothing_kept


class _NoMask:
    """What a training forward at rate 0 keeps: nothing to mask (None is nothing kept). One object, copies too."""

    def __reduce__(self) -> str:
        return "_NO_MASK"  # copy.deepcopy and pickle give this object back, so `is` holds in a copied model


_NO_MASK = _NoMask()


class Dropout(Layer):
    """Inverted dropout: in training zero each unit with probability `rate`, scale the rest by 1/(1-rate).

    Args:
        rate: drop probability in [0, 1); identity at inference.
    """

    def __init__(self, rate: float = 0.5) -> None:
        super().__init__()
        self.rate = check.probability("Dropout rate", rate)
        self._mask: Any = None

    @property
    def p(self) -> float:
        """torch's name for `rate` (``nn.Dropout.p``, which a torch dropout schedule sets): the same setting."""
        return self.rate

    @p.setter
    def p(self, value: float) -> None:
        self.rate = value

    def forward(self, X: Any, training: bool = False) -> Any:
        if not training:
            return X  # keep the mask: an inference pass between forward and backward must not change the gradient
        rate = self.rate
        if not 0.0 <= rate < 1.0:  # one set after construction (NaN fails it too)
            raise ValueError(f"Dropout rate must be a number in [0, 1) when it runs, got {rate!r}")
        # a Python float: a NumPy float64 set after construction would make a float32 model's mask float64
        rate = float(rate)
        if rate == 0.0:
            self._mask = _NO_MASK
            return X
        # the kept units' scale, 0 where dropped, multiplied in as torch and Keras do: a dropped inf or NaN
        # gives NaN (as does a NaN gradient there), not a clean 0 that would hide it
        kept = self.rng.uniform(tuple(X.shape), self.dtype) >= rate
        self._mask = self.xp.astype(kept, X.dtype) * (1.0 / (1.0 - rate))
        return X * self._mask

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        mask, self._mask = self._mask, None
        if mask is None:
            raise nothing_kept(self)
        if mask is _NO_MASK:
            return dY
        return dY * mask

    def to_onnx(self, graph: Any, X: str) -> str:
        return X  # an inference graph: dropout is the identity

    def get_config(self) -> dict:
        config = super().get_config()
        if "rate" in config:  # the live rate: one set after construction is what copies, files and programs get
            config["rate"] = float(self.rate)
        return config
