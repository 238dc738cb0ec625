"""Weight initializers, drawn on the host so every backend starts from identical numbers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

# Each takes (host generator, fan_in, fan_out) and returns a float64 host array of
# shape (fan_in, fan_out); the layer casts it once and moves it to its backend.
Initializer = Callable[[Any, int, int], Any]


def he_normal(gen: Any, fan_in: int, fan_out: int) -> Any:
    """He/Kaiming normal: std sqrt(2/fan_in), keeps ReLU activations' variance constant."""
    return gen.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out))


def he_uniform(gen: Any, fan_in: int, fan_out: int) -> Any:
    """He/Kaiming uniform: U(-sqrt(6/fan_in), sqrt(6/fan_in))."""
    limit = math.sqrt(6.0 / fan_in)
    return gen.uniform(-limit, limit, size=(fan_in, fan_out))


def glorot_uniform(gen: Any, fan_in: int, fan_out: int) -> Any:
    """Glorot/Xavier uniform: U(-sqrt(6/(in+out)), +), suited to sigmoid and tanh."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return gen.uniform(-limit, limit, size=(fan_in, fan_out))


def glorot_normal(gen: Any, fan_in: int, fan_out: int) -> Any:
    """Glorot/Xavier normal: std sqrt(2/(in+out))."""
    return gen.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), size=(fan_in, fan_out))


def lecun_normal(gen: Any, fan_in: int, fan_out: int) -> Any:
    """LeCun normal: std sqrt(1/fan_in)."""
    return gen.normal(0.0, math.sqrt(1.0 / fan_in), size=(fan_in, fan_out))


def small_normal(gen: Any, fan_in: int, fan_out: int) -> Any:
    """N(0, 0.01^2), the tutorial's `randn * 0.01`; deep nets starve with it (see the gradient example)."""
    return gen.normal(0.0, 0.01, size=(fan_in, fan_out))


def standard_normal(gen: Any, fan_in: int, fan_out: int) -> Any:
    """N(0, 1): no scaling at all, the classic cause of saturated sigmoids."""
    return gen.normal(0.0, 1.0, size=(fan_in, fan_out))


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
