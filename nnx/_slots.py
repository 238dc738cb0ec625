"""What an object keeps in ``__slots__``: settings that its ``__dict__``, and so `vars`, does not show."""

from __future__ import annotations

import types
import weakref
from typing import Any

__all__ = ["slot_members", "slot_values"]


def slot_members(cls: type) -> tuple[tuple[str, Any], ...]:
    """(name, descriptor) of each slot `cls` and its bases declare (by its name in the class: ``_C__x`` for a
    private ``__x``), first found first; kept per class, since a class's slots are fixed when it is made and a fit
    asks several times."""
    members = _MEMBERS.get(cls)
    if members is None:
        seen: dict[str, Any] = {}
        for klass in cls.__mro__[:-1]:
            for name, member in vars(klass).items():
                if isinstance(member, types.MemberDescriptorType) and name not in seen:
                    seen[name] = member
        members = _MEMBERS[cls] = tuple(seen.items())
    return members


def slot_values(obj: Any) -> dict[str, Any]:
    """The value of each slot of `obj` that is set, by name."""
    found: dict[str, Any] = {}
    for name, member in slot_members(type(obj)):
        try:
            found[name] = member.__get__(obj, type(obj))
        except AttributeError:  # never set
            continue
    return found


_MEMBERS: weakref.WeakKeyDictionary[type, tuple[tuple[str, Any], ...]] = weakref.WeakKeyDictionary()
