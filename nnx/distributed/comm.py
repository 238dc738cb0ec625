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

from typing import Any

import numpy as np

from ..backends import backend_name_of, get_backend
from .local import group_devices, local_placement

OPS = ("sum", "mean", "max", "min")

# variables a process launcher sets: MPICH/Hydra and Intel MPI (PMI_*), Open MPI, PMIx, Slurm
MPI_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMIX_RANK",
           "MPI_LOCALNRANKS", "SLURM_PROCID")
# variables torchrun (torch.distributed.elastic) sets
TORCHRUN_ENV = ("TORCHELASTIC_RUN_ID",)


def check_op(op: str) -> str:
    """`op` if it names a reduction a communicator runs (`OPS`), else ValueError."""
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


def check_counts(x: Any, counts: Any, size: int) -> list[int]:
    """`counts` as ints, one per rank, where they cut the flat `x` into `size` parts; else ValueError."""
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) != 1:
        raise ValueError(f"x must be a flat (1-D) array, got shape {shape}")
    counts = [int(c) for c in counts]
    if len(counts) != size or any(c < 0 for c in counts) or sum(counts) != shape[0]:
        raise ValueError(f"counts must be {size} non-negative ints (one per rank) summing to x's length "
                         f"{shape[0]}, got {counts}")
    return counts


def host_buffer(x: Any) -> tuple[np.ndarray, Any]:
    """A writable, contiguous NumPy array holding `x` and the backend to rebuild the result on (None: NumPy)."""
    if isinstance(x, np.ndarray):
        # reduced in place when MPI can use its memory as it is; else on a contiguous copy
        return (x if x.flags.c_contiguous and x.flags.writeable else np.ascontiguousarray(x).copy()), None
    if isinstance(x, np.generic):
        return np.array(x), None
    backend = get_backend(x)
    return np.array(backend.to_host(x), copy=True, order="C"), backend


def torch_cpu_view(x: Any) -> np.ndarray | None:
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
    #: this rank's share of its host's cores where the engine knows the ranks' affinity masks (MPI), else None
    host_threads: int | None = None
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
        check_op(op)
        done = self._device_allreduce(x, "sum" if op == "mean" else op)
        if done is None:
            view = torch_cpu_view(x)
            if view is not None:
                self._host_allreduce(view, "sum" if op == "mean" else op)
                done = x
            else:
                buf, backend = host_buffer(x)
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
        view = torch_cpu_view(x)
        if view is not None:
            self._host_broadcast(view, root)
            return x
        buf, backend = host_buffer(x)
        self._host_broadcast(buf, root)
        return buf if backend is None else backend.from_host(buf)

    def reduce_scatter(self, x: Any, counts: list[int]) -> Any:
        """This rank's part of the sum over processes of the flat array `x`, as a new array.

        `x` is cut into one contiguous part per rank, ``counts[r]`` elements for rank r in rank
        order (uneven counts are fine); rank r gets the sum of everyone's part r.
        """
        counts = check_counts(x, counts, self.size)
        done = self._device_reduce_scatter(x, counts)
        if done is not None:
            return done
        view = torch_cpu_view(x)
        if view is not None:
            buf, backend = view, get_backend(x)
        else:
            buf, backend = host_buffer(x)
        out = np.empty(counts[self.rank], dtype=buf.dtype)
        self._host_reduce_scatter(buf, out, counts)
        return out if backend is None else backend.from_host(out)

    def allgather(self, x: Any, counts: list[int]) -> Any:
        """The flat array `x` with every rank's part filled in from that rank; use the returned array.

        `x` is laid out as in `reduce_scatter`; this rank's part is sent, the others are received
        (in place where the library's arrays are mutable).
        """
        counts = check_counts(x, counts, self.size)
        done = self._device_allgather(x, counts)
        if done is not None:
            return done
        view = torch_cpu_view(x)
        if view is not None:
            self._host_allgather(view, counts)
            return x
        buf, backend = host_buffer(x)
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
        check_op(op)
        return x

    def broadcast(self, x: Any, root: int = 0) -> Any:
        self._check_root(root)
        return x

    def reduce_scatter(self, x: Any, counts: list[int]) -> Any:
        check_counts(x, counts, 1)
        return x

    def allgather(self, x: Any, counts: list[int]) -> Any:
        check_counts(x, counts, 1)
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
        if self.group_backend == "undefined" and hasattr(tdist, "get_backend_config"):
            # init_process_group() without a backend: torch chose one per device type, which its configuration
            # names ("cuda:nccl" alone on a GPU machine in torch 2.13, "cpu:gloo" on a CPU one)
            self.group_backend = str(tdist.get_backend_config())
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
        check_op(op)
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
