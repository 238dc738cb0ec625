"""The MPI engine: mpi4py's ``COMM_WORLD`` under ``mpiexec``/``srun``, with NCCL for CuPy arrays."""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import numpy as np

from ..backends import backend_name_of
from .comm import Communicator, offsets
from .local import import_mpi, local_placement, node_threads
from .nccl import NCCLCommunicator
from .ring import Ring, even_counts


class MPICommunicator(Communicator):
    """mpi4py's communicator (``MPI.COMM_WORLD`` by default) as a `Communicator`.

    Large floating host buffers go around a ring of point-to-point exchanges (`nnx.distributed.ring`),
    faster than the collectives of the MPI builds pip installs; everything else takes MPI's own.

    Args:
        comm: an mpi4py ``Comm``; None uses ``MPI.COMM_WORLD``.
    """

    engine = "mpi"

    def __init__(self, comm: Any = None) -> None:
        MPI = import_mpi()
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
        self._nccl: Any = None
        self._ring = Ring(self.comm)
        self.local_rank, self.local_size = local_placement(mpi_comm=self.comm)
        if self.size > 1:
            # ranks a launcher bound to cores of their own keep them; ranks sharing a mask split it (`init`)
            self.host_threads = node_threads(self.comm)
            abort_on_uncaught(MPI, self.comm)

    def _host_allreduce(self, buf: np.ndarray, op: str) -> None:
        counts = even_counts(buf.size, self.size)
        if self._ring.applies(buf, counts, op):
            self._ring.allreduce(buf, counts, op)
        else:
            self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self._ops[op])

    def _host_broadcast(self, buf: np.ndarray, root: int) -> None:
        self.comm.Bcast(buf, root=root)

    def _host_reduce_scatter(self, buf: np.ndarray, out: np.ndarray, counts: list[int]) -> None:
        if self._ring.applies(buf, counts):
            self._ring.reduce_scatter(buf, out, counts)
        else:
            self.comm.Reduce_scatter(buf, out, recvcounts=counts, op=self.MPI.SUM)

    def _host_allgather(self, buf: np.ndarray, counts: list[int]) -> None:
        if self._ring.applies(buf, counts):
            self._ring.allgather(buf, counts)
        else:
            self.comm.Allgatherv(self.MPI.IN_PLACE, [buf, (counts, offsets(counts))])

    def _device_reduce_scatter(self, x: Any, counts: list[int]) -> Any:
        if backend_name_of(x) != "cupy":
            return None
        return self.nccl().device_reduce_scatter(x, counts)

    def _device_allgather(self, x: Any, counts: list[int]) -> Any:
        if backend_name_of(x) != "cupy":
            return None
        return self.nccl().device_allgather(x, counts)

    def _device_allreduce(self, x: Any, op: str) -> Any:
        if backend_name_of(x) != "cupy":
            return None
        return self.nccl().device_allreduce(x, op)

    def _device_broadcast(self, x: Any, root: int) -> Any:
        if backend_name_of(x) != "cupy":
            return None
        return self.nccl().device_broadcast(x, root)

    def nccl(self) -> NCCLCommunicator:
        """The NCCL communicator for CuPy arrays, bootstrapped over this MPI world on first use."""
        if self._nccl is None:
            self._nccl = NCCLCommunicator(host=self)
        return self._nccl

    def barrier(self) -> None:
        self.comm.Barrier()

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        self._check_root(root)
        return self.comm.bcast(obj, root=root)

    def allgather_object(self, obj: Any) -> list[Any]:
        return self.comm.allgather(obj)


# Seconds a rank ending on an uncaught exception waits, its traceback written, before it aborts the job: the
# launcher forwards a rank's output asynchronously, and an abort tears its forwarding down, so MPICH's mpiexec
# dropped the last lines of the traceback (the error itself) in a loaded CI run.
ABORT_GRACE_S = 1.0


def abort_on_uncaught(MPI: Any, comm: Any) -> None:
    """Make an exception that ends this rank's script abort the whole MPI job, after its traceback is printed.

    Without it the other ranks wait forever in their next collective (a rank that raises, under
    ``mpiexec -n 2 python script.py``, left the job hanging until a time limit killed it); ``python -m
    mpi4py script.py`` does the same for an exception and also for ``sys.exit`` with an error. The hook
    runs only when the interpreter is about to exit on an uncaught exception, so a caught one changes
    nothing; the hook that was installed before (a user's, or Python's) still prints first, and the launcher is
    given `ABORT_GRACE_S` to forward it. Under ``-m mpi4py``
    it is not installed: the runner re-raises into the hook, which would abort before the launcher forwarded the
    traceback (a CI run lost it), where the runner itself aborts later, at exit.
    """
    previous = sys.excepthook
    if getattr(previous, "nnx_aborts_mpi", False) or _run_by_mpi4py():
        return  # installed already; or run by ``python -m mpi4py``, which aborts at exit itself, as it documents

    def hook(kind: Any, value: Any, tb: Any) -> None:
        try:
            previous(kind, value, tb)
        finally:
            sys.stderr.flush()
            if MPI.Is_initialized() and not MPI.Is_finalized():
                time.sleep(ABORT_GRACE_S)  # the job is ending anyway: its error reaches the user first
                comm.Abort(1)

    hook.nnx_aborts_mpi = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _run_by_mpi4py() -> bool:
    """Whether mpi4py's runner runs this script: ``python -m mpi4py`` imports ``mpi4py.run``, but ``python -m
    mpi4py.run`` (the spelling its main documents) runs that module as ``__main__``, where only the main thread's
    frames tell (their module's spec is named ``mpi4py.run``). Once per communicator."""
    if "mpi4py.run" in sys.modules:
        return True
    # sys._current_frames is documented (sys module), underscore and all: the only way to read the main thread's
    # stack from whichever thread builds the communicator
    frame = sys._current_frames().get(threading.main_thread().ident or -1)
    while frame is not None:
        if getattr(frame.f_globals.get("__spec__"), "name", None) == "mpi4py.run":
            return True
        frame = frame.f_back
    return False
