"""Data-parallel training on the engines clusters run: MPI (mpi4py), NCCL (CuPy), torch.distributed.

    from nnx import distributed as dist
    comm = dist.init()          # the MPI world under mpiexec/srun, torch's group under torchrun, else size 1
    model.fit(X, y, batch_size=256, distributed=comm)   # batch_size is the global batch
    model.fit(X, y, batch_size=256, distributed=dist.DataParallel(comm, shard_update=True))  # ZeRO-1

See docs/distributed.md for launching and for what equals single-process training.
"""

from .average import AverageGradients, rank_rows
from .comm import Communicator, SingleProcess, TorchCommunicator
from .launch import init, launched_by_mpi
from .mpi import MPICommunicator
from .nccl import NCCLCommunicator
from .parallel import DataParallel, DataParallelFit
from .sharded import ShardedUpdate

__all__ = [
    "AverageGradients", "Communicator", "DataParallel", "DataParallelFit", "MPICommunicator",
    "NCCLCommunicator", "ShardedUpdate", "SingleProcess", "TorchCommunicator", "init", "launched_by_mpi",
    "rank_rows",
]
