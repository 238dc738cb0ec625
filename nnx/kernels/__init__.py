"""Hand-fused layer kernels: where one backend's own operations beat a layer's portable code, for one exact class.

A kernel is declared below for one exact class (a subclass may change the math, so it is
not covered until declared itself) and one backend name, and is tested to give the
portable code's numbers, NaN and inf included. The portable code stays the definition:
everything undeclared, and every layer whose `forward` or `backward` was replaced on
the object, runs its own code.

A kernel runs one layer inside the training step (`nnx.training.step.TrainStep`). It is
built once per step object around the layer and has the layer's ``forward(X, training)``
and ``backward(dY, need_dX)``; it reads only the layer's public attributes, writes only
its parameters' ``grad``, and keeps what its backward needs itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..layers.activation import ReLU
from . import torch_relu

__all__ = ["layer_runners"]

# (exact layer class, backend name) -> the kernel's constructor, called with the layer
_LAYER_KERNELS: dict[tuple[type, str], Callable[[Any], Any]] = {
    (ReLU, "torch"): torch_relu.ReLUKernel,
}


def layer_runners(layers: Sequence[Any], backend: Any) -> list[Any]:
    """What runs each of `layers` in a training step on `backend`: its declared kernel, or the layer itself."""
    return [_runner(layer, backend.name) for layer in layers]


def _runner(layer: Any, backend_name: str) -> Any:
    make = _LAYER_KERNELS.get((type(layer), backend_name))
    if make is None or "forward" in vars(layer) or "backward" in vars(layer):
        return layer  # undeclared, or its passes replaced on this object: they run as written
    return make(layer)
