"""The collectives and the launch detection below `fit(distributed=...)`, on ranks as threads of this process."""

from __future__ import annotations

import pytest

from nnx import distributed as dist
from nnx.distributed import comm as comm_module
from nnx.distributed import launch

# variables a launcher sets, cleared before each launch test so the machine's own never leak in
LAUNCH_VARS = (*comm_module.MPI_ENV, *launch.WORLD_SIZE_ENV, *comm_module.TORCHRUN_ENV, "PMIX_SIZE", "SLURM_JOB_ID")


class _WorldOfOne:
    """What mpi4py's communicator gives a process its MPI library did not see launched: a singleton world."""

    def __init__(self) -> None:
        self.rank, self.size, self.local_rank, self.local_size, self.host_threads = 0, 1, 0, 1, None


@pytest.fixture
def launched(monkeypatch):
    """Set a launcher's variables (cleared first) and make MPI's world a singleton."""
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(launch, "_torch_group_ready", lambda: False)
    monkeypatch.setattr(launch, "MPICommunicator", _WorldOfOne)

    def set_env(env: dict[str, str]) -> None:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
    return set_env


@pytest.mark.parametrize("env", [
    {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2"},  # Open MPI's mpiexec, mpi4py on MPICH
    {"PMI_RANK": "1", "PMI_SIZE": "4"},  # MPICH's mpiexec (Hydra), mpi4py on Open MPI
    {"SLURM_PROCID": "2", "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4"},  # srun -n 4, MPI without Slurm's PMI
], ids=["openmpi", "hydra", "srun"])
@pytest.mark.parametrize("engine", [None, "mpi"])
def test_ranks_whose_mpi_library_sees_a_world_of_one_are_refused(launched, env, engine):
    """mpiexec from one MPI and mpi4py built on another (the classic mismatch) start every rank as a singleton:
    COMM_WORLD.size is 1 on each. init then handed every one of them a SingleProcess communicator, so the N
    ranks each trained the whole model alone, each as rank 0, each writing the checkpoint, without a word."""
    launched(env)
    size = next(v for k, v in env.items() if k != "SLURM_NTASKS" and ("SIZE" in k or "TASKS" in k))
    with pytest.raises(RuntimeError, match=f"started {size} processes.*world of 1"):
        dist.init(engine)


@pytest.mark.parametrize("env", [
    # sbatch --ntasks=4 runs its script once, as task 0: the allocation's size is not this step's
    {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_NPROCS": "4", "SLURM_JOB_ID": "7"},
    {"PMI_RANK": "0", "PMI_SIZE": "1"},
    {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "1"},
], ids=["sbatch", "hydra-1", "openmpi-1"])
def test_a_launcher_world_of_one_is_still_a_single_process(launched, env):
    launched(env)
    assert isinstance(dist.init(), dist.SingleProcess)
