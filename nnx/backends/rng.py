"""Random streams: the host generator behind initialisation and shuffling, and the device streams for dropout.

`DeviceRNG` is the interface a backend's ``rng(seed)`` returns. `HostRNG` draws from a
host PCG64 stream and moves the numbers to the device; it serves every backend whose
library has no generator nnx uses (NumPy, array_api_strict, the generic adapter).
Libraries with their own generator subclass `DeviceRNG` next to their adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .names import dtype_name


def host_rng(seed: int | Sequence[int] | None) -> np.random.Generator:
    """The host random generator behind initialisation and shuffling, identical on every backend."""
    return np.random.default_rng(seed)


def stream_rng(seed: int, stream: int) -> np.random.Generator:
    """Stream `stream` of a model's `seed`: ``SeedSequence(seed).spawn(...)[stream]``, independent of the others and
    of ``np.random.default_rng(seed)`` itself, which a user's data often comes from.

    ``default_rng((seed, 0))`` is not: NumPy ignores trailing zero words of the entropy, so it is
    ``default_rng(seed)``, and weights drawn from it would be a scaled copy of data drawn from that generator.
    """
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))


class DeviceRNG:
    """Uniform random numbers on a backend's device, with a JSON-serialisable state.

    Args:
        backend: the `Backend` whose device the numbers are made on.
        seed: the stream's seed (an int).

    Every state holds ``"seed"`` and ``"counter"`` (draws so far); subclasses add what
    their generator needs to resume exactly.
    """

    def __init__(self, backend: Any, seed: int) -> None:
        self.backend = backend
        self.seed = int(seed)
        self.counter = 0
        # draws made through this object, always a Python int: a compiled step binds a traced `counter`
        # and reads here how many masks one step draws (not part of the saved state)
        self.draws = 0
        self.rows: tuple[int, int, int] | None = None
        """``(start, stop, total)``: a draw for rows start..stop of a batch of `total` rows is cut from
        the draw for the whole batch, so that data-parallel ranks each see their rows of the mask one
        process would draw; None (the default) draws exactly what is asked."""

    def uniform(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """An array of `shape` with values uniform in [0, 1) (the rows of a whole batch's draw, see `rows`)."""
        self.counter += 1
        self.draws += 1
        shape, window = tuple(shape), self.rows
        if window is None or not shape or shape[0] != window[1] - window[0]:
            return self._draw(shape, dtype_name(dtype))
        start, stop, total = window
        return self._draw((total, *shape[1:]), dtype_name(dtype))[start:stop, ...]

    def _draw(self, shape: tuple[int, ...], label: str) -> Any:
        raise NotImplementedError

    def get_state(self) -> dict:
        """A JSON-serialisable snapshot of the stream."""
        return {"seed": self.seed, "counter": self.counter}

    def accepts(self, state: Any) -> bool:
        """Whether `state` is a snapshot of a stream of this kind (another backend's may be another kind)."""
        return isinstance(state, dict) and "seed" in state and "counter" in state and not (self._foreign & set(state))

    # keys of other kinds' states: a stream restores only a snapshot of its own kind
    _foreign = frozenset({"pcg64", "torch"})

    def set_state(self, state: dict) -> None:
        """Restore a snapshot taken by `get_state`."""
        self.seed = int(state["seed"])
        self.counter = int(state["counter"])


class HostRNG(DeviceRNG):
    """A host PCG64 stream whose draws are moved to the device (state key ``"pcg64"``)."""

    def __init__(self, backend: Any, seed: int) -> None:
        super().__init__(backend, seed)
        self._gen = np.random.default_rng(self.seed)

    def _draw(self, shape: tuple[int, ...], label: str) -> Any:
        return self.backend.from_host(self._gen.random(shape, dtype=np.dtype(label)))

    _foreign = frozenset({"torch"})

    def get_state(self) -> dict:
        return {**super().get_state(), "pcg64": self._gen.bit_generator.state}

    def accepts(self, state: Any) -> bool:
        return super().accepts(state) and "pcg64" in state

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if "pcg64" in state:
            self._gen.bit_generator.state = state["pcg64"]
