"""What a traced program reads of the model besides its inputs, and what tracing must leave as it found.

A compiled program (`nnx.training.compiled`, `nnx.training.compiled_inference`) runs the
layers' own code once, while traced, and holds what that code read as constants: layer
settings, plain Python attributes, arrays a layer keeps besides its parameters and buffers,
the loss and the regularizer. This module describes those (`described`, `AttributeWatch`,
`HeldArrays`) so that a change traces the program again, and puts back the arrays a trace left in the layers
(`layer_attributes`, `put_back_arrays`), so that nothing that exists only inside a program escapes into the
objects. The layers' plain Python state around a trace is `nnx.training.python_state`'s, re-exported here.
"""

from __future__ import annotations

import types
import weakref
from typing import Any

from .._slots import slot_members
from ..layers.base import Layer
from ..layers.parameter import Buffer, Parameter
from .outside_settings import OutsideWatch, contents, is_array, is_plain
from .python_state import (
    PLAIN_STATE,
    changed_state,
    held_object_attributes,
    nnx_own,
    objects_state,
    python_state,
    restore_objects,
    restore_state,
)
from .shared_programs import ById, Unshareable, describe, regularizers_of

__all__ = ["AttributeWatch", "HeldArrays", "arrays_within", "changed_state", "contents", "described",
           "described_with_attributes", "held_object_attributes", "is_array", "layer_attributes", "object_attributes",
           "objects_state", "put_back_arrays", "python_state", "restore_objects", "restore_state", "shallow_copy",
           "slotted_reason"]

# how deep `arrays_within` and `described` look into nested lists, tuples and dicts
MAX_DESCRIBED_DEPTH = 8


def layer_attributes(model: Any) -> list[tuple[Any, dict[str, Any]]]:
    """Every layer with a shallow copy of its attributes, for `put_back_arrays` and `HeldArrays.note` after a trace;
    each pair also keeps the items one level inside those attributes (`_LayerAttributes.inner`): in an object of
    the user's a layer holds (a per-layer regularizer), and in a user's layer's dicts and lists (nnx's own layers
    keep no setting in one: a nested model's are its fit's tables)."""
    return object_attributes([layer for _, layer in model.named_layers()])


def object_attributes(objects: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
    """`layer_attributes` of any objects whose code a trace runs (the layers, a loss)."""
    found: list[tuple[Any, dict[str, Any]]] = []
    for layer in objects:
        attributes = dict(vars(layer))
        entry = _LayerAttributes((layer, attributes))
        own = nnx_own(layer)
        for key, value in attributes.items():
            if key not in _LAYER_OWN and not (own and isinstance(value, (dict, list))):
                items = _inner_items(value)
                if items is not None:  # an empty dict too: what a trace puts in it must not stay there
                    entry.inner[key] = items
                elif (held := held_object_attributes(value)) is not None:
                    entry.held[key] = dict(held)  # what a trace sets there is put back, as in the layer itself
        found.append(entry)
    return found


class _LayerAttributes(tuple):
    """A pair of `layer_attributes`, (layer, a shallow copy of its attributes), with `inner`: `_inner_items` of each
    attribute that has some, by attribute name (what `HeldArrays` notes one level down), and `held`: a shallow copy
    of the attributes of each other object of the user's the layer keeps (what `put_back_arrays` puts back)."""

    def __init__(self, pair: tuple[Any, dict[str, Any]]) -> None:
        super().__init__()
        self.inner: dict[str, dict[Any, Any]] = {}
        self.held: dict[str, dict[str, Any]] = {}


# what every `Layer` keeps for its model, and the arguments it was built with: no pass reads them as settings
_LAYER_OWN = frozenset(vars(Layer())) | {"_init_args", "_init_positional"}


def _inner_items(value: Any) -> dict[Any, Any] | None:
    """The items one level inside a layer's attribute that a program may hold as constants, by key (a list's by
    index): a dict's, a list's or a tuple's holding an array, or the attributes of an object of the user's class that
    keeps them in a
    ``__dict__`` and that `describe` cannot tell (a per-layer regularizer or a config object holding a NumPy array;
    one it can tell is a setting `SettingsWatch` compares). None for anything else (a plain value, an array, a
    layer, an object of nnx's own such as the model's random stream)."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, list):
        return dict(enumerate(value))
    if is_plain(value) or is_array(value) or isinstance(value, (Layer, Parameter, Buffer)) or nnx_own(value):
        return None
    if isinstance(value, tuple):  # one holding an array (a plain one is a setting)
        return dict(enumerate(value))
    attributes = getattr(value, "__dict__", None)
    if type(attributes) is not dict:
        return None
    try:
        describe(value, {})
        return None
    except (Unshareable, RecursionError):
        return dict(attributes)


def _item(container: Any, key: Any) -> Any:
    """What `container` (as `_inner_items` reads it) holds at `key` now, or `_GONE`."""
    if isinstance(container, dict):
        return container.get(key, _GONE)
    if isinstance(container, (list, tuple)):
        return container[key] if key < len(container) else _GONE
    return vars(container).get(key, _GONE)


def arrays_within(value: Any, depth: int = 0) -> tuple:
    """What a program may hold as constants inside `value`: (identity, bytes or None) of an array, and for a list,
    tuple or dict that holds an array (nested too) each item's: an array's, a plain value's (a setting beside the
    array, by value), those of a container holding an array in turn, and anything else's identity. A container
    holding no array gives nothing: it is told by its identity where it is held (a log the code never reads,
    appended to at every batch, would otherwise trace again at each step)."""
    if is_array(value):
        return ((ById(value), contents(value)),)
    if depth >= MAX_DESCRIBED_DEPTH or type(value) not in (list, tuple, dict) or not _holds_array(value, depth):
        return ()
    items = value.items() if type(value) is dict else enumerate(value)
    return tuple((key, _constant_within(item, depth + 1)) for key, item in items)


def _constant_within(item: Any, depth: int) -> Any:
    if is_array(item) or type(item) in (list, tuple, dict) and _holds_array(item, depth):
        return arrays_within(item, depth)
    if is_plain(item):
        return type(item), repr(item)  # repr: -0.0 is not 0.0, and NaN equals itself
    return ById(item)


def _holds_array(value: Any, depth: int) -> bool:
    """Whether a list, tuple or dict holds an array, nested up to `MAX_DESCRIBED_DEPTH`."""
    if is_array(value):
        return True
    if depth >= MAX_DESCRIBED_DEPTH or type(value) not in (list, tuple, dict):
        return False
    items = value.values() if type(value) is dict else value
    return any(_holds_array(item, depth + 1) for item in items)


def put_back_arrays(before: list[tuple[Any, dict[str, Any]]]) -> None:
    """Rebind every layer attribute a trace set to something other than plain state (what a layer keeps for its
    backward: traced arrays, which would escape the program) as `layer_attributes` found it.

    The plain loop leaves the last batch's concrete arrays there; a program leaves the attributes as they were
    before it was traced, never values that exist only inside it (a copy or a pickle of the model would fail).
    """
    for entry in before:
        layer, old = entry
        _put_back(vars(layer), old)
        # and what the trace set in a dict or list the layer still holds (``self.cache["X"] = X``)
        for key, items in getattr(entry, "inner", {}).items():
            container = old.get(key)
            if isinstance(container, dict) and vars(layer).get(key) is container:
                _put_back(container, items)
            elif isinstance(container, list) and vars(layer).get(key) is container and any(
                    not isinstance(v, PLAIN_STATE) and items.get(i, _GONE) is not v for i, v in enumerate(container)):
                container[:] = [items[i] for i in range(len(items))]
            elif held_object_attributes(container) is not None and vars(layer).get(key) is container:
                _put_back(vars(container), items)
        for key, held in getattr(entry, "held", {}).items():  # an object of the user's the layer keeps
            if vars(layer).get(key) is old.get(key):
                _put_back(vars(old[key]), held)


def _put_back(now: dict[Any, Any], old: dict[Any, Any]) -> None:
    """Rebind the entries of `now` that are no plain value and not as in `old` to what `old` holds (removing those
    `old` lacks), and restore such entries `old` has and `now` lost; a plain one changed is a change `changed_state`
    names."""
    for key in [k for k, v in now.items() if not isinstance(v, PLAIN_STATE) and old.get(k, _GONE) is not v]:
        if key in old:
            now[key] = old[key]
        else:
            del now[key]
    for key in old.keys() - now.keys():
        if not isinstance(old[key], PLAIN_STATE):
            now[key] = old[key]


_GONE = object()  # an attribute a layer did not have


class AttributeWatch:
    """An object's description as a program holds it (`described`), described again only when
    one of its attributes is another object than before, or a dict or list of them changed: asked every step.
    An object `described` tells only by identity is told by its attributes' identities too (a rebound array).
    None (no regularizer) is described as itself. The plain values a user's class reads from its class or
    module (`nnx.training.outside_settings`) are part of the description."""

    def __init__(self) -> None:
        self._obj: Any = None
        # (attribute, value, a shallow copy of a dict or list, the bytes of an array that can be written in place)
        self._items: list[tuple[str, Any, Any, bytes | None]] = []
        self._outside = OutsideWatch()
        self._in_full = True  # an attribute holds an object whose own attributes may change: described each time
        self.value: Any = None

    def current(self, obj: Any) -> Any:
        """The description of `obj` as it stands now."""
        attributes = getattr(obj, "__dict__", None)
        if attributes is not None and obj is not self._obj and self._like_last(obj, attributes):
            # another object of the same class holding equal plain values (``loss="bce"`` makes a new loss each
            # fit): the same description; its own attributes are watched from here on
            self._obj = obj
            self._items = [(key, value, shallow_copy(value), None) for key, value in attributes.items()]
        if self._in_full or obj is not self._obj or attributes is None or len(attributes) != len(self._items) or any(
                attributes.get(key, _GONE) is not value or (copy is not None and value != copy)
                or (held is not None and contents(value) != held)
                for key, value, copy, held in self._items) or self._outside.changed():
            outside = self._outside.read((obj,))
            self._obj, self.value = obj, (described_with_attributes(obj), *outside)
            self._items = [(key, value, shallow_copy(value), contents(value))
                           for key, value in (attributes or {}).items()]
            # a config object the loss keeps (``self.cfg.weight``, changed by a callback) is the same object after
            # the change: only describing it again tells
            self._in_full = any(not _told_by_identity(value) for value in (attributes or {}).values())
        return self.value


    def _like_last(self, obj: Any, attributes: dict[str, Any]) -> bool:
        """Whether `obj` is described as the object last described: of its class (which keeps no slots), with the
        same attributes, each the same object or an equal plain value (a dict or list of them, as they were when
        described), no array among them, and nothing outside changed."""
        last = self._obj
        if self._in_full or last is None or type(obj) is not type(last) or len(attributes) != len(self._items) \
                or _has_slots(type(obj)):
            return False
        for key, value, copy, held in self._items:
            # a dict or list against its copy made when it was described: the last object's may have changed since
            if held is not None or not _equal_plain(attributes.get(key, _GONE), value if copy is None else copy):
                return False
        return not self._outside.changed()


def _has_slots(cls: type) -> bool:
    """Whether a class keeps state in slots (`described` reads them; an object's ``__dict__`` does not show them)."""
    return bool(slot_members(cls))


def slotted_reason(model: Any, *others: Any) -> str | None:
    """Why a step or pass that runs the code of `model`'s layers, its regularizers and `others` (a loss) once and
    watches their attributes cannot stand for them, in words: one keeps attributes in ``__slots__``, which the
    watches (settings, Python state, arrays held) do not read, or keeps an iterator, whose position no watch can
    compare; None where none does."""
    objects = [(f"layer {path!r}", layer) for path, layer in model.named_layers()]
    objects += [(f"the regularizer {type(reg).__name__}", reg) for reg in regularizers_of(model)]
    objects += [(f"the loss {type(obj).__name__}", obj) for obj in others if obj is not None]
    for what, obj in objects:
        if _has_slots(type(obj)):
            return f"{what} keeps attributes in __slots__, where the watches of its settings and state do not look"
        iterator = _iterator_in(obj)
        if iterator is not None:
            return (f"{what} keeps an iterator in {iterator!r}, whose position its code may advance in a step: a "
                    "recording or a program would advance it once, where the plain loop advances it at every step")
    return None


def _iterator_in(obj: Any) -> str | None:
    """Where `obj` keeps an iterator (a generator, ``itertools.count``): as an attribute, an item of a list or dict
    attribute, or an attribute of an object of the user's it keeps; None where it keeps none."""
    for name, value in getattr(obj, "__dict__", {}).items():
        inner = value if type(value) is dict else dict(enumerate(value)) if type(value) is list else \
            held_object_attributes(value) or {}
        for where, held in [(name, value), *((f"{name}[{k!r}]", v) for k, v in inner.items())]:
            if hasattr(type(held), "__next__") and not is_array(held):
                return where
    return None


def _equal_plain(a: Any, b: Any) -> bool:
    """Whether `a` is `b`, or both are plain values of one type that `described` tells as equal (a float by its
    repr: -0.0 is not 0.0), or dicts, lists or tuples of such."""
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(_equal_plain(a[k], b[k]) for k in a)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(map(_equal_plain, a, b))
    if type(a) in (float, complex):
        return repr(a) == repr(b)
    return type(a) in (bool, int, str, bytes) and a == b


def _told_by_identity(value: Any, depth: int = 0) -> bool:
    """Whether a change of `value` makes it another object, or a dict or list of such that `AttributeWatch` copies:
    a plain value, an array (by identity and bytes), a class, a function or a module."""
    if is_plain(value) or is_array(value) or isinstance(value, (type, types.FunctionType,
                                                                types.BuiltinFunctionType, types.ModuleType)):
        return True
    if depth == 0 and isinstance(value, dict):
        return all(is_plain(k) and _told_by_identity(v, 1) for k, v in value.items())
    if depth == 0 and isinstance(value, list):
        return all(_told_by_identity(v, 1) for v in value)
    return False


def shallow_copy(value: Any) -> Any:
    """A shallow copy of a list or dict (its items by identity), a subclass's (a Counter, a defaultdict) as a plain one,
    else None."""
    return dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else None


class HeldArrays:
    """The arrays layers held while a program was traced and that the trace did not rebind (a mask, a table):
    the program may have read them as constants, so it holds only while the layers hold those same arrays.

    The plain loop reads the array a layer holds at each call; a user who rebinds one (``layer.mask = new``)
    gets programs traced again (`moved`). Arrays a trace rebinds (what a layer keeps for its backward) are
    values of the program, not constants.
    """

    def __init__(self, by_contents: bool = False) -> None:
        # with `by_contents` (for programs, which hold the values they read as constants, where the plain loop reads
        # them at each step): the bytes of each array that can be written in place (a NumPy array), and each item
        # one level inside a layer's dict, list or indescribable object (`_inner_items`) too, by identity and bytes:
        # ``layer.tables["s"][...] *= 2`` or ``layer.regularizer.columns[...] = ...`` by a callback. Arrays over
        # 1 MiB are compared too: a layer holding one outside its parameters is rare, and this runs only where
        # the watches run (not between back-to-back steps)
        self._by_contents = by_contents
        # (layer, attribute, None or the container an item is in, its key, value, and for an attribute its bytes or
        # None, for an item `arrays_within` it)
        self._held: list[tuple[weakref.ref, str, Any, Any, Any, Any]] = []
        # what a model of the same definition that takes the program without tracing it (`SharedProgram`) must watch
        # too (`adopt`), by position in `before`: ("unset", position, attribute, whether it was missing) of
        # `_unset_by_trace`, ("item", position, attribute, key) of an item one level inside an attribute
        self._unset: list[tuple[str, int, str, Any]] = []

    def note(self, before: list[tuple[Any, dict[str, Any]]]) -> None:
        """Note the arrays of `layer_attributes` (taken before the trace) the layers still hold: call it after the
        traced code ran, before `put_back_arrays`."""
        by_contents = self._by_contents
        for position, entry in enumerate(before):
            layer, old = entry
            inner = getattr(entry, "inner", {})
            attributes, ref = vars(layer), weakref.ref(layer)
            if by_contents:
                for key in _unset_by_trace(old, attributes):
                    self._unset.append(("unset", position, key, key not in old))
                    self._held.append((ref, key, None, None, old.get(key, _GONE), None))
            for key, value in old.items():
                if attributes.get(key, _GONE) is not value:
                    continue
                if is_array(value):
                    self._held.append((ref, key, None, None, value, contents(value) if by_contents else None))
                elif by_contents and key in inner:
                    for k, item in inner[key].items():
                        if _item(value, k) is item:
                            self._held.append((ref, key, value, k, item, arrays_within(item)))
                            self._unset.append(("item", position, key, k))

    def moved(self) -> bool:
        """Whether a layer now holds another array (or none) where a trace read one, or (`by_contents`) other
        values in it or another item one level inside an attribute; forgets them if so."""
        for ref, key, container, k, value, held in self._held:
            layer = ref()
            now = _GONE if layer is None else vars(layer).get(key, _GONE)
            if container is not None:
                now = _item(container, k) if now is container else _GONE
            if now is not value or held is not None and (contents(value) if container is None else
                                                         arrays_within(value)) != held:
                self._held, self._unset = [], []
                return True
        return False

    def unset(self) -> tuple[tuple[str, int, str, Any], ...]:
        """What `note` found of `_unset_by_trace` and the items one level inside it watches, by layer position: a
        trace fact (`ProgramOwner.trace_facts`)."""
        return tuple(self._unset)

    def adopt(self, unset: tuple[tuple[str, int, str, Any], ...], layers: list[Any]) -> None:
        """Watch `unset` (another owner's `unset`, or this owner's from an earlier trace) on `layers`, as
        `layer_attributes` lists them: this owner takes that program without tracing it. The items one level
        inside (``self.cfg["k"]``) are watched as `layers` hold them now (the program's key described them): else,
        after `moved` forgot them, a program taken again from the table held while a callback changed one."""
        for kind, position, key, detail in unset:
            self._unset.append((kind, position, key, detail))
            ref = weakref.ref(layers[position])
            if kind == "unset":
                self._held.append((ref, key, None, None, _GONE if detail else None, None))
                continue
            container = vars(layers[position]).get(key, _GONE)
            if container is _GONE:  # (the key described it: not met) watched as an attribute that came back
                self._held.append((ref, key, None, None, _GONE, None))
                continue
            item = _item(container, detail)
            self._held.append((ref, key, container, detail, item, contents(item)))


def _unset_by_trace(old: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The attributes that held None (or were missing) before a trace and that it set to an array or an object.

    `put_back_arrays` puts them back as they were, and the program took the branch for None (``if self.t is None:
    self.t = ones(...)``); the plain loop reads the array a callback, a fit or the user sets there later, so the
    program holds only while the attribute is None (or missing) still.
    """
    return [key for key, value in now.items()
            if not isinstance(value, PLAIN_STATE) and (old.get(key, _GONE) is None or key not in old)]


def described(value: Any, depth: int = 0) -> Any:
    """`value` as a program may hold it, comparable and hashable: described by its contents, else by identity (and
    an array that can be written in place by its bytes too: a program holds the values it read). A list, tuple or
    dict holding an array is described item by item, so that a value beside the array changed in place, or the
    array replaced or written in place (``opt.scales[0] = ...``), is a change, as either held directly would be.
    An optimizer's settings are told so (`hyper_constants`): its rule may read any of them."""
    try:
        return describe(value, {})
    except (Unshareable, RecursionError):
        if type(value) in (list, tuple, dict) and depth < MAX_DESCRIBED_DEPTH:
            if type(value) is dict:
                return dict, tuple((described(k, depth + 1), described(v, depth + 1)) for k, v in value.items())
            return type(value), tuple(described(item, depth + 1) for item in value)
        held = contents(value)
        return ById(value) if held is None else (ById(value), held)


def described_with_attributes(obj: Any) -> Any:
    """`described`, and for an object told by identity (it holds an array) its attributes' identities too: a
    program holds the array it read, so rebinding it (``loss.weights = new``) is another program."""
    value = described(obj)
    if not isinstance(value, ById):
        return value
    # each attribute by identity, and what a list or dict it keeps holds beside an array (`arrays_within`)
    return value, tuple((key, ById(attr), arrays_within(attr)) for key, attr in getattr(obj, "__dict__", {}).items())
