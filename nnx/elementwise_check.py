"""Holding an optimizer to its ``elementwise = True`` where it counts: a rule reading across elements is named.

A rule declared elementwise may run once over all parameters concatenated (`nnx.training.flat`) or over one
rank's shard of them (`nnx.distributed.sharded`). There a sum, a norm or a maximum over the array it is given
mixes parameters, and the numbers differ from the rule's parameter by parameter, without a word. So the first
call of the rule over such a buffer gets `watched` ``xp``: the namespace itself, except that a function reading
across elements, given the buffer's values (an array holding them) as the data it reads across, raises
`TypeError` naming the rule and the call, before anything is written. Later calls get ``xp`` itself, so a step
costs nothing more; a rule run parameter by parameter (`Optimizer.step`, JAX's compiled step) gives its own
numbers whatever it reads, and is left as it is.

An array holding the buffer's elements is one as large as the buffer or a multiple of it (a stack or a concatenation
of it); a reduction along an axis of its own (of one element, or one keeping an axis of the buffer's length whole)
reads each element on its own. What is not seen: indexing (``grad[0]``, ``grad[::-1]``), a NumPy method such as
``grad.sum()``, an outer product made by broadcasting, a namespace the rule finds itself
(``array_api_compat.array_namespace(grad)``), and a call made only after the first step. On the first call the
rule's ``xp`` is this object, not the module, so ``xp is np`` is false there.

A rule that reads its arrays' shape (``value.ndim``, to decay matrices only) or uses ``@`` would see the buffer's
shape there, not a parameter's: `nnx.shape_reads` finds that in its code, and such a rule is updated parameter by
parameter instead (a sharded update refuses it).
"""

from __future__ import annotations

import math
import operator
from typing import Any

__all__ = ["CROSS_ELEMENT", "watched"]

# functions whose result element reads other elements of their first argument: the standard's reductions, scans,
# searching, sorting and reordering, and the common ones of NumPy, torch and JAX's namespaces (also in `linalg`
# and `fft`, where every function does). A guard ``bool(xp.all(xp.isfinite(g)))`` reads across elements too: over
# the buffer it stops every parameter's update, where parameter by parameter it stops the later ones only.
CROSS_ELEMENT = frozenset({
    "sum", "prod", "mean", "std", "var", "max", "min", "cumulative_sum", "cumulative_prod", "diff", "argmax",
    "argmin", "all", "any", "count_nonzero", "nonzero", "sort", "argsort", "unique_all", "unique_counts",
    "unique_inverse", "unique_values", "flip", "roll", "searchsorted", "take", "take_along_axis",
    "amax", "amin", "nansum", "nanmean", "nanmax", "nanmin", "nanprod", "nanstd", "nanvar", "nanargmax",
    "nanargmin", "median", "nanmedian", "average", "ptp", "percentile", "quantile", "cumsum", "cumprod",
    "logsumexp", "logcumsumexp", "cummax", "cummin", "norm", "trace", "unique", "partition", "argpartition",
    "std_mean", "var_mean", "aminmax", "topk", "kthvalue", "mode", "histogram", "histc", "bincount", "vdot",
})
# reductions over the axes they are given (``axis=``, or the second positional argument): over axes of one
# element only (``xp.sum(g[..., None], axis=-1)``) they read no other element
AXIS_REDUCTIONS = frozenset({
    "sum", "prod", "mean", "std", "var", "max", "min", "all", "any", "count_nonzero", "amax", "amin", "nansum",
    "nanmean", "nanmax", "nanmin", "nanprod", "nanstd", "nanvar", "median", "nanmedian", "logsumexp",
})
# functions reading a table at the positions they are given: the table is the data read across
TABLE_FUNCTIONS = frozenset({"searchsorted", "take", "take_along_axis"})
# products: each operand is read across (einsum: unless its subscripts contract nothing)
CROSS_ELEMENT_PRODUCTS = frozenset({"matmul", "tensordot", "vecdot", "dot", "inner", "outer", "einsum", "kron"})
CROSS_ELEMENT_NAMESPACES = frozenset({"linalg", "fft"})
# the keywords a reduction's data goes by in NumPy, torch and the standard
DATA_KEYWORDS = ("x", "a", "input", "x1")


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
        """`function`, raising where it reads across the elements of an array holding the buffer's (`_mixes`): its
        first argument, or every one (`operands` None: a product)."""
        rule, size = self._rule, self._size

        def call(*args: Any, **kwargs: Any) -> Any:
            if _mixes(name, size, args, kwargs, operands):
                raise TypeError(
                    f"{rule} declares elementwise = True, but its update calls xp.{name} across the elements of the "
                    f"array it updates ({size} elements): fit runs an elementwise rule once over all parameters "
                    "concatenated, where that call would mix them and give other numbers than parameter by "
                    f"parameter. Set elementwise = False on {rule} (each parameter is then updated on its own), or "
                    "compute with elementwise functions only")
            return function(*args, **kwargs)
        return call


def _size(x: Any) -> int | None:
    shape = getattr(x, "shape", None)
    return None if shape is None or None in shape else math.prod(shape)


def _holds_buffer(x: Any, size: int) -> bool:
    """Whether `x` may hold the buffer's elements: as many, or a multiple (a stack or concatenation of them)."""
    n = _size(x)
    return n is not None and n >= size and n % size == 0


def _mixes(name: str, size: int, args: tuple, kwargs: dict[str, Any], operands: int | None) -> bool:
    """Whether the call reads across the elements of an array holding the buffer's elements, among its data."""
    if operands is None:  # a product
        if name.endswith("einsum") and args and isinstance(args[0], str) and _contracts_nothing(args[0]):
            return False
        return any(_holds_buffer(x, size) for x in (*args, *kwargs.values()))
    data = [*args[:operands], *[kwargs[k] for k in DATA_KEYWORDS if k in kwargs]]
    # a table searched or taken from is the buffer only at its size: a fixed grid of 256 entries is no stack of a
    # buffer of 128 parameters
    held = [x for x in data if (_size(x) == size if name in TABLE_FUNCTIONS else _holds_buffer(x, size))]
    if not held:
        return False
    axis = kwargs.get("axis", kwargs.get("dim"))
    if axis is None and name in AXIS_REDUCTIONS and len(args) > 1 and operands == 1:
        axis = args[1]
    if axis is None or isinstance(axis, bool):
        return True  # over every element (or an axis the function defaults to): taken as across the buffer
    shape = tuple(held[0].shape)
    try:
        axes = {operator.index(a) % len(shape) for a in (axis if isinstance(axis, (tuple, list)) else (axis,))}
    except (TypeError, ZeroDivisionError):
        return True
    if math.prod(shape[a] for a in axes) == 1:
        return False  # axes of one element: no element reads another
    # an axis of the buffer's length kept whole (a stack of it and other arrays reduced along the stack) reads across
    # the stacked arrays only, each element of the buffer on its own
    return not any(shape[a] == size for a in range(len(shape)) if a not in axes)


def _contracts_nothing(subscripts: str) -> bool:
    """Whether explicit einsum `subscripts` give every operand the output's indices, each once: an elementwise
    product (``"...,...->..."``, ``"ij,ij->ij"``), where no element reads another."""
    if "->" not in subscripts:
        return False
    inputs, output = subscripts.replace(" ", "").split("->")
    output = output.replace("...", ".")
    return all(sorted(operand.replace("...", ".")) == sorted(output) and len(set(output)) == len(output)
               for operand in inputs.split(","))
