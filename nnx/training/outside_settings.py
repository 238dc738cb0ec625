"""The settings a user's layer keeps outside its instance: plain class attributes and module globals its code reads.

A recorded (NumPy) or compiled (JAX) program holds every value its code reads as a constant. The
layers' own attributes are compared before each step (`nnx.training.shared_programs.SettingsWatch`);
this finds the rest that a class written by a user (a layer, a loss, a regularizer, an optimizer's
rule, a gradient transform), or a function of the user's (a metric), may read as a setting:

- a plain class attribute (a number, a string, a flag, None, or a tuple of them) that no instance
  attribute shadows, read as ``self.k`` or ``type(self).k``;
- a module global of such a value that the class's methods load by name;
- an array in either place (a table the code reads): by identity, and a NumPy array by its bytes too, so that
  writing into it in place (``TABLE[...] *= 2``) is a change. A large one costs a copy of its bytes at each
  check (rare: this runs only where the watches run, not between back-to-back steps);
- a function in either place (a method, a ``staticmethod`` the code calls as ``self.body(g)``, a helper of the
  module): by identity, so that one replaced between calls is a change.

So is what a function the object keeps as an attribute reads (``self.fn``), what a function of the same module
that the methods call by name reads (a helper beside the class), an attribute the methods read of a module or of
a class of the user's they name (``cfg.SCALE`` after ``import cfg``, ``Config.SCALE``), and a variable of an
enclosing function the methods read (a class defined inside a function, reading its variable: a closure). Names
are followed to what they hold at each reading: a helper or a module name rebound since is a change, and what
the new one reads is watched from then on. Not seen: a list or dict changed in place (``OPS["scale"] = f``), an
attribute two names down (``pkg.sub.SCALE``), a module or class held in an attribute (``self.cfg.SCALE``), and
what a function of another module reads.

What the class's own code assigns (``type(self).calls += 1``, a ``global`` counter) is its running
state, not a setting: a trace runs that code, so watching it would trace again at every step. Those
names are passed over, as are nnx's own classes (their settings live on the instance).
"""

from __future__ import annotations

import dis
import enum
import functools
import inspect
import math
import numbers
import random
import types
from collections.abc import Iterable, Mapping
from typing import Any

from .._bytecode import nested_codes

__all__ = ["PLAIN_VALUES", "OutsideWatch", "contents", "is_array", "is_plain", "is_scalar", "outside_generators",
           "outside_key", "outside_settings"]

PLAIN_VALUES = (type(None), int, float, str, bool, bytes)  # values a watch compares in place


def is_plain(value: Any) -> bool:
    """Whether `value` is one of `PLAIN_VALUES`, or a tuple or frozenset of such: a value equality tells apart."""
    if type(value) in (tuple, frozenset):
        return all(is_plain(item) for item in value)
    return type(value) in PLAIN_VALUES


def is_scalar(value: Any) -> bool:
    """Whether `value` is a NumPy scalar (``np.float32(0.5)``, ``np.bool_(True)``): an immutable value, told by its
    type and value, though its type has a shape and a dtype as an array's does."""
    return any(cls.__name__ == "generic" and cls.__module__ == "numpy" for cls in type(value).__mro__[1:])


def is_array(value: Any) -> bool:
    """Whether `value` is an array (its type has a shape and a dtype): not a namespace module such as ``xp``,
    whose ``shape`` and ``dtype`` are functions."""
    return hasattr(type(value), "shape") and hasattr(type(value), "dtype")


def contents(value: Any) -> bytes | None:
    """A copy of the bytes of an array that can be written in place (a NumPy array, whose ``flags.writeable`` says
    so), else None: an immutable array (JAX's) is told by identity alone, and nothing is read from a device."""
    if not is_array(value) or not getattr(getattr(value, "flags", None), "writeable", False):
        return None
    try:
        return memoryview(value).tobytes()
    except (TypeError, ValueError, BufferError):  # no buffer (an object array): told by identity alone
        return None


# functions a class or module holds: compared by identity, so that one replaced between calls (``Rule.body =
# staticmethod(other)``, a helper rebound in its module) is another setting, where programs held the old one
_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType, types.MethodType, staticmethod, classmethod)


# values of other kinds a class or module keeps as settings: compared by type and repr (`_key`), which tells
# apart what their == may not (an IntEnum member from its int, -0j from 0j, Decimal("-0") from Decimal("0"))
_OTHER_VALUES = (numbers.Number, str, bytes, enum.Enum)


def _is_value(value: Any) -> bool:
    """Whether `value` is a plain value, another number, string or enum member, or a tuple or frozenset of those."""
    if type(value) in (tuple, frozenset):
        return all(_is_value(item) for item in value)
    return is_plain(value) or (isinstance(value, _OTHER_VALUES) and not is_array(value))


def _is_setting(value: Any) -> bool:
    """Whether a watch compares `value` read from a class or a module: a value (`_is_value`), an array (a table
    written in place, ``TABLE[...] *= 2``, by its identity and bytes; rebinding a JAX array, by its identity), or a
    function (by its identity)."""
    return _is_value(value) or is_array(value) or isinstance(value, _FUNCTIONS)


def outside_settings(objects: Iterable[Any]) -> list[tuple[Any, str, Mapping[str, Any], Any]]:
    """``(owner, name, namespace, value)`` for each plain value the user classes of `objects` read from their class
    or module: `owner` is the class (a class attribute) or the module's name (a global), `namespace` the mapping
    that holds the value now (``cls.__dict__`` or the module's globals), so ``namespace.get(name)`` re-reads it.

    Each value is listed once, however many of `objects` share its class or module.
    """
    found: list[tuple[Any, str, Mapping[str, Any], Any]] = []
    seen: set[tuple[int, str]] = set()
    for obj in objects:
        if isinstance(obj, types.FunctionType):
            # a user's function (a metric given as a (name, function) pair): the globals and closure variables it
            # reads, which a program holds as constants where the plain loop reads them at each call
            if not _is_users_module(obj.__module__):
                continue
            settings = _global_settings(_code_facts((obj,))[1])
        else:
            user = [cls for cls in type(obj).__mro__ if _is_users(cls)]
            # the methods, and a function of the user's the object keeps as an attribute (``self.fn``, nnx's own
            # layers too): what it reads of its module or closure is a setting as much as what a method reads
            held = tuple(v for v in getattr(obj, "__dict__", {}).values()
                         if type(v) is types.FunctionType and _is_users_module(v.__module__))
            if not user and not held:
                continue
            written, loaded = _code_facts(tuple(f for cls in user for f in _functions(cls)) + held)
            settings = [*_class_settings(obj, user, written), *_global_settings(loaded)]
        for owner, name, namespace, value in settings:
            if (id(namespace), name) not in seen:
                seen.add((id(namespace), name))
                found.append((owner, name, namespace, value))
    return found


def outside_generators(obj: Any) -> list[tuple[str, Any]]:
    """``(name, generator)`` for each host random generator the code of `obj`'s user classes reads outside the
    instance: one at module level (``GEN.normal()``), NumPy's global one (``np.random.normal``, a function imported
    from ``numpy.random``) and Python's (``random.random()``). `python_state` compares them around a trace or a
    recording, which would draw from them once where the plain loop draws at every step."""
    user = [cls for cls in type(obj).__mro__ if _is_users(cls)]
    if not user:
        return []
    found: list[tuple[str, Any]] = []
    # (what the constructor and `build` draw, once, is no step's: a name drawn from a SystemRandom)
    stepping = tuple(f for cls in user for f in _functions(cls) if f.__name__ not in ("__init__", "build"))
    for namespace, name in _code_facts(stepping)[1]:
        value = namespace.get(name)
        if isinstance(value, types.ModuleType) and value.__name__ in ("numpy.random", "random"):
            # the global generator behind the module's functions, which are its bound methods
            name, value = value.__name__, getattr(value, "random", None)
        if isinstance(value, types.BuiltinMethodType | types.MethodType):
            value = getattr(value, "__self__", None)  # a function imported from either module: its generator
        if _is_host_generator(value) and all(value is not g for _, g in found):
            found.append((name, value))
    return found


def _is_host_generator(value: Any) -> bool:
    """Whether `value` is a host random generator (Python's ``random.Random``, NumPy's Generator or RandomState),
    told by type: nothing is imported, and no attribute of an arbitrary object is read."""
    if isinstance(value, random.Random):
        return True
    kind = type(value)
    return (kind.__module__ or "").startswith("numpy.random") and kind.__name__ in ("Generator", "RandomState")


def _class_settings(obj: Any, user: list[type], written: frozenset[str]) -> list[tuple[Any, str, Mapping, Any]]:
    """The plain class attributes of `obj` that its user classes define, as attribute lookup on `obj` finds them
    (not shadowed by an instance attribute or a class before it in the MRO), but those their code assigns."""
    found = []
    resolved = set(vars(obj)) if hasattr(obj, "__dict__") else set()
    for cls in type(obj).__mro__:
        namespace = cls.__dict__
        if cls in user:
            found.extend((cls, name, namespace, value) for name, value in namespace.items()
                         if name not in resolved and name not in written and name not in _REGISTRY_NAMES
                         and not name.startswith("__") and _is_setting(value))
        resolved.update(namespace)
    return found


def _global_settings(loaded: tuple[tuple[Any, str], ...]) -> list[tuple[Any, str, Mapping, Any]]:
    """The values among `loaded` ((namespace, name) pairs: a module's globals, or a `_Closure`) that are settings
    now, and the modules a name holds (by identity: ``cfg = other_module`` changes what ``cfg.SCALE`` reads)."""
    found = []
    for module_globals, name in loaded:
        value = module_globals.get(name, _MISSING)
        if (_is_setting(value) or isinstance(value, types.ModuleType)) and not name.startswith("__"):
            found.append((module_globals.get("__name__"), name, module_globals, value))
    return found


class _Closure:
    """A closure cell the methods read, as a mapping of its one variable: ``get`` re-reads it as a module's globals
    are re-read (an empty cell reads as missing)."""

    __slots__ = ("cell", "name")

    def __init__(self, cell: types.CellType, name: str) -> None:
        self.cell, self.name = cell, name

    def get(self, key: str, default: Any = None) -> Any:
        if key != self.name:
            return default
        try:
            return self.cell.cell_contents
        except ValueError:
            return default


_MISSING = object()
# what nnx's registry writes on each class it registers (`nnx.registry.register`): the name a file saves it under
_REGISTRY_NAMES = frozenset({"registered_name"})


def outside_key(objects: Iterable[Any]) -> tuple:
    """`outside_settings` of `objects` as a hashable key: ``(owner, name, value)``, a float by its repr (so -0.0
    is not 0.0, and NaN equals itself)."""
    return _keyed(outside_settings(objects))


def _keyed(found: list[tuple[Any, str, Mapping[str, Any], Any]]) -> tuple:
    return tuple((owner, name, _key(value)) for owner, name, _, value in found)


def _key(value: Any) -> Any:
    if is_array(value):  # by identity, layout and bytes: a program holds the values it read
        return "array", id(value), str(value.dtype), tuple(value.shape), contents(value)
    if type(value) is float:
        return float, repr(value)
    if type(value) is bool:  # True == 1 and hashes alike, but code may branch on the type
        return bool, value
    if type(value) in (tuple, frozenset):
        return type(value), tuple(_key(item) for item in value)
    if type(value) not in PLAIN_VALUES and isinstance(value, _OTHER_VALUES):
        return type(value), repr(value)
    return value


def _differs(now: Any, value: Any) -> bool:
    """Whether `now`, another object of `value`'s type, keys another program than `value` (`_key`). A float set
    again each step costs a comparison or two (-0.0 is not 0.0, NaN is NaN); an array or a NumPy scalar, told by
    identity, always differs."""
    if type(now) is float:
        if now != value:
            return not (now != now and value != value)
        return now == 0.0 and math.copysign(1.0, now) != math.copysign(1.0, value)
    if type(now) in PLAIN_VALUES:
        return now != value
    return _key(now) != _key(value)


class OutsideWatch:
    """`outside_key` of some objects, kept with where each value lives, so that a check every step compares each
    value in place (`changed`) and reads the key in full (`read`) only after one changed. It holds no object:
    the caller reads again when its objects are others."""

    def __init__(self) -> None:
        self.value: tuple = ()
        # (namespace, name, value, the bytes of an array that can be written in place, else None)
        self._entries: list[tuple[Mapping[str, Any], str, Any, bytes | None]] = []

    def read(self, objects: Iterable[Any]) -> tuple:
        """The key of `objects` as it stands now, kept as `value`."""
        found = outside_settings(objects)
        self._entries = [(namespace, name, value, contents(value)) for _, name, namespace, value in found]
        self.value = _keyed(found)
        return self.value

    def changed(self) -> bool:
        """Whether a value read last changed since (or is gone), or an array read last holds other bytes."""
        # a loop, not any() over a generator: asked every step
        for namespace, name, value, held in self._entries:
            now = namespace.get(name, _MISSING)
            if now is value:
                if held is not None and contents(value) != held:
                    return True
            elif held is not None or type(now) is not type(value) or _differs(now, value):
                return True
        return False

    def current(self, objects: Iterable[Any]) -> tuple:
        """The key of `objects`, the objects last read, read again only where a value changed."""
        return self.read(objects) if self.changed() else self.value


def _is_users(cls: type) -> bool:
    """Whether `cls` is a class of the user's (not nnx's, not Python's own)."""
    return cls is not object and _is_users_module(cls.__module__)


def _is_users_module(module: str | None) -> bool:
    """Whether a class or function of `module` is the user's (not nnx's, not Python's own)."""
    module = module or ""
    return module != "builtins" and module != "nnx" and not module.startswith("nnx.")


def _code_facts(functions: tuple[types.FunctionType, ...]) -> tuple[frozenset[str], tuple[tuple[Any, str], ...]]:
    """(attribute, global and closure variable names the functions assign or delete, (namespace, name) of each
    global, attribute of a module global or of a user's class global and closure variable they load and do not
    assign: the namespace a mapping whose ``get`` re-reads it). The module functions they call by a global name,
    from their own modules (a helper beside the class), are read too, and theirs in turn. Kept per set of functions
    while each global name they load holds the function, module or class it held (`_steering`), so that a helper or
    a module rebound since (``helper = other``) is followed to what its name holds now."""
    kept = _FACTS.get(functions)
    if kept is not None and all(_steering(namespace.get(name)) is held for namespace, name, held in kept[1]):
        return kept[0]
    facts, steered_by = _read_facts(functions)
    _FACTS.pop(functions, None)
    _FACTS[functions] = facts, steered_by
    if len(_FACTS) > MAX_KEPT_FACTS:
        del _FACTS[next(iter(_FACTS))]
    return facts


# sets of functions -> (their `_code_facts`, (namespace, global name, `_steering` of its value) for each global they
# load), most recently read last
_FACTS: dict[tuple, tuple[tuple, tuple]] = {}
MAX_KEPT_FACTS = 1024


def _steering(value: Any) -> Any:
    """What of a global's value steers the reading of code that loads it: a function (followed as a helper), a
    module or a class (whose attributes are read); None for anything else."""
    return value if isinstance(value, (types.FunctionType, types.ModuleType, type)) else None


def _read_facts(functions: tuple[types.FunctionType, ...]) -> tuple[tuple, tuple]:
    """`_code_facts` of `functions` as their globals stand now, and what steered it (`_FACTS`)."""
    modules = {function.__module__ for function in functions}
    written: set[str] = set()
    loaded: dict[tuple[int, str], tuple[Any, str]] = {}
    steered_by: dict[tuple[int, str], tuple[Any, str, Any]] = {}
    pending, seen = list(functions), set(functions)
    while pending:
        function = pending.pop()
        namespace = function.__globals__
        # the enclosing function's variables this one reads (not its own, which its inner functions share)
        cells = dict(zip(function.__code__.co_freevars, function.__closure__ or (), strict=True))
        assigned, reads = _reads_of(function)
        written |= assigned
        for kind, name, attribute in reads:
            if kind is _CLOSURE:
                if name in cells:
                    loaded.setdefault((id(cells[name]), name), (_Closure(cells[name], name), name))
                continue
            value = namespace.get(name)
            steered_by.setdefault((id(namespace), name), (namespace, name, _steering(value)))
            if kind is _GLOBAL:
                loaded.setdefault((id(namespace), name), (namespace, name))
                if isinstance(value, types.FunctionType) and value.__module__ in modules and value not in seen:
                    seen.add(value)
                    pending.append(value)
            elif isinstance(value, types.ModuleType) or isinstance(value, type) and _is_users(value):
                # (``cfg.SCALE``, ``Config.SCALE``: a class's ``__dict__`` is a new proxy at each reading)
                loaded.setdefault((id(value), attribute), (value.__dict__, attribute))
    facts = frozenset(written), tuple(pair for pair in loaded.values() if pair[1] not in written)
    return facts, tuple(steered_by.values())


# what `_reads_of` lists a function's code reading: a global name; an attribute of a global name (``cfg.SCALE``,
# the name's attribute where it holds a module); a variable of an enclosing function
_GLOBAL, _MODULE_ATTRIBUTE, _CLOSURE = "global", "module attribute", "closure"


@functools.lru_cache(maxsize=4096)
def _reads_of(function: types.FunctionType) -> tuple[frozenset[str], tuple[tuple[str, str, str], ...]]:
    """(the attribute, global and closure variable names `function`'s code assigns or deletes, ``(kind, name,
    attribute)`` of each name it loads, in order): what its bytecode says, whatever the names hold now."""
    written: set[str] = set()
    reads: dict[tuple[str, str, str], None] = {}
    for code in nested_codes(function.__code__):
        after_global = None  # the global name a LOAD_GLOBAL just loaded, whose attribute may come next
        for instruction in dis.get_instructions(code):
            name = instruction.argval
            if instruction.opname in ("STORE_ATTR", "DELETE_ATTR", "STORE_GLOBAL", "DELETE_GLOBAL",
                                      "STORE_DEREF", "DELETE_DEREF"):
                written.add(name)
            elif instruction.opname == "LOAD_ATTR" and after_global is not None:
                reads[_MODULE_ATTRIBUTE, after_global, name] = None
            elif instruction.opname in ("LOAD_DEREF", "LOAD_CLASSDEREF"):
                reads[_CLOSURE, name, ""] = None
            elif instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                reads[_GLOBAL, name, ""] = None
                after_global = name
                continue
            after_global = None
    return frozenset(written), tuple(reads)


def _functions(cls: type) -> list[types.FunctionType]:
    """The Python functions a class defines: its methods, static and class methods, and properties' accessors,
    each as its author wrote it (unwrapped: `Layer` wraps a subclass's ``forward`` in a check of its own)."""
    found = []
    for member in vars(cls).values():
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        candidates = (member.fget, member.fset, member.fdel) if isinstance(member, property) else (member,)
        found.extend(inspect.unwrap(c) for c in candidates if isinstance(c, types.FunctionType))
    return [function for function in found if isinstance(function, types.FunctionType)]
