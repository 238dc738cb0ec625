"""The Python state a layer's code keeps besides its arrays, compared and put back around a trace or a recording.

Taken before a step runs the code once: plain attributes, dicts and lists of plain values, host random generators
(those a layer keeps, and those its code reads outside it: `outside_generators`), and the plain attributes of
objects of the user's a layer keeps. A program or a replay would change such state
once, where the plain loop changes it at every step."""

from __future__ import annotations

import random
import types
from typing import Any

from ..layers.base import Layer
from ..layers.parameter import Buffer, Parameter
from .outside_settings import is_array, is_plain, outside_generators

__all__ = ["PLAIN_STATE", "changed_state", "held_object_attributes", "nnx_own", "objects_state", "python_state",
           "restore_objects", "restore_state"]

PLAIN_STATE = (type(None), bool, int, float, complex, str, bytes)
# what `Layer` notes for its own checks between calls (True once a training forward ran): not the step's state
_LAYER_BOOKKEEPING = frozenset({"_ran_training_forward"})

def python_state(model: Any) -> list[tuple[str, dict[str, Any]]]:
    """Every layer's plain Python attributes (numbers, strings, flags, None), the items of every dict or list of
    plain values it keeps, and the state of every host random generator it keeps: what a traced step cannot
    carry."""
    return objects_state(model.named_layers())


def objects_state(named: Any) -> list[tuple[str, dict[str, Any]]]:
    """`python_state` of (path, object) pairs: a model's layers, or others a step's code runs (a loss, whose
    path is its description, such as ``"the loss"``)."""
    found = []
    for path, layer in named:
        attributes = {}
        for k, v in vars(layer).items():
            if isinstance(v, PLAIN_STATE) and k not in _LAYER_BOOKKEEPING:
                attributes[k] = v
            elif isinstance(v, (dict, list)) and k not in _LAYER_TABLES:  # a Counter, a defaultdict too
                held = _Container.of(v)
                if held is not None:
                    attributes[k] = held
            else:
                drawn = _HostGenerator.of(v) or _HeldObject.of(v)
                if drawn is not None:
                    attributes[k] = drawn
        for name, generator in outside_generators(layer):
            outside = _OutsideGenerator.of(generator)
            if outside is not None:
                attributes[f"<{name}>"] = outside  # keyed apart from any attribute's name
        found.append((path, attributes))
    return found


# what every `Layer` keeps of its parameters, buffers and sub-layers: tables, never the step's state
_LAYER_TABLES = frozenset({"_params", "_buffers", "_layers", "_declared_layers"})


def _plain_copy(value: Any, depth: int = 0) -> Any:
    """A copy of a dict or list (nested) whose items are all plain values, else `_NOT_PLAIN`."""
    if isinstance(value, PLAIN_STATE):
        return value
    if depth > 8:
        return _NOT_PLAIN
    if isinstance(value, list):
        items = [_plain_copy(v, depth + 1) for v in value]
        return _NOT_PLAIN if any(v is _NOT_PLAIN for v in items) else items
    if isinstance(value, dict):
        pairs = [(k, _plain_copy(v, depth + 1)) for k, v in value.items()]
        return _NOT_PLAIN if any(v is _NOT_PLAIN or not isinstance(k, PLAIN_STATE) for k, v in pairs) \
            else dict(pairs)
    return _NOT_PLAIN


_NOT_PLAIN = object()


class _Container:
    """A dict or list of plain values a layer keeps (a call count in ``self.stats["calls"]``, the batch sizes it
    saw), with a copy of its items when `python_state` looked: a program would change it once, when traced, where
    the plain loop changes it at every step (`changed_state` names one changed in place)."""

    __slots__ = ("container", "items")

    def __init__(self, container: Any, items: Any) -> None:
        self.container, self.items = container, items

    @classmethod
    def of(cls, value: Any) -> _Container | None:
        """`value` with a copy of its items if they are all plain, else None."""
        items = _plain_copy(value)
        return None if items is _NOT_PLAIN else cls(value, items)

    def restore(self) -> None:
        """Put the container's items back as they were when looked at (in place: the layer keeps its object)."""
        items = _plain_copy(self.items)
        if isinstance(self.container, dict):
            self.container.clear()
            self.container.update(items)
        else:
            self.container[:] = items

    def __repr__(self) -> str:
        return repr(self.items)


class _HostGenerator:
    """A host random generator a layer keeps (NumPy's Generator or RandomState, Python's random.Random), with
    its state when `python_state` looked: a draw from it while traced would be one constant of the program."""

    __slots__ = ("generator", "state", "key")

    def __init__(self, generator: Any, state: Any) -> None:
        self.generator, self.state = generator, state
        self.key = _comparable(state)  # what `same_state` compares

    @classmethod
    def of(cls, value: Any) -> _HostGenerator | None:
        """`value` with its state if it is a host random generator, else None. Python's SystemRandom draws from the
        system and has no state: it counts as drawn from whenever it is looked at again (`same_state`)."""
        if isinstance(value, random.SystemRandom):
            return cls(value, None)
        if isinstance(value, random.Random):
            return cls(value, value.getstate())
        bit_generator = getattr(value, "bit_generator", None)  # NumPy's Generator
        if bit_generator is not None and hasattr(bit_generator, "state"):
            return cls(value, bit_generator.state)
        if callable(getattr(value, "get_state", None)) and callable(getattr(value, "set_state", None)) \
                and hasattr(value, "standard_normal"):  # NumPy's RandomState
            return cls(value, value.get_state())
        return None

    def restore(self) -> None:
        """Put the generator back in the state it had when looked at (a SystemRandom has none to put back)."""
        generator = self.generator
        if self.state is None:
            return
        if isinstance(generator, random.Random):
            generator.setstate(self.state)
        elif hasattr(generator, "bit_generator"):
            generator.bit_generator.state = self.state
        else:
            generator.set_state(self.state)

    def same_state(self, other: _HostGenerator) -> bool:
        """Whether `other` (the same generator, looked at later) has the state this one had: never for one without
        a state, whose draws nothing can tell."""
        return self.state is not None and self.key == other.key

    def __repr__(self) -> str:
        return repr(self.state)


def _comparable(state: Any) -> Any:
    """A generator's state as values `==` compares whole: its arrays (NumPy's MT19937 key) as their bytes."""
    if isinstance(state, dict):
        return tuple((k, _comparable(v)) for k, v in state.items())
    if isinstance(state, (tuple, list)):
        return tuple(_comparable(v) for v in state)
    if isinstance(state, PLAIN_STATE):
        return state
    try:
        return bytes(memoryview(state))
    except TypeError:
        return repr(state)


class _OutsideGenerator(_HostGenerator):
    """A host random generator the layer's code reads outside the instance (`outside_generators`): compared and put
    back as one it keeps, but not an attribute of the layer."""

    __slots__ = ()


def held_object_attributes(value: Any) -> dict[str, Any] | None:
    """The attributes (its ``__dict__`` itself) of an object of the user's that a layer keeps, whose code may keep
    state there (a ``types.SimpleNamespace``, a small class of theirs); None for anything else: a plain value, an
    array, a layer, a parameter, an object of nnx's, a class, a module or anything callable."""
    if is_plain(value) or is_array(value) or isinstance(value, (Layer, Parameter, Buffer, type, types.ModuleType)) \
            or nnx_own(value) or callable(value):
        return None
    attributes = getattr(value, "__dict__", None)
    return attributes if type(attributes) is dict else None


class _HeldObject:
    """An object of the user's that a layer keeps (a ``types.SimpleNamespace``, a small class of theirs), with a
    copy of its plain attributes and of its dicts and lists of plain values when `python_state` looked: a count or
    a flag the layer's code keeps there would change once, when traced or recorded, where the plain loop changes it
    at every step."""

    __slots__ = ("obj", "items")

    def __init__(self, obj: Any, items: dict[str, Any]) -> None:
        self.obj, self.items = obj, items

    @classmethod
    def of(cls, value: Any) -> _HeldObject | None:
        """`value` with a copy of its plain state if it is such an object, else None."""
        attributes = held_object_attributes(value)
        if attributes is None:
            return None
        items = {}
        for k, v in attributes.items():
            copied = _plain_copy(v) if isinstance(v, (dict, list)) else v if isinstance(v, PLAIN_STATE) else _NOT_PLAIN
            if copied is not _NOT_PLAIN:
                items[k] = copied
        return cls(value, items)

    def changed(self, after: _HeldObject) -> str | None:
        """The first plain attribute that differs in `after` (of the same object), in words; None when none."""
        if after.obj is not self.obj:
            return None  # the attribute was rebound to another object: a layer's own attribute, looked at as such
        for key in sorted(set(self.items) | set(after.items)):
            # an attribute first set to None is a cache made on the first call; repr: NaN equals NaN
            if repr(self.items.get(key)) != repr(after.items.get(key)):
                return f"{key!r} ({self.items.get(key)!r} -> {after.items.get(key)!r})"
        return None

    def restore(self) -> None:
        """Put the object's plain attributes back as they were when looked at (in place: the layer keeps it)."""
        attributes = vars(self.obj)
        for key in [k for k, v in attributes.items() if k not in self.items and isinstance(v, PLAIN_STATE)]:
            del attributes[key]
        for key, value in self.items.items():
            held = attributes.get(key)
            if isinstance(held, (dict, list)) and isinstance(value, (dict, list)):
                _Container(held, value).restore()
            else:
                attributes[key] = _plain_copy(value)

    def __repr__(self) -> str:
        return f"{type(self.obj).__name__}({self.items!r})"


def changed_state(before: list[tuple[str, dict[str, Any]]], after: list[tuple[str, dict[str, Any]]]) -> str | None:
    """The first layer attribute a traced step changed, in words; None when none did."""
    for (path, old), (_, new) in zip(before, after, strict=True):
        where = path if path.startswith("the ") else f"layer {path!r}"  # (`objects_state` names the others)
        for key in sorted(set(old) | set(new)):
            was, now = old.get(key), new.get(key)
            if isinstance(was, _HeldObject) and isinstance(now, _HeldObject) and was.obj is now.obj:
                differs = was.changed(now)
                if differs is not None:
                    kept = type(was.obj).__name__
                    return f"{where} changed the attribute {differs} of the {kept} it keeps in {key!r}"
                continue
            if isinstance(was, _Container) or isinstance(now, _Container):
                # a dict or list changed in place is state (a count, a log); one made or rebound by the call, or
                # that now holds arrays, is what a layer keeps for its backward
                if not (isinstance(was, _Container) and isinstance(now, _Container)
                        and was.container is now.container) or repr(was) == repr(now):
                    continue
                return f"{where} changed the items of its attribute {key!r} ({was!r} -> {now!r})"
            # the same generator is compared by its state's bytes (a repr of MT19937's 624 words took 1.3 ms)
            drawn = False
            if isinstance(was, _HostGenerator) and isinstance(now, _HostGenerator) and was.generator is now.generator:
                if was.same_state(now):
                    continue
                drawn = True
            # an attribute first set to None is a cache made on the first call; repr: NaN equals NaN
            if drawn or repr(old.get(key)) != repr(new.get(key)):
                if drawn and isinstance(was, _HostGenerator) and was.state is None:
                    name = key.strip("<>")
                    return (f"{where} reads the SystemRandom {name!r}, whose draws leave no state to compare: a "
                            "program would hold one draw, so its steps run as written (the model's stream, "
                            "`self.rng`, compiles)")
                if isinstance(old.get(key), _OutsideGenerator):
                    return (f"{where} draws from the random generator {key.strip('<>')!r} on the host, outside "
                            "the layer, which a program would draw once (use the model's stream, `self.rng`)")
                if isinstance(old.get(key), _HostGenerator):
                    return (f"{where} draws from its own random generator {key!r} on the host, which a "
                            "program would draw once (use the model's stream, `self.rng`)")
                return f"{where} changed its attribute {key!r} ({old.get(key)!r} -> {new.get(key)!r})"
    return None


def restore_state(model: Any, before: list[tuple[str, dict[str, Any]]]) -> None:
    """Put every layer's plain attributes and host generators back as `python_state` found them (undoing a
    refused trace)."""
    restore_objects(model.named_layers(), before)


def restore_objects(named: Any, before: list[tuple[str, dict[str, Any]]]) -> None:
    """`restore_state` of (path, object) pairs, as `objects_state` found them."""
    for (_, old), (_, layer) in zip(before, named, strict=True):
        attributes = vars(layer)
        for key in [k for k, v in attributes.items() if isinstance(v, PLAIN_STATE) and k not in old
                    and k not in _LAYER_BOOKKEEPING]:
            del attributes[key]
        for key, value in old.items():
            if isinstance(value, _OutsideGenerator):
                value.restore()  # (not the layer's attribute)
            elif isinstance(value, _HostGenerator):
                value.restore()
                attributes[key] = value.generator
            elif isinstance(value, _HeldObject):
                value.restore()
                attributes[key] = value.obj
            elif isinstance(value, _Container):
                value.restore()
                attributes[key] = value.container
            else:
                attributes[key] = value


def nnx_own(obj: Any) -> bool:
    """Whether `obj` is of one of nnx's own classes."""
    return (type(obj).__module__ or "").startswith("nnx.")
