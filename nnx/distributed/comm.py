"""Communicators: one interface (rank, size, barrier, broadcast, allreduce, reduce-scatter, all-gather) over engines.

- `SingleProcess`: size 1, every collective is the identity; what `init` gives without a launcher.
- `MPICommunicator`: mpi4py's ``COMM_WORLD`` under ``mpiexec``/``srun``. NumPy arrays are reduced
  in place; torch CPU tensors through a NumPy view of their memory; other backends (JAX,
  array_api_strict) through a host copy; CuPy arrays through NCCL (`cupyx.distributed`),
  bootstrapped over MPI, because the pip MPI builds are not CUDA-aware.
- `TorchCommunicator`: torch.distributed's default group (gloo or NCCL), for a job started by
  ``torchrun``; torch tensors are reduced in place, other arrays through a torch copy.
- `NCCLCommunicator`: CuPy's NCCL for CuPy arrays, with an MPI (or single-process) communicator
  for everything on the host.

Every engine is imported only when a communicator using it is made, so ``import nnx`` imports
none of them. Collectives take and return backend arrays: where the library's arrays are
mutable the result is the same array, reduced in place; JAX's are rebuilt, so always use the
returned array. `reduce_scatter` and `allgather` work on a flat array cut into one contiguous part
per rank (``counts``, uneven allowed): together they are an all-reduce, with the sharded optimizer
update (ZeRO-1) between them.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
from typing import Any

import numpy as np

from ..backends import backend_name_of, get_backend
from .local import gpu_for_rank, group_devices, import_mpi, limit_threads, local_placement, torch_group_choice

OPS = ("sum", "mean", "max", "min")

# variables a process launcher sets: MPICH/Hydra and Intel MPI (PMI_*), Open MPI, PMIx, Slurm
MPI_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK",
           "MPI_LOCALNRANKS", "SLURM_PROCID")
# variables torchrun (torch.distributed.elastic) sets
TORCHRUN_ENV = ("TORCHELASTIC_RUN_ID",)


def _check_op(op: str) -> str:
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    return op


def offsets(counts: list[int]) -> list[int]:
    """Where each rank's part of a flat array starts, for parts of `counts` elements laid end to end."""
    out, start = [], 0
    for c in counts:
        out.append(start)
        start += c
    return out


def _check_counts(x: Any, counts: Any, size: int) -> list[int]:
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 1:
        raise ValueError(f"x must be a flat (1-D) array, got shape {shape}")
    counts = [int(c) for c in counts]
    if len(counts) != size or any(c < 0 for c in counts) or sum(counts) != shape[0]:
        raise ValueError(f"counts must be {size} non-negative ints (one per rank) summing to x's length "
                         f"{shape[0]}, got {counts}")
    return counts


def _host_buffer(x: Any) -> tuple[np.ndarray, Any]:
    """A writable, contiguous NumPy array holding `x` and the backend to rebuild the result on (None: NumPy)."""
    if isinstance(x, np.ndarray):
        # reduced in place when MPI can use its memory as it is; else on a contiguous copy
        return (x if x.flags.c_contiguous and x.flags.writeable else np.ascontiguousarray(x).copy()), None
    if isinstance(x, np.generic):
        return np.array(x), None
    backend = get_backend(x)
    return np.array(backend.to_host(x), copy=True, order="C"), backend


def _torch_cpu_view(x: Any) -> np.ndarray | None:
    """A NumPy view of a contiguous torch CPU tensor's memory (None for anything else)."""
    if backend_name_of(x) != "torch" or x.device.type != "cpu" or not x.is_contiguous() or x.requires_grad:
        return None
    try:
        return x.numpy()
    except (TypeError, RuntimeError):  # dtypes NumPy lacks (bfloat16)
        return None


class Communicator:
    """What data-parallel training needs from an engine: collectives on backend arrays and on host values.

    Attributes:
        rank: this process's index, 0 .. size-1.
        size: how many processes take part.
        engine: the engine's name ("single", "mpi", "torch", "nccl").
        local_rank, local_size: this rank's place among the ranks on its host (its GPU, its share of cores).
    """

    rank: int = 0
    size: int = 1
    engine: str = "single"
    #: this rank's index among the ranks on its host, and how many ranks its host runs
    local_rank: int = 0
    local_size: int = 1

    # -- what an engine provides (host NumPy arrays, reduced in place) ---------------------------
    def _host_allreduce(self, buf: np.ndarray, op: str) -> None:
        raise NotImplementedError

    def _host_broadcast(self, buf: np.ndarray, root: int) -> None:
        raise NotImplementedError

    def _device_allreduce(self, x: Any, op: str) -> Any:
        """The engine's own reduction of a device array (in place), or None to go through the host."""
        return None

    def _device_broadcast(self, x: Any, root: int) -> Any:
        return None

    def _host_reduce_scatter(self, buf: np.ndarray, out: np.ndarray, counts: list[int]) -> None:
        """Sum `buf` over processes and leave this rank's part (``counts[rank]`` elements) in `out`."""
        raise NotImplementedError

    def _host_allgather(self, buf: np.ndarray, counts: list[int]) -> None:
        """Fill every rank's part of `buf` (laid out by `counts`) from that rank, in place."""
        raise NotImplementedError

    def _device_reduce_scatter(self, x: Any, counts: list[int]) -> Any:
        """The engine's own reduce-scatter of a device array, or None to go through the host."""
        return None

    def _device_allgather(self, x: Any, counts: list[int]) -> Any:
        return None

    def barrier(self) -> None:
        """Wait until every process reaches this call."""
        raise NotImplementedError

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """A picklable Python object from `root`, on every process."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the engine started (NCCL's rendezvous store); idempotent. Nothing to do for most engines."""

    def allgather_object(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order, on every process."""
        raise NotImplementedError

    # -- the public collectives -----------------------------------------------------------------
    def allreduce(self, x: Any, op: str = "sum") -> Any:
        """`x` reduced over all processes with `op` ("sum", "mean", "max", "min"); use the returned array."""
        _check_op(op)
        done = self._device_allreduce(x, "sum" if op == "mean" else op)
        if done is None:
            view = _torch_cpu_view(x)
            if view is not None:
                self._host_allreduce(view, "sum" if op == "mean" else op)
                done = x
            else:
                buf, backend = _host_buffer(x)
                self._host_allreduce(buf, "sum" if op == "mean" else op)
                done = buf if backend is None else backend.from_host(buf)
        if op == "mean":
            if isinstance(done, np.ndarray) and done.dtype.kind == "f":
                np.multiply(done, 1.0 / self.size, out=done)
            else:
                done = done / self.size
        return done

    def broadcast(self, x: Any, root: int = 0) -> Any:
        """`x` as process `root` holds it, on every process; use the returned array."""
        self._check_root(root)
        done = self._device_broadcast(x, root)
        if done is not None:
            return done
        view = _torch_cpu_view(x)
        if view is not None:
            self._host_broadcast(view, root)
            return x
        buf, backend = _host_buffer(x)
        self._host_broadcast(buf, root)
        return buf if backend is None else backend.from_host(buf)

    def reduce_scatter(self, x: Any, counts: list[int]) -> Any:
        """This rank's part of the sum over processes of the flat array `x`, as a new array.

        `x` is cut into one contiguous part per rank, ``counts[r]`` elements for rank r in rank
        order (uneven counts are fine); rank r gets the sum of everyone's part r.
        """
        counts = _check_counts(x, counts, self.size)
        done = self._device_reduce_scatter(x, counts)
        if done is not None:
            return done
        view = _torch_cpu_view(x)
        if view is not None:
            buf, backend = view, get_backend(x)
        else:
            buf, backend = _host_buffer(x)
        out = np.empty(counts[self.rank], dtype=buf.dtype)
        self._host_reduce_scatter(buf, out, counts)
        return out if backend is None else backend.from_host(out)

    def allgather(self, x: Any, counts: list[int]) -> Any:
        """The flat array `x` with every rank's part filled in from that rank; use the returned array.

        `x` is laid out as in `reduce_scatter`; this rank's part is sent, the others are received
        (in place where the library's arrays are mutable).
        """
        counts = _check_counts(x, counts, self.size)
        done = self._device_allgather(x, counts)
        if done is not None:
            return done
        view = _torch_cpu_view(x)
        if view is not None:
            self._host_allgather(view, counts)
            return x
        buf, backend = _host_buffer(x)
        self._host_allgather(buf, counts)
        return buf if backend is None else backend.from_host(buf)

    def _check_root(self, root: int) -> None:
        if not isinstance(root, int) or not 0 <= root < self.size:
            raise ValueError(f"root must be a rank in 0..{self.size - 1}, got {root!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, engine={self.engine!r})"


class SingleProcess(Communicator):
    """One process: every collective returns its input (a script run without a launcher)."""

    def allreduce(self, x: Any, op: str = "sum") -> Any:
        _check_op(op)
        return x

    def broadcast(self, x: Any, root: int = 0) -> Any:
        self._check_root(root)
        return x

    def reduce_scatter(self, x: Any, counts: list[int]) -> Any:
        _check_counts(x, counts, 1)
        return x

    def allgather(self, x: Any, counts: list[int]) -> Any:
        _check_counts(x, counts, 1)
        return x

    def _host_allreduce(self, buf: np.ndarray, op: str) -> None:
        pass

    def _host_broadcast(self, buf: np.ndarray, root: int) -> None:
        pass

    def _host_reduce_scatter(self, buf: np.ndarray, out: np.ndarray, counts: list[int]) -> None:
        out[...] = buf

    def _host_allgather(self, buf: np.ndarray, counts: list[int]) -> None:
        pass

    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        return obj

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]


class MPICommunicator(Communicator):
    """mpi4py's communicator (``MPI.COMM_WORLD`` by default) as a `Communicator`.

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
        self.local_rank, self.local_size = local_placement(mpi_comm=self.comm)

    def _host_allreduce(self, buf: np.ndarray, op: str) -> None:
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self._ops[op])

    def _host_broadcast(self, buf: np.ndarray, root: int) -> None:
        self.comm.Bcast(buf, root=root)

    def _host_reduce_scatter(self, buf: np.ndarray, out: np.ndarray, counts: list[int]) -> None:
        self.comm.Reduce_scatter(buf, out, recvcounts=counts, op=self.MPI.SUM)

    def _host_allgather(self, buf: np.ndarray, counts: list[int]) -> None:
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


class TorchCommunicator(Communicator):
    """torch.distributed's default process group (gloo on CPUs, NCCL on GPUs) as a `Communicator`.

    The group must be initialised (``init`` does it under torchrun). Torch tensors are reduced
    in place by the group; other arrays go through a torch copy (on the current CUDA device
    when the group is NCCL, which only reduces GPU tensors).
    """

    engine = "torch"

    def __init__(self) -> None:
        import torch
        import torch.distributed as tdist

        if not tdist.is_initialized():
            raise RuntimeError("TorchCommunicator needs torch.distributed.init_process_group() first "
                               "(nnx.distributed.init() does it under torchrun)")
        self.torch, self.tdist = torch, tdist
        self.rank = tdist.get_rank()
        self.size = tdist.get_world_size()
        self.group_backend = str(tdist.get_backend())
        self._devices = group_devices(self.group_backend)  # the tensor device types the group reduces in place
        self.local_rank, self.local_size = local_placement()
        self._ops = {"sum": tdist.ReduceOp.SUM, "max": tdist.ReduceOp.MAX, "min": tdist.ReduceOp.MIN}

    def _staging_device(self) -> Any:
        if "cpu" not in self._devices:
            return self.torch.device("cuda", self.torch.cuda.current_device())
        return self.torch.device("cpu")

    def _ready(self, x: Any) -> bool:
        """Whether the group can reduce tensor `x` itself (in place)."""
        if backend_name_of(x) != "torch" or not x.is_contiguous():
            return False
        return x.device.type in self._devices

    def _device_allreduce(self, x: Any, op: str) -> Any:
        if not self._ready(x):
            return None
        self.tdist.all_reduce(x, op=self._ops[op])
        return x

    def _device_broadcast(self, x: Any, root: int) -> Any:
        if not self._ready(x):
            return None
        self.tdist.broadcast(x, src=root)
        return x

    def _group_reduce_scatter(self, t: Any, counts: list[int]) -> Any:
        """This rank's part of the sum of tensor `t` (on a device the group reduces).

        gloo has no reduce-scatter: an all-reduce of a copy, of which this rank keeps its part.
        """
        total = t.clone()
        self.tdist.all_reduce(total, op=self._ops["sum"])
        start = offsets(counts)[self.rank]
        return total[start:start + counts[self.rank]]

    def _group_allgather(self, t: Any, counts: list[int]) -> None:
        """Every rank's part of tensor `t` filled in, in place; all_gather needs equal sizes, so parts are padded."""
        width, starts = max(counts), offsets(counts)
        mine = t.new_zeros(width)
        start, count = starts[self.rank], counts[self.rank]
        mine[:count] = t[start:start + count]
        parts = [t.new_empty(width) for _ in range(self.size)]
        self.tdist.all_gather(parts, mine)
        for r, (a, c) in enumerate(zip(starts, counts, strict=True)):
            if r != self.rank:
                t[a:a + c] = parts[r][:c]

    def _device_reduce_scatter(self, x: Any, counts: list[int]) -> Any:
        return self._group_reduce_scatter(x, counts) if self._ready(x) else None

    def _device_allgather(self, x: Any, counts: list[int]) -> Any:
        if not self._ready(x):
            return None
        self._group_allgather(x, counts)
        return x

    def _host_reduce_scatter(self, buf: np.ndarray, out: np.ndarray, counts: list[int]) -> None:
        staged = self.torch.from_numpy(buf).to(self._staging_device())
        out[...] = self._group_reduce_scatter(staged, counts).cpu().numpy()

    def _host_allgather(self, buf: np.ndarray, counts: list[int]) -> None:
        t = self.torch.from_numpy(buf)
        staged = t.to(self._staging_device())
        self._group_allgather(staged, counts)
        if staged is not t:
            t.copy_(staged.cpu())

    def allreduce(self, x: Any, op: str = "sum") -> Any:
        _check_op(op)
        if backend_name_of(x) != "torch" or self._ready(x):
            return super().allreduce(x, op)  # other libraries' arrays go through the host (_host_allreduce)
        # a tensor the group cannot reduce where it is (a CPU tensor under NCCL): a staged copy
        return super().allreduce(x.to(self._staging_device()).contiguous(), op).to(x.device)

    def broadcast(self, x: Any, root: int = 0) -> Any:
        self._check_root(root)
        if backend_name_of(x) != "torch" or self._ready(x):
            return super().broadcast(x, root)
        return super().broadcast(x.to(self._staging_device()).contiguous(), root).to(x.device)

    def _host_allreduce(self, buf: np.ndarray, op: str) -> None:
        t = self.torch.from_numpy(buf)
        staged = t.to(self._staging_device())
        self.tdist.all_reduce(staged, op=self._ops[op])
        if staged is not t:
            t.copy_(staged.cpu())

    def _host_broadcast(self, buf: np.ndarray, root: int) -> None:
        t = self.torch.from_numpy(buf)
        staged = t.to(self._staging_device())
        self.tdist.broadcast(staged, src=root)
        if staged is not t:
            t.copy_(staged.cpu())

    def barrier(self) -> None:
        self.tdist.barrier()

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        self._check_root(root)
        box = [obj]
        self.tdist.broadcast_object_list(box, src=root)
        return box[0]

    def allgather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.size
        self.tdist.all_gather_object(out, obj)
        return out


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
        over_mpi = isinstance(self.host, MPICommunicator)
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
        _check_op(op)
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
        return self.device_reduce_scatter(x, _check_counts(x, counts, self.size))

    def allgather(self, x: Any, counts: list[int]) -> Any:
        if backend_name_of(x) != "cupy":
            return self.host.allgather(x, counts)
        return self.device_allgather(x, _check_counts(x, counts, self.size))

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
        raise ImportError(f"the NCCL engine needs CuPy ({exc}): pip install \"nnx-mlp[cupy12]\"") from exc
    return cdist


def launched_by_mpi() -> bool:
    """Whether a process launcher (mpiexec, srun) started this process, judged from its environment."""
    return any(name in os.environ for name in MPI_ENV) or "mpi4py.MPI" in sys.modules


def init(engine: str | None = None) -> Communicator:
    """The communicator for this job: torch.distributed's group, the MPI world, or a single process.

    Args:
        engine: None picks: torch.distributed when its group is initialised (or the job was started
            by torchrun, which initialises it: gloo for CPU tensors, plus NCCL for CUDA tensors with
            each rank bound to GPU ``LOCAL_RANK`` when the host has a GPU per rank), the MPI world
            when a launcher started more than one process, else `SingleProcess`. "mpi", "torch",
            "nccl" (CuPy's NCCL, over MPI when launched by one, else world size 1) or "single" force one.

    Under a launcher, each rank's BLAS and OpenMP threads are limited to its share of the host's
    cores (``cores // ranks on the host``, at least 1), unless the thread variables are set
    (`nnx.distributed.local.limit_threads`).
    """
    if engine not in (None, "mpi", "torch", "nccl", "single"):
        raise ValueError(f"engine must be None, 'mpi', 'torch', 'nccl' or 'single', got {engine!r}")
    comm = _pick(engine)
    if not isinstance(comm, SingleProcess):
        limit_threads(comm.local_size)
    return comm


def _pick(engine: str | None) -> Communicator:
    if engine == "single":
        return SingleProcess()
    if engine == "mpi":
        return MPICommunicator()
    if engine == "nccl":
        return NCCLCommunicator(MPICommunicator() if launched_by_mpi() else None)
    if engine == "torch":
        _torch_group_ready()  # initialises the group under torchrun
        return TorchCommunicator()
    if _torch_group_ready():
        return TorchCommunicator()
    if launched_by_mpi():
        comm = MPICommunicator()
        if comm.size > 1:
            return comm
    return SingleProcess()


def _torch_group_ready() -> bool:
    """Whether torch.distributed has a group, initialising it under torchrun (never imports torch otherwise)."""
    under_torchrun = any(name in os.environ for name in TORCHRUN_ENV)
    if "torch" not in sys.modules and not under_torchrun:
        return False
    import torch.distributed as tdist

    if not tdist.is_available():
        return False
    if not tdist.is_initialized() and under_torchrun:
        import torch

        local_rank, local_size = local_placement()
        cuda = torch.cuda.is_available()
        backend, device = torch_group_choice(cuda, local_rank, local_size, torch.cuda.device_count() if cuda else 0)
        if device is not None:
            torch.cuda.set_device(device)  # before the group: NCCL takes the current device as this rank's
        tdist.init_process_group(backend=backend)
    return tdist.is_initialized()
