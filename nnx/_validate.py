"""Argument checks shared by every building block: one wording for one mistake.

Each check returns the value in its plain Python form (a float, an int, a bool)
or raises naming the argument. `label` is how the message names it, e.g.
``"lr"`` or ``"Dropout rate"``. A value of the wrong type raises
`ArgumentTypeError`, which is both a `TypeError` (what it is) and a `ValueError`
(what scikit-learn's parameter checks raise, and what several of these checks
raised before they were shared); a value out of range raises `ValueError`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection
from typing import Any


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a string where a number belongs, a bool where a count belongs)."""


def real(label: str, value: Any, low: float = -math.inf, high: float = math.inf, *,
         low_open: bool = False, high_open: bool = False) -> float:
    """`value` as a float after checking it is a finite real number in the interval from `low` to `high`.

    The ends are included unless `low_open` / `high_open`; a bool is not a number here.
    """
    expected = f"{label} must be a finite number{_interval(low, high, low_open, high_open)}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{expected} of type {type(value).__name__}")
    number = float(value)
    too_low = number <= low if low_open else number < low
    too_high = number >= high if high_open else number > high
    if not math.isfinite(number) or too_low or too_high:
        raise ValueError(expected)
    return number


def positive(label: str, value: Any) -> float:
    """`value` as a float, finite and > 0."""
    return real(label, value, 0.0, low_open=True)


def non_negative(label: str, value: Any) -> float:
    """`value` as a float, finite and >= 0."""
    return real(label, value, 0.0)


def probability(label: str, value: Any) -> float:
    """`value` as a float in [0, 1): a rate that may be 0 but never drops everything (dropout, a beta)."""
    return real(label, value, 0.0, 1.0, high_open=True)


def integer(label: str, value: Any, low: int = 1) -> int:
    """`value` as an int >= `low` (NumPy integers included, bools not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{label} must be an int, got {type(value).__name__} {value!r}")
    if value < low:
        raise ValueError(f"{label} must be {'> 0' if low == 1 else f'>= {low}'}, got {value}")
    return int(value)


def positive_int(label: str, value: Any) -> int:
    """`value` as an int > 0."""
    return integer(label, value, 1)


def flag(label: str, value: Any) -> bool:
    """`value` as a bool: True, False, 1 or 0 (bool("no") is True, so a string here is a mistake)."""
    if not (isinstance(value, bool) or (isinstance(value, numbers.Integral) and value in (0, 1))):
        raise ArgumentTypeError(f"{label} must be True or False, got {value!r}")
    return bool(value)


def one_of(label: str, value: Any, choices: Collection[Any]) -> Any:
    """`value` unchanged when it is one of `choices`, else ValueError listing them."""
    try:
        found = value in choices
    except TypeError:  # an unhashable value is none of the (hashable) choices
        found = False
    if found:
        return value
    raise ValueError(f"{label} must be one of {list(choices)}, got {value!r}")


def _interval(low: float, high: float, low_open: bool, high_open: bool) -> str:
    """`` >= 0``, `` in [0, 1)``, or nothing for the whole real line."""
    if low == -math.inf and high == math.inf:
        return ""
    if high == math.inf:
        return f" {'>' if low_open else '>='} {low:g}"
    if low == -math.inf:
        return f" {'<' if high_open else '<='} {high:g}"
    return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
