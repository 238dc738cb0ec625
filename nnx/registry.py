"""Name -> class tables for the building blocks a config or checkpoint names by string.

Layers, losses, optimizers, regularizers and metrics each keep one `Registry`.
Subclasses of the built-in bases add themselves when they are defined, so a
user's class is known as soon as its module is imported; nothing is ever
imported because a file names it (a checkpoint must not be able to run code).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any


class UnknownNameError(ValueError):
    """A config or file names a class (or function) that was never registered."""


class Registry(Mapping):
    """Names of one kind of building block, e.g. every `Layer` subclass; a read-only mapping of name -> entry.

    Args:
        kind: what the entries are, for messages (``"layer"``).
        how_to_register: one sentence telling a user how to make a class known.
        normalize: maps a name to its lookup key (e.g. ``str.lower`` for losses).
    """

    def __init__(self, kind: str, how_to_register: str, normalize: Any = None) -> None:
        self.kind = kind
        self.how_to_register = how_to_register
        self._normalize = normalize or (lambda name: name)
        self._entries: dict[str, Any] = {}

    def add(self, name: str, entry: Any) -> None:
        """Register `entry` under `name`; a different class already there is refused, a redefinition replaces it."""
        key = self._normalize(name)
        old = self._entries.get(key)
        if old is not None and old is not entry and _origin(old) != _origin(entry):
            raise ValueError(
                f"a {self.kind} named {name!r} is already registered ({_origin(old)}); give "
                f"{_origin(entry)} another name so saved files can tell them apart"
            )
        self._entries[key] = entry

    def lookup(self, name: Any) -> Any:
        """The entry registered under `name`; an unknown name raises `UnknownNameError` saying how to register it."""
        key = self._normalize(name) if isinstance(name, str) else name
        if not isinstance(key, str) or key not in self._entries:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid names: {sorted(self._entries)}. {self.how_to_register}"
            )
        return self._entries[key]

    def __getitem__(self, name: str) -> Any:
        if not isinstance(name, str):
            raise KeyError(name)
        return self._entries[self._normalize(name)]

    def __contains__(self, name: Any) -> bool:
        return isinstance(name, str) and self._normalize(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        return sorted(self._entries)


def _origin(entry: Any) -> str:
    """Where a class or function was defined, ``module.qualname``: tells a redefinition from a clash."""
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"
