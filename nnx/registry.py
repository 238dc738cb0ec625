"""Name -> class tables for the building blocks a config or checkpoint names by string.

Layers, losses, optimizers, regularizers and metrics follow one rule:

- a class is registered under its own name (``"Dense"``, ``"MSE"``, ``"L2"``,
  ``"Adam"``), or under the name its class statement gives
  (``class Focal(nnx.losses.Loss, name="focal")``); a metric under the name it
  is registered with;
- a name is looked up ignoring case and surrounding spaces, so ``"adam"``,
  ``"Adam"`` and ``"ADAM"`` are the same optimizer; short aliases
  (``"bce"``, ``"ce"``) are further names of the same entry;
- a config is a flat dict: the registered name under ``"type"``
  (`CONFIG_KEY`) beside the constructor arguments. Files written before this
  rule named losses and regularizers under ``"name"``; `config_type` still
  reads them.

Subclasses of the built-in bases add themselves when they are defined, so a
user's class is known as soon as its module is imported; nothing is ever
imported because a file names it (a checkpoint must not be able to run code).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

CONFIG_KEY = "type"
"""The key under which every config names its class."""

LEGACY_CONFIG_KEY = "name"
"""The key older loss and regularizer configs used instead of `CONFIG_KEY`; still read, never written."""


class UnknownNameError(ValueError):
    """A config or file names a class (or function) that was never registered."""


def lookup_key(name: str) -> str:
    """The key a name is looked up by: case and surrounding spaces do not matter."""
    return name.strip().lower()


class Registry(Mapping):
    """Names of one kind of building block, e.g. every `Layer` subclass; a read-only mapping of name -> entry.

    Lookups ignore case (`lookup_key`); iteration and `names` give the names as registered.

    Args:
        kind: what the entries are, for messages (``"layer"``).
        how_to_register: one sentence telling a user how to make a class known.
    """

    def __init__(self, kind: str, how_to_register: str) -> None:
        self.kind = kind
        self.how_to_register = how_to_register
        self._entries: dict[str, tuple[str, Any]] = {}  # lookup key -> (name as registered, entry)

    def add(self, name: str, entry: Any) -> None:
        """Register `entry` under `name`; a different class already there is refused, a redefinition replaces it."""
        key = lookup_key(name)
        old = self._entries.get(key)
        if old is not None and old[1] is not entry and _origin(old[1]) != _origin(entry):
            raise ValueError(
                f"a {self.kind} named {old[0]!r} is already registered ({_origin(old[1])}); give "
                f"{_origin(entry)} another name so saved files can tell them apart"
            )
        # an alias that differs only in case ("mse" for "MSE") keeps the name first registered
        self._entries[key] = (name if old is None else old[0], entry)

    def remove(self, name: str) -> Any:
        """Forget the entry registered under `name` and return it (KeyError if there is none)."""
        if name not in self:
            raise KeyError(name)
        return self._entries.pop(lookup_key(name))[1]

    def lookup(self, name: Any) -> Any:
        """The entry registered under `name`; an unknown name raises `UnknownNameError` saying how to register it."""
        if name not in self:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid names: {self.names()}. {self.how_to_register}"
            )
        return self._entries[lookup_key(name)][1]

    def __getitem__(self, name: str) -> Any:
        if name not in self:
            raise KeyError(name)
        return self._entries[lookup_key(name)][1]

    def __contains__(self, name: Any) -> bool:
        return isinstance(name, str) and lookup_key(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Every registered name as it was registered, sorted ignoring case."""
        return sorted((name for name, _ in self._entries.values()), key=lookup_key)


def config_type(config: Mapping[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
    """``(registered name, constructor arguments)`` of a config dict; ValueError when it names no class.

    The name is read from ``"type"``, or from ``"name"`` in a config written before
    ``"type"`` was the one key for every kind.
    """
    args = dict(config)
    name = args.pop(CONFIG_KEY, None)
    if name is None:
        name = args.pop(LEGACY_CONFIG_KEY, None)
    if not isinstance(name, str):
        raise ValueError(f"a {kind} config needs a {CONFIG_KEY!r} string naming the class, got {dict(config)!r}")
    return name, args


def class_name(cls: type, given: str | None) -> str:
    """The name a class registers under: the one its class statement gives (``name=``), else its own."""
    if given is not None and (not isinstance(given, str) or not given.strip()):
        raise TypeError(f"{cls.__name__}: name= must be a non-empty string, got {given!r}")
    return given if given is not None else cls.__name__


def _origin(entry: Any) -> str:
    """Where a class or function was defined, ``module.qualname``: tells a redefinition from a clash."""
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"
