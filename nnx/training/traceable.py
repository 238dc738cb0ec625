"""Whether a training step can be one compiled program (`nnx.training.compiled`), and in words why not.

A program stands in for the step's Python: it runs the layers', the loss's and the optimizer's code once, when
traced. So a method replaced on one object (a test's or a user's hook, which may count calls or raise), an
optimizer overriding `step`, a gradient transform that keeps host state, a dropout stream whose draws are not a
function of its counter, an optimizer that does not update exactly the model's parameters, and a layer, regularizer
or loss keeping attributes in ``__slots__`` or an iterator (which the watches cannot compare) keep the step out of a
program: it runs the plain stages.
"""

from __future__ import annotations

from typing import Any

from ..optim import Optimizer
from .trace_state import slotted_reason

__all__ = ["traceable", "untraceable_reason"]

# methods whose replacement on one object (not its class) keeps that object out of a compiled program
_HOOKABLE = {"optimizer": ("step", "update", "init_state"), "loss": ("value_and_grad",),
             "layer": ("forward", "backward")}


def _replaced(obj: Any, names: tuple[str, ...]) -> bool:
    return any(name in getattr(obj, "__dict__", {}) for name in names)


def traceable(model: Any, loss: Any, optimizer: Any, transforms: list[Any]) -> bool:
    """Whether the step of these objects can be one program (see the module docstring)."""
    return untraceable_reason(model, loss, optimizer, transforms) is None


def untraceable_reason(model: Any, loss: Any, optimizer: Any, transforms: list[Any]) -> str | None:
    """Why the step of these objects cannot be one program, in words; None when it can."""
    if _replaced(optimizer, _HOOKABLE["optimizer"]):
        return f"a method of the optimizer {type(optimizer).__name__} is replaced on the object"
    if isinstance(optimizer, Optimizer) and type(optimizer).step is not Optimizer.step:
        # the program stands in for `Optimizer.step` (the rule on every parameter); an override may do more
        return f"the optimizer {type(optimizer).__name__} overrides step"
    if _replaced(loss, _HOOKABLE["loss"]):
        return f"a method of the loss {type(loss).__name__} is replaced on the object"
    for path, layer in model.named_layers():
        if _replaced(layer, _HOOKABLE["layer"]):
            return f"forward or backward of layer {path!r} ({type(layer).__name__}) is replaced on the object"
    for t in transforms:
        if not getattr(t, "traceable", False):
            return f"the gradient transform {type(t).__name__} keeps host state or calls back between batches"
    if not getattr(model.dropout_rng, "traceable_counter", False):
        return "the dropout stream's draws are not a function of its counter"
    params = model.parameters()
    if not params or len({id(p) for p in params}) != len(params) or list(optimizer.params) != params:
        return "the optimizer does not update exactly the model's parameters, each once"
    return slotted_reason(model, loss)
