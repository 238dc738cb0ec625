"""History: the per-epoch record a `fit` call returns."""

from __future__ import annotations


class History:
    """Per-epoch logs of a `fit` call, Keras style: ``history.history["loss"][-1]``.

    `epoch` lists the epoch indices trained; `interrupted` is True when the run
    was stopped by Ctrl-C.
    """

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epoch: list[int] = []
        self.interrupted = False

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        """Record one epoch's logs."""
        self.epoch.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list[float]:
        if key not in self.history:
            raise KeyError(f"{key!r} was not recorded; recorded: {sorted(self.history)}")
        return self.history[key]

    def __contains__(self, key: str) -> bool:
        return key in self.history

    def __len__(self) -> int:
        return len(self.epoch)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={sorted(self.history)})"
