"""A rank's place on its host: which GPU it drives and how many CPU threads it may use.

Ranks on one host share its cores and its GPUs. A launcher says where each rank sits
(torchrun: ``LOCAL_RANK``/``LOCAL_WORLD_SIZE``; MPICH: ``MPI_LOCALRANKID``/``MPI_LOCALNRANKS``;
Open MPI: ``OMPI_COMM_WORLD_LOCAL_RANK``/``..._SIZE``); under MPI the shared-memory split of
the world says it exactly. From that, each rank takes GPU ``local_rank`` and
``cores // local_size`` threads (at least one), unless the user set the thread variables.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

#: thread-count variables of OpenMP and the BLAS libraries; one set by the user means "leave the threads to me"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
# (local rank, local size) variables, per launcher
_LOCAL_VARS = (("LOCAL_RANK", "LOCAL_WORLD_SIZE"), ("MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
               ("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"))


def local_placement(env: Mapping[str, str] = os.environ, mpi_comm: Any = None) -> tuple[int, int]:
    """(this rank's index among the ranks on its host, how many ranks its host runs); (0, 1) without a launcher.

    Under MPI, `mpi_comm` (an mpi4py communicator) is split by shared memory, which is exact
    whatever the launcher; otherwise the launcher's variables are read.
    """
    if mpi_comm is not None:
        node = mpi_comm.Split_type(import_mpi().COMM_TYPE_SHARED)
        try:
            return node.Get_rank(), node.Get_size()
        finally:
            node.Free()
    for rank_var, size_var in _LOCAL_VARS:
        if rank_var in env and size_var in env:
            return int(env[rank_var]), int(env[size_var])
    return 0, 1


def import_mpi() -> Any:
    """mpi4py's MPI module; an ImportError naming the fix when mpi4py is missing or finds no MPI library."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f'MPI needs mpi4py ({exc}): pip install "nnx-mlp[mpi]"') from exc
    except RuntimeError as exc:  # mpi4py 4 raises this when no MPI library can be loaded
        raise ImportError(f"mpi4py is installed but cannot load an MPI library ({exc}): pip install mpich, "
                          "or load your cluster's MPI") from exc
    return MPI


def host_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)


def threads_per_rank(cores: int, local_size: int) -> int:
    """Each rank's share of its host's cores: ``cores // local_size``, at least 1."""
    return max(1, cores // max(1, local_size))


def share_of_masks(mine: set[int], everyone: list[set[int]]) -> int:
    """This rank's threads from the CPU affinity masks of the ranks on its host (its own among them): the cores they
    may run on together divided among them, and no more than its own mask holds; at least 1.

    Ranks a launcher bound each to cores of its own (``srun --cpus-per-task``, ``mpiexec --bind-to``) keep all
    of theirs; ranks that share one mask (a job's cgroup, no binding) split it.
    """
    together = set(mine).union(*everyone)
    return max(1, min(len(mine), len(together) // max(1, len(everyone))))


def node_threads(mpi_comm: Any) -> int | None:
    """This rank's share of its host's cores under MPI, from the affinity masks of the ranks on the host (a
    collective of the shared-memory split); None where the OS has no affinity masks."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is None:
        return None
    mine = set(affinity(0))
    node = mpi_comm.Split_type(import_mpi().COMM_TYPE_SHARED)
    try:
        everyone = [set(mask) for mask in node.allgather(sorted(mine))]
    finally:
        node.Free()
    return share_of_masks(mine, everyone)


def limit_threads(local_size: int, env: MutableMapping[str, str] = os.environ, cores: int | None = None,
                  threads: int | None = None) -> int | None:
    """Limit this rank's BLAS and OpenMP threads to its share of the host; the limit, or None when left alone.

    `threads`: this rank's share where the engine worked it out from the ranks' affinity masks (`node_threads`);
    else `cores` (default: this process's) divided by `local_size`.
    Left alone: one rank on the host (it may use every core), or a thread variable set by the
    user (`THREAD_VARS`). Otherwise the variables are set, for libraries that start their
    pools later, and the pools already running are limited (threadpoolctl, torch).
    """
    if local_size <= 1 or any(var in env for var in THREAD_VARS):
        return None
    n = threads if threads is not None else threads_per_rank(host_cores() if cores is None else cores, local_size)
    for var in THREAD_VARS:
        env[var] = str(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # the variables still reach pools that start later
        pass
    else:
        threadpool_limits(limits=n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)
    return n


def torch_group_choice(cuda_available: bool, local_rank: int, local_size: int, device_count: int
                       ) -> tuple[str, int | None]:
    """(torch.distributed backend, the CUDA device this rank binds) for a torchrun job.

    With a GPU for every local rank: ``"cpu:gloo,cuda:nccl"`` (CPU tensors over gloo, CUDA
    tensors over NCCL) and GPU ``local_rank``. Fewer GPUs than ranks (NCCL refuses two ranks
    on one GPU) or none: gloo alone, and no binding.
    """
    if cuda_available and 0 <= local_rank < device_count and local_size <= device_count:
        return "cpu:gloo,cuda:nccl", local_rank
    return "gloo", None


def gpu_for_rank(local_rank: int, local_size: int, device_count: int) -> int:
    """The GPU a rank drives with NCCL: its local rank; an error when its host has fewer GPUs than ranks."""
    if local_size > device_count:
        raise RuntimeError(f"{local_size} ranks run on this host but it has {device_count} GPU(s); NCCL needs one "
                           f"GPU per rank: start at most {device_count} rank(s) per host (mpiexec -n {device_count})")
    return local_rank


def group_devices(backend: str) -> set[str]:
    """The tensor device types a torch.distributed group reduces in place: "gloo" -> {"cpu"}, "nccl" -> {"cuda"}.

    A combined backend (``"cpu:gloo,cuda:nccl"``) names its device types itself.
    """
    if ":" in backend:
        return {part.split(":")[0].strip() for part in backend.split(",") if ":" in part}
    return {"cuda"} if backend == "nccl" else {"cpu"}
