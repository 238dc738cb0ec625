"""What a monitored epoch-log name means: whether it will be recorded, and which way is better."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, cast

from ...metrics import resolve_metrics

# Names whose larger values are better, and those whose smaller ones are, for mode="auto".
_HIGHER_IS_BETTER = ("acc", "accuracy", "precision", "recall", "f1", "r2", "auc")
_LOWER_IS_BETTER = ("loss", "mse", "mae", "rmse")


def recorded_names(logs: dict | None) -> list[str] | None:
    """The epoch-log names a `fit` run will record, from its ``on_train_begin`` logs (None if unknown)."""
    if not logs or "metrics" not in logs:
        return None
    names = ["loss", *logs["metrics"]]
    if logs.get("validation"):
        names += [f"val_{name}" for name in names]
    added = logs.get("added", [])
    return None if added is None else names + [name for name in added if name not in names]


def added_names(callbacks: Iterable[Any]) -> list[str] | None:
    """The epoch-log names `callbacks` add: those their ``adds_logs`` lists (None when one says only True)."""
    names: list[str] = []
    for cb in callbacks:
        adds = getattr(cb, "adds_logs", False)
        if adds is True:
            return None
        if adds:
            names += [name for name in adds if name not in names]
    return names


def check_monitor(owner: str, monitor: str, logs: dict | None) -> None:
    """Raise ValueError when `monitor` is not among the names this run records."""
    names = recorded_names(logs)
    if names is None or monitor in names:
        return
    logs = cast(dict, logs)  # names were found, so there are logs
    hint = ""
    prefix = "val_" if monitor.startswith("val_") else ""
    renamed = _recorded_as(monitor.removeprefix("val_"))
    if renamed is not None and prefix + renamed in names:
        # a metric fit records under its own name (metrics=["acc"] as "accuracy", where Keras logs "acc")
        hint = f" ({monitor.removeprefix('val_')!r} is recorded as {renamed!r}: monitor {prefix + renamed!r})"
    elif prefix and not logs.get("validation"):
        hint = " (val_ metrics need validation_data or validation_split in fit)"
    elif monitor not in ("loss", "val_loss") and monitor.removeprefix("val_") not in logs["metrics"]:
        hint = (f" (add {monitor.removeprefix('val_')!r} to fit's metrics, or set adds_logs = True on the "
                "callback that writes it into the epoch logs)")
    raise ValueError(f"{owner} monitors {monitor!r}, which this fit does not record{hint}; "
                     f"recorded: {names}")


def not_validated(monitor: str, logs: dict) -> bool:
    """Whether `monitor` is a validation name and this epoch did not validate (``fit(validation_freq=...)``: no
    ``val_loss`` in its logs): a callback monitoring it skips the epoch, as Keras's do."""
    return monitor.startswith("val_") and "val_loss" not in logs


def _recorded_as(name: str) -> str | None:
    """The name `fit` records metric `name` under when that differs from `name` (``"acc"``: ``"accuracy"``)."""
    try:
        recorded = next(iter(resolve_metrics([name])))
    except Exception:  # noqa: BLE001 - not a metric name fit knows: nothing to suggest
        return None
    return recorded if recorded != name else None


def resolve_mode(owner: str, mode: str, monitor: str, used: bool = True) -> str:
    """`mode` checked, with ``"auto"`` made ``"max"`` or ``"min"`` for the names nnx knows the direction of.

    Any other name (a custom metric) raises, as in Keras: guessing "min" for an AUC-like score would keep
    the worst epoch without a word. Where the direction is not `used` (a checkpoint saved every epoch),
    such a name reads as "min".
    """
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner} mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    base = monitor.removeprefix("val_").lower()
    if base in _HIGHER_IS_BETTER or base.endswith("accuracy"):
        return "max"
    if base in _LOWER_IS_BETTER or base.endswith("loss") or not used:
        return "min"
    raise ValueError(f"{owner} cannot tell whether {monitor!r} is better larger or smaller: pass mode='max' "
                     "or mode='min'")


def improved(current: float, best: float, mode: str, min_delta: float) -> bool:
    """Whether `current` beats `best` by more than `min_delta` in direction `mode` (never when not finite)."""
    if not math.isfinite(current):
        return False
    return current < best - min_delta if mode == "min" else current > best + min_delta
