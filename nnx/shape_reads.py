"""Whether an optimizer's rule may depend on the shape of the arrays it is given, read from its code.

A rule declared ``elementwise = True`` may run once over all parameters concatenated (`nnx.training.flat`) or on
one rank's shard of them (`nnx.distributed.sharded`), where an array's shape is the buffer's, not a parameter's: a
rule decaying matrices only (``if value.ndim > 1``) decays nothing there, one scaled by ``value.shape[0]`` scales
by the buffer's length, and at any step (a decay a callback switches on later). `shape_dependence` reads the rule's
bytecode for such reads, so that such a rule is updated parameter by parameter (a sharded update refuses it),
whatever it declares.

What is read: ``update`` (a function, a ``functools.partial`` of one, a callable object's ``__call__``) and, in
turn, every Python function it may reach that is not an array library's, nnx's or Python's own: the methods of its
class (``self.f``, ``type(self).f``, ``super().f``, a table of functions it keeps); what the object holds (a mask
function, a wrapped optimizer's rule, an object of the user's and its class's methods, small lists and dicts of
those); the functions of the modules, classes and objects it reads as globals or imports, along dotted chains; the
functions it closes over (a decorator's wrapped function) and its default arguments. What counts as a read of the
shape: an attribute or method of `SHAPE_NAMES` of anything but the optimizer's own settings (``value.ndim``,
``value.dim()``, ``np.ndim(value)``, ``case object(ndim=2)``; not ``self.size`` or ``self.cfg.size``), ``len()`` of
or iteration over ``update``'s value or gradient or a helper's argument, ``getattr(x, "ndim")``, a global function
of such a name (``from numpy import ndim``) and ``@``. A read that changes nothing (``xp.zeros(value.shape)``) costs
the flat update's speed, never a number. Not seen: an array kept on the optimizer and read from there (``self.last =
value``, then ``self.last.ndim``), ``len()`` of or iteration over another array (a state array), code made at run
time (``exec``), a name given as a string (``operator.attrgetter("ndim")``) and C functions.
"""

from __future__ import annotations

import dis
import functools
import inspect
import operator
import sys
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ._bytecode import nested_codes

__all__ = ["SHAPE_NAMES", "shape_dependence"]

# an array's attributes and methods that tell its shape (NumPy's, the standard's and torch's): over a flat buffer
# they are the buffer's
SHAPE_NAMES = frozenset({"shape", "ndim", "size", "T", "mT", "dim", "numel", "ndimension", "nelement", "nbytes",
                         "__len__", "__iter__"})
# packages whose functions are not read: the array libraries compute as the rule asks them to (their own shape
# handling is no read of the rule's), and nnx's helpers keep shapes
_LIBRARIES = frozenset({"numpy", "torch", "jax", "jaxlib", "cupy", "cupyx", "array_api_compat", "array_api_strict",
                        "scipy", "nnx"})
# the modules whose functions are not read: those and Python's own
_NOT_READ = _LIBRARIES | frozenset(sys.stdlib_module_names) | {"builtins", ""}
_ATTRIBUTE_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD", "LOAD_SUPER_ATTR"})
_GLOBAL_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_MATMUL = frozenset({"BINARY_MATRIX_MULTIPLY", "INPLACE_MATRIX_MULTIPLY"})


def shape_dependence(optimizer: Any, _seen: frozenset[int] = frozenset()) -> str | None:
    """What in `optimizer`'s rule may read the shape of the arrays it is given (``"Rule.update reads .ndim of an
    array"``), or None. A function's reading is kept while it lives, with every name it resolved, and read again
    where one of those now names another object (a helper redefined in a notebook, a method replaced on the
    class); the functions, objects and optimizers the optimizer holds are looked at each time."""
    cls = type(optimizer)
    on_object = "update" in getattr(optimizer, "__dict__", {})  # a function set on the object takes no self
    update, method = _function_of(_static(optimizer, "update"), bound=not on_object)
    if update is None:
        return None
    # nnx's own classes read no shape (tests/test_derived_user_code.py holds them to that); a subclass of the
    # user's is read, since it may change what their rule calls
    own = _package(cls.__module__) == _package(update.__module__) == "nnx"
    found = None if own else _cached_reads(cls, update, method)
    if found is not None:
        return found
    for held in _held(optimizer):  # a mask function set on the object, a wrapped optimizer, a policy object
        if _is_optimizer(held):
            found = None if id(held) in _seen else shape_dependence(held, _seen | {id(optimizer)})
        elif callable(held):  # (read each time, not kept: one made per optimizer would keep it alive)
            function, _ = _function_of(held, bound=False)
            found = None if function is None else _reads(cls, function, False)[0]
        else:  # an object of the user's: the methods of its class
            found = next(filter(None, (_cached_reads(type(held), f, m) for f, m in _methods(type(held)))), None)
        if found is not None:
            return found
    return None


def _is_optimizer(value: Any) -> bool:
    return _static(value, "update") is not None and _static(value, "elementwise") is not None


def _held(optimizer: Any) -> Iterator[Any]:
    """What `optimizer` holds as attributes of its own that a rule may call: callables, optimizers, objects of the
    user's classes, and those in small lists, tuples and dicts."""
    try:
        values = list(vars(optimizer).values())
    except TypeError:  # no __dict__ (slots)
        return
    for value in [*values, *(item for v in values for item in _contents(v))]:
        # functions, and objects of the user's classes (a callable object, an optimizer, a policy): nnx's own
        # (the parameters, a built-in optimizer) and the libraries' read no shape of the rule's
        if isinstance(value, (types.FunctionType, types.MethodType, functools.partial)) or \
                not isinstance(value, type) and _users(type(value)):
            yield value


def _users(cls: type) -> bool:
    """Whether `cls` is defined outside the array libraries, nnx and Python's own modules."""
    return _package(getattr(cls, "__module__", None)) not in _NOT_READ


def _methods(cls: type) -> list[tuple[types.FunctionType, bool]]:
    """The Python functions a user's class defines, with whether each takes ``self`` first."""
    found = []
    try:
        members = list(vars(cls).values())
    except TypeError:
        return []
    for member in members:
        function, method = _function_of(member, bound=True)
        if function is not None:
            found.append((function, method))
    return found


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
            obj, method = _static(type(obj), "__call__"), True
        else:
            return None, False
    return None, False


def _cached_reads(cls: type, function: types.FunctionType, method: bool) -> str | None:
    """`_reads`, kept per function while it lives and read again where a name it resolved names another object."""
    try:
        readings = _READINGS.setdefault(function, {})
        kept = readings.get((cls, method))
    except TypeError:  # a class that cannot be a key (a metaclass defining __eq__ without __hash__)
        return _reads(cls, function, method)[0]
    if kept is not None and all(_same(get(), value) for get, value in kept[1]):
        return kept[0]
    found, resolved = _reads(cls, function, method)
    readings[cls, method] = (found, resolved)
    return found


# each function's readings by (class, whether a method): the result and what its names resolved to, as
# (a getter, the object it gave). Only functions of classes are kept (weakly): those the optimizer object holds are
# read each time, as a reading of one made per optimizer would keep that optimizer alive
_READINGS: weakref.WeakKeyDictionary[types.FunctionType, dict[tuple[type, bool], tuple[str | None, list]]] = \
    weakref.WeakKeyDictionary()
_MISSING = object()
_CONTAINER_ITEMS = 64  # a list, tuple or dict of functions is a small table; a larger one is data, not looked in


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(map(operator.is_, a, b))
    return a is b


def _reads(cls: type, root: types.FunctionType, method: bool) -> tuple[str | None, list]:
    """The first shape read in `root` or a function it may call, read breadth first, and what the names it
    resolved gave (`_cached_reads` checks them again)."""
    pending, seen = [(root, method)], {root}
    resolved: list[tuple[Callable[[], Any], Any]] = []

    def note(get: Callable[[], Any]) -> Any:
        value = get()
        resolved.append((get, value))
        return value

    def follow(obj: Any, as_method: bool) -> None:
        function, is_method = _function_of(obj, as_method)
        if function is not None and function not in seen and _package(function.__module__) not in _NOT_READ and \
                not function.__code__.co_filename.startswith("<frozen"):
            seen.add(function)
            pending.append((function, is_method))

    while pending:
        function, method = pending.pop(0)
        found = _read_in(cls, function, method, follow, note)
        if found is not None:
            return f"{function.__qualname__} {found}", resolved
    return None, resolved


def _package(module: str | None) -> str:
    return (module or "").partition(".")[0]


def _read_in(cls: type, function: types.FunctionType, method: bool, follow: Callable[[Any, bool], None],
             note: Callable[[Callable[[], Any]], Any]) -> str | None:
    """What `function`'s own code reads of an array's shape, or None; what it may call goes to `follow`, and each
    name it resolves through `note`."""
    code = function.__code__
    positional = code.co_varnames[:code.co_argcount]
    this = positional[0] if method and positional else None  # ``self``, in a method
    # the arrays whose len() or iteration counts: update's value and grad (after self and xp), and every argument of
    # a helper, which may be given them (a helper iterating over settings, betas or milestones, costs the flat
    # update's speed, never a number)
    first = 1 if this else 0
    arrays = set(positional[first + 1:first + 3]) if function.__name__ == "update" else set(positional[first:])
    namespace = function.__globals__
    for cell in function.__closure__ or ():  # what it closes over: a decorator's wrapped function
        contents = note(lambda cell=cell: _cell(cell))
        follow(contents, False)
    defaults = note(lambda: (*(function.__defaults__ or ()), *(function.__kwdefaults__ or {}).values()))
    for default in defaults:  # a helper given as a default argument
        follow(default, False)
    for nested in nested_codes(code):
        instructions = list(dis.get_instructions(nested))
        on_self = False  # whether the value on top is ``self`` or an attribute chain from it (a setting)
        loaded: Any = None  # the module, class or object of the user's just loaded, whose function may come next
        imported: Any = None  # the module an import just loaded
        after_super = False  # whether a ``super(...)`` came before this attribute
        for i, instruction in enumerate(instructions):
            name, opname = instruction.argval, instruction.opname
            following = instructions[i + 1:i + 3]
            if opname in _ATTRIBUTE_LOADS:
                found, loaded = _attribute_read(cls, function, name, opname, after_super, loaded, on_self, follow,
                                                note)
                if found is not None:
                    return found
                after_super = False
                continue  # (an attribute chain from self stays a setting)
            on_self = _variable(instruction) == this and this is not None
            if opname in _MATMUL or opname == "BINARY_OP" and "@" in instruction.argrepr:
                return "multiplies with @"
            if opname == "GET_ITER" and i and _variable(instructions[i - 1]) in arrays:
                return "iterates over an array"
            if opname == "MATCH_CLASS" and i and isinstance(instructions[i - 1].argval, tuple) and \
                    SHAPE_NAMES & set(instructions[i - 1].argval):
                return "matches an array's shape"  # ``case object(ndim=2):``
            if opname == "IMPORT_NAME":
                imported = loaded = note(lambda name=name: sys.modules.get(name))
                continue
            if opname == "IMPORT_FROM" and imported is not None:
                follow(note(lambda module=imported, name=name: _attribute(module, name)), False)
                continue
            loaded = None
            if opname in _GLOBAL_LOADS:
                value = note(lambda name=name: namespace.get(name, _MISSING))
                if value is _MISSING:  # a builtin
                    after_super = after_super or name == "super"
                    if name == "len" and following and _variable(following[0]) in arrays:
                        return "calls len() of an array"
                    if name == "getattr" and len(following) == 2 and _variable(following[0]) != this and \
                            following[1].opname == "LOAD_CONST" and following[1].argval in SHAPE_NAMES:
                        return f"reads {following[1].argval!r} of an array with getattr"
                    continue
                if callable(value) and (name in SHAPE_NAMES or getattr(value, "__name__", None) in SHAPE_NAMES):
                    return f"calls {name}() (of an array?)"  # (``from numpy import ndim as np_ndim``)
                follow(value, False)
                for item in note(lambda value=value: tuple(_contents(value))):  # a table of functions
                    follow(item, False)
                loaded = value if _holds_functions(value) else None
    return None


def _attribute_read(cls: type, function: types.FunctionType, name: str, opname: str, after_super: bool,
                    loaded: Any, on_self: bool, follow: Callable[[Any, bool], None],
                    note: Callable[[Callable[[], Any]], Any]) -> tuple[str | None, Any]:
    """(what an attribute load reads of an array's shape, or None; the module, class or object of the user's it
    gives, for a chain ``pkg.rules.rate``)."""
    if after_super or opname == "LOAD_SUPER_ATTR":
        follow(note(lambda: _inherited(cls, function, name)), True)
        return None, None
    own = note(lambda: _static(cls, name))  # a method of its class, however reached, or a table it keeps
    follow(own, True)
    for item in note(lambda: tuple(_contents(own))):
        follow(item, False)
    value = None
    if loaded is not None:  # a global module's, class's or object's function
        value = note(lambda: _static(loaded, name) if isinstance(loaded, type) else
                     _attribute(loaded, name) if isinstance(loaded, types.ModuleType) else _static(type(loaded), name))
        follow(value, not isinstance(loaded, types.ModuleType))
    if name in SHAPE_NAMES and not on_self:
        return f"reads .{name} of an array", None
    return None, value if _holds_functions(value) else None


def _holds_functions(value: Any) -> bool:
    """Whether an attribute of `value` may be a function of the user's: a module, a class or a user's object."""
    return isinstance(value, (types.ModuleType, type)) or value is not None and not callable(value) and \
        _users(type(value)) and not isinstance(value, (list, tuple, dict))


def _cell(cell: types.CellType) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None


def _variable(instruction: dis.Instruction) -> str | None:
    """The local or closure variable `instruction` puts on top of the stack (the last of a pair), or None."""
    if instruction.opname.startswith("LOAD_FAST") or instruction.opname == "LOAD_DEREF":
        name = instruction.argval
        return name[-1] if isinstance(name, tuple) else name
    return None


def _static(owner: Any, name: str) -> Any:
    """`name` as the ``__dict__`` of `owner` (an object, then its class) or of the classes it inherits from holds
    it, without running any code of the object's (``__getattr__``, a property); None where none does. Faster than
    ``inspect.getattr_static``, which a fit asks about every name a rule's reading resolved."""
    try:
        if not isinstance(owner, type):
            own = getattr(owner, "__dict__", None)
            if isinstance(own, dict) and name in own:
                return own[name]
            owner = type(owner)
        for cls in owner.__mro__:
            found = cls.__dict__.get(name, _MISSING)
            if found is not _MISSING:
                return found
    except Exception:  # a class of the user's may raise anything here: nothing is read
        return None
    return None


def _attribute(module: Any, name: str) -> Any:
    try:
        return getattr(module, name, None)
    except Exception:  # a module's __getattr__ may raise anything: nothing is read
        return None


def _contents(value: Any) -> list[Any]:
    """The values of a small dict, list or tuple a rule reads (a table of functions), else nothing."""
    if not isinstance(value, (dict, list, tuple)) or len(value) > _CONTAINER_ITEMS:
        return []
    return list(value.values()) if isinstance(value, dict) else list(value)


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
