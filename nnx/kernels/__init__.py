"""Hand-fused layer kernels: where one backend's own operations beat a layer's portable code, for one exact class.

A kernel is declared below for one exact class (a subclass may change the math, so it is
not covered until declared itself) and one backend name, and is tested to give the
portable code's numbers, NaN and inf included. The portable code stays the definition:
everything undeclared, every layer whose `forward` or `backward` was replaced on the
object, and every layer of a class whose `forward` or `backward` was replaced on the class
since (a patch on `nnx.Dense` itself), runs its own code.

A kernel runs one layer inside the training step (`nnx.training.step.TrainStep`). It is
built once per step object around the layer and has the layer's ``forward(X, training)``
and ``backward(dY, need_dX)``; it reads only the layer's public attributes, writes only
its parameters' ``grad``, and keeps what its backward needs itself. A kernel that can write
a gradient into a given array (`gradient_writers`) writes it where the step offers
(`nnx.training.flat.FlatUpdate.offer_grads`), which spares the step gathering it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..layers.activation import ReLU
from ..layers.dense import Dense
from . import numpy_dense, torch_dense, torch_relu
from .dense import DenseKernel

__all__ = ["LayerRunners", "gradient_writers", "layer_runners"]

# (exact layer class, backend name) -> the kernel's constructor, called with the layer
_LAYER_KERNELS: dict[tuple[type, str], Callable[[Any], Any]] = {
    (ReLU, "torch"): torch_relu.ReLUKernel,
    (Dense, "numpy"): numpy_dense.NumpyDenseKernel,
    (Dense, "torch"): torch_dense.TorchDenseKernel,
}


# the passes each declared class had when its kernel was declared: the code the kernel gives the numbers of
_DECLARED_PASSES: dict[type, tuple[Any, Any]] = {cls: (cls.forward, cls.backward) for cls, _ in _LAYER_KERNELS}


class LayerRunners(list):
    """What runs each layer in a training step (its kernel, or the layer itself), in the layers' order.

    `kernel_layers` holds the ids of the layers a kernel runs: the model's training forward counts them as
    called from its start (`nnx.layers.base.ForwardPass`), so that a second use of one is refused as for any
    layer, without each kernel noting itself every step.
    """

    kernel_layers: frozenset[int] = frozenset()


def layer_runners(layers: Sequence[Any], backend: Any) -> LayerRunners:
    """What runs each of `layers` in a training step on `backend`: its declared kernel, or the layer itself."""
    runners = LayerRunners(_runner(layer, backend.name) for layer in layers)
    runners.kernel_layers = frozenset(id(layer) for layer, runner in zip(layers, runners, strict=True)
                                      if runner is not layer)
    return runners


def gradient_writers(runners: Sequence[Any]) -> list[Any]:
    """The kernels among `runners` that write gradients where a step offers them (their ``destinations``)."""
    return [r for r in runners if isinstance(r, DenseKernel)]


def _runner(layer: Any, backend_name: str) -> Any:
    cls = type(layer)
    make = _LAYER_KERNELS.get((cls, backend_name))
    if make is None or "forward" in vars(layer) or "backward" in vars(layer) \
            or _DECLARED_PASSES[cls] != (cls.forward, cls.backward):
        return layer  # undeclared, or its passes replaced on this object or its class: they run as written
    return make(layer)
