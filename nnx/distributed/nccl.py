"""The NCCL engine: CuPy's NCCL (`cupyx.distributed`) for CuPy arrays, bootstrapped over MPI or alone."""

from __future__ import annotations

import atexit
import importlib
import sys
from typing import Any

from ..backends import backend_name_of
from ..backends.nvidia import CUPY_INSTALL
from .comm import Communicator, SingleProcess, check_counts, check_op, offsets
from .local import gpu_for_rank, import_mpi


class NCCLCommunicator(Communicator):
    """CuPy's NCCL (`cupyx.distributed`) for CuPy arrays; a host communicator for everything else.

    Args:
        host: the communicator that bootstraps NCCL and reduces host values (an `MPICommunicator`
            under mpiexec; None: `SingleProcess`, which with world size 1 still runs NCCL's collective).

    Under MPI each rank first makes GPU ``local_rank`` current (one GPU per rank, as NCCL
    requires), so the bare backend name ``"cupy"`` means that GPU on every rank. Checked on the
    CPU against CuPy's real signatures (tests/test_cupy_conformance.py); `close` ends it.
    """

    engine = "nccl"

    def __init__(self, host: Communicator | None = None) -> None:
        self.host = SingleProcess() if host is None else host
        self.rank, self.size = self.host.rank, self.host.size
        self.local_rank, self.local_size = self.host.local_rank, self.host.local_size
        self.host_threads = self.host.host_threads
        over_mpi = self.host.engine == "mpi"
        cdist = _cupyx_distributed(need_mpi=over_mpi)
        cupy = importlib.import_module("cupy")

        if over_mpi:
            count = cupy.cuda.runtime.getDeviceCount()
            cupy.cuda.Device(gpu_for_rank(self.local_rank, self.local_size, count)).use()
        # NCCL needs a unique id shared by every rank: over MPI when there is an MPI world, else its TCP store
        self.group: Any = cdist.init_process_group(self.size, self.rank, backend="nccl", use_mpi=over_mpi)
        if not over_mpi:
            # world size 1: the store has handed out the id. Its process is not a daemon and cupyx's
            # exit hook turns its stop() into a no-op, so left running it would keep Python from exiting.
            self.group.stop()
        atexit.register(self.close)  # registered after cupyx's hook, so it runs before it

    def close(self) -> None:
        """Stop NCCL's rendezvous store, if it still runs (idempotent; also runs at exit)."""
        group, self.group = getattr(self, "group", None), None
        if group is not None and not _store_stopped(group):
            group.stop()

    def device_allreduce(self, x: Any, op: str) -> Any:
        """A CuPy array reduced in place by NCCL (runs even with world size 1)."""
        self.group.all_reduce(x, x, op)
        return x

    def device_broadcast(self, x: Any, root: int) -> Any:
        """A CuPy array broadcast in place by NCCL."""
        self.group.broadcast(x, root)
        return x

    def device_reduce_scatter(self, x: Any, counts: list[int]) -> Any:
        """This rank's part of the NCCL sum of a flat CuPy array; NCCL's parts are equal, so they are padded."""
        cupy = importlib.import_module("cupy")
        width, starts = max(counts), offsets(counts)
        padded = cupy.zeros(self.size * width, dtype=x.dtype)
        for r, (a, c) in enumerate(zip(starts, counts, strict=True)):
            padded[r * width:r * width + c] = x[a:a + c]
        out = cupy.empty(width, dtype=x.dtype)
        self.group.reduce_scatter(padded, out, width)
        return out[:counts[self.rank]]

    def device_allgather(self, x: Any, counts: list[int]) -> Any:
        """A flat CuPy array with every rank's part filled in by NCCL, in place (parts padded to equal size)."""
        cupy = importlib.import_module("cupy")
        width, starts = max(counts), offsets(counts)
        mine = cupy.zeros(width, dtype=x.dtype)
        start, count = starts[self.rank], counts[self.rank]
        mine[:count] = x[start:start + count]
        out = cupy.empty(self.size * width, dtype=x.dtype)
        self.group.all_gather(mine, out, width)
        for r, (a, c) in enumerate(zip(starts, counts, strict=True)):
            x[a:a + c] = out[r * width:r * width + c]
        return x

    def _device_allreduce(self, x: Any, op: str) -> Any:
        return self.device_allreduce(x, op) if backend_name_of(x) == "cupy" else None

    def _device_broadcast(self, x: Any, root: int) -> Any:
        return self.device_broadcast(x, root) if backend_name_of(x) == "cupy" else None

    def allreduce(self, x: Any, op: str = "sum") -> Any:
        check_op(op)
        if backend_name_of(x) != "cupy":
            return self.host.allreduce(x, op)
        x = self.device_allreduce(x, "sum" if op == "mean" else op)
        return x / self.size if op == "mean" else x

    def broadcast(self, x: Any, root: int = 0) -> Any:
        self._check_root(root)
        return self.device_broadcast(x, root) if backend_name_of(x) == "cupy" else self.host.broadcast(x, root)

    def reduce_scatter(self, x: Any, counts: list[int]) -> Any:
        if backend_name_of(x) != "cupy":
            return self.host.reduce_scatter(x, counts)
        return self.device_reduce_scatter(x, check_counts(x, counts, self.size))

    def allgather(self, x: Any, counts: list[int]) -> Any:
        if backend_name_of(x) != "cupy":
            return self.host.allgather(x, counts)
        return self.device_allgather(x, check_counts(x, counts, self.size))

    def barrier(self) -> None:
        self.host.barrier()

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return self.host.broadcast_object(obj, root)

    def allgather_object(self, obj: Any) -> list[Any]:
        return self.host.allgather_object(obj)


def _store_stopped(group: Any) -> bool:
    """Whether a cupyx group has no rendezvous store process left running (MPI-bootstrapped ones never had one)."""
    process = getattr(getattr(group, "_store", None), "_process", None)
    return process is None or not process.is_alive()


def _cupyx_distributed(need_mpi: bool) -> Any:
    """``cupyx.distributed``, importable even where mpi4py is installed but finds no MPI library.

    cupyx catches only ImportError from ``from mpi4py import MPI``; mpi4py 4 raises RuntimeError
    without an MPI library. Without a launcher NCCL needs no MPI, so mpi4py is then hidden from cupyx.
    """
    try:
        import_mpi()
    except ImportError:
        if need_mpi:
            raise
        sys.modules.setdefault("mpi4py.MPI", None)  # type: ignore[assignment]  # cupyx then runs without MPI
    try:
        from cupyx import distributed as cdist  # pyright: ignore[reportMissingImports]  # optional GPU library
    except ImportError as exc:
        raise ImportError(f"the NCCL engine needs CuPy ({exc}): {CUPY_INSTALL}") from exc
    return cdist
