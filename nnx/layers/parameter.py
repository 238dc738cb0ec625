"""A trainable array with its gradient, the unit optimizers work on."""

from __future__ import annotations

from typing import Any


def in_model_dtype(kind: str = "parameter") -> str:
    """How to give a `kind` (parameter or buffer) of another dtype the model's: the fix every error that finds one
    names."""
    return (f"assign values in the model's dtype ({kind}.value = model.backend.asarray(w, dtype=model.dtype)), or "
            "copy them with model.load_state_dict, which casts")


class Parameter:
    """A named trainable array (`value`) and the gradient of the loss w.r.t. it (`grad`).

    Args:
        name: dotted, PyTorch-style name inside its model, e.g. ``"0.weight"``.
        value: the array, on the model's backend.
        grad: the gradient, same shape and backend as ``value``; ``None`` until
            a backward pass fills it.
        regularized: whether weight penalties apply (weights yes, biases no).

    `built_shape` is the shape its layer made it with: a value of another shape assigned since is refused
    by fit, save and export (`require_built_shapes`), where it would train, predict or write
    what the layer's config cannot rebuild.
    """

    __slots__ = ("name", "value", "grad", "regularized", "built_shape")

    def __init__(self, name: str, value: Any, grad: Any = None, regularized: bool = False) -> None:
        self.name = name
        self.value = value
        self.grad = grad
        self.regularized = regularized
        self.built_shape = tuple(value.shape)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the value."""
        return tuple(self.value.shape)

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, shape={self.shape})"


class Buffer:
    """A named array a layer keeps but does not train, such as BatchNorm's running mean.

    Buffers are saved, loaded and moved with the model (they appear in
    ``state_dict()``), and optimizers and regularizers never see them. A layer
    updates one by rebinding ``buffer.value`` (JAX arrays are immutable).
    """

    __slots__ = ("name", "value", "built_shape")

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value
        self.built_shape = tuple(value.shape)  # as a `Parameter`'s

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the value."""
        return tuple(self.value.shape)

    def __repr__(self) -> str:
        return f"Buffer({self.name!r}, shape={self.shape})"


def require_built_shapes(model: Any, what: str) -> None:
    """ValueError naming a parameter or buffer whose value is not of the shape its layer made it with.

    ``layer.weight.value = w`` of another shape made predict return other columns without a word and save write a
    file that `nnx.load` refuses (the config rebuilds the layer's own shapes). Read once per save, gradient check
    or export (fit checks each array in the walk it makes anyway), never inside a step.
    """
    for kind, arrays in (("parameter", model.parameters()), ("buffer", model.buffers())):
        for a in arrays:
            require_built_shape(kind, a, what)


def require_built_shape(kind: str, a: Parameter | Buffer, what: str) -> None:
    """`require_built_shapes` for one array `a` (a `kind`: parameter or buffer)."""
    shape = getattr(a.value, "shape", None)
    if shape is not None and tuple(shape) != a.built_shape:
        raise ValueError(f"{what}: {kind} {a.name!r} holds an array of shape {tuple(shape)}, but its layer made it "
                         f"with shape {a.built_shape}, which the layer computes with and its config rebuilds; "
                         "assign values of that shape (load_state_dict checks them), or build a layer of the new "
                         "size")
