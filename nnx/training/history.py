"""History: the per-epoch record a `fit` call returns, and `Logs`, the dict `evaluate` returns.

Both keep full precision; only their printed forms round (4 significant digits), so
``print(model.evaluate(X, y))`` shows ``0.936``, not ``0.9359999895095825``.
"""

from __future__ import annotations

import numbers
from typing import Any

DISPLAY_DIGITS = 4


def format_value(value: Any, digits: int = DISPLAY_DIGITS) -> str:
    """`value` as printed in a report: real non-integers to `digits` significant digits, anything else as is."""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return f"{float(value):.{digits}g}"
    return str(value)


class Logs(dict):
    """A plain ``dict`` of metric name -> value whose printed form rounds the values (the values don't change)."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: {format_value(v) if isinstance(v, numbers.Real) else repr(v)}"
                               for k, v in self.items()) + "}"

    __str__ = __repr__


class History:
    """Per-epoch logs of a `fit` call, Keras style: ``history.history["loss"][-1]``.

    `epoch` lists the epoch indices trained; `interrupted` is True when the run
    was stopped by Ctrl-C; `execution` says how the training step ran (``"compiled"``,
    ``"flat"``: one optimizer update over flat buffers, ``"sharded"``: that update split across the ranks of a
    data-parallel fit with ``shard_update=True``, or ``"plain"``); `execution_mode` how the
    epochs ran (``"epoch"``: each one compiled program, ``"chunks"``: chunks of batches as programs,
    ``"step"``: step by step) and `execution_reason` why.
    `epochs_of(key)` lists the epochs a key was logged in: a key a callback adds on some epochs only
    has fewer values than `epoch`, and its i-th value belongs to ``epochs_of(key)[i]``.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self._key_epochs: dict[str, list[int]] = {}
        self.interrupted = False
        self.execution = "plain"
        self.execution_mode = "step"
        self.execution_reason = ""

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        """Record one epoch's logs."""
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)
            self._key_epochs.setdefault(key, []).append(epoch)

    def epochs_of(self, key: str) -> list[int]:
        """The epochs `key` was logged in, one per value of ``history[key]``."""
        self[key]  # noqa: B018 -- the KeyError that names what was recorded
        return list(self._key_epochs[key])

    def __getitem__(self, key: str) -> list[float]:
        if key not in self.history:
            raise KeyError(f"{key!r} was not recorded; recorded: {sorted(self.history)}")
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.epoch)

    def __repr__(self) -> str:
        last = ", ".join(f"{k}={format_value(v[-1])}" for k, v in self.history.items() if v)
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)}" + (f", last: {last})" if last else ")")
