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
shape there, not a parameter's: `shape_dependence` finds that in its code, and such a rule is updated parameter by
parameter instead (a sharded update refuses it).
"""

from __future__ import annotations

import dis
import functools
import inspect
import math
import operator
import sysconfig
import types
from typing import Any

from ._bytecode import nested_codes

__all__ = ["CROSS_ELEMENT", "SHAPE_ATTRIBUTES", "shape_dependence", "watched"]

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
# an array's attributes that tell its shape: over a flat buffer or a shard they are the buffer's, not the
# parameter's (a rule decaying matrices only, ``if value.ndim > 1``, would decay nothing there)
SHAPE_ATTRIBUTES = frozenset({"shape", "ndim", "size", "T", "mT", "dim", "numel"})  # (torch's methods too)
_STDLIB = sysconfig.get_paths()["stdlib"]


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


def shape_dependence(optimizer: Any) -> str | None:
    """What in `optimizer`'s rule may depend on the shape of the arrays it is given, or None: an attribute or method
    of `SHAPE_ATTRIBUTES` read (``value.ndim``, ``getattr(value, "ndim")``, torch's ``value.dim()``), ``len()`` or
    the ``@`` operator, in its ``update``, in the methods of its class it calls (through ``self``, ``type(self)``
    or ``super()``) and in the functions of the user's modules it calls, in turn.

    Over flat buffers or a shard the shape is the buffer's, not a parameter's, and a rule reading it may give other
    numbers there at any step (a decay of matrices only, switched on by a callback). So such a rule is updated
    parameter by parameter, and a sharded update refuses it, whatever it declares: read from the code, once per
    class and function. A read that changes nothing (``xp.zeros(value.shape)``) costs the flat update's speed."""
    cls = type(optimizer)
    on_object = "update" in getattr(optimizer, "__dict__", {})
    method = not on_object and not isinstance(inspect.getattr_static(cls, "update", None), staticmethod)
    update = inspect.unwrap(getattr(optimizer.update, "__func__", optimizer.update))
    if not isinstance(update, types.FunctionType):
        return None
    return _shape_reads(cls, update, method)


@functools.lru_cache(maxsize=256)
def _shape_reads(cls: type, update: types.FunctionType, method: bool) -> str | None:
    pending, seen = [(update, method)], {update}

    def follow(helper: Any, method: bool) -> None:
        is_static = isinstance(helper, staticmethod)
        helper = inspect.unwrap(getattr(helper, "__func__", helper))
        if isinstance(helper, types.FunctionType) and helper not in seen and not _library_code(helper):
            seen.add(helper)
            pending.append((helper, method and not is_static))

    while pending:
        function, method = pending.pop(0)
        code = function.__code__
        this = code.co_varnames[0] if method and code.co_argcount else None  # ``self``, in a method
        found = _shape_read_in(cls, function, this, follow)
        if found is not None:
            return f"{function.__qualname__} {found}"
    return None


def _shape_read_in(cls: type, function: types.FunctionType, this: str | None, follow: Any) -> str | None:
    """What `function`'s code reads of an array's shape, or None; the functions it calls are handed to `follow`."""
    namespace = function.__globals__
    named: set[str] = set()  # the names of `SHAPE_ATTRIBUTES` it holds as strings
    reads_by_name = False  # whether it calls the builtin getattr
    for nested in nested_codes(function.__code__):
        loaded = None  # the variable the previous instruction loaded, if any
        module: Any = None  # the module a global just loaded, whose function may come next
        after_super = False  # whether a ``super(...)`` came before this attribute
        for instruction in dis.get_instructions(nested):
            name, opname = instruction.argval, instruction.opname
            if opname in ("LOAD_ATTR", "LOAD_METHOD", "LOAD_SUPER_ATTR"):
                if after_super or opname == "LOAD_SUPER_ATTR":
                    follow(_inherited(cls, function, name), True)
                else:
                    # a method of its class, however reached (``self.f``, ``type(self).f``, ``cls.f``)
                    follow(inspect.getattr_static(cls, name, None), True)
                    if module is not None:
                        follow(getattr(module, name, None), False)
                    if name in SHAPE_ATTRIBUTES and (loaded != this or this is None):
                        return f"reads .{name} of an array"
                after_super = False
            elif opname == "LOAD_CONST" and isinstance(name, str) and name in SHAPE_ATTRIBUTES:
                named.add(name)
            elif opname in ("BINARY_MATRIX_MULTIPLY", "INPLACE_MATRIX_MULTIPLY") or \
                    opname == "BINARY_OP" and "@" in instruction.argrepr:
                return "multiplies with @"
            elif opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                helper = namespace.get(name)
                builtin = name not in namespace
                if builtin and name == "len":
                    return "calls len() (of an array?)"
                reads_by_name = reads_by_name or builtin and name == "getattr"
                after_super = after_super or builtin and name == "super"
                follow(helper, False)
            module = namespace.get(name) if opname in ("LOAD_GLOBAL", "LOAD_NAME") and \
                isinstance(namespace.get(name), types.ModuleType) else None
            loaded = _loaded_variable(instruction)
    if reads_by_name and named:
        return f"calls getattr with {sorted(named)[0]!r}"
    return None


def _library_code(function: types.FunctionType) -> bool:
    """Whether `function` is an installed library's or Python's own (not read: its code is not the rule's)."""
    filename = function.__code__.co_filename
    return any(part in filename for part in ("site-packages", "dist-packages")) or \
        filename.startswith(_STDLIB) or filename.startswith("<frozen")


def _inherited(cls: type, function: types.FunctionType, name: str) -> Any:
    """What ``super().name`` finds in `function`, a method of `cls` or of a class it inherits from."""
    mro = cls.__mro__
    owner = next((i for i, c in enumerate(mro)
                  if any(inspect.unwrap(getattr(v, "__func__", v)) is function for v in vars(c).values())), None)
    if owner is None:
        return None
    return next((vars(c)[name] for c in mro[owner + 1:] if name in vars(c)), None)


def _loaded_variable(instruction: dis.Instruction) -> str | None:
    """The local or closure variable `instruction` leaves on top of the stack (the last of a pair), or None."""
    if instruction.opname.startswith("LOAD_FAST") or instruction.opname == "LOAD_DEREF":
        name = instruction.argval
        return name[-1] if isinstance(name, tuple) else name
    return None
