"""Weight initializers, drawn on the host so every backend starts from identical numbers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# Each takes (host generator, fan_in, fan_out, shape=None) and returns a float64 host array of
# `shape`, (fan_in, fan_out) by default; the layer casts it once and moves it to its backend.
Initializer = Callable[..., Any]
Shape = tuple[int, ...]


def fans(shape: Shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a parameter of `shape`, as Keras and torch.nn.init count them.

    A matrix is ``(in, out)``, as `Dense` holds it; a kernel of more axes is laid out
    ``(*receptive_field, in, out)`` and its receptive field counts in both fans; a vector's
    fans are both its size, a scalar's 1.
    """
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def _size(fan_in: int, fan_out: int, shape: Shape | None) -> Shape:
    return (fan_in, fan_out) if shape is None else shape


def he_normal(gen: Any, fan_in: int, fan_out: int, shape: Shape | None = None) -> Any:
    """He/Kaiming normal: std sqrt(2/fan_in), keeps ReLU activations' variance constant."""
    return gen.normal(0.0, math.sqrt(2.0 / fan_in), size=_size(fan_in, fan_out, shape))


def he_uniform(gen: Any, fan_in: int, fan_out: int, shape: Shape | None = None) -> Any:
    """He/Kaiming uniform: U(-sqrt(6/fan_in), sqrt(6/fan_in))."""
    limit = math.sqrt(6.0 / fan_in)
    return gen.uniform(-limit, limit, size=_size(fan_in, fan_out, shape))


def glorot_uniform(gen: Any, fan_in: int, fan_out: int, shape: Shape | None = None) -> Any:
    """Glorot/Xavier uniform: U(-sqrt(6/(in+out)), +), suited to sigmoid and tanh."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return gen.uniform(-limit, limit, size=_size(fan_in, fan_out, shape))


def glorot_normal(gen: Any, fan_in: int, fan_out: int, shape: Shape | None = None) -> Any:
    """Glorot/Xavier normal: std sqrt(2/(in+out))."""
    return gen.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=_size(fan_in, fan_out, shape))


def lecun_normal(gen: Any, fan_in: int, fan_out: int, shape: Shape | None = None) -> Any:
    """LeCun normal: std sqrt(1/fan_in)."""
    return gen.normal(0.0, math.sqrt(1.0 / fan_in), size=_size(fan_in, fan_out, shape))


def small_normal(gen: Any, fan_in: int, fan_out: int, shape: Shape | None = None) -> Any:
    """N(0, 0.01^2), the tutorial's `randn * 0.01`; deep nets starve with it (see the gradient example)."""
    return gen.normal(0.0, 0.01, size=_size(fan_in, fan_out, shape))


def standard_normal(gen: Any, fan_in: int, fan_out: int, shape: Shape | None = None) -> Any:
    """N(0, 1): no scaling at all, the classic cause of saturated sigmoids."""
    return gen.normal(0.0, 1.0, size=_size(fan_in, fan_out, shape))


INITIALIZERS: dict[str, Initializer] = {
    "he": he_normal,
    "he_normal": he_normal,
    "he_uniform": he_uniform,
    "kaiming": he_normal,
    "glorot": glorot_uniform,
    "glorot_uniform": glorot_uniform,
    "xavier": glorot_uniform,
    "glorot_normal": glorot_normal,
    "lecun": lecun_normal,
    "normal": small_normal,
    "standard_normal": standard_normal,
}


def get_initializer(name: str) -> Initializer:
    """Look up an initializer by name; unknown names raise ValueError listing the valid ones."""
    return INITIALIZERS[initializer_name(name).lower()]


def initializer_name(init: Any) -> str:
    """The name under which `init` is saved: a name in `INITIALIZERS` (any case, kept as given), or the name of
    one of the functions above given itself (``nnx.init.he_uniform``); anything else raises ValueError listing
    the names."""
    if isinstance(init, str) and init.lower() in INITIALIZERS:
        return init
    names = [name for name, fn in INITIALIZERS.items() if fn is init]
    if names:  # the function's own name where it is registered under it ("he_normal", not "he")
        return getattr(init, "__name__", "") if getattr(init, "__name__", "") in names else names[0]
    hint = ("; a function of your own (rng, shape) -> array is taken by Layer.add_parameter(init=...) in a layer "
            "of your own") if callable(init) else ""
    raise ValueError(f"unknown init {init!r}; valid names: {sorted(INITIALIZERS)}, or nnx.init's function of one of "
                     f"them{hint}")
