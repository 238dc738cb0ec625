"""Checks of the plain arguments of `fit`, `predict` and `evaluate` (counts and sizes)."""

from __future__ import annotations

import numbers
from typing import Any


def check_positive_int(name: str, value: Any, allow_zero: bool = False) -> int:
    """`value` as an int > 0 (or >= 0), else TypeError/ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return int(value)
