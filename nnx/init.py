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
    if not isinstance(name, str) or name.lower() not in INITIALIZERS:
        raise ValueError(f"unknown init {name!r}; valid names: {sorted(INITIALIZERS)}")
    return INITIALIZERS[name.lower()]
