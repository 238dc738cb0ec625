"""Holding an optimizer to its ``elementwise = True`` where it counts: a rule reading across elements is named.

A rule declared elementwise may run once over all parameters concatenated (`nnx.training.flat`) or over one
rank's shard of them (`nnx.distributed.sharded`). There a sum, a norm or a maximum over the array it is given
mixes parameters, and the numbers differ from the rule's parameter by parameter, without a word. So the first
call of the rule over such a buffer gets `watched` ``xp``: the namespace itself, except that a function reading
across elements, given the buffer's values (an array as large as the buffer) as the data it reads across, raises
`TypeError` naming the rule and the call, before anything is written. Later calls get ``xp`` itself, so a step
costs nothing more; a rule run parameter by parameter (`Optimizer.step`, JAX's compiled step) gives its own
numbers whatever it reads, and is left as it is.

What is not seen: a NumPy method such as ``grad.sum()``, the ``@`` operator, a namespace the rule finds itself
(``array_api_compat.array_namespace(grad)``), and a call made only after the first step. On the first call the
rule's ``xp`` is this object, not the module, so ``xp is np`` is false there.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["CROSS_ELEMENT", "watched"]

# functions whose result element reads other elements of their first argument: the standard's reductions, scans,
# searching, sorting and reordering, and the common ones of NumPy, torch and JAX's namespaces (also in `linalg`
# and `fft`, where every function does). A guard such as ``bool(xp.all(xp.isfinite(g)))`` mixes no numbers.
CROSS_ELEMENT = frozenset({
    "sum", "prod", "mean", "std", "var", "max", "min", "cumulative_sum", "cumulative_prod", "diff", "argmax",
    "argmin", "sort", "argsort", "unique_all", "unique_counts", "unique_inverse", "unique_values", "flip", "roll",
    "searchsorted", "take", "take_along_axis",
    "amax", "amin", "nansum", "nanmean", "nanmax", "nanmin", "nanprod", "nanstd", "nanvar", "median", "nanmedian",
    "average", "ptp", "percentile", "quantile", "cumsum", "cumprod", "logsumexp", "norm", "trace",
})
# products: each operand is read across
CROSS_ELEMENT_PRODUCTS = frozenset({"matmul", "tensordot", "vecdot", "dot", "inner", "outer", "einsum", "kron"})
CROSS_ELEMENT_NAMESPACES = frozenset({"linalg", "fft"})


def watched(optimizer: Any, xp: Any, buffer: Any) -> Any:
    """`xp` for the first call of `optimizer`'s rule over `buffer` (the concatenated parameters, or a slice of
    them): `xp` itself unless the optimizer declares ``elementwise = True`` and `buffer` has more than one element."""
    size = math.prod(getattr(buffer, "shape", ()))
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
        if not callable(value) or isinstance(value, type):
            return value
        if name in CROSS_ELEMENT_PRODUCTS:
            return self._checked(value, self._prefix + name, None)
        if self._prefix or name in CROSS_ELEMENT:
            return self._checked(value, self._prefix + name, 1)
        return value

    def _checked(self, function: Any, name: str, operands: int | None) -> Any:
        """`function`, raising where one of its first `operands` arguments (None: every one) is as large as the
        buffer: the data it reads across (a table it searches or takes from is the first; the indices are not)."""
        rule, size = self._rule, self._size

        def call(*args: Any, **kwargs: Any) -> Any:
            for arg in args[:operands]:
                shape = getattr(arg, "shape", None)
                if shape is not None and None not in shape and math.prod(shape) == size:
                    raise TypeError(
                        f"{rule} declares elementwise = True, but its update calls xp.{name} across the elements of "
                        f"the array it updates ({size} elements): fit runs an elementwise rule once over all "
                        "parameters concatenated, where that call would mix them and give other numbers than "
                        f"parameter by parameter. Set elementwise = False on {rule} (each parameter is then updated "
                        "on its own), or compute with elementwise functions only")
            return function(*args, **kwargs)
        return call
