"""Whether an optimizer's rule may depend on the shape of the arrays it is given, read from its code.

A rule declared ``elementwise = True`` may run once over all parameters concatenated (`nnx.training.flat`) or on
one rank's shard of them (`nnx.distributed.sharded`), where an array's shape is the buffer's, not a parameter's: a
rule decaying matrices only (``if value.ndim > 1``) decays nothing there, one scaled by ``value.shape[0]`` scales
by the buffer's length, and at any step (a decay a callback switches on later). `shape_dependence` reads the rule's
bytecode for such reads, so that such a rule is updated parameter by parameter (a sharded update refuses it),
whatever it declares.

What is read: ``update`` (a function, a ``functools.partial`` of one, a callable object's ``__call__``) and, in
turn, every Python function it may call that is not an array library's or Python's own: the methods of its class
(however reached: ``self.f``, ``type(self).f``, ``super().f``), the functions and optimizers the object holds (a
mask function, a wrapped optimizer's rule), the functions of the modules, classes and containers it reads as
globals, and the functions it closes over (a decorator's wrapped function). What counts as a read of the shape:
an attribute or method of `SHAPE_NAMES` of anything but the optimizer's own settings (``value.ndim``,
``value.dim()``, ``np.ndim(value)``; not ``self.size`` or ``self.cfg.size``), ``len()`` of or iteration over an
array argument, ``getattr(x, "ndim")``, a global function of such a name (``from numpy import ndim``) and ``@``.
A read that changes nothing (``xp.zeros(value.shape)``) costs the flat update's speed, never a number. Not seen:
code made at run time (``exec``), a name given as a string (``operator.attrgetter("ndim")``) and C functions.
"""

from __future__ import annotations

import dis
import functools
import inspect
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

from ._bytecode import nested_codes

__all__ = ["SHAPE_NAMES", "shape_dependence"]

# an array's attributes and methods that tell its shape (NumPy's, the standard's and torch's): over a flat buffer
# they are the buffer's
SHAPE_NAMES = frozenset({"shape", "ndim", "size", "T", "mT", "dim", "numel", "ndimension", "nelement", "nbytes"})
# packages whose functions are not read: the array libraries compute as the rule asks them to (their own shape
# handling is no read of the rule's), and nnx's helpers keep shapes
_LIBRARIES = frozenset({"numpy", "torch", "jax", "jaxlib", "cupy", "cupyx", "array_api_compat", "array_api_strict",
                        "scipy", "nnx"})
_ATTRIBUTE_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD", "LOAD_SUPER_ATTR"})
_GLOBAL_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_MATMUL = frozenset({"BINARY_MATRIX_MULTIPLY", "INPLACE_MATRIX_MULTIPLY"})


def shape_dependence(optimizer: Any, _seen: frozenset[int] = frozenset()) -> str | None:
    """What in `optimizer`'s rule may read the shape of the arrays it is given (``"Rule.update reads .ndim of an
    array"``), or None. The class's code is read once (cached); the functions and optimizers the object holds
    are looked at each time, since each object may hold others."""
    cls = type(optimizer)
    on_object = "update" in getattr(optimizer, "__dict__", {})  # a function set on the object takes no self
    update, method = _function_of(inspect.getattr_static(optimizer, "update", None), bound=not on_object)
    if update is None:
        return None
    found = _cached_reads(cls, update, method)
    if found is not None:
        return found
    for held in _held(optimizer):  # a mask function set on the object, a wrapped optimizer
        if hasattr(held, "update") and hasattr(held, "elementwise") and id(held) not in _seen:
            found = shape_dependence(held, _seen | {id(optimizer)})
        else:
            function, _ = _function_of(held, bound=False)
            found = None if function is None else _cached_reads(cls, function, False)
        if found is not None:
            return found
    return None


def _held(optimizer: Any) -> Iterator[Any]:
    """The callables and optimizers `optimizer` holds as attributes of its own."""
    try:
        values = list(vars(optimizer).values())
    except TypeError:  # no __dict__ (slots)
        return
    for value in values:
        if not isinstance(value, type) and (callable(value) or hasattr(value, "update") and
                                            hasattr(value, "elementwise")):
            yield value


def _function_of(obj: Any, bound: bool) -> tuple[types.FunctionType | None, bool]:
    """(the Python function `obj` runs, whether it is a method taking ``self`` first): a function, a static or class
    method, a bound method, a ``functools.partial``, a callable object's ``__call__``; None for a C function."""
    method = bound
    for _ in range(8):  # unwrap layers (partial of a method of a callable object...), never forever
        if isinstance(obj, staticmethod):
            obj, method = obj.__func__, False
        elif isinstance(obj, (classmethod, types.MethodType)):
            obj, method = obj.__func__, True
        elif isinstance(obj, functools.partial):
            obj, method = obj.func, False
        elif isinstance(obj, types.FunctionType):
            try:
                obj = inspect.unwrap(obj)
            except ValueError:  # a wrapper loop
                pass
            return (obj, method) if isinstance(obj, types.FunctionType) else (None, False)
        elif callable(obj) and not isinstance(obj, type):
            obj, method = inspect.getattr_static(type(obj), "__call__", None), True
        else:
            return None, False
    return None, False


def _cached_reads(cls: type, function: types.FunctionType, method: bool) -> str | None:
    try:
        return _reads_of_class(cls, function, method)
    except TypeError:  # a class that cannot be a cache key (a metaclass defining __eq__ without __hash__)
        return _reads(cls, function, method)


@functools.lru_cache(maxsize=512)
def _reads_of_class(cls: type, function: types.FunctionType, method: bool) -> str | None:
    return _reads(cls, function, method)


def _reads(cls: type, root: types.FunctionType, method: bool) -> str | None:
    """The first shape read in `root` or a function it may call, read breadth first."""
    pending, seen = [(root, method)], {root}

    def follow(obj: Any, as_method: bool) -> None:
        function, is_method = _function_of(obj, as_method)
        if function is not None and function not in seen and not _library(function):
            seen.add(function)
            pending.append((function, is_method))

    while pending:
        function, method = pending.pop(0)
        found = _read_in(cls, function, method, follow)
        if found is not None:
            return f"{function.__qualname__} {found}"
    return None


def _library(function: types.FunctionType) -> bool:
    """Whether `function` is an array library's, nnx's or Python's own (not read)."""
    package = (getattr(function, "__module__", None) or "").partition(".")[0]
    return package in _LIBRARIES or package in sys.stdlib_module_names or package == "builtins" or \
        function.__code__.co_filename.startswith("<frozen")


def _read_in(cls: type, function: types.FunctionType, method: bool, follow: Callable[[Any, bool], None]) -> str | None:
    """What `function`'s own code reads of an array's shape, or None; what it may call goes to `follow`."""
    code = function.__code__
    positional = code.co_varnames[:code.co_argcount]
    this = positional[0] if method and positional else None  # ``self``, in a method
    # the arguments that may be arrays: update's value and grad (after self and xp), any of a helper's but self
    first = 1 if this else 0
    arrays = set(positional[first + 1:first + 3] if function.__name__ == "update" else positional[first:])
    namespace = function.__globals__
    cells = dict(zip(code.co_freevars, function.__closure__ or (), strict=True))
    for cell in cells.values():
        try:
            follow(cell.cell_contents, False)  # a function it closes over: a decorator's wrapped one
        except ValueError:  # an empty cell
            pass
    for nested in nested_codes(code):
        instructions = list(dis.get_instructions(nested))
        on_self = False  # whether the value on top is ``self`` or an attribute chain from it (a setting)
        loaded: Any = None  # the global the previous instruction loaded, if any
        after_super = False  # whether a ``super(...)`` came before this attribute
        for i, instruction in enumerate(instructions):
            name, opname = instruction.argval, instruction.opname
            following = instructions[i + 1:i + 3]
            if opname in _ATTRIBUTE_LOADS:
                if after_super or opname == "LOAD_SUPER_ATTR":
                    follow(_inherited(cls, function, name), True)
                else:
                    follow(_static(cls, name), True)  # a method of its class, however reached
                    if loaded is not None:  # a global module's, class's function
                        follow(_static(loaded, name) if isinstance(loaded, type) else _attribute(loaded, name),
                               isinstance(loaded, type))
                    if name in SHAPE_NAMES and not on_self:
                        return f"reads .{name} of an array"
                after_super = False
                loaded = None
                continue  # (an attribute chain from self stays a setting)
            on_self = _variable(instruction) == this and this is not None
            if opname in _MATMUL or opname == "BINARY_OP" and "@" in instruction.argrepr:
                return "multiplies with @"
            if opname == "GET_ITER" and i and _variable(instructions[i - 1]) in arrays:
                return "iterates over an array"
            loaded = None
            if opname in _GLOBAL_LOADS:
                if name not in namespace:  # a builtin
                    after_super = after_super or name == "super"
                    if name == "len" and following and _variable(following[0]) in arrays:
                        return "calls len() of an array"
                    if name == "getattr" and len(following) == 2 and _variable(following[0]) != this and \
                            following[1].opname == "LOAD_CONST" and following[1].argval in SHAPE_NAMES:
                        return f"reads {following[1].argval!r} of an array with getattr"
                    continue
                value = namespace[name]
                if callable(value) and (name in SHAPE_NAMES or getattr(value, "__name__", None) in SHAPE_NAMES):
                    return f"calls {name}() (of an array?)"  # (``from numpy import ndim as np_ndim``)
                follow(value, False)
                for item in _contents(value):  # a table of functions
                    follow(item, False)
                loaded = value if isinstance(value, (types.ModuleType, type)) else None
    return None


def _variable(instruction: dis.Instruction) -> str | None:
    """The local or closure variable `instruction` puts on top of the stack (the last of a pair), or None."""
    if instruction.opname.startswith("LOAD_FAST") or instruction.opname == "LOAD_DEREF":
        name = instruction.argval
        return name[-1] if isinstance(name, tuple) else name
    return None


def _static(owner: Any, name: str) -> Any:
    """``inspect.getattr_static(owner, name)``, None where that raises (a metaclass's odd ``__dict__``)."""
    try:
        return inspect.getattr_static(owner, name, None)
    except Exception:  # a class of the user's may raise anything here: nothing is read
        return None


def _attribute(module: Any, name: str) -> Any:
    try:
        return getattr(module, name, None)
    except Exception:  # a module's __getattr__ may raise anything: nothing is read
        return None


def _contents(value: Any) -> list[Any]:
    """The values of a dict, list or tuple a rule reads as a global (a table of functions), else nothing."""
    if isinstance(value, dict):
        return list(value.values())
    return list(value) if isinstance(value, (list, tuple)) else []


def _inherited(cls: type, function: types.FunctionType, name: str) -> Any:
    """What ``super().name`` finds in `function`, a method of `cls` or of a class it inherits from."""
    try:
        mro = cls.__mro__
        owner = next((i for i, c in enumerate(mro)
                      if any(_function_of(v, True)[0] is function for v in vars(c).values())), None)
        if owner is None:
            return None
        return next((vars(c)[name] for c in mro[owner + 1:] if name in vars(c)), None)
    except Exception:  # a metaclass's __dict__ may raise: nothing is read
        return None
