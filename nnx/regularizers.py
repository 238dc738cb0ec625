"""Weight penalties added to the loss: L1, L2 and their sum, ElasticNet.

A regularizer maps a weight array to a 0-d penalty and its gradient. It applies
to weights only; the model decides which parameters that is (never biases).
"""

from __future__ import annotations

import functools
from typing import Any

import array_api_compat

from . import _validate as check
from .registry import (
    CONFIG_KEY,
    Registry,
    config_repr,
    config_type,
    json_arguments,
    live_arguments,
    recording_init,
    register,
)

__all__ = ["DEFAULT_STRENGTH", "ElasticNet", "L1", "L2", "REGULARIZERS", "Regularizer", "get_regularizer",
           "require_regularizer"]

DEFAULT_STRENGTH = 1e-4
"""Strength used when a regularizer is given by name (``"l2"``) or class, without arguments."""


def _weights_arg(method: Any) -> Any:
    """A TypeError from the array code (W is no real array) becomes one that names W."""

    @functools.wraps(method)
    def wrapper(self: Any, W: Any) -> Any:
        try:
            return method(self, W)
        except TypeError as exc:
            dtype = getattr(W, "dtype", None)
            raise TypeError(f"{type(self).__name__}.{method.__name__}: W must be a real array, got "
                            f"{type(W).__name__}{'' if dtype is None else f' of dtype {dtype}'} ({exc})") from None

    return wrapper


REGULARIZERS = Registry(
    "regularizer",
    "A subclass of nnx.regularizers.Regularizer registers itself under its class name (or the `name=` of its "
    "class statement) when its module is imported: import that module before loading.",
)
"""Name (any case) -> regularizer class; every `Regularizer` subclass adds itself when defined
(constructed with `DEFAULT_STRENGTH` when named without arguments)."""


class Regularizer:
    """Base class: ``penalty(W)`` is a 0-d array added to the loss, ``gradient(W)`` its gradient w.r.t. ``W``.

    A subclass registers itself under its class name (or ``name=`` in its class
    statement), so ``get_regularizer("name")`` and saved models find it, in any case.
    It remembers the arguments it was constructed with, as a loss does, so `get_config`
    saves them with no code of its own as long as they are JSON values.
    """

    name = "Regularizer"
    """The name the class is registered and saved under (`nnx.registry`): its class name, or ``name=``."""

    strengths: tuple[str, ...] = ()
    """The attributes that hold a strength: each must be a finite number >= 0 whenever it is set, after construction
    too (``reg.l = -0.1`` from a callback would otherwise reward large weights, the loss falling below 0)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.strengths:  # only when a setting changes: no work in a training step
            value = check.non_negative(name, value)
        object.__setattr__(self, name, value)

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = recording_init(cls.__init__)  # type: ignore[method-assign]
        # a `name = "..."` in the class body (how regularizers were named before ``name=``) still counts
        register(REGULARIZERS, cls, name if name is not None else cls.__dict__.get("name"), "name")

    def penalty(self, W: Any) -> Any:
        """The penalty for weights `W`, a 0-d array of `W`'s dtype."""
        raise NotImplementedError

    def gradient(self, W: Any) -> Any:
        """Gradient of `penalty` w.r.t. `W`, shaped like `W`."""
        raise NotImplementedError

    def __call__(self, W: Any) -> Any:
        """Same as `penalty`."""
        return self.penalty(W)

    def get_config(self) -> dict[str, Any]:
        """The registered name under ``"type"`` beside the constructor arguments; ``get_regularizer(config)``
        rebuilds it.

        An argument the regularizer keeps as an attribute of the same name is written as that attribute
        stands (``reg.l = 0.5`` after construction is saved, and JAX's compiled programs, keyed by the
        config, see it). Override this when an argument is not a JSON value.
        """
        args = live_arguments(self)
        fix = "override get_config() to write it as JSON values the constructor takes back"
        return {CONFIG_KEY: self.name, **json_arguments(self, "regularizer", args, fix)}

    def __repr__(self) -> str:
        return config_repr(self)


class L1(Regularizer):
    """Lasso penalty ``l * sum(|W|)``; gradient ``l * sign(W)`` (0 at W = 0).

    Args:
        l: strength, finite and >= 0.
    """

    strengths = ("l",)

    def __init__(self, l: float = DEFAULT_STRENGTH) -> None:
        self.l = l

    @_weights_arg
    def penalty(self, W: Any) -> Any:
        """``l * sum(|W|)`` as a 0-d array."""
        xp = array_api_compat.array_namespace(W)
        # each strength as a Python float: a NumPy float64 set after construction would make a float32 model's
        # penalty and gradients float64 (NumPy's scalars keep their dtype; Python's take the array's)
        return float(self.l) * xp.sum(xp.abs(W))

    @_weights_arg
    def gradient(self, W: Any) -> Any:
        """``l * sign(W)``."""
        xp = array_api_compat.array_namespace(W)
        return float(self.l) * xp.sign(W)


class L2(Regularizer):
    """Ridge / weight-decay penalty ``l / 2 * sum(W**2)``; gradient ``l * W``.

    Keras's ``L2(l)`` is ``l * sum(W**2)``, twice this one at the same ``l``. Unlike an optimizer's
    ``weight_decay``, it leaves biases alone and is part of the loss `fit` reports.

    Args:
        l: strength, finite and >= 0.
    """

    strengths = ("l",)

    def __init__(self, l: float = DEFAULT_STRENGTH) -> None:
        self.l = l

    @_weights_arg
    def penalty(self, W: Any) -> Any:
        """``l / 2 * sum(W**2)`` as a 0-d array."""
        xp = array_api_compat.array_namespace(W)
        return (float(self.l) / 2) * xp.sum(W * W)

    @_weights_arg
    def gradient(self, W: Any) -> Any:
        """``l * W``."""
        return float(self.l) * W


class ElasticNet(Regularizer):
    """Sum of `L1` and `L2`: ``l1 * sum(|W|) + l2 / 2 * sum(W**2)``. Keras's ``L1L2(l1, l2)`` has no ``/ 2`` on its
    L2 term: its ``l2`` is this class's ``l2 / 2``, as for `L2`.

    Args:
        l1: L1 strength, finite and >= 0.
        l2: L2 strength, finite and >= 0.
    """

    strengths = ("l1", "l2")

    def __init__(self, l1: float = DEFAULT_STRENGTH, l2: float = DEFAULT_STRENGTH) -> None:
        self.l1 = l1
        self.l2 = l2

    @_weights_arg
    def penalty(self, W: Any) -> Any:
        """``l1 * sum(|W|) + l2 / 2 * sum(W**2)`` as a 0-d array."""
        xp = array_api_compat.array_namespace(W)
        return float(self.l1) * xp.sum(xp.abs(W)) + (float(self.l2) / 2) * xp.sum(W * W)

    @_weights_arg
    def gradient(self, W: Any) -> Any:
        """``l1 * sign(W) + l2 * W``."""
        xp = array_api_compat.array_namespace(W)
        return float(self.l1) * xp.sign(W) + float(self.l2) * W


REGULARIZERS.add("elastic_net", ElasticNet)


def get_regularizer(spec: Any) -> Regularizer | None:
    """A `Regularizer` from None (-> None), an instance (as is), a class or a name in `REGULARIZERS`
    (default strength `DEFAULT_STRENGTH` = 1e-4), or a `get_config` dict."""
    if spec is None or isinstance(spec, Regularizer):
        return spec
    if isinstance(spec, type) and issubclass(spec, Regularizer):
        return spec()
    if isinstance(spec, dict):
        return _by_name(*config_type(spec, "regularizer"))
    if isinstance(spec, str):
        return _by_name(spec, {})
    raise TypeError(
        f"regularizer must be None, a Regularizer, a Regularizer class, a name or a config dict, "
        f"got {type(spec).__name__}"
    )


def require_regularizer(where: str, reg: Any) -> Regularizer | None:
    """`reg` when it is None or a `Regularizer`; else a TypeError naming `where` (the attribute that holds it).

    The constructors take a name or a class (`get_regularizer`); an attribute set afterwards
    (``layer.regularizer = "l2"``, ``model.regularizer = 0.01``) is used as it is, and without this
    failed as an AttributeError of a str from inside the loss.
    """
    if reg is None or isinstance(reg, Regularizer):
        return reg
    fix = f"nnx.regularizers.get_regularizer({reg!r})" if isinstance(reg, (str, dict, type)) else \
        "a Regularizer with that strength, e.g. nnx.regularizers.L2(0.01)"
    raise TypeError(f"{where} must be a Regularizer (nnx.regularizers) or None, got {reg!r} of type "
                    f"{type(reg).__name__}: the constructors take a name, an attribute set later takes the object; "
                    f"set {fix}")


def _by_name(name: str, kwargs: dict[str, Any]) -> Regularizer:
    return REGULARIZERS.lookup(name)(**kwargs)
