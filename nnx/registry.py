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
A class whose name starts with ``_`` is registered only under a ``name=``: the
name it would inherit is its parent's, and a file saved under it would load as
the parent, so reading that name raises instead (`register`).

Layers and losses remember the arguments they were constructed with
(`recording_init`), so their default config needs no code of their own.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import json
import numbers
from collections.abc import Callable, Iterator, Mapping
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
        if not isinstance(name, str) or not name.strip():
            # "" would be found by "  " (and a later "" replace it without a word); a number has no case to ignore
            raise TypeError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        key = lookup_key(name)
        old = self._entries.get(key)
        if old is not None and old[1] is not entry and _origin(old[1]) != _origin(entry):
            raise ValueError(
                f"{_article(self.kind)} {self.kind} named {old[0]!r} is already registered ({_origin(old[1])}); give "
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
            key = lookup_key(name) if isinstance(name, str) else None
            close = difflib.get_close_matches(key, list(self._entries), n=1, cutoff=0.8) if key is not None else []
            guess = f" (did you mean {self._entries[close[0]][0]!r}?)" if close else ""  # a typo's likely intent
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; valid names: {self.names()}{guess}. {self.how_to_register}"
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


def register(registry: Registry, cls: type, given: str | None, attribute: str) -> None:
    """Register `cls` under `given` (its class statement's ``name=``) or its own name, kept in `attribute`.

    A class whose name starts with ``_`` and that is given no name is not registered (nnx's private
    bases are never saved), and its `attribute` raises when read (`Unregistered`).
    """
    if given is None and cls.__name__.startswith("_"):
        setattr(cls, attribute, Unregistered(registry.kind))
        return
    name = class_name(cls, given)
    setattr(cls, attribute, name)
    registry.add(name, cls)


class Unregistered:
    """The saved name of a class registered under none: reading it raises `TypeError` saying how to name it.

    Without it the class would inherit its parent's name, and a file saved under that
    name would load as the parent, silently predicting something else.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __get__(self, obj: Any, owner: type) -> str:
        cls = owner.__name__
        raise TypeError(
            f"{cls} cannot be saved: a {self.kind} class whose name starts with '_' is not registered, and under "
            f"its parent's name it would load as the parent. Give it a public name, or one in its class "
            f"statement: class {cls}(..., name=\"mylib.{cls.lstrip('_') or 'Name'}\")"
        )


def recording_init(init: Callable) -> Callable:
    """Wrap an __init__ so that the outermost call records its arguments (`recorded_args`) for the default config.

    A subclass's __init__ calls its parent's, so only the first call records: what the
    object was constructed with, defaults included. An underscored argument is internal, not config.
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        if "_init_args" not in self.__dict__:
            try:
                bound = signature.bind(self, *args, **kwargs)
            except TypeError as exc:
                raise TypeError(f"{type(self).__name__}(): {exc}") from None
            bound.apply_defaults()
            recorded: dict[str, Any] = {}
            for key, param in list(signature.parameters.items())[1:]:
                if param.kind is inspect.Parameter.VAR_KEYWORD:
                    recorded.update(bound.arguments.get(key, {}))
                elif param.kind is inspect.Parameter.VAR_POSITIONAL:
                    if bound.arguments.get(key):
                        self.__dict__["_init_positional"] = key  # a config cannot pass these back (`json_arguments`)
                elif not key.startswith("_"):
                    recorded[key] = bound.arguments[key]
            self.__dict__["_init_args"] = recorded
        init(self, *args, **kwargs)

    return wrapper


def recorded_args(obj: Any) -> dict[str, Any]:
    """The arguments `obj` was constructed with, as `recording_init` recorded them (a new dict; empty if none)."""
    return dict(obj.__dict__.get("_init_args", {}))


def live_arguments(obj: Any) -> dict[str, Any]:
    """`recorded_args`, each as the attribute of the same name now stands where that is a JSON value.

    So a setting changed after construction (``loss.delta = 0.1``) is what a config writes, and what JAX's
    programs, keyed by the config, are compiled for; an attribute kept in another form than the argument (an
    array made from a list) leaves the argument as it was given.
    """
    args = recorded_args(obj)
    for key in args:
        if key in vars(obj):
            try:
                if type(vars(obj)[key]) not in _JSON_SCALARS:
                    json.dumps(_python_number(vars(obj)[key]))
            except (TypeError, ValueError):
                continue
            args[key] = vars(obj)[key]
    return args


def json_arguments(obj: Any, kind: str, args: Mapping[str, Any], fix: str,
                   positional_kept: bool = False) -> dict[str, Any]:
    """`args` as a config holds them (NumPy numbers as Python ones); TypeError naming one that is not JSON.

    `fix` tells the user what to override instead (``"override get_config()"``). An object constructed
    with values for a ``*args`` parameter is refused too (a config holds named arguments only, so it would
    be rebuilt without them), unless the caller saves those itself (`positional_kept`: a container's layers).
    """
    positional = obj.__dict__.get("_init_positional")
    if positional is not None and not positional_kept:
        raise TypeError(f"{type(obj).__name__} was constructed with values for *{positional}, which a config cannot "
                        f"pass back (it holds named arguments only), so the {kind} cannot be saved or rebuilt; {fix}")
    plain = {key: _python_number(value) for key, value in args.items()}
    for key, value in plain.items():
        if type(value) in _JSON_SCALARS:
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"{type(obj).__name__}: constructor argument {key}={value!r} is not a JSON value, so the {kind} "
                f"cannot be saved or rebuilt; {fix}"
            ) from None
    return plain


def config_repr(obj: Any) -> str:
    """``Class(arg=value, ...)`` from the object's config; ``Class(...)`` when it cannot write one."""
    try:
        args = ", ".join(f"{k}={v!r}" for k, v in obj.get_config().items() if k != CONFIG_KEY)
    except TypeError:
        args = "..."
    return f"{type(obj).__name__}({args})"


# what JSON writes as it is (floats' NaN and infinities included): `json.dumps` refuses none, so none is tried
_JSON_SCALARS = frozenset({type(None), bool, int, float, str})


def _python_number(value: Any) -> Any:
    """A NumPy integer or float as the Python number (JSON writes only those); anything else as it is."""
    if type(value) in _JSON_SCALARS:
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, float)):
        return float(value)
    return value


def _article(word: str) -> str:
    """"a" or "an" before `word` ("an optimizer", "a layer")."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def _origin(entry: Any) -> str:
    """Where a class or function was defined, ``module.qualname``: tells a redefinition from a clash."""
    return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"
