"""Data-parallel training: the same script alone, under mpiexec, under srun or under torchrun.

Every process holds the same data and draws the same shuffle; `batch_size` is the global batch,
each rank computes the gradient of its slice, and the gradients are averaged across ranks before
the update. The result equals one process training on the same global batches (up to rounding),
so a run on 1, 2 or 8 ranks prints the same losses. Rank 0 prints, saves the checkpoint and the figure.

    python examples/16_data_parallel.py [--quick]                      # one process
    mpiexec -n 2 python -m mpi4py examples/16_data_parallel.py         # a laptop (pip install ".[mpi]" mpich)
    srun -n 8 python -m mpi4py examples/16_data_parallel.py            # a Slurm allocation
    torchrun --nproc_per_node=2 examples/16_data_parallel.py --backend torch   # torch.distributed (gloo / NCCL)
"""

import time

import numpy as np
from _common import parse_args, save_figure

import nnx
from nnx import distributed as dist
from nnx.callbacks import ModelCheckpoint
from nnx.plot import plot_history

args = parse_args(__doc__)
comm = dist.init()  # size 1 when started without a launcher
say = print if comm.rank == 0 else (lambda *a, **k: None)
say(f"{comm.size} process(es), engine {comm.engine}, backend {args.backend}")

# Ten classes of 64-dimensional points; every rank builds the same arrays (or maps the same file).
rng = np.random.default_rng(0)
n, f, classes = (4_000 if args.quick else 40_000), 64, 10
centers = rng.normal(size=(classes, f)) * 1.5
y = rng.integers(0, classes, size=n)
X = (centers[y] + rng.normal(size=(n, f))).astype(np.float32)
n_val = n // 10

model = nnx.Sequential(nnx.Dense(f, 128), nnx.ReLU(), nnx.Dropout(0.1), nnx.Dense(128, classes), nnx.Softmax(),
                       backend=args.backend, seed=0)
# The global batch is what the optimizer sees, whatever the number of ranks: keep batch_size and lr
# as tuned for one process and the run is the same. More ranks only mean a smaller slice per rank.
args.out.mkdir(parents=True, exist_ok=True)
t0 = time.perf_counter()
history = model.fit(X[:-n_val], y[:-n_val], loss="cross_entropy", optimizer="sgd", lr=0.05,
                    epochs=2 if args.quick else 10, batch_size=256, validation_data=(X[-n_val:], y[-n_val:]),
                    metrics=["accuracy"], distributed=comm,
                    callbacks=[ModelCheckpoint(args.out / "16_data_parallel.npz")])  # written by rank 0 only
say(f"{time.perf_counter() - t0:.1f} s; loss {history['loss'][-1]:.4f}, "
    f"val_accuracy {history['val_accuracy'][-1]:.3f} (the same on every rank)")

comm.barrier()  # rank 0 has written the checkpoint: every rank may read it
restored = nnx.load(args.out / "16_data_parallel.npz", backend=args.backend)
say(f"checkpoint after epoch {restored.epochs_trained}, readable on every rank")
if comm.rank == 0:
    save_figure(plot_history(history), args, "16_data_parallel_history.png")
