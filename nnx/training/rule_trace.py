"""An optimizer's rule traced by a compiler on a copy of the optimizer, which leaves the user's object as it was.

The copy also tells whether the rule changes what its optimizer holds. A compiler runs the rule's Python once, when
it traces it. A rule that changes its optimizer as it runs (a count, a log, the last update count kept on ``self``)
would do that once, with traced values left behind, where the plain loop does it at every step. Both compiled paths
(the whole step, `nnx.training.compiled`, and the flat update's rule, `nnx.training.compiled_rule`) trace the rule
on a `RuleTrace`'s copy instead, and run it op by op where the copy changed.
"""

from __future__ import annotations

import copy
from operator import is_
from typing import Any

from .._slots import slot_values
from ..backends.base import TraceRefused
from .trace_state import described

__all__ = ["RuleTrace", "hyper_constants"]


def hyper_constants(optimizer: Any) -> tuple:
    """What of the optimizer the programs hold as constants: whatever its rule may read of it but lr (its
    hyper-parameters and any setting a subclass keeps as an attribute or a slot, `Optimizer.rule_constants`), and
    how far each parameter's update count is from the first's (0, unless some were updated without the others)."""
    steps = optimizer.param_steps
    offsets = tuple(s - steps[0] for s in steps) if steps else ()
    settings = sorted(optimizer.rule_constants().items(), key=lambda item: item[0])
    return (*[(k, described(v)) for k, v in settings], ("update count offsets", offsets))


class RuleTrace:
    """A copy of `optimizer` to trace its rule on (`shadow`, what ``with`` gives): its settings are deep copies, its
    parameters, state and counts are the object's own, and so is a setting that cannot be copied (one holding a
    lock). Leaving the block puts back what the trace changed of those (an uncopied setting's own attributes
    too), and raises `TraceRefused` where it changed anything, the copied settings included."""

    def __init__(self, optimizer: Any) -> None:
        self._name = type(optimizer).__name__
        shadow = copy.copy(optimizer)
        if shadow is optimizer:  # a class whose __copy__ gives the object itself: copied by hand
            shadow = object.__new__(type(optimizer))
            vars(shadow).update(vars(optimizer))
            for name, value in slot_values(optimizer).items():
                setattr(shadow, name, value)
        self.shadow = shadow
        in_dict = vars(shadow)
        shared = []
        for key, value in optimizer.rule_constants().items():
            try:
                value = copy.deepcopy(value)
            except Exception:  # noqa: BLE001 - one holding a lock or a generator: shared, its attributes watched
                if hasattr(value, "__dict__"):
                    shared.append(_Snapshot(value))
                continue
            if key in in_dict:
                in_dict[key] = value
            else:  # a slot
                setattr(shadow, key, value)
        self._described = hyper_constants(shadow)
        self._held = [_Snapshot(shadow), *shared]

    def __enter__(self) -> Any:
        return self.shadow

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        # (also where the rule raised: the objects are left as they were)
        changed = any([snapshot.put_back() for snapshot in self._held])
        if kind is None and (changed or hyper_constants(self.shadow) != self._described):
            raise TraceRefused(f"the rule of {self._name} changes what the optimizer holds (an attribute it sets, a "
                               "list it appends to), which a compiled program would do once: it runs op by op")


class _Snapshot:
    """An object's attributes and slots, and the items of those that are lists, dicts or sets, as they were: to tell
    and undo what code run on it changed."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self.attributes = vars(obj)
        self.before = dict(self.attributes)
        self.slots = slot_values(obj)
        held = {**self.before, **{f"slot {k}": v for k, v in self.slots.items()}}
        self.items = {k: (v, dict(v) if isinstance(v, dict) else list(v)) for k, v in held.items()
                      if isinstance(v, (list, dict, set))}

    def put_back(self) -> bool:
        """Restore what changed; whether anything had."""
        now, before = self.attributes, self.before
        changed = now.keys() != before.keys() or any(now.get(k) is not v for k, v in before.items())
        if changed:
            now.clear()
            now.update(before)
        slots_now = slot_values(self.obj)
        if slots_now.keys() != self.slots.keys() or any(slots_now[k] is not v for k, v in self.slots.items()):
            changed = True
            for name in slots_now.keys() - self.slots.keys():
                delattr(self.obj, name)
            for name, value in self.slots.items():
                setattr(self.obj, name, value)
        for container, items in self.items.values():
            if isinstance(container, dict) and isinstance(items, dict):
                if len(container) != len(items) or any(container.get(k, _MISSING) is not v for k, v in items.items()):
                    changed = True
                    container.clear()
                    container.update(items)
            elif isinstance(container, set):
                if len(container) != len(items) or not all(any(x is y for y in container) for x in items):
                    changed = True
                    container.clear()
                    container.update(items)
            elif len(container) != len(items) or not all(map(is_, container, items)):
                changed = True
                container[:] = items
        return changed


_MISSING = object()
