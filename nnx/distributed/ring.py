"""Reduce-scatter, all-gather and all-reduce of large host buffers around a ring of ranks.

Each of the P ranks owns one contiguous block of a flat buffer (uneven sizes allowed). In P - 1
steps every rank sends one block to the next rank and receives one from the previous, so each
rank sends and receives (P - 1) / P of the buffer per collective, the least any algorithm moves.
A reduce-scatter leaves the reduced block r on rank r; an all-gather then passes each rank's
block around; together they are an all-reduce. The reduced block is computed on one rank only
and copied to the others, so every rank ends with the same bits.

MPICH's own collectives (the ones the pip wheels build) took 1.3-5x as long on one host for
buffers of 10k to 1M elements across two ranks, with a reduce-scatter as slow as the whole
all-reduce; below a few thousand elements a rank their single call wins over the P - 1
exchanges (`MIN_BLOCK_BYTES`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["MIN_BLOCK_BYTES", "Ring", "even_counts"]

# The smallest block (one rank's part) exchanged around the ring; below it the engine's own collective
# runs. Two ranks on one host: 500 float64 a rank, the ring took 1.2x MPICH's reduce-scatter; 5,000,
# a third of it.
MIN_BLOCK_BYTES = 16 * 1024

REDUCERS = {"sum": np.add, "max": np.maximum, "min": np.minimum}


class Ring:
    """The ring collectives of an mpi4py communicator, with receive buffers kept between calls.

    Args:
        comm: an mpi4py ``Comm`` (its ``Sendrecv``, ``Get_rank`` and ``Get_size``).
    """

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self._scratch: dict[tuple[str, int], np.ndarray] = {}

    def applies(self, buf: np.ndarray, counts: list[int], op: str = "sum") -> bool:
        """Whether the ring takes this collective: floating data, contiguous, every block large enough."""
        return (self.size > 1 and op in REDUCERS and buf.dtype.kind == "f" and buf.flags.c_contiguous
                and min(counts) * buf.itemsize >= MIN_BLOCK_BYTES)

    def _buffer(self, name: str, dtype: Any, length: int) -> np.ndarray:
        held = self._scratch.get((name, np.dtype(dtype).num))
        if held is None or held.size < length or held.dtype != dtype:
            held = self._scratch[(name, np.dtype(dtype).num)] = np.empty(length, dtype=dtype)
        return held[:length]

    def _exchange(self, send: np.ndarray, recv: np.ndarray) -> None:
        """Send to the next rank and receive from the previous one."""
        self.comm.Sendrecv(send, dest=(self.rank + 1) % self.size, recvbuf=recv, source=(self.rank - 1) % self.size)

    def reduce_scatter(self, buf: np.ndarray, out: np.ndarray, counts: list[int], op: str = "sum") -> None:
        """Write into `out` this rank's block of `buf` reduced over ranks with `op`; `buf` is left as it was."""
        blocks = _blocks(buf.reshape(-1), counts)
        reduce = REDUCERS[op]
        longest = max(counts)
        received = self._buffer("received", buf.dtype, longest)
        partial = self._buffer("partial", buf.dtype, longest)
        rank, size = self.rank, self.size
        send = blocks[(rank - 1) % size]
        for step in range(size - 1):
            # block b travels from rank b + 1 around to rank b, each rank folding in its own part
            b = (rank - step - 2) % size
            incoming = received[:counts[b]]
            self._exchange(send, incoming)
            send = out if step == size - 2 else partial[:counts[b]]
            reduce(blocks[b], incoming, out=send)

    def allgather(self, buf: np.ndarray, counts: list[int]) -> None:
        """Fill every rank's block of `buf` from that rank, in place."""
        blocks = _blocks(buf.reshape(-1), counts)
        for step in range(self.size - 1):
            self._exchange(blocks[(self.rank - step) % self.size], blocks[(self.rank - step - 1) % self.size])

    def allreduce(self, buf: np.ndarray, counts: list[int], op: str = "sum") -> None:
        """`buf` reduced over ranks with `op`, in place: a reduce-scatter into this rank's block, then an all-gather."""
        # the reduced block is written over this rank's own, which the reduce-scatter reads only in its last step
        self.reduce_scatter(buf, _blocks(buf.reshape(-1), counts)[self.rank], counts, op)
        self.allgather(buf, counts)


def _blocks(flat: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    """The views of `flat` that the ranks own, in rank order."""
    starts = np.cumsum([0, *counts]).tolist()
    return [flat[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]


def even_counts(n: int, size: int) -> list[int]:
    """`n` elements cut into `size` blocks whose lengths differ by at most one, the longer ones first."""
    return [n // size + (1 if r < n % size else 0) for r in range(size)]
