"""Compiled programs shared by models of one definition, within a process.

A compiled program of nnx (a training step, an epoch, an inference pass) takes the
parameter, buffer and optimizer-state values as inputs; what it computes is fixed by
the model's *definition*: the layers' classes and settings, how they nest, which
parameters they hold, the loss, the optimizer's rule and hyper-parameters. A second
model of the same definition (the next fold of a cross-validation, a resumed
checkpoint, a fresh estimator) therefore needs no new trace: it takes the program
the first one compiled, as ``jax.jit`` reuses a program for a function it has seen.

The definition is read from the objects' public settings and plain attributes
(`definition`). Where an object holds something that is not a plain value -- an
array that is not a parameter or buffer, an object nnx cannot describe -- the program
may have captured it as a constant, so that model's programs are its own, compiled
for it alone, as before. Each shared entry also keeps what tracing taught the owner
(`ProgramOwner`): the dropout draws of a step, the trace counters.
"""

from __future__ import annotations

import functools
import threading
import types
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol

from ..layers.base import BuildContext, Layer
from ..layers.parameter import Buffer, Parameter
from .outside_settings import PLAIN_VALUES, OutsideWatch, is_scalar, outside_key

__all__ = ["LOSS_CODE", "REGULARIZER_CODE", "ById", "ProgramOwner", "SettingsWatch", "SharedProgram", "Unshareable",
           "clear", "code_of", "config_key", "definition", "describe", "forget", "known", "layer_settings",
           "regularizers_of", "rule_code", "settings_key"]

# (the backend's program signature, the owner's definition key) -> (program, trace counts, trace values)
_TABLE: OrderedDict[tuple, tuple[Any, dict, dict]] = OrderedDict()
# programs the table keeps for every model, least recently used dropped first (a small MLP's took 1-4 MiB each)
TABLE_SIZE = 128
RECENT = 4  # programs an owner tries by calling them before it looks its inputs' signature up
# programs one owner keeps by input signature, least recently used dropped first: a server predicting on ever new
# row counts (1.8 MiB a program) or a notebook fitting with ever new batch sizes held every one while the model lived
OWN_PROGRAMS = 32
# the table keys of the programs each owner took or traced, at most TAKEN_KEPT: one taken again adds no trace counts
_TAKEN: weakref.WeakKeyDictionary[Any, set[tuple]] = weakref.WeakKeyDictionary()
TAKEN_KEPT = 4096
# held while the table or the taken keys change (never while a program compiles): models fit in threads share them
_LOCK = threading.Lock()


def clear() -> None:
    """Forget every shared program (each model compiles its own again, e.g. to compare)."""
    with _LOCK:
        _TABLE.clear()


def known(owner_key: tuple | None) -> bool:
    """Whether the table holds a program of this definition (for some inputs): taking it again compiles nothing."""
    if owner_key is None:
        return False
    with _LOCK:
        return any(key[1] == owner_key for key in _TABLE)


def forget(owner_key: tuple) -> None:
    """Forget the programs shared under one definition: its trace proved that no program may stand for it."""
    with _LOCK:
        for key in [key for key in _TABLE if key[1] == owner_key]:
            del _TABLE[key]


class Unshareable(Exception):
    """Raised inside `describe` for a value a program could capture as a constant (or nnx cannot tell)."""


class ById:
    """A key part that is equal only to itself: an object by identity, kept alive while the key lives."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ById) and other.obj is self.obj


_PLAIN = (type(None), bool, int, str, bytes)
# what `Layer` notes for its own checks between calls, and the constructor's arguments as given (kept for its
# config: ``BatchNorm()`` and the ``BatchNorm(8)`` a loaded model is built with are one layer once built): not
# settings, and a trace never reads them
_BOOKKEEPING = frozenset({"_ran_training_forward", "_init_args", "_init_positional"})
# what every `Layer` keeps for its model (binding, tables of its arrays and sub-layers): set when it is built
_LAYER_OWN = frozenset(vars(Layer()))
# a layer's attributes that are not settings: sub-layers (which have their own paths), its arrays, tables of them
_NOT_SETTINGS = (Layer, Parameter, Buffer, dict)


def describe(value: Any, params: dict[int, int], seen: dict[int, int] | None = None) -> Any:
    """A hashable description of `value` as far as a traced program can depend on it.

    `params` maps ``id`` of each of the model's parameters and buffers to its position (those
    are the program's inputs). Raises `Unshareable` for an array or an object it cannot describe.
    """
    if isinstance(value, _PLAIN):
        return type(value), value
    if isinstance(value, ById):  # already described by identity (`nnx.training.compiled.hyper_constants`)
        return value
    if isinstance(value, (float, complex)) or is_scalar(value):
        # repr: keeps -0.0 apart from 0.0 and makes NaN equal to itself; a NumPy scalar (``np.float32(0.5)``) is such
        # a value, though its type has a shape and a dtype
        return type(value), repr(value)
    if isinstance(value, functools.partial):  # a class written in C: its function and arguments by hand
        return functools.partial, describe(value.func, params, seen), describe(value.args, params, seen), \
            describe(value.keywords, params, seen)
    if isinstance(value, (Parameter, Buffer)):
        position = params.get(id(value))
        if position is None:
            raise Unshareable(f"{value!r} is not one of the model's own")
        return type(value), position, getattr(value, "regularized", None)
    seen = {} if seen is None else seen
    if isinstance(value, (tuple, list, deque)):
        return type(value), tuple(describe(v, params, seen) for v in value)
    if isinstance(value, dict):
        return dict, tuple((describe(k, params, seen), describe(v, params, seen)) for k, v in value.items())
    if isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
        return ById(value)
    if isinstance(value, types.ModuleType):
        return types.ModuleType, value.__name__
    if isinstance(value, BuildContext):  # the rest (host generator, a checkpoint's arrays) only builds
        return BuildContext, value.dtype, value.prefix, value.backend.spec
    if isinstance(value, Layer):
        if id(value) in seen:  # a layer met before (held twice, or a cycle): where it was first met
            return "seen", seen[id(value)]
        seen[id(value)] = len(seen)
        settings = {k: v for k, v in vars(value).items() if k not in _BOOKKEEPING}
        return type(value), describe(settings, params, seen)
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # an array (of any library) that is not an input
        raise Unshareable(f"a {type(value).__name__} held by the model")
    spec = getattr(value, "spec", None)
    if isinstance(spec, str) and hasattr(value, "xp"):  # a Backend
        return "backend", spec
    state = _state(value)
    if state is not None:  # a loss, a regularizer, a gradient transform, a config object a layer keeps
        return type(value), describe(state, params, seen)
    raise Unshareable(f"a {type(value).__name__} held by the model")


_HEAP_TYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made by a `class` statement (not one written in C)


def _state(value: Any) -> dict[str, Any] | None:
    """All an object knows, where it keeps it in sight: its ``__dict__`` and its slots (by their names in its
    class, ``_C__x`` for a private ``__x``; an unset one is left out), for an instance of Python classes or of
    ``types.SimpleNamespace`` (whose state is its ``__dict__``); None otherwise.

    A class written in C (``functools.partial``, a bound method) keeps its state out of sight. Slots and a
    namespace are read too: a config object ``self.cfg`` whose setting a callback changes is a setting changed.
    """
    slots = []
    for klass in type(value).__mro__[:-1]:  # all but `object`
        if klass is types.SimpleNamespace:
            continue
        own = klass.__dict__
        if not klass.__flags__ & _HEAP_TYPE:
            return None
        if "__new__" in own and not isinstance(own["__new__"], staticmethod):  # a constructor written in C
            return None
        slots += [(name, member) for name, member in own.items() if isinstance(member, types.MemberDescriptorType)]
    state = dict(vars(value)) if hasattr(value, "__dict__") else {}
    for name, member in slots:
        try:
            state[f"slot {name}"] = member.__get__(value, type(value))
        except AttributeError:  # a slot never set
            continue
    return state


# the methods a traced program runs of each class, which a patch on the class (``nnx.Dense.forward = ...``) replaces
_LAYER_CODE = ("forward", "backward")
LOSS_CODE = ("value_and_grad", "value_and_grad_prepared", "prepare", "rows")
_OPTIMIZER_CODE = ("update", "init_state")
REGULARIZER_CODE = ("penalty", "gradient", "__call__")


def regularizers_of(model: Any) -> list[Any]:
    """The regularizers the model's penalty applies: its own and each layer's (a nested model's included)."""
    return _regularizers_among(_model_and_layers(model))


def _regularizers_among(objects: tuple[Any, ...]) -> list[Any]:
    return [reg for obj in objects if (reg := getattr(obj, "regularizer", None)) is not None]


def code_of(model: Any, loss: Any = None, optimizer: Any = None) -> tuple:
    """The functions a program of `model` (and `loss`, `optimizer`) runs as their classes hold them now: each
    layer's ``forward`` and ``backward``, the model's own, its regularizers' penalty and gradient, the loss's methods
    and the optimizer's rule. A class's
    method replaced after a program was traced (a monkeypatch between fits) is other code: the program traced from
    the old one must not run for it.

    A layer's class is part of `definition` by identity, which its methods replaced in place do not change.
    """
    objects = _model_and_layers(model)
    layers = tuple(getattr(type(obj), name, None) for obj in objects for name in _LAYER_CODE) + tuple(
        getattr(type(reg), name, None) for reg in regularizers_of(model) for name in REGULARIZER_CODE)
    if loss is None and optimizer is None:
        return layers
    return (layers, tuple(getattr(type(loss), name, None) for name in LOSS_CODE),
            rule_code(optimizer))


def rule_code(optimizer: Any) -> tuple:
    """The optimizer's rule as its class holds it now (`code_of`'s part for it)."""
    return tuple(getattr(type(optimizer), name, None) for name in _OPTIMIZER_CODE)


def _model_and_layers(model: Any) -> tuple[Any, ...]:
    return model, *(layer for _, layer in model.named_layers())


def _reads_settings(model: Any) -> tuple[Any, ...]:
    """The model's objects whose classes' code its programs run: it, its layers and their regularizers."""
    objects = _model_and_layers(model)
    return (*objects, *_regularizers_among(objects))


def definition(model: Any) -> tuple | None:
    """The model's definition as a program sees it, or None where it cannot be told from plain settings.

    A model class of the user's own may keep anything in its attributes, so its programs stay its own.
    """
    if not type(model).__module__.startswith("nnx."):
        return None
    inputs = model.parameters() + model.buffers()
    params = {id(p): i for i, p in enumerate(inputs)}
    if len(params) != len(inputs):
        return None
    try:
        layers = tuple(describe(layer, params) for layer in model.layers)
        regularizer = describe(model.regularizer, params)
    except (Unshareable, RecursionError):
        return None
    # not the dropout stream's seed: the programs take it as an input (`nnx.training.compiled.CARRY_SEED`)
    return (type(model), model.backend.spec, str(model.dtype), layers, regularizer, code_of(model),
            outside_key(_reads_settings(model)))


def layer_settings(model: Any) -> tuple:
    """Every layer's settings as they stand: the attributes of its own class that describe as constants
    (numbers, strings, flags, containers of them), passing over None, arrays, sub-layers and objects
    `describe` cannot tell, and what `Layer` itself keeps (fixed while the parameters are the same).

    A program holds them fixed, so a setting changed after it was compiled needs another program; a config
    may not show the change (a user's layer keeps its settings in plain attributes, its config the
    constructor's arguments). The plain class attributes and module globals a user's class reads come last
    (`nnx.training.outside_settings`).
    """
    return (*_own_settings(model), *outside_key(_reads_settings(model)))


def _own_settings(model: Any) -> list[tuple[str, str, Any]]:
    """The settings `layer_settings` lists from the layers' own attributes."""
    return [(path, key, description) for path, layer in model.named_layers()
            for key, _, description in _settings_of(layer, model)]


def _settings_of(layer: Any, model: Any) -> list[tuple[str, Any, Any]]:
    """(attribute, value, description) of each setting among `layer`'s attributes: what `describe` tells, but None,
    arrays, parameters, buffers, sub-layers (they have paths of their own), the dropout stream a nested Sequential
    shares with its model (its seed and counter are inputs) and dicts holding anything else than plain values (the
    tables of arrays a layer keeps between its passes) and `Layer`'s bookkeeping (the constructor's arguments); a
    dict of plain values, nested too, is a setting."""
    found = []
    for key, value in vars(layer).items():
        if key in _LAYER_OWN or key in _BOOKKEEPING or value is None \
                or isinstance(value, _NOT_SETTINGS) and not isinstance(value, dict) or value is model.dropout_rng:
            continue
        if isinstance(value, _PLAIN):
            found.append((key, value, value))
            continue
        try:
            found.append((key, value, describe(value, {})))
        except (Unshareable, RecursionError):
            continue
    return found


_WATCHED = PLAIN_VALUES  # values a `SettingsWatch` compares in place, besides NumPy scalars


def _compared_in_place(value: Any) -> bool:
    """Whether a `SettingsWatch` compares `value` in place: a plain value, or a NumPy scalar."""
    return type(value) in _WATCHED or is_scalar(value)


_MISSING = object()


class SettingsWatch:
    """`layer_settings(model)`, re-read at a fraction of its cost where it is asked every step (JAX's compiled
    step): each attribute holding None or an immutable plain value is compared in place with what it held, and
    only a change there, an attribute added or removed, or a layer holding other settings reads them in full.
    The layers are held weakly, as the compiled step holds its model.
    """

    def __init__(self) -> None:
        self.value: tuple | None = None
        self._layers: list[weakref.ref] = []
        self._sizes: list[int] = []
        self._watched: list[tuple[int, str, Any]] = []  # (layer index, attribute, value)
        self._outside = OutsideWatch()  # the plain values the layers' classes read from their class or module
        self._read_in_full = True

    def current(self, model: Any) -> tuple:
        """The layers' settings as they stand now (equal to ``layer_settings(model)``)."""
        if self._read_in_full or self.value is None:
            return self._refresh(model)
        dicts = []
        for ref in self._layers:
            layer = ref()
            if layer is None:
                return self._refresh(model)
            dicts.append(vars(layer))
        if [len(d) for d in dicts] != self._sizes:
            return self._refresh(model)
        for i, key, value in self._watched:
            now = dicts[i].get(key, _MISSING)
            if now is not value and (type(now) is not type(value) or now != value):
                return self._refresh(model)
        if self._outside.changed():
            return self._refresh(model)
        return self.value

    def _refresh(self, model: Any) -> tuple:
        named = model.named_layers()
        found = [(path, _settings_of(layer, model)) for path, layer in named]
        self.value = (*[(path, key, description) for path, settings in found for key, _, description in settings],
                      *self._outside.read(_reads_settings(model)))
        layers = [layer for _, layer in named]
        self._layers = [weakref.ref(layer) for layer in layers]
        self._sizes = [len(vars(layer)) for layer in layers]
        self._watched = [(i, key, value) for i, layer in enumerate(layers) for key, value in vars(layer).items()
                         if _compared_in_place(value) and key not in _LAYER_OWN]
        # a setting of another kind (a tuple, a list or dict changed in place) can only be told by describing it
        # again
        self._read_in_full = any(not _compared_in_place(value) for _, settings in found for _, value, _ in settings)
        return self.value


def settings_key(*objects: Any) -> tuple | None:
    """`describe` of each object (a loss, an optimizer's hyper-parameters, ...), or None where one cannot be told."""
    try:
        return tuple(describe(obj, {}) for obj in objects)
    except (Unshareable, RecursionError):
        return None


def config_key(obj: Any) -> Any:
    """What an object's settings are, as constants of a program depend on them: its config, as text.

    An object that cannot write a config (a constructor argument that is not a JSON value,
    a class registered under no name) still trains and predicts: it is told apart by
    identity instead, as its default config (the constructor's arguments) would.
    """
    if obj is None:
        return "None"
    get = getattr(obj, "get_config", None)
    if get is None:
        return repr(sorted(vars(obj).items()))
    try:
        return repr(get())
    except TypeError:
        return ById(obj)


class ProgramOwner(Protocol):
    """The object whose traced function a `SharedProgram` compiles: it says what tracing taught it."""

    def trace_facts(self) -> tuple[dict[str, int], dict[str, Any]]:
        """(counters a trace increases, values a trace sets), as they stand now."""
        ...

    def adopt_facts(self, counts: dict[str, int], values: dict[str, Any]) -> None:
        """Take a program traced elsewhere: add `counts` (a trace's increases) and set `values`."""
        ...


class SharedProgram:
    """`fn` compiled once per input signature and definition, shared with every owner of the same definition.

    Args:
        backend: a backend that compiles (`Backend.can_compile`).
        fn: the pure function to compile (traced from this owner's objects on a miss).
        key: the owner's definition key now, or None when its programs must be its own.
        owner: what the trace of `fn` teaches (see `ProgramOwner`).
    """

    def __init__(self, backend: Any, fn: Callable[..., Any], key: Callable[[], tuple | None],
                 owner: ProgramOwner) -> None:
        self.backend, self.fn, self.key, self.owner = backend, fn, key, owner
        self._programs: OrderedDict[tuple, Any] = OrderedDict()  # this owner's programs by input signature, at most
        # `OWN_PROGRAMS` (``jax.jit`` keeps its own by signature too)
        self._recent: list[Any] = []  # the last few of them, tried first: most calls repeat a recent shape
        self._own: Any = None  # the library's own jit of `fn`, once the definition cannot be shared
        self._settings: tuple | None = None  # the backend's program settings the recent programs were taken under

    def __call__(self, *args: Any) -> Any:
        if self._own is not None:
            return self._own(*args)
        settings = self.backend.program_settings()
        if settings != self._settings:  # the user changed a setting (a precision): the recent programs are not it
            self._settings, self._recent = settings, []
        for program in self._recent:
            try:
                return program(*args)
            except TypeError:  # compiled for other shapes or dtypes: the library checks before running
                continue
        signature = self.backend.program_signature(args)
        program = self._programs.get(signature)
        if program is None:
            program = self._take(signature, args)
            if program is self._own:
                return program(*args)
            self._programs[signature] = program
            if len(self._programs) > OWN_PROGRAMS:
                self._programs.popitem(last=False)
        else:
            self._programs.move_to_end(signature)
        self._recent = [program] + [p for p in self._recent if p is not program][:RECENT - 1]
        return program(*args)

    def _take(self, signature: tuple, args: tuple) -> Any:
        """The program for `args`: from the table, or traced and compiled here (and put in the table)."""
        owner_key = self.key()
        if owner_key is None:
            self._own = self.backend.jit(self.fn)
            return self._own
        key = (signature, owner_key)
        with _LOCK:
            entry = _TABLE.get(key)
            if entry is not None:
                _TABLE.move_to_end(key)
            # a program its owner had before, dropped since (here, or with this object by the owner's own bound):
            # its trace counts are counted already
            taken = _TAKEN.setdefault(self.owner, set())
            taken_before = key in taken
            if len(taken) >= TAKEN_KEPT:
                taken.clear()
            taken.add(key)
        if entry is not None:
            program, counts, values = entry
            self.owner.adopt_facts({k: 0 for k in counts} if taken_before else counts, values)
            return program
        counts_before, _ = self.owner.trace_facts()
        program = self.backend.compile(self.fn, args)
        counts_after, values = self.owner.trace_facts()
        counts = {k: counts_after[k] - counts_before[k] for k in counts_after}
        with _LOCK:
            _TABLE[key] = (program, counts, values)
            while len(_TABLE) > TABLE_SIZE:
                _TABLE.popitem(last=False)
        return program
