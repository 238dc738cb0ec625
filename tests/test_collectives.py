"""The collectives and the launch detection below `fit(distributed=...)`, on ranks as threads of this process."""

from __future__ import annotations

import queue

import numpy as np
import pytest
from threaded_ranks import TIMEOUT, run_ranks

from nnx import distributed as dist
from nnx.distributed import comm as comm_module
from nnx.distributed import launch
from nnx.distributed.comm import offsets
from nnx.distributed.ring import MIN_BLOCK_BYTES, Ring, even_counts

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


class _RingComm:
    """The mpi4py calls `Ring` makes (rank, size, Sendrecv), between threads, each message through a queue."""

    def __init__(self, rank: int, size: int, boxes: dict) -> None:
        self.rank, self.size, self.boxes = rank, size, boxes

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.size

    def Sendrecv(self, send, dest, recvbuf, source) -> None:
        self.boxes[(self.rank, dest)].put(np.array(send, copy=True))
        recvbuf[...] = self.boxes[(source, self.rank)].get(timeout=TIMEOUT)


def _ring_ranks(size: int, fn) -> list:
    boxes = {(a, b): queue.Queue() for a in range(size) for b in range(size)}
    return run_ranks(size, lambda comm: fn(Ring(_RingComm(comm.rank, size, boxes)), comm.rank))


@pytest.mark.parametrize("size", [2, 3])
def test_the_ring_all_reduce_leaves_the_same_bits_on_every_rank(size):
    """The ring's sum of float32 blocks is computed on one rank each and passed on, so every rank ends with the same
    bits (ranks whose all-reduced gradients differ in a last bit drift apart step after step), within rounding of
    the float64 sum; uneven counts leave each rank its own block of the sum."""
    n = 3 * MIN_BLOCK_BYTES // 4 + 5  # float32 blocks above the ring's threshold, cut unevenly
    rng = np.random.default_rng(size)
    data = [(rng.normal(size=n) * 10.0 ** rng.integers(-3, 3, size=n)).astype(np.float32) for _ in range(size)]
    exact = np.sum(np.stack(data).astype(np.float64), axis=0)

    def allreduce(ring, rank):
        buf = data[rank].copy()
        ring.allreduce(buf, even_counts(n, size))
        return buf

    got = _ring_ranks(size, allreduce)
    assert all(np.array_equal(got[0], g) for g in got[1:])
    np.testing.assert_allclose(got[0], exact, rtol=1e-5, atol=1e-3)

    counts = even_counts(n, size)
    counts[0] += 7  # uneven on purpose
    counts[-1] -= 7

    def reduce_scatter(ring, rank):
        out = np.empty(counts[rank], np.float32)
        ring.reduce_scatter(data[rank], out, counts)
        return out

    starts = offsets(counts)
    for r, part in enumerate(_ring_ranks(size, reduce_scatter)):
        np.testing.assert_allclose(part, exact[starts[r]:starts[r] + counts[r]], rtol=1e-5, atol=1e-3)


def test_a_sharded_checkpoint_resumes_on_another_number_of_ranks(tmp_path):
    """Adam's state saved by rank 0 of a sharded fit on 3 ranks (uneven slices) holds every rank's slice: resumed
    sharded on 2 ranks it gives one process's four epochs, with the same bits on every rank."""
    import nnx

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(37, 5)), rng.normal(size=(37, 1))
    kw = {"loss": "mse", "optimizer": "adam", "lr": 0.01, "batch_size": 10, "verbose": 0}

    def build():
        return nnx.Sequential(nnx.Dense(5, 7), nnx.Tanh(), nnx.Dense(7, 1), backend="numpy", dtype="float64",
                              seed=3)

    ref = build()
    ref.fit(X, y, epochs=4, **kw)
    path = tmp_path / "ck.npz"

    def first(comm):
        m = build()
        m.fit(X, y, epochs=2, distributed=dist.DataParallel(comm, shard_update=True), **kw)
        if comm.rank == 0:
            m.save(path)
        comm.barrier()

    def second(comm):
        m = nnx.load(path)
        m.fit(X, y, epochs=2, distributed=dist.DataParallel(comm, shard_update=True), **kw)
        return [np.array(p.value) for p in m.parameters()]

    run_ranks(3, first)
    got = run_ranks(2, second)
    assert all(np.array_equal(a, b) for a, b in zip(got[0], got[1], strict=True))
    for a, p in zip(got[0], ref.parameters(), strict=True):
        np.testing.assert_allclose(a, p.value, rtol=1e-12, atol=1e-12)
