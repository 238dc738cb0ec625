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
    """

    __slots__ = ("name", "value", "grad", "regularized")

    def __init__(self, name: str, value: Any, grad: Any = None, regularized: bool = False) -> None:
        self.name = name
        self.value = value
        self.grad = grad
        self.regularized = regularized

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

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the value."""
        return tuple(self.value.shape)

    def __repr__(self) -> str:
        return f"Buffer({self.name!r}, shape={self.shape})"
