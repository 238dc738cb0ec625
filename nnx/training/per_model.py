"""What the training code keeps per model object (its compiled programs, its recorded passes), by identity.

A `weakref.WeakKeyDictionary` finds a key by ``==``: a model class that defines ``__eq__``
(two models of one config compare equal) would share one model's programs with another,
which read the first model's parameters, and one that defines ``__eq__`` without
``__hash__`` could not be a key at all. `PerModel` keys by the object itself and lets go
of an entry when its model is collected, as the weak dictionary did.
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["PerModel"]


class PerModel:
    """A mapping from live model objects (by identity) to what is kept for each."""

    def __init__(self) -> None:
        self._items: dict[int, tuple[weakref.ref, Any]] = {}

    def get(self, model: Any) -> Any:
        """What is kept for `model`, or None."""
        item = self._items.get(id(model))
        return item[1] if item is not None and item[0]() is model else None

    def __getitem__(self, model: Any) -> Any:
        found = self.get(model)
        if found is None:
            raise KeyError(model)
        return found

    def __setitem__(self, model: Any, value: Any) -> None:
        key, items = id(model), self._items

        def forget(_: weakref.ref) -> None:  # the model was collected: its id may be another object's next
            items.pop(key, None)
        items[key] = (weakref.ref(model, forget), value)

    def __len__(self) -> int:
        return len(self._items)
