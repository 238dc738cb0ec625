"""Layers that hold layers: a chain applied in order (the base of `Sequential`) and `Residual`, ``X + f(X)``.

Both hold their layers through the public `Layer.add_layer`, under the names
``"0"``, ``"1"``, ..., so a `Residual` at position 2 of a model names its first
layer's weight ``"2.0.weight"``, as PyTorch does.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ..registry import CONFIG_KEY, config_type
from .base import Layer, Shape, constructor_config, layer_from_config


def raise_no_dX(layer: Layer, before: Layer) -> None:
    """Raise naming `layer`, whose backward returned None where the layer `before` it needs dL/dX."""
    raise TypeError(f"{type(layer).__name__}.backward returned None, but the layer before it "
                    f"({type(before).__name__}) needs dL/dX: a backward must return dX whenever need_dX is True")


class HeldLayers(tuple):
    """A container's layers, fixed when it is built: a tuple whose list-style edits raise a `TypeError` saying so.

    A layer taken out or put in after the build would not leave or join the container's parameters,
    state dict and config (which the saved file must match), nor change its output shape.
    """

    __slots__ = ()

    @staticmethod
    def _refuse(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("a container's layers are fixed when it is built: a layer removed or added afterwards would "
                        "stay in (or be missing from) its parameters, state_dict and saved config; build a new "
                        "model from new layer objects and copy the weights it keeps with load_state_dict")

    append = extend = insert = pop = remove = clear = sort = reverse = _refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse


class _FixedLayers:
    """The ``layers`` attribute of a container: set once, in its constructor; a later assignment or ``del`` raises.

    ``model.layers = (model.layers[0], model.layers[2])`` ran the new stack in predict and fit while the left-out
    layer stayed built, its arrays in parameters() and the checkpoint, so `save` wrote a file `nnx.load` refused and
    `to()` failed. Only ``__set__`` is defined: a read finds the instance's own value, at a plain attribute's cost
    (the forward pass reads it), while every write comes here.
    """

    def __set__(self, container: Any, layers: Any) -> None:
        if "layers" in vars(container):
            HeldLayers._refuse()
        vars(container)["layers"] = layers

    def __delete__(self, container: Any) -> None:
        HeldLayers._refuse()


class _Chain(Layer):
    """Layers applied in order; shapes are checked link by link when the chain is built."""

    layers: tuple[Layer, ...]  # a `_FixedLayers`, set on the class below its body

    def __init__(self, *layers: Layer) -> None:
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError(f"{type(self).__name__} needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} must be an nnx Layer, got {type(layer).__name__}")
        self.layers = HeldLayers(layers)

    def expected_input_shape(self) -> Shape | None:
        return self.layers[0].expected_input_shape()

    def output_shape(self, input_shape: Shape | None) -> Shape | None:
        shape = self.expected_input_shape() if input_shape is None else input_shape
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.output_shape(shape)
            except ValueError as exc:
                raise ValueError(f"layer {i}: {exc}") from None
        return shape

    def build(self, input_shape: Shape | None) -> None:
        shape = self.expected_input_shape() if input_shape is None else input_shape
        for i, layer in enumerate(self.layers):
            try:
                self.add_layer(str(i), layer, shape)
            except ValueError as exc:
                raise ValueError(f"layer {i}: {exc}") from None
            shape = layer.output_sample_shape

    def forward(self, X: Any, training: bool = False) -> Any:
        for layer in self.layers:
            X = layer.forward(X, training)
        return X

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        for i in range(len(self.layers) - 1, -1, -1):
            dY = self.layers[i].backward(dY, need_dX=need_dX or i > 0)
            if dY is None and i > 0:
                raise_no_dX(self.layers[i], self.layers[i - 1])
        return dY

    def to_onnx(self, graph: Any, X: str) -> str:
        outer = graph.prefix
        for i, layer in enumerate(self.layers):
            graph.prefix = f"{outer}{i}."
            Y = layer.to_onnx(graph, X)
            if not isinstance(Y, str) or not Y:
                raise TypeError(f"{type(layer).__name__}.to_onnx must return the name of its output tensor (a str), "
                                f"got {Y!r}")
            X = Y
        graph.prefix = outer
        return X

    def get_config(self) -> dict:
        """The held layers' configs under ``"layers"``, beside a subclass's own constructor arguments."""
        # a subclass taking its layers as one argument (`layers`) has them saved as configs, below
        layers = [layer.get_config() for layer in self.layers]
        return {**constructor_config(self, leave_out=("layers",), positional_kept=True), "layers": layers}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Layer:
        """A new chain from `get_config()` output: the layers go where the constructor takes them.

        A subclass whose constructor makes its own layers (it takes no ``*layers`` and no
        ``layers``) is rebuilt from its other arguments alone.
        """
        args = config_type(config, "layer")[1]
        layers = _layers_from(args)
        del args["layers"]
        parameters = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters.values()):
            return cls(*layers, **args)
        if "layers" in parameters:
            subclass: Any = cls  # one whose constructor names its layers argument
            return subclass(layers=layers, **args)
        return cls(**args)

    def __repr__(self) -> str:
        inner = ",\n".join(repr(layer) for layer in self.layers).replace("\n", "\n  ")
        return f"{type(self).__name__}(\n  {inner}\n)"


# set here, not in the class body, so type checkers read `layers` as the tuple it holds on every instance
setattr(_Chain, "layers", _FixedLayers())  # noqa: B010


def _layers_from(config: Mapping[str, Any]) -> list[Layer]:
    layers = config.get("layers")
    if not isinstance(layers, list):
        raise ValueError(f"a {config.get(CONFIG_KEY, 'container')} config needs a 'layers' list, got {layers!r}")
    return [layer_from_config(c) for c in layers]


class Residual(_Chain):
    """A skip connection, ``X + f(X)``, where f applies `layers` in order and must keep the sample shape.

    Args:
        *layers: the layers of f (or one list of them); their arrays are named ``"0.weight"``, ...
    """

    def output_shape(self, input_shape: Shape | None) -> Shape | None:
        shape = self.expected_input_shape() if input_shape is None else input_shape
        out = super().output_shape(input_shape)
        if shape is not None and out is not None and tuple(out) != tuple(shape):
            raise ValueError(f"Residual adds its input to its layers' output, so they must keep the sample shape, "
                             f"but input {tuple(shape)} gives output {tuple(out)}")
        return shape if shape is not None else out

    def forward(self, X: Any, training: bool = False) -> Any:
        Y = super().forward(X, training)
        if tuple(Y.shape) != tuple(X.shape):
            raise ValueError(f"Residual adds its input to its layers' output, but input shape {tuple(X.shape)} "
                             f"gives output shape {tuple(Y.shape)}")
        return X + Y

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        dX = super().backward(dY, need_dX)
        return dY + dX if need_dX else None

    def to_onnx(self, graph: Any, X: str) -> str:
        return graph.add_node("Add", [X, super().to_onnx(graph, X)], name="Residual")
