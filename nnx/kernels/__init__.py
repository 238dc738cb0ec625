"""Hand-fused layer kernels: where one backend's own operations beat a layer's portable code, for one exact class.

A kernel is declared below for one exact class (a subclass may change the math, so it is
not covered until declared itself) and one backend name, and is tested to give the
portable code's numbers, NaN and inf included. The portable code stays the definition:
everything undeclared, every layer whose `forward` or `backward` was replaced on the
object, and every layer of a class whose `forward` or `backward` was replaced on the class
since (a patch on `nnx.Dense` itself), runs its own code.

A head kernel (`head_runner`) computes the training step's loss head for one exact loss class in the
same way, standing for the loss's ``rows``, ``prepare`` and ``value_and_grad_prepared`` as declared.

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
from ..layers.passes import note_training_forward, plain_passes
from ..losses import BinaryCrossEntropy
from . import numpy_dense, torch_bce, torch_dense, torch_relu
from .dense import DenseKernel

__all__ = ["LayerRunners", "OwnPasses", "gradient_writers", "head_runner", "layer_runners"]

# (exact layer class, backend name) -> the kernel's constructor, called with the layer
_LAYER_KERNELS: dict[tuple[type, str], Callable[[Any], Any]] = {
    (ReLU, "torch"): torch_relu.ReLUKernel,
    (Dense, "numpy"): numpy_dense.NumpyDenseKernel,
    (Dense, "torch"): torch_dense.TorchDenseKernel,
}


# the passes each declared class had when its kernel was declared: the code the kernel gives the numbers of
_DECLARED_PASSES: dict[type, tuple[Any, Any]] = {cls: (cls.forward, cls.backward) for cls, _ in _LAYER_KERNELS}

# (exact loss class, backend name) -> the kernel of the training step's loss head, called with the loss
_HEAD_KERNELS: dict[tuple[type, str], Callable[[Any], Any]] = {
    (BinaryCrossEntropy, "torch"): torch_bce.BCELogitsHeadKernel,
}
# the methods a head kernel stands for: the class's own as declared, none replaced on the object
_HEAD_METHODS = ("rows", "prepare", "value_and_grad_prepared")
_DECLARED_HEADS: dict[type, tuple[Any, ...]] = {
    cls: tuple(getattr(cls, name) for name in _HEAD_METHODS) for cls, _ in _HEAD_KERNELS}


class LayerRunners(list):
    """What runs each layer in a training step (its kernel, its plain passes, or the layer itself), in order.

    `counted_layers` holds the ids of the layers whose kernel or plain passes (`OwnPasses`) run them: the
    model's training forward counts them as called from its start (`nnx.layers.passes.ForwardPass`), so that a
    second use of one is refused as for any layer, without each noting itself every step.
    """

    counted_layers: frozenset[int] = frozenset()

    def note_training_forward(self) -> None:
        """Note a training forward on each layer run past its wrappers (`OwnPasses`): the step calls it before its
        first forward, as the wrappers would note each call (`nnx.layers.passes.note_training_forward`)."""
        for runner in self:
            if isinstance(runner, OwnPasses):
                note_training_forward(runner.layer)


class OwnPasses:
    """Runs an undeclared layer in a training step with the forward and backward its class defines, past the
    wrappers `Layer` puts around them for calls from anywhere (`nnx.layers.passes.plain_passes`): the layer's own
    code, a user's included, without about 1 us a layer a step of bookkeeping."""

    __slots__ = ("layer", "forward", "backward")

    def __init__(self, layer: Any, forward: Callable, backward: Callable) -> None:
        self.layer, self.forward, self.backward = layer, forward, backward


def layer_runners(layers: Sequence[Any], backend: Any) -> LayerRunners:
    """What runs each of `layers` in a training step on `backend`: its declared kernel, its class's plain
    passes, or the layer itself (passes replaced on the object or patched on the class)."""
    runners = LayerRunners(_runner(layer, backend.name) for layer in layers)
    runners.counted_layers = frozenset(id(layer) for layer, runner in zip(layers, runners, strict=True)
                                       if runner is not layer)
    return runners


def head_runner(loss: Any, backend: Any) -> Any:
    """What computes a training step's loss head on `backend`: the kernel declared for the loss's exact class, or
    the loss itself (undeclared, a method replaced on the class since the declaration or on the object)."""
    cls = type(loss)
    make = _HEAD_KERNELS.get((cls, backend.name))
    if make is None or _DECLARED_HEADS[cls] != tuple(getattr(cls, name) for name in _HEAD_METHODS) \
            or any(name in vars(loss) for name in _HEAD_METHODS):
        return loss
    return make(loss)


def gradient_writers(runners: Sequence[Any]) -> list[Any]:
    """The kernels among `runners` that write gradients where a step offers them (their ``destinations``)."""
    return [r for r in runners if isinstance(r, DenseKernel)]


def _runner(layer: Any, backend_name: str) -> Any:
    cls = type(layer)
    make = _LAYER_KERNELS.get((cls, backend_name))
    passes = plain_passes(layer)
    if passes is None:
        return layer  # its passes replaced on this object or its class: they run as written, wrappers included
    if make is None or _DECLARED_PASSES[cls] != (cls.forward, cls.backward):
        return OwnPasses(layer, *passes)  # undeclared, or its class's passes patched since the kernel was declared
    return make(layer)
