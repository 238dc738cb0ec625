"""How a layer's passes are run: the wrappers `Layer` puts around every class's ``forward`` and ``backward``.

Wrapped, a training call is noted for `backward`'s check and for the refusal of a second use of
one layer in one training forward (`ForwardPass`), and a layer called outside a model is named
in the error. A training step that runs the passes itself (`nnx.kernels.layer_runners`) calls
them as the class defines them (`plain_passes`) and counts the layers from the start of each pass.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["ForwardPass", "note_training_forward", "nothing_kept", "plain_passes", "wrap_backward", "wrap_forward"]


class ForwardPass:
    """Which layers ran with ``training=True`` in the model's current training forward (None between passes).

    One object is shared by every layer of a model (`BuildContext.child` passes it on). A layer keeps what
    one call needs for its backward, so a second training call of the same object in one pass would
    overwrite the first's and give a wrong gradient: `Layer.forward` refuses it while a pass is open. The layers
    a training step runs by their kernels or their plain passes (`nnx.kernels`) count as called from its start.
    """

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: set[int] | None = None  # ids of the layers that ran in the open pass


# each wrapper `Layer` puts around a class's own forward or backward -> the function it wraps
_WRAPPED_PASSES: weakref.WeakKeyDictionary[Callable, Callable] = weakref.WeakKeyDictionary()


def plain_passes(layer: Any) -> tuple[Callable, Callable] | None:
    """`layer`'s forward and backward as its class defines them, without the wrappers `Layer` adds, bound to it;
    None where either is not such a wrapper (replaced on the object, or on the class after it was made).

    The wrappers serve calls from anywhere: they note a training call for `backward`'s check and for the
    refusal of a second use in one pass, and name an unbuilt layer in an error. A training step that runs
    the layer's passes itself counts it from the start of each pass (`ForwardPass`) and backpropagates only
    what its own forward kept, so it calls these instead.
    """
    if "forward" in vars(layer) or "backward" in vars(layer):
        return None
    cls = type(layer)
    forward, backward = _WRAPPED_PASSES.get(cls.forward), _WRAPPED_PASSES.get(cls.backward)
    if forward is None or backward is None:
        return None
    return forward.__get__(layer, cls), backward.__get__(layer, cls)


def note_training_forward(layer: Any) -> None:
    """Note that `layer` ran a training forward, as its forward's wrapper does, for a caller of its `plain_passes`:
    a subclass's backward that reaches its parent's through ``super()`` meets the parent's wrapper, which checks it."""
    layer._ran_training_forward = True  # what the wrappers below note as `self`


def wrap_forward(forward: Callable) -> Callable:
    """Wrap a layer's forward so that a call with ``training=True`` is remembered for `backward`."""

    @functools.wraps(forward)
    def wrapper(self: Any, X: Any, training: bool = False, *args: Any, **kwargs: Any) -> Any:
        if training:
            self._ran_training_forward = True
            if type(self).forward is wrapper:  # a parent class's forward called through super() is the same call
                _note_training_call(self)
        try:
            if args or kwargs:
                return forward(self, X, training, *args, **kwargs)
            return forward(self, X, training)  # a plain call: unpacking empty *args/**kwargs costs ~0.5 us a layer
        except Exception as exc:  # no cost until one is raised
            if getattr(self, "context", True) is None:
                raise _not_in_a_model(self) from exc  # what failed is the layer's unbuilt state, not X
            raise

    _WRAPPED_PASSES[wrapper] = forward
    return wrapper


def _not_in_a_model(layer: Any) -> RuntimeError:
    """The error of a layer called on its own: it has no backend, dtype or arrays until a model builds it."""
    return RuntimeError(
        f"{type(layer).__name__} is not part of a model: a layer computes with the backend, dtype and arrays "
        "that the model it joins gives it. Put it in nnx.Sequential(..., backend=...) and call the model, or call "
        "model.layers[i].forward on an X prepared by model.prepare_inputs(X). A block's sub-layer joins the model "
        "through self.add_layer(name, layer) in the block's __init__ or build: kept as a plain attribute (which "
        "torch registers) it is never built, and its arrays are not in model.parameters()")


def _note_training_call(layer: Any) -> None:
    """Count a call of `layer` with ``training=True`` in its model's training forward; ValueError on a second.

    `Layer.forward` calls it; a layer a training step runs past the wrappers (`nnx.kernels`) is counted
    when the pass opens.
    """
    context = layer.context
    if context is None:
        return
    seen = context.forward_pass.seen
    if seen is not None:
        if id(layer) in seen:
            _refuse_second_use(layer, context.prefix)
        seen.add(id(layer))


def _refuse_second_use(layer: Any, prefix: str) -> None:
    """ValueError naming `layer` (at `prefix` in its model), called a second time with ``training=True`` in one
    training forward."""
    path = prefix.rstrip(".")
    raise ValueError(
        f"{type(layer).__name__} {path!r} was called a second time with training=True in one forward pass: a "
        "layer keeps what one call needs for its backward (its input, its activations), so the second call would "
        "overwrite the first's and the gradient would be wrong. Use a separate layer object for each place it is "
        "used, or, to share weights, write one layer whose forward applies them at every place and whose "
        "backward adds up their gradients (a call with training=False keeps nothing and may repeat)")


def nothing_kept(layer: Any) -> RuntimeError:
    """The error of a built-in backward that finds nothing kept: no training forward came, or its backward ran."""
    return RuntimeError(f"{type(layer).__name__}.backward needs a forward(X, training=True) first: backward uses what "
                        "that forward keeps (training=False keeps nothing), once per training forward")


_NOT_GIVEN = object()  # backward's need_dX left to the layer's own default


def wrap_backward(backward: Callable) -> Callable:
    """Wrap a layer's backward so that it raises one clear error when no training forward came before it."""

    @functools.wraps(backward)
    def wrapper(self: Any, dY: Any, need_dX: Any = _NOT_GIVEN, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, "_ran_training_forward", False):
            raise RuntimeError(f"{type(self).__name__}.backward needs a forward(X, training=True) first: backward "
                               "uses what that forward keeps (training=False keeps nothing)")
        if need_dX is _NOT_GIVEN:
            return backward(self, dY, *args, **kwargs)
        if args or kwargs:
            return backward(self, dY, need_dX, *args, **kwargs)
        return backward(self, dY, need_dX)  # a plain call, as in forward's wrapper

    _WRAPPED_PASSES[wrapper] = backward
    return wrapper
