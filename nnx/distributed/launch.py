"""`init`: the communicator for this job, picked from how it was launched (torchrun, mpiexec, or alone)."""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any

from .comm import MPI_ENV, TORCHRUN_ENV, Communicator, SingleProcess, TorchCommunicator
from .local import limit_threads, local_placement, torch_group_choice
from .mpi import MPICommunicator
from .nccl import NCCLCommunicator


def launched_by_mpi() -> bool:
    """Whether a process launcher (mpiexec, srun) started this process, judged from its environment."""
    return any(name in os.environ for name in MPI_ENV) or "mpi4py.MPI" in sys.modules


def init(engine: str | None = None) -> Communicator:
    """The communicator for this job: torch.distributed's group, the MPI world, or a single process.

    Args:
        engine: None picks: torch.distributed when its group is initialised (or the job was started
            by torchrun, which initialises it: gloo for CPU tensors, plus NCCL for CUDA tensors with
            each rank bound to GPU ``LOCAL_RANK`` when the host has a GPU per rank), the MPI world
            when a launcher started more than one process, else `SingleProcess` (also where a launcher's
            variables name a world of one and mpi4py or its MPI library is missing: a script in an sbatch
            job). "mpi", "torch", "nccl" (CuPy's NCCL, over MPI when launched by one, else world size 1) or
            "single" force one.

    Under a launcher, each rank's BLAS and OpenMP threads are limited to its share of the host's
    cores (``cores // ranks on the host``, at least 1; under MPI, the cores the host's ranks may run on
    together, and no more than its own affinity mask holds), unless the thread variables are set
    (`nnx.distributed.local.limit_threads`).
    """
    if engine not in (None, "mpi", "torch", "nccl", "single"):
        raise ValueError(f"engine must be None, 'mpi', 'torch', 'nccl' or 'single', got {engine!r}")
    comm = _pick(engine)
    if not isinstance(comm, SingleProcess):
        limit_threads(comm.local_size, threads=comm.host_threads)
    return comm


def _pick(engine: str | None) -> Communicator:
    if engine == "single":
        return SingleProcess()
    if engine == "mpi":
        return _mpi_world()
    if engine == "nccl":
        return NCCLCommunicator(_mpi_world() if launched_by_mpi() else None)
    if engine == "torch":
        _torch_group_ready()  # initialises the group under torchrun
        return TorchCommunicator()
    if _torch_group_ready():
        return TorchCommunicator()
    if launched_by_mpi():
        try:
            comm = _mpi_world()
        except ImportError:
            # a launcher's world of one needs no MPI: sbatch runs its script as task 0 (SLURM_PROCID=0), and
            # `python train.py` there is one process. Several ranks could not train together without it.
            if launcher_world_size() > 1:
                raise
            return SingleProcess()
        if comm.size > 1:
            return comm
    return SingleProcess()


# variables in which a launcher names how many processes it started: PMI (MPICH, Intel MPI), Open MPI, Slurm
WORLD_SIZE_ENV = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")
# those of them that name the processes of this launch itself: sbatch runs its script once, as task 0, with the
# allocation's SLURM_NTASKS, where srun sets SLURM_STEP_NUM_TASKS
STEP_SIZE_ENV = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


def _mpi_world() -> MPICommunicator:
    """The MPI world; a RuntimeError where the launcher started several processes and MPI sees a world of one.

    That is an mpiexec (or srun) of one MPI library starting a script whose mpi4py loads another, or one
    built without the launcher's PMI: every rank initialises as a singleton. Taken for a single process,
    each rank would train the whole model alone, as rank 0, and write the same checkpoint, without a word.
    """
    comm = MPICommunicator()
    told = {name: os.environ[name] for name in STEP_SIZE_ENV if os.environ.get(name, "").strip().isdigit()}
    started = max((int(v) for v in told.values()), default=1)
    if comm.size == 1 and started > 1:
        named = ", ".join(f"{k}={v}" for k, v in told.items())
        raise RuntimeError(f"the launcher started {started} processes ({named}), but MPI sees a world of 1 in "
                           "each: mpi4py loads another MPI library than the launcher's (or one without its PMI), "
                           "so the ranks cannot reach each other and would each train alone. Start the job with "
                           "the mpiexec of the MPI that mpi4py uses (python -c \"from mpi4py import MPI; "
                           "print(MPI.Get_library_version())\"), or rebuild mpi4py against the cluster's MPI")
    return comm


def launcher_world_size() -> int:
    """How many processes the launcher's variables say it started (the most any names); 1 where none says."""
    sizes = [int(v) for v in (os.environ.get(name, "").strip() for name in WORLD_SIZE_ENV) if v.isdigit()]
    return max(sizes, default=1)


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
        # the group nnx made, nnx takes down: left to the interpreter's exit, gloo's threads are destroyed
        # while joinable and the process aborts ("terminate called without an active exception")
        atexit.register(_destroy_group, tdist)
    return tdist.is_initialized()


def _destroy_group(tdist: Any) -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()
