"""State a user's layer or loss carries from step to step in an array it keeps, told from a cache.

The plain loop leaves each array a layer rebinds in a step (``self.X = X``, ``self.mu = ...``) in the
layer for the next step. A compiled program reads what the layer held when it was traced, at every
step, and the attributes are put back after the trace. For a cache (set in the forward, read in the
backward of the same step) that is the same; for a running value read before it is rebound
(``self.mu = 0.9 * self.mu + ...``, or an item of a dict the layer keeps) the program would start every
step from the traced one. `carried_state` traces the step's passes once more with each rebound array
a stand-in of its shape (`Backend.inputs_read`): one the passes read, and rebind, is carried state, and
the step then runs plainly (`nnx.training.compiled`). nnx's own layers and losses keep caches only, so
only a user's object costs the second trace.

A slot is where an object keeps a value: ``(object, attribute, None, value)``, or
``(object, attribute, ("item", key), value)`` for an item of a dict or list attribute, or
``(object, attribute, ("attr", name), value)`` for an attribute of an object of the user's it keeps.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from ..backends.base import Backend
from .python_state import held_object_attributes
from .trace_state import shallow_copy

__all__ = ["carried_state", "rebound_slots", "slots_now"]

Slot = tuple[Any, str, Any, Any]
_GONE = object()  # a slot that held nothing


def _user_slots(objects: list[Any]) -> list[Slot]:
    """The slots of each of `objects` (layers, a loss) of a user's class; nnx's own are left out."""
    found: list[Slot] = []
    for obj in objects:
        if type(obj).__module__.startswith("nnx.") or not isinstance(getattr(obj, "__dict__", None), dict):
            continue
        for name, value in vars(obj).items():
            found.append((obj, name, None, value))
            if isinstance(value, dict):
                found += [(obj, name, ("item", key), item) for key, item in value.items()]
            elif isinstance(value, list):
                found += [(obj, name, ("item", i), item) for i, item in enumerate(value)]
            elif (held := held_object_attributes(value)) is not None:
                found += [(obj, name, ("attr", key), item) for key, item in held.items()]
    return found


def _held_objects(objects: list[Any]) -> list[Any]:
    """The objects of the user's that `objects` keep (whose attributes are slots too)."""
    return [value for obj in objects for value in getattr(obj, "__dict__", {}).values()
            if held_object_attributes(value) is not None]


def _key(slot: Slot) -> tuple:
    return id(slot[0]), slot[1], slot[2]


def slots_now(objects: list[Any]) -> dict[tuple, Any]:
    """What each slot of `objects` holds now, by slot, for `rebound_slots` after a trace."""
    return {_key(slot): slot[3] for slot in _user_slots(objects)}


def rebound_slots(objects: list[Any], before: dict[tuple, Any], is_traced: Callable[[Any], bool]) -> list[Slot]:
    """The slots of `objects` that hold a traced value now that they did not hold at `before` (`slots_now`)."""
    return [slot for slot in _user_slots(objects)
            if is_traced(slot[3]) and before.get(_key(slot), _GONE) is not slot[3]]


def _get(slot: Slot) -> Any:
    obj, name, item, _ = slot
    value = vars(obj).get(name, _GONE)
    if item is None or value is _GONE:
        return value
    if item[0] == "attr":
        held = held_object_attributes(value)
        return _GONE if held is None else held.get(item[1], _GONE)
    try:
        return value[item[1]]
    except (KeyError, IndexError, TypeError):
        return _GONE


def _set(slot: Slot, value: Any) -> None:
    obj, name, item, _ = slot
    if item is None:
        vars(obj)[name] = value
    elif item[0] == "attr":
        vars(vars(obj)[name])[item[1]] = value
    else:
        vars(obj)[name][item[1]] = value


def _name(slot: Slot) -> str:
    if slot[2] is None:
        return repr(slot[1])
    return f"{slot[1]!r}.{slot[2][1]}" if slot[2][0] == "attr" else f"{slot[1]!r}[{slot[2][1]!r}]"


def _refill(container: Any, items: Any) -> None:
    """Put a dict's or list's items back as `shallow_copy` found them, in the same object."""
    if isinstance(container, dict):
        container.clear()
        container.update(items)
    else:
        container[:] = items


def carried_state(backend: Backend, rebound: list[Slot], passes: Callable[[], tuple], objects: list[Any]) -> list[str]:
    """Which `rebound` slots hold state carried from step to step, in words (none: each is a cache).

    `passes()` runs the step's forward, loss and backward on what the objects hold and returns its results; it is
    traced once more with each rebound slot bound to a stand-in. The attributes of `objects` (and the items of their
    dicts and lists) are put back afterwards; the caller puts back what else the passes touch (the parameters'
    values and gradients, the random stream, plain state)."""
    attributes = [(obj, dict(vars(obj)), {k: shallow_copy(v) for k, v in vars(obj).items()})
                  for obj in [*objects, *_held_objects(objects)]]
    kept_in_place: list[bool] = []

    def with_stand_ins(*stand_ins: Any) -> tuple:
        for slot, stand_in in zip(rebound, stand_ins, strict=True):
            _set(slot, stand_in)
        results = passes()
        now = [_get(slot) for slot in rebound]
        kept_in_place.extend(map(operator.is_, now, stand_ins))
        return results, tuple(now)

    try:
        read = backend.inputs_read(with_stand_ins, [slot[3] for slot in rebound])
    except Exception as exc:  # noqa: BLE001 - whatever the second trace met, the plain step tells no lie
        return [f"a layer's rebound arrays could not be told apart from state it carries ({exc!r})"]
    finally:
        for obj, before, contents in attributes:
            vars(obj).clear()
            vars(obj).update(before)
            for key, items in contents.items():
                if items is not None:
                    _refill(before[key], items)
    return [f"a {type(slot[0]).__name__} reads and rebinds the array it keeps in {_name(slot)}"
            for slot, was_read, kept in zip(rebound, read, kept_in_place, strict=True) if was_read and not kept]
