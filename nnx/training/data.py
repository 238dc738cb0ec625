"""Where training batches come from: arrays held on the device, shuffled each epoch with the model's host RNG.

A batch source yields ``(X, y, sample_weight or None)`` per step, already on
the model's backend and validated, and knows how many samples and steps an
epoch has when it can. `fit` only iterates over `epoch()`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

# Bytes of training data above which an epoch gathers each shuffled batch instead of copying X once.
COPY_LIMIT = 16 * 2**20


def batch_slices(n_samples: int, batch_size: int) -> list[slice]:
    """Consecutive batches covering n_samples; the last may be smaller."""
    return [slice(start, min(start + batch_size, n_samples)) for start in range(0, n_samples, batch_size)]


class ArrayBatches:
    """Batches of arrays already on the model's device, reshuffled every epoch.

    Args:
        model: the `Sequential` (its backend moves the permutation; its shuffle RNG draws it).
        X, y: device arrays with the same number of rows; `y` may be None (prediction).
        sample_weight: per-row weights on the device, or None.
        batch_size: rows per step (the last step may be smaller).
        shuffle: draw a new permutation each epoch (the same on every backend).
    """

    def __init__(self, model: Any, X: Any, y: Any, sample_weight: Any, batch_size: int, shuffle: bool) -> None:
        self.model = model
        self.X, self.y, self.w = X, y, sample_weight
        self.n_samples = int(X.shape[0])
        self.slices = batch_slices(self.n_samples, batch_size)
        self.steps = len(self.slices)
        self.shuffle = shuffle
        xp = model.xp
        # A shuffled copy of a big X would double what training holds in memory: gather each batch instead.
        self._gather = shuffle and self.n_samples * math.prod(X.shape[1:]) * xp.finfo(X.dtype).bits // 8 > COPY_LIMIT

    def epoch(self) -> Iterator[tuple[Any, Any, Any]]:
        """This epoch's batches, in order."""
        xp, be = self.model.xp, self.model.backend
        X, y, w = self.X, self.y, self.w
        if not self.shuffle:
            for part in self.slices:
                yield X[part, ...], _rows(y, part), _rows(w, part)
            return
        perm = be.asarray(self.model.shuffle_rng.permutation(self.n_samples), argname="permutation")
        if not self._gather:
            X = xp.take(X, perm, axis=0)
        y = None if y is None else xp.take(y, perm, axis=0)
        w = None if w is None else xp.take(w, perm, axis=0)
        for part in self.slices:
            Xb = xp.take(self.X, perm[part], axis=0) if self._gather else X[part, ...]
            yield Xb, _rows(y, part), _rows(w, part)


def _rows(a: Any, part: slice) -> Any:
    return None if a is None else a[part, ...]
