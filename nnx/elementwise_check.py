"""Holding an optimizer to its ``elementwise = True``: a rule that reads across a parameter's elements is named.

A rule declared elementwise may run once over all parameters concatenated (`nnx.training.flat`) or over one
rank's shard of them (`nnx.distributed.sharded`). There a sum, a norm or a maximum over the array it is given
mixes parameters, and the numbers differ from the rule's parameter by parameter, without a word. So the first
call of the rule in each execution gets `watched` ``xp``: the namespace itself, except that a function reading
across elements, called on an array as large as the one updated, raises `TypeError` naming the rule and the call.
Later calls get ``xp`` itself, so a step costs nothing more. (A NumPy method such as ``grad.sum()`` or the ``@``
operator is not seen: the standard's arrays have no reducing methods, and a rule written with ``xp`` calls them.)
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["CROSS_ELEMENT", "watched"]

# the standard's functions whose result element reads other elements of the array (reductions, scans, sorting,
# searching, products, reordering); inside `linalg` and `fft` every function does
CROSS_ELEMENT = frozenset({
    "sum", "prod", "mean", "std", "var", "max", "min", "cumulative_sum", "cumulative_prod", "all", "any", "diff",
    "argmax", "argmin", "count_nonzero", "nonzero", "searchsorted", "argsort", "sort", "unique_all",
    "unique_counts", "unique_inverse", "unique_values", "matmul", "tensordot", "vecdot", "flip", "roll", "take",
    "take_along_axis",
})
CROSS_ELEMENT_NAMESPACES = frozenset({"linalg", "fft"})


def watched(optimizer: Any, xp: Any, value: Any) -> Any:
    """`xp` for a first call of `optimizer`'s rule on `value` (a parameter, or a flat buffer or a shard of them):
    `xp` itself unless the optimizer declares ``elementwise = True`` and `value` has more than one element."""
    size = math.prod(getattr(value, "shape", ()))
    if not getattr(optimizer, "elementwise", False) or size < 2:
        return xp
    return _WatchedNamespace(xp, type(optimizer).__name__, size, "")


class _WatchedNamespace:
    """`xp` passed through, with its cross-element functions checked (`prefix`: "linalg." inside that namespace)."""

    def __init__(self, xp: Any, rule: str, size: int, prefix: str) -> None:
        self._xp, self._rule, self._size, self._prefix = xp, rule, size, prefix

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._xp, name)
        if not self._prefix and name in CROSS_ELEMENT_NAMESPACES:
            return _WatchedNamespace(value, self._rule, self._size, name + ".")
        if callable(value) and not isinstance(value, type) and (self._prefix or name in CROSS_ELEMENT):
            return self._checked(value, self._prefix + name)
        return value

    def _checked(self, function: Any, name: str) -> Any:
        rule, size = self._rule, self._size

        def call(*args: Any, **kwargs: Any) -> Any:
            for arg in (*args, *kwargs.values()):
                shape = getattr(arg, "shape", None)
                if shape is not None and None not in shape and math.prod(shape) == size:
                    raise TypeError(
                        f"{rule} declares elementwise = True, but its update calls xp.{name} on an array as large "
                        f"as the one it updates ({size} elements), which reads across elements: run once over all "
                        "parameters concatenated, as fit runs an elementwise rule, it would mix them and give other "
                        f"numbers than parameter by parameter. Set elementwise = False on {rule} (each parameter is "
                        "then updated on its own), or compute with elementwise functions only")
            return function(*args, **kwargs)
        return call
