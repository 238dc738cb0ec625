"""Data-parallel scenarios run on every rank of one job; each rank writes what it saw to OUT/rank{r}.json.

    mpiexec -n 3 python -m mpi4py tests/distributed/scenarios.py OUT --backends numpy,torch --resume CKPT --fault
    torchrun --nproc_per_node=2 tests/distributed/scenarios.py OUT --backends torch,numpy --engine torch
    mpiexec -n 2 python -m mpi4py tests/distributed/scenarios.py OUT --backends "" --resume-sharded CKPT

Every scenario trains the same model twice: with ``distributed=comm`` on all ranks, and alone in
this process on the same global batches (the reference). The pytest side (tests/test_distributed.py)
compares the two and checks that every rank reports the same. ``--save CKPT`` leaves a checkpoint
written by rank 0 after two epochs; ``--resume CKPT`` continues it on this job's ranks and compares
with four uninterrupted single-process epochs. ``--fault`` ends the job: rank 1 raises mid-training.

Every scenario also runs with the optimizer update sharded (``DataParallel(comm, shard_update=True)``)
and is compared with the same run unsharded and with one process. The model has 163 parameters, so
the slices are uneven on 2 and 3 ranks. ``--save-sharded CKPT`` leaves a checkpoint of a sharded fit
(two epochs); ``--resume-sharded CKPT`` continues it sharded on this job's ranks (one process: plain).
Under MPI every job first checks the collectives themselves against sums worked out on one rank.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

import nnx
from nnx import distributed as dist
from nnx.backends import backend_status
from nnx.callbacks import Callback, EarlyStopping, ModelCheckpoint
from nnx.distributed import sharded as sharded_module
from nnx.distributed.parallel import AverageGradients
from nnx.distributed.ring import MIN_BLOCK_BYTES
from nnx.training import replay


def data(n: int = 101, features: int = 6, classes: int = 3, seed: int = 0):
    """Small classification data; 101 rows in batches of 20 leave a last batch of 1 (empty slices)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1).astype(np.int64)
    return X, y % classes


def build(backend: str, kind: str) -> nnx.Sequential:
    layers = {
        "mlp": [nnx.Dense(6, 16), nnx.ReLU(), nnx.Dense(16, 3), nnx.Softmax()],
        "dropout": [nnx.Dense(6, 16), nnx.ReLU(), nnx.Dropout(0.3), nnx.Dense(16, 3), nnx.Softmax()],
        "batchnorm": [nnx.Dense(6, 16), nnx.BatchNorm(16), nnx.ReLU(), nnx.Dense(16, 3), nnx.Softmax()],
    }[kind]
    reg = "l2" if kind == "mlp" else None
    return nnx.Sequential(*layers, backend=backend, dtype="float64", seed=7, regularizer=reg)


# name -> (model kind, fit arguments); regularized "mlp" runs the portable step, "dropout" the NumPy fast path
SCENARIOS = {
    "sgd_momentum_dropout_clipnorm": ("dropout", {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
                                                  "clip_norm": 0.5, "batch_size": 20, "epochs": 3}),
    "adam_l2_clipvalue_accumulate": ("mlp", {"optimizer": "adam", "lr": 0.01, "clip_value": 0.05,
                                             "accumulate": 2, "batch_size": 20, "epochs": 3}),
}
# BatchNorm normalises each rank's slice with that slice's statistics (as torch DDP without SyncBatchNorm):
# N ranks on global batches of 10*N rows equal one process on batches of 10 accumulated N at a time
# (SGD: Adam would turn the rounding noise in the gradient of the bias before BatchNorm, which is 0
# in exact arithmetic, into steps of size lr)
BATCHNORM = {"optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "epochs": 3, "n": 120}


# where Dense kernels write every gradient into the buffer the sharded update offers: the backends with Dense
# kernels, and a scenario without L2 (its term makes the weight's gradient a new array) or accumulation
KERNEL_BACKENDS = ("numpy", "torch")
OFFERED_SCENARIO = "sgd_momentum_dropout_clipnorm"

# the checkpoint scenario of the sharded update: Adam (two state arrays per parameter) with accumulation
SHARDED_CKPT = dict(SCENARIOS["adam_l2_clipvalue_accumulate"][1], epochs=4)


def run_fit(backend: str, kind: str, args: dict, comm=None, **extra):
    model = build(backend, kind)
    kw = dict(args)
    momentum = kw.pop("momentum", None)
    n = kw.pop("n", 101)
    if momentum is not None:
        kw["optimizer"] = nnx.optim.SGD(model.parameters(), lr=kw.pop("lr"), momentum=momentum)
    X, y = data(n)
    Xv, yv = data(40, seed=1)
    hist = model.fit(X, y, loss="cross_entropy", metrics=["accuracy"], validation_data=(Xv, yv),
                     distributed=comm, **kw, **extra)
    return model, hist


def shared_references(comm, fits: dict) -> dict:
    """The one-process reference fits, each run by one rank (rank r the r-th, the (r + size)-th, ...) and shared:
    every rank would work out the same numbers, and the job's ranks share the machine's cores. Each comes back
    as (its `weights`, its History)."""
    mine = {name: (weights(model), hist) for i, (name, fit) in enumerate(fits.items()) if i % comm.size == comm.rank
            for model, hist in [fit()]}
    shared: dict = {}
    for part in comm.allgather_object(mine):
        shared.update(part)
    return shared


def weights(model) -> dict[str, np.ndarray]:
    return {k: np.asarray(model.backend.to_host(v), dtype=np.float64) for k, v in model.state_dict().items()}


def opt_state(model) -> dict[str, np.ndarray]:
    """The optimizer's state arrays on the host, by ``"<parameter index>/<name>"``."""
    sd = model.optimizer.state_dict()
    return {f"{i}/{k}": np.asarray(model.backend.to_host(v), dtype=np.float64)
            for i, entry in sd["state"].items() for k, v in entry.items()}


def max_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    if set(a) != set(b):
        return float("inf")
    return max((float(np.max(np.abs(a[k] - b[k]))) for k in a if a[k].size), default=0.0)


def sharded(comm):
    return dist.DataParallel(comm, shard_update=True)


def digest(w: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(w):
        h.update(k.encode())
        h.update(np.ascontiguousarray(w[k]).tobytes())
    return h.hexdigest()


def compare(model, hist, ref, ref_hist, trained_only: bool = False) -> dict:
    """How far a distributed fit is from its reference (a model, or its `weights`); `trained_only` leaves out
    buffers and validation."""
    a, b = weights(model), ref if isinstance(ref, dict) else weights(ref)
    names = [k for k in a if not (trained_only and "running" in k)]
    param_diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in names)
    keys = sorted(k for k in set(hist.history) | set(ref_hist.history) if not (trained_only and "val_" in k))
    hist_diff = 0.0
    for k in keys:
        u, v = np.asarray(hist.history.get(k, [])), np.asarray(ref_hist.history.get(k, []))
        if u.shape != v.shape:
            hist_diff = float("inf")
            break
        if u.size:
            hist_diff = max(hist_diff, float(np.max(np.abs(u - v))))
    return {"param_diff": param_diff, "hist_diff": hist_diff, "digest": digest(a),
            "history": {k: list(map(float, v)) for k, v in hist.history.items()}, "epochs": len(hist.epoch),
            "reason": hist.execution_reason}


class HostRows:
    """A host array-like that is not a NumPy array (as an h5py dataset): `fit` reads it batch by batch."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.shape, self.dtype = a, a.shape, a.dtype

    def __len__(self) -> int:
        return len(self.a)

    def __getitem__(self, rows):
        return self.a[rows]


def fit_from(backend: str, source: str, comm=None):
    """The "dropout" model fed by one kind of batch source; each rank reads only its rows where it can."""
    import nnx.training.data as data_module

    model = build(backend, "dropout")
    X, y = data()
    kw = dict(loss="cross_entropy", optimizer=nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), epochs=2,
              distributed=comm)
    if source == "iterable":  # batches arrive whole on every rank and are cut there
        return model, model.fit([(X[i:i + 20], y[i:i + 20]) for i in range(0, len(X), 20)], **kw)
    if source == "host":
        return model, model.fit(HostRows(X), HostRows(y), batch_size=20, **kw)
    limit, data_module.COPY_LIMIT = data_module.COPY_LIMIT, 0  # "gathered": each batch gathered from X
    try:
        return model, model.fit(X, y, batch_size=20, **kw)
    finally:
        data_module.COPY_LIMIT = limit


SOURCES = ("gathered", "host", "iterable")


def weighted_fit(backend: str, comm=None):
    """The "mlp" model (L2) under ``mean_with_sample_weight``, the first rows weighing far less than the rest and
    one batch slice weighing 0, with accumulation; the last batch of 1 row leaves the other ranks a placeholder."""
    model = build(backend, "mlp")
    X, y = data()
    w = np.random.default_rng(5).uniform(0.0, 3.0, size=len(X))
    w[:40] *= 0.05
    w[60:70] = 0.0
    loss = nnx.losses.CrossEntropy(from_logits=False, reduction="mean_with_sample_weight")  # the model ends in Softmax
    return model, model.fit(X, y, loss=loss, sample_weight=w, optimizer="adam", lr=0.01, batch_size=20, epochs=2,
                            accumulate=2, shuffle=False, metrics=["accuracy"], distributed=comm)


class PoisonOn(Callback):
    """Makes one rank's weights NaN before one step: only that rank's step is not finite."""

    def __init__(self, rank: int, epoch: int, batch: int, me: int) -> None:
        self.rank, self.at, self.me = rank, (epoch, batch), me

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at and self.me == self.rank:
            p = self.model.parameters()[0]
            p.value = p.value * float("nan")


class KeepGrads(Callback):
    """Every step's gradients on this rank, as the model holds them when the batch ends (host copies)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, np.ndarray]] = []

    def on_batch_end(self, batch, logs=None):
        be = self.model.backend
        self.steps.append({f"{i}": np.array(be.to_host(p.grad), dtype=np.float64, copy=True)
                           for i, p in enumerate(self.model.parameters()) if p.grad is not None})


def sharded_with_offers(backend: str, kind: str, args: dict, comm) -> dict:
    """The sharded fit with the gradient buffer offered at any size (`replay.MIN_ELEMENTS` 0: the replay and the
    Dense kernels' writing into the offered views run too), against the same fit as it runs by default (163
    parameters: neither)."""
    runs = {}
    taken = []
    real_taken = sharded_module.taken_offer
    sharded_module.taken_offer = lambda offered, grads: taken.append(real_taken(offered, grads)) or taken[-1]
    try:
        for label, threshold in (("default", replay.MIN_ELEMENTS), ("offered", 0)):
            saved, replay.MIN_ELEMENTS = replay.MIN_ELEMENTS, threshold
            keep = KeepGrads()
            try:
                model, _ = run_fit(backend, kind, args, sharded(comm), callbacks=[keep])
            finally:
                replay.MIN_ELEMENTS = saved
            runs[label] = (weights(model), opt_state(model), keep.steps)
    finally:
        sharded_module.taken_offer = real_taken
    (w_a, s_a, g_a), (w_b, s_b, g_b) = runs["default"], runs["offered"]
    return {"param_diff": max_diff(w_b, w_a), "state_diff": max_diff(s_b, s_a),
            "grad_diff": max((max_diff(a, b) for a, b in zip(g_a, g_b, strict=True)), default=0.0),
            "steps": [len(g_a), len(g_b)], "taken": sum(t is not None for t in taken)}


class FailOn(Callback):
    """Raises on one rank at the end of one epoch (the fault scenario)."""

    def __init__(self, rank: int, epoch: int, stamp: Path, me: int) -> None:
        self.rank, self.at, self.stamp, self.me = rank, epoch, stamp, me

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at and self.me == self.rank:
            self.stamp.write_text(str(time.time()))
            raise RuntimeError(f"injected failure on rank {self.rank} at epoch {epoch}")


def rank_values(rank: int, n: int, dtype: str, whole: bool = True) -> np.ndarray:
    """Rank `rank`'s buffer: whole numbers, so that a sum in any order is exact, or fractions."""
    rng = np.random.default_rng(1000 + rank)
    values = rng.integers(-1000, 1000, n).astype(dtype) if whole else rng.standard_normal(n).astype(dtype)
    values[rank % n] = np.nan if not whole else values[rank % n]
    return values


def collectives(comm, backends: list[str]) -> dict:
    """allreduce, reduce_scatter and allgather against the sums worked out here, below and above the size
    from which MPI's ranks exchange blocks around a ring, with uneven blocks; the failures, and a digest
    of an allreduce of fractions (with a NaN) that every rank must share bit for bit."""
    failures = []
    size, rank = comm.size, comm.rank
    for dtype in ("float32", "float64"):
        ring = MIN_BLOCK_BYTES // np.dtype(dtype).itemsize  # elements of the smallest block the ring takes
        for n in (7 * size + 3, ring * size + 2 * size - 1):
            mine = rank_values(rank, n, dtype)
            every = [rank_values(r, n, dtype) for r in range(size)]
            counts = [n // size + (1 if r < n % size else 0) for r in range(size)]
            counts[0], counts[-1] = counts[0] + 1, counts[-1] - 1  # uneven the other way too
            start = sum(counts[:rank])
            for backend in ["numpy", *[b for b in backends if b == "torch"]]:
                be = nnx.get_backend(backend)
                label = f"{backend}/{dtype}/{n}"
                got = be.to_host(comm.allreduce(be.asarray(mine.copy()), "sum"))
                if not np.array_equal(got, np.sum(every, axis=0)):
                    failures.append(f"{label} allreduce sum")
                got = be.to_host(comm.allreduce(be.asarray(mine.copy()), "max"))
                if not np.array_equal(got, np.max(every, axis=0)):
                    failures.append(f"{label} allreduce max")
                x = be.asarray(mine.copy())
                part = be.to_host(comm.reduce_scatter(x, counts))
                if not np.array_equal(part, np.sum(every, axis=0)[start:start + counts[rank]]):
                    failures.append(f"{label} reduce_scatter")
                if not np.array_equal(be.to_host(x), mine):
                    failures.append(f"{label} reduce_scatter changed its input")
                holes = np.full(n, -1.0, dtype=dtype)
                holes[start:start + counts[rank]] = mine[start:start + counts[rank]]
                got = be.to_host(comm.allgather(be.asarray(holes), counts))
                if not np.array_equal(got, np.concatenate([every[r][sum(counts[:r]):sum(counts[:r + 1])]
                                                           for r in range(size)])):
                    failures.append(f"{label} allgather")
    fractions = comm.allreduce(rank_values(rank, 3 * MIN_BLOCK_BYTES, "float64", whole=False), "sum")
    return {"failures": failures, "digest": hashlib.sha256(fractions.tobytes()).hexdigest()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--backends", default="numpy")
    parser.add_argument("--engine", default=None)
    parser.add_argument("--controls", default="numpy", help="backends that also run the negative control "
                        "and early stopping")
    parser.add_argument("--save", type=Path)
    parser.add_argument("--resume", type=Path)
    parser.add_argument("--fault", action="store_true")
    parser.add_argument("--save-sharded", type=Path)
    parser.add_argument("--resume-sharded", type=Path)
    opts = parser.parse_args()
    comm = dist.init(opts.engine)
    results: dict = {"rank": comm.rank, "size": comm.size, "engine": comm.engine, "scenarios": {}}
    if comm.engine == "mpi":
        results["collectives"] = collectives(comm, opts.backends.split(","))
    for backend in filter(None, opts.backends.split(",")):
        # only the backends asked for: available_backends() would import torch and JAX on every rank of every job
        if not backend_status(backend)[0]:
            results["scenarios"][f"{backend}/skipped"] = {"skipped": True}
            continue
        bn_ref = dict(BATCHNORM, batch_size=10, accumulate=comm.size)
        refs = shared_references(comm, {
            **{name: functools.partial(run_fit, backend, kind, args) for name, (kind, args) in SCENARIOS.items()},
            "batchnorm": functools.partial(run_fit, backend, "batchnorm", bn_ref)})
        for name, (kind, args) in SCENARIOS.items():
            model, hist = run_fit(backend, kind, args, comm)
            ref, ref_hist = refs[name]
            results["scenarios"][f"{backend}/{name}"] = compare(model, hist, ref, ref_hist)
            # the same fit with the update sharded: against one process, and against the all-reduce run
            shard, shard_hist = run_fit(backend, kind, args, sharded(comm))
            got = compare(shard, shard_hist, ref, ref_hist)
            got["vs_unsharded"] = compare(shard, shard_hist, model, hist)["param_diff"]
            got["state_vs_unsharded"] = max_diff(opt_state(shard), opt_state(model))
            got["execution"] = shard_hist.execution
            results["scenarios"][f"{backend}/sharded_{name}"] = got
            if backend in KERNEL_BACKENDS and name == OFFERED_SCENARIO:
                results["scenarios"][f"{backend}/sharded_offered"] = sharded_with_offers(backend, kind, args, comm)
        model, hist = run_fit(backend, "batchnorm", dict(BATCHNORM, batch_size=10 * comm.size), comm)
        ref, ref_hist = refs["batchnorm"]
        results["scenarios"][f"{backend}/sgd_batchnorm_per_slice"] = compare(model, hist, ref, ref_hist, True)
        if backend not in opts.controls.split(","):
            continue
        # the negative control: the same fit with the all-reduce removed must not match
        original = AverageGradients.apply
        AverageGradients.apply = lambda self, params, rows: (self.reset(), True)[1]
        try:
            model, hist = run_fit(backend, *SCENARIOS["sgd_momentum_dropout_clipnorm"], comm)
        finally:
            AverageGradients.apply = original
        ref, ref_hist = refs["sgd_momentum_dropout_clipnorm"]
        results["scenarios"][f"{backend}/negative_control"] = compare(model, hist, ref, ref_hist)
        # early stopping: identical logs make every rank stop at the same epoch as one process would
        stop = dict(SCENARIOS["adam_l2_clipvalue_accumulate"][1], epochs=30)
        model, hist = run_fit(backend, "mlp", stop, comm,
                              callbacks=[EarlyStopping(monitor="val_loss", patience=1, min_delta=0.05)])
        ref, ref_hist = run_fit(backend, "mlp", stop,
                                callbacks=[EarlyStopping(monitor="val_loss", patience=1, min_delta=0.05)])
        results["scenarios"][f"{backend}/early_stopping"] = compare(model, hist, ref, ref_hist)
        # mean_with_sample_weight with weights that fall unevenly on the ranks: each rank's gradient is weighed by its
        # slice's sum of weights, all-reduced and sharded
        ref, ref_hist = weighted_fit(backend)
        for label, how in (("unsharded", comm), ("sharded", sharded(comm))):
            model, hist = weighted_fit(backend, how)
            results["scenarios"][f"{backend}/mean_with_sample_weight_{label}"] = compare(model, hist, ref, ref_hist)
        for source in SOURCES:
            model, hist = fit_from(backend, source, comm)
            ref, ref_hist = fit_from(backend, source)
            results["scenarios"][f"{backend}/source_{source}"] = compare(model, hist, ref, ref_hist)
        # a step that is not finite on one rank only: every rank refuses it and raises, at the same batch
        try:
            run_fit(backend, "dropout", SCENARIOS["sgd_momentum_dropout_clipnorm"][1], comm,
                    callbacks=[PoisonOn(comm.size - 1, 1, 2, comm.rank)])
            results["scenarios"][f"{backend}/one_rank_not_finite"] = {"raised": None}
        except FloatingPointError as exc:
            results["scenarios"][f"{backend}/one_rank_not_finite"] = {"raised": str(exc)}
        # the same, sharded: every rank refuses together and the optimizer holds the whole state of the
        # last finite step, as unsharded
        states = {}
        for label, how in (("unsharded", comm), ("sharded", sharded(comm))):
            model = build(backend, "dropout")
            try:
                X, y = data()
                model.fit(X, y, loss="cross_entropy", optimizer="adam", lr=0.01, batch_size=20, epochs=3,
                          clip_norm=0.5, distributed=how, callbacks=[PoisonOn(comm.size - 1, 1, 2, comm.rank)])
                raised = None
            except FloatingPointError as exc:
                raised = str(exc)
            states[label] = (raised, opt_state(model), model.optimizer.state_dict()["step"])
        results["scenarios"][f"{backend}/sharded_one_rank_not_finite"] = {
            "raised": states["sharded"][0], "state_diff": max_diff(states["sharded"][1], states["unsharded"][1]),
            "steps": [states["sharded"][2], states["unsharded"][2]],
            "digest": digest(states["sharded"][1])}
    if opts.save is not None or opts.resume is not None:
        args = dict(SCENARIOS["sgd_momentum_dropout_clipnorm"][1], epochs=4)
        ref, ref_hist = run_fit("numpy", "dropout", args)
        if opts.save is not None:  # two epochs here, checkpointed by rank 0 only
            ckpt_args = dict(args, epochs=2)
            model, hist = run_fit("numpy", "dropout", ckpt_args, comm, callbacks=[ModelCheckpoint(opts.save)])
            comm.barrier()
            results["saved"] = {"exists": opts.save.exists(), "epochs": len(hist.epoch)}
        if opts.resume is not None:  # two more epochs on this job's ranks
            X, y = data()
            Xv, yv = data(40, seed=1)
            model = nnx.load(opts.resume)
            hist = model.fit(X, y, epochs=2, batch_size=args["batch_size"], clip_norm=args["clip_norm"],
                             metrics=["accuracy"], validation_data=(Xv, yv), distributed=comm)
            tail = type(ref_hist)()
            for e, k in enumerate(ref_hist.epoch[2:]):
                tail.append(k, {name: v[2 + e] for name, v in ref_hist.history.items()})
            results["resumed"] = compare(model, hist, ref, tail)
    if opts.save_sharded is not None:  # two epochs sharded on this job's ranks, checkpointed by rank 0
        X, y = data()
        model, hist = run_fit("numpy", "mlp", dict(SHARDED_CKPT, epochs=2), sharded(comm),
                              callbacks=[ModelCheckpoint(opts.save_sharded)])
        comm.barrier()
        ref, _ = run_fit("numpy", "mlp", dict(SHARDED_CKPT, epochs=2))
        # the file holds every rank's slice of the state: the one-process state after the same two epochs
        results["saved_sharded"] = {"state_diff": max_diff(opt_state(nnx.load(opts.save_sharded)), opt_state(ref)),
                                    "execution": hist.execution}
    if opts.resume_sharded is not None:  # two more epochs, sharded on this job's ranks (or one process)
        X, y = data()
        Xv, yv = data(40, seed=1)
        ref, ref_hist = run_fit("numpy", "mlp", SHARDED_CKPT)
        model = nnx.load(opts.resume_sharded)
        args = SHARDED_CKPT
        hist = model.fit(X, y, epochs=2, batch_size=args["batch_size"], clip_value=args["clip_value"],
                         accumulate=args["accumulate"], metrics=["accuracy"], validation_data=(Xv, yv),
                         distributed=sharded(comm))
        tail = type(ref_hist)()
        for e, k in enumerate(ref_hist.epoch[2:]):
            tail.append(k, {name: v[2 + e] for name, v in ref_hist.history.items()})
        results["resumed_sharded"] = compare(model, hist, ref, tail)
        results["resumed_sharded"]["state_diff"] = max_diff(opt_state(model), opt_state(ref))
    out = opts.out / f"rank{comm.rank}.json"
    out.write_text(json.dumps(results))
    comm.barrier()
    if opts.fault:
        ckpt = opts.out / "fault.npz"
        run_fit("numpy", "mlp", dict(SCENARIOS["adam_l2_clipvalue_accumulate"][1], epochs=50), comm,
                callbacks=[ModelCheckpoint(ckpt), FailOn(1, 2, opts.out / "fault_time", comm.rank)])
    sys.stdout.flush()


if __name__ == "__main__":
    main()
