"""Data-parallel scaling on CPUs: 1 rank x 1 thread, 2 ranks x 1 thread (mpiexec), 1 rank x 2 threads.

    python benchmarks/bench_distributed.py [--epochs 3] [--backend jax]
    python benchmarks/bench_distributed.py --sharded [--repeat 3]    # ZeRO-1 against the all-reduce, batch 128 and 512
    mpiexec -n 2 python -m mpi4py benchmarks/bench_distributed.py --components   # its parts: rule, collectives
    python benchmarks/bench_distributed.py --engine nccl --backend cupy     # one GPU, NCCL world of one
    torchrun --nproc_per_node=1 benchmarks/bench_distributed.py --engine torch --backend torch:cuda

The medium shape (784-256-128-10, float32, SGD with momentum, global batch 128) on synthetic
data; each configuration is a fresh process (or MPI job) with its BLAS thread count fixed by
environment variables. Reports samples/s, the speed-up over 1 rank x 1 thread, and the time
per step spent in the gradient all-reduce (to its completion on the device) and in the finite check that
follows it (no collective of its own).

``--sharded`` compares, at global batch 128 and 512, 1 rank x 1 thread with 2 ranks x 1 thread
all-reducing the gradients and 2 ranks x 1 thread sharding the optimizer update
(``DataParallel(comm, shard_update=True)``: reduce-scatter, the rule on each rank's half, all-gather).
The three run in turn, `--repeat` times, and the best of each is reported (a shared machine's
noise only slows a run down), with where the sharded step's time goes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "nnx" / "__init__.py").exists() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

BIN = Path(sys.executable).parent
SHAPE = (784, 256, 128, 10)
BATCH = 128
STEPS = 100  # global batches per epoch


def worker(epochs: int, engine: str | None = None, backend: str = "numpy", batch: int = BATCH,
           global_steps: int = STEPS, shard: bool = False) -> None:
    import nnx
    from nnx import distributed as dist

    comm = dist.init(engine)
    rng = np.random.default_rng(0)
    n = BATCH * global_steps
    steps = n // batch
    X = rng.normal(size=(n, SHAPE[0])).astype(np.float32)
    y = rng.integers(0, SHAPE[-1], size=n)
    model = nnx.Sequential(nnx.Dense(SHAPE[0], SHAPE[1]), nnx.ReLU(), nnx.Dense(SHAPE[1], SHAPE[2]), nnx.ReLU(),
                           nnx.Dense(SHAPE[2], SHAPE[3]), nnx.Softmax(), backend=backend, seed=0)
    opt = nnx.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    timers = {"allreduce": 0.0, "check": 0.0, "calls": 0, "reduce_scatter": 0.0, "allgather": 0.0, "update": 0.0,
              "update_calls": 0, "reduce_scatter_calls": 0, "allgather_calls": 0}
    reduce, check, sync = comm.allreduce, nnx.training.TrainStep.gradients_finite, model.backend.synchronize
    scatter, gather, update = comm.reduce_scatter, comm.allgather, nnx.training.TrainStep.update

    def settle(out):
        # wait for what a timed part computed: its array, else the parameters' new values. NCCL and NCCL-backed
        # torch collectives return once launched. No device-wide wait: JAX's walks every live array (about
        # 0.7 ms on a CPU, twice a step), which timed the step 25% slower than it runs untimed
        for x in [out] if hasattr(out, "shape") else [p.value for p in model.parameters()]:
            sync(x)

    def timed_reduce(x, op="sum"):
        t = time.perf_counter()
        out = reduce(x, op)
        settle(out)
        timers["allreduce"] += time.perf_counter() - t
        timers["calls"] += 1
        return out

    def timed(name, fn):
        def call(*args):
            t = time.perf_counter()
            out = fn(*args)
            settle(out)
            timers[name] += time.perf_counter() - t
            timers[f"{name}_calls"] += 1
            return out
        return call

    def timed_check(self):
        t = time.perf_counter()
        out = check(self)
        timers["check"] += time.perf_counter() - t
        return out

    comm.allreduce = timed_reduce
    comm.reduce_scatter = timed("reduce_scatter", scatter)
    comm.allgather = timed("allgather", gather)
    nnx.training.TrainStep.gradients_finite = timed_check
    nnx.training.TrainStep.update = timed("update", update)  # the rule (on the slice) and the all-gather
    try:
        # a world of one still runs the engine's collective when it is forced (the GPU check's NCCL runs)
        how = dist.DataParallel(comm, shard_update=True) if shard else comm
        kw = {"distributed": how} if comm.size > 1 or engine else {}
        if engine and comm.size == 1:
            be = model.backend
            probe = comm.allreduce(be.asarray(np.ones(3, dtype=np.float32)))
            assert np.array_equal(be.to_host(probe), np.ones(3)), "all-reduce over a world of one changed the values"
        model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=1, batch_size=batch, **kw)  # warm-up
        comm.barrier()
        timers.update(allreduce=0.0, check=0.0, calls=0, reduce_scatter=0.0, allgather=0.0, update=0.0,
                      update_calls=0, reduce_scatter_calls=0, allgather_calls=0)
        start = time.perf_counter()
        model.fit(X, y, epochs=epochs, batch_size=batch, **kw)
        sync()
        comm.barrier()
        elapsed = time.perf_counter() - start
    finally:
        # the wrapper holds comm's own bound method: drop it, so no cycle keeps the communicator (and
        # NCCL's rendezvous store) alive, and close the communicator before the interpreter exits
        del comm.allreduce, comm.reduce_scatter, comm.allgather
        nnx.training.TrainStep.gradients_finite = check
        nnx.training.TrainStep.update = update
        comm.close()
    steps *= epochs
    if comm.rank == 0:
        print(json.dumps({"ranks": comm.size, "engine": comm.engine, "backend": backend,
                          "samples_per_s": epochs * n / elapsed, "step_ms": 1e3 * elapsed / steps,
                          "allreduce_ms": 1e3 * timers["allreduce"] / steps,
                          "check_ms": 1e3 * timers["check"] / steps, "shard": shard,
                          # a step back to back with the last runs its update inside one call
                          # (`TrainStep.run_back_to_back`),
                          # which this does not time: the share of steps whose update stage ran on its own
                          "update_share": timers["update_calls"] / steps,
                          **{f"{k}_ms": 1e3 * timers[k] / steps for k in ("reduce_scatter", "allgather", "update")}}))


def components(reps: int = 200) -> None:
    """Under mpiexec: the sharded step's parts alone, median and best of `reps` (ms), printed by rank 0.

    The optimizer's rule (SGD with momentum) over all parameters and over this rank's slice, and the
    collectives on the medium shape's flat float32 buffer: the all-reduce of the unsharded step, the
    reduce-scatter and all-gather of the sharded one, and the one-number all-reduce of its finite check.
    """
    import nnx
    from nnx import distributed as dist

    comm = dist.init("mpi")
    n = sum(a * b + b for a, b in zip(SHAPE[:-1], SHAPE[1:], strict=True))
    counts = [b - a for a, b in (dist.rank_rows(n, r, comm.size) for r in range(comm.size))]
    lo, hi = dist.rank_rows(n, comm.rank, comm.size)
    xp = nnx.get_backend("numpy").xp
    rng = np.random.default_rng(comm.rank)
    grad = rng.normal(size=n).astype(np.float32)
    value = rng.normal(size=n).astype(np.float32)
    opt = nnx.optim.SGD([nnx.layers.parameter.Parameter("flat", value)], lr=0.01, momentum=0.9)
    state = opt.init_state(xp, value)
    parts = {
        "rule over all parameters": lambda: opt.update(xp, value, grad, state, 2, 0.01),
        "rule over this rank's slice": lambda: opt.update(xp, value[lo:hi], grad[lo:hi],
                                                          {k: a[lo:hi] for k, a in state.items()}, 2, 0.01),
        "all-reduce (unsharded)": lambda: comm.allreduce(grad.copy()),
        "reduce-scatter": lambda: comm.reduce_scatter(grad, counts),
        "all-gather": lambda: comm.allgather(value, counts),
        "finite flag all-reduce": lambda: comm.allreduce(np.zeros(1)),
    }
    for name, fn in parts.items():
        times = []
        comm.barrier()
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        if comm.rank == 0:
            print(f"| {name} | {1e3 * float(np.median(times)):.3f} | {1e3 * min(times):.3f} |", flush=True)


def run(ranks: int, threads: int, epochs: int, batch: int = BATCH, shard: bool = False,
        backend: str = "numpy") -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, __file__, "--worker", "--epochs", str(epochs), "--batch", str(batch), "--backend", backend,
           *(["--shard"] if shard else [])]
    if ranks > 1:
        mpiexec = BIN / "mpiexec"
        cmd = [str(mpiexec if mpiexec.exists() else "mpiexec"), "-n", str(ranks), sys.executable, "-m", "mpi4py",
               *cmd[1:]]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, timeout=900)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["threads"] = threads
    result["batch"] = batch
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--engine", default=None, help="force an engine (nccl, torch) in a single run")
    parser.add_argument("--backend", default="numpy", help="the model's backend (jax; in a single run also cupy, "
                        "torch:cuda)")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"global batch (default {BATCH}, the medium shape's)")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"steps of batch {BATCH} per epoch (default {STEPS})")
    parser.add_argument("--shard", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sharded", action="store_true", help="compare the sharded update (ZeRO-1) at batch 128, 512")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the --sharded comparison (best is kept)")
    parser.add_argument("--components", action="store_true", help="(under mpiexec) the sharded step's parts alone")
    args = parser.parse_args()
    if args.components:
        components()
        return
    if args.worker or args.engine:
        worker(args.epochs, args.engine, args.backend, args.batch, args.steps, args.shard)
        return
    if args.sharded:
        sharded_comparison(args.epochs, args.repeat)
        return
    batch, backend = args.batch, args.backend
    rows = [run(1, 1, args.epochs, batch, backend=backend), run(2, 1, args.epochs, batch, backend=backend),
            run(1, 2, args.epochs, batch, backend=backend)]
    # what each of 2 ranks computes, alone and with no communication
    half = run(1, 1, args.epochs, batch // 2, backend=backend)
    base = rows[0]["samples_per_s"]
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    print(f"OPENBLAS_CORETYPE={coretype or 'unset'}; {backend}, medium {'-'.join(map(str, SHAPE))}, float32, "
          f"SGD momentum, global batch {batch}, {BATCH * STEPS // batch} steps/epoch, {args.epochs} timed epochs")
    print("| ranks x threads | samples/s | vs 1x1 | step (ms) | all-reduce per step (ms) | finite check (ms) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        reduce = f"{r['allreduce_ms']:.3f}" if r["ranks"] > 1 else "-"
        check = f"{r['check_ms']:.3f}" if r["ranks"] > 1 else "-"
        print(f"| {r['ranks']} x {r['threads']} | {r['samples_per_s']:,.0f} | {r['samples_per_s'] / base:.2f}x | "
              f"{r['step_ms']:.2f} | {reduce} | {check} |")
    ceiling = 2 * half["samples_per_s"] / base
    print(f"\nOne rank's share alone (1 x 1, batch {batch // 2}, no communication): {half['step_ms']:.2f} ms a step, "
          f"against {rows[0]['step_ms']:.2f} ms at batch {batch}. Two ranks can therefore reach at most "
          f"{ceiling:.2f}x of 1 x 1 on this machine, with a free all-reduce.")


def sharded_comparison(epochs: int, repeat: int) -> None:
    """1 x 1, 2 x 1 all-reduce and 2 x 1 sharded, in turn `repeat` times at batch 128 and 512; the best of each."""
    configs = {"1 x 1": (1, False), "2 x 1 all-reduce": (2, False), "2 x 1 sharded": (2, True)}
    print(f"medium {'-'.join(map(str, SHAPE))}, float32, SGD momentum, MPI, {epochs} timed epochs of "
          f"{BATCH * STEPS} rows, best of {repeat} alternated runs")
    print("| global batch | ranks x threads | samples/s (best) | all runs | vs 1 x 1 | step (ms) | all-reduce (ms) "
          "| reduce-scatter (ms) | all-gather (ms) | update incl. all-gather (ms) |")
    print("|---:|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for batch in (128, 512):
        runs: dict[str, list[dict]] = {name: [] for name in configs}
        for _ in range(repeat):
            for name, (ranks, shard) in configs.items():
                runs[name].append(run(ranks, 1, epochs, batch, shard))
        half = max((run(1, 1, epochs, batch // 2) for _ in range(repeat)), key=lambda r: r["samples_per_s"])
        best = {name: max(rs, key=lambda r: r["samples_per_s"]) for name, rs in runs.items()}
        base = best["1 x 1"]["samples_per_s"]
        for name, r in best.items():
            every = ", ".join(f"{x['samples_per_s']:,.0f}" for x in runs[name])
            cols = [f"{r[k]:.3f}" if r["ranks"] > 1 else "-"
                    for k in ("allreduce_ms", "reduce_scatter_ms", "allgather_ms")]
            cols.append(_update_column(r))
            print(f"| {batch} | {name} | {r['samples_per_s']:,.0f} | {every} | {r['samples_per_s'] / base:.2f}x | "
                  f"{r['step_ms']:.2f} | {' | '.join(cols)} |", flush=True)
        print(f"| {batch} | ceiling: 1 x 1 at batch {batch // 2}, no communication, twice its rate | "
              f"{2 * half['samples_per_s']:,.0f} | | {2 * half['samples_per_s'] / base:.2f}x | {half['step_ms']:.2f} "
              f"| - | - | - | {_update_column(half)} |", flush=True)


def _update_column(result: dict) -> str:
    """The update stage's time a step, or where it ran: most steps of one rank run theirs inside one call."""
    if result.get("update_share", 1.0) < 0.5:
        return "in the one-call step"
    return f"{result['update_ms']:.3f}"


if __name__ == "__main__":
    main()
