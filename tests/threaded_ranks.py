"""Ranks as threads of this process: a `Communicator` whose collectives meet at a barrier, for fast multi-rank tests.

`run_ranks(size, fn)` calls ``fn(comm)`` on `size` threads, each with its own `ThreadComm`, and returns
their results in rank order. The collectives reduce in rank order on every rank, so every rank ends
with the same bits, as MPI's do. A rank that raises breaks the barrier, so the others stop at their
next collective (as ``python -m mpi4py`` aborts the job) instead of waiting; a rank that waits in a
collective no other rank joins fails after `TIMEOUT` seconds with `threading.BrokenBarrierError`,
which is how a test sees a hang. The real engines run in tests/test_distributed.py.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from nnx.distributed import Communicator
from nnx.distributed.comm import offsets

TIMEOUT = 20.0
REDUCERS = {"sum": np.add, "max": np.maximum, "min": np.minimum}


class World:
    """What the ranks of one job share: a barrier and one slot per rank."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.barrier = threading.Barrier(size, timeout=TIMEOUT)
        self.slots: list[Any] = [None] * size


class ThreadComm(Communicator):
    """Rank `rank` of `world`: every collective hands its value to the others at the barrier."""

    engine = "threads"

    def __init__(self, world: World, rank: int) -> None:
        self.world, self.rank, self.size = world, rank, world.size

    def _exchange(self, value: Any) -> list[Any]:
        w = self.world
        w.slots[self.rank] = value
        w.barrier.wait()
        got = list(w.slots)
        w.barrier.wait()  # nobody writes the next value before everyone read this one
        return got

    def _reduced(self, buf: np.ndarray, op: str) -> np.ndarray:
        got = self._exchange(np.array(buf, copy=True))
        total = got[0].copy()
        for part in got[1:]:
            REDUCERS[op](total, part, out=total)
        return total

    def _host_allreduce(self, buf: np.ndarray, op: str) -> None:
        buf[...] = self._reduced(buf, op)

    def _host_broadcast(self, buf: np.ndarray, root: int) -> None:
        buf[...] = self._exchange(np.array(buf, copy=True))[root]

    def _host_reduce_scatter(self, buf: np.ndarray, out: np.ndarray, counts: list[int]) -> None:
        start = offsets(counts)[self.rank]
        out[...] = self._reduced(buf, "sum")[start:start + counts[self.rank]]

    def _host_allgather(self, buf: np.ndarray, counts: list[int]) -> None:
        got = self._exchange(np.array(buf, copy=True))
        for r, (a, c) in enumerate(zip(offsets(counts), counts, strict=True)):
            buf[a:a + c] = got[r][a:a + c]

    def barrier(self) -> None:
        self.world.barrier.wait()

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        self._check_root(root)
        return copy.deepcopy(self._exchange(obj)[root])

    def allgather_object(self, obj: Any) -> list[Any]:
        return copy.deepcopy(self._exchange(obj))


def run_ranks(size: int, fn: Callable[[Communicator], Any]) -> list[Any]:
    """``fn(comm)`` on `size` ranks (threads); their results in rank order, or the first rank's error raised.

    The error of the rank that raised first is re-raised (the others then fail at the broken barrier).
    """
    world = World(size)
    results: list[Any] = [None] * size
    errors: list[tuple[int, BaseException]] = []

    def rank_main(rank: int) -> None:
        try:
            results[rank] = fn(ThreadComm(world, rank))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors.append((rank, exc))
            world.barrier.abort()

    threads = [threading.Thread(target=rank_main, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 3)
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"a rank was still running after {TIMEOUT * 3:.0f} s")
    if errors:
        raise errors[0][1]
    return results
