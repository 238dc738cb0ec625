"""Session 21 review of data-parallel `fit`, as a PyTorch DDP / Horovod user meets it, on ranks that are threads of
this process (tests/threaded_ranks.py): every elementwise optimizer (amsgrad Adam, Lion, ...) sharded and not, on 2
and 3 ranks with uneven slices and uneven last batches, with sample and class weights, accumulation, clipping and
regularizers, equal to one process; and what each rank must share to train one model."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from launchers import needs_mpi, run_job, tool
from threaded_ranks import run_ranks

import nnx
from nnx import distributed as dist


def _data(n: int, seed: int = 0, classes: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    if classes == 1:
        return X, (X[:, 0] + 0.3 * X[:, 1] > 0).astype(np.float64)
    return X, np.abs(X[:, 0] * 2).astype(np.int64) % classes


def _model(classes: int = 1, dropout: bool = False, backend: str = "numpy") -> nnx.Sequential:
    layers = [nnx.Dense(4, 6, regularizer=nnx.regularizers.L2(1e-2)), nnx.Tanh()]
    if dropout:
        layers.append(nnx.Dropout(0.3))
    layers.append(nnx.Dense(6, classes))
    if classes == 1:
        layers.append(nnx.Sigmoid())
    return nnx.Sequential(*layers, dtype="float64", seed=5, backend=backend, regularizer=nnx.regularizers.L1(1e-3))


OPTIMIZERS = {
    "sgd nesterov": lambda p: nnx.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam amsgrad": lambda p: nnx.optim.Adam(p, lr=0.01, amsgrad=True, weight_decay=1e-3),
    "adamw amsgrad": lambda p: nnx.optim.AdamW(p, lr=0.01, amsgrad=True),
    "rmsprop centered": lambda p: nnx.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda p: nnx.optim.Adagrad(p, lr=0.05, lr_decay=0.01),
    "lion": lambda p: nnx.optim.Lion(p, lr=0.01, weight_decay=0.1),
    "momentum": lambda p: nnx.optim.Momentum(p, lr=0.05),
}


def _host(tree):
    """A state dict, History or optimizer state dict as {path: float64 array} (other leaves as they are)."""
    out = {}

    def walk(path, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{path}/{k}", x)
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(f"{path}/{i}", x)
        else:
            try:
                out[path] = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError):
                out[path] = v
    walk("", tree)
    return out


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    worst = 0.0
    for k, v in a.items():
        if isinstance(v, np.ndarray):
            w = np.asarray(b[k], dtype=np.float64)
            assert v.shape == w.shape, k
            if v.size:
                assert np.array_equal(np.isnan(v), np.isnan(w)), k
                worst = max(worst, float(np.max(np.abs(np.where(np.isnan(v), 0.0, v - w)))))
        else:
            assert v == b[k], k
    return worst


def _equal_to_one_process(size: int, fit, tol: float = 1e-12) -> None:
    """`fit(comm)` (comm None: one process) returns (weights, History, optimizer state); every rank's equal one's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        one = [_host(part) for part in fit(None)]
        many = run_ranks(size, fit)
    for rank, got in enumerate(many):
        for what, ref, part in zip(("weights", "History", "optimizer state"), one, got, strict=True):
            assert _max_diff(ref, _host(part)) <= tol, (rank, what)


def _fit_with(optimizer: str, classes: int = 1, dropout: bool = False, n: int = 23, batch_size: int | None = 7,
              epochs: int = 3, shard: bool = False, backend: str = "numpy", **kw):
    X, y = _data(n, classes=classes)

    def fit(comm):
        model = _model(classes, dropout, backend)
        opt = OPTIMIZERS[optimizer](model.parameters())
        d = None if comm is None else dist.DataParallel(comm, shard_update=shard)
        hist = model.fit(X, y, optimizer=opt, epochs=epochs, batch_size=batch_size, distributed=d, **kw)
        return ({k: model.backend.to_host(v) for k, v in model.state_dict().items()}, hist.history,
                model.optimizer.state_dict())
    return fit


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("shard", [False, True], ids=["all-reduce", "sharded"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_every_elementwise_optimizer_with_clip_norm_on_uneven_slices_equals_one_process(optimizer, shard, size):
    """23 rows in global batches of 7 (slices 4/3 and 3/2/2, a last batch of 2 that leaves a third rank a
    placeholder row), L1 and L2, clip_norm (the norm of the whole gradient): weights, optimizer state and
    History equal to 1e-12, sharded or not."""
    _equal_to_one_process(size, _fit_with(optimizer, shard=shard, clip_norm=0.3, metrics=["accuracy"]))


WEIGHTED = {
    "sample_weight": dict(sample_weight=np.linspace(0.1, 2, 23)),
    "class_weight": dict(class_weight={0: 0.3, 1: 2.0}),
    "mean_with_sample_weight, accumulate, clip_norm": dict(
        sample_weight=np.linspace(0.0, 2, 23), accumulate=2, clip_norm=0.1,
        loss=nnx.losses.BinaryCrossEntropy(reduction="mean_with_sample_weight")),
    "dropout, accumulate, clip_norm": dict(dropout=True, accumulate=2, clip_norm=0.5),
    "clip_value, accumulate 3": dict(clip_value=0.05, accumulate=3),
    "validation_split, shuffle": dict(validation_split=0.25, metrics=["accuracy"]),
    "validation_data": dict(validation_data=_data(9, seed=4), metrics=["accuracy"]),
    "no shuffle": dict(shuffle=False),
    "full batch": dict(batch_size=None, clip_norm=0.01),
    "fewer rows than ranks": dict(n=2),
    "cross-entropy with class weights": dict(classes=4, loss="cross_entropy", metrics=["accuracy"],
                                             class_weight={0: 1.0, 1: 2.0, 2: 0.5, 3: 1.0}),
}


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("shard", [False, True], ids=["all-reduce", "sharded"])
@pytest.mark.parametrize("case", list(WEIGHTED))
def test_weights_accumulation_clipping_and_validation_on_ranks_equal_one_process(case, shard, size):
    kw = dict(WEIGHTED[case])
    optimizer = "lion" if "clip_value" in case else "adam amsgrad"
    _equal_to_one_process(size, _fit_with(optimizer, shard=shard, **kw), tol=1e-11)


def test_iterable_batches_with_weights_and_a_last_batch_smaller_than_the_world_equal_one_process():
    X, y = _data(16)
    w = np.linspace(0, 1, 16)
    batches = [(X[:7], y[:7], w[:7]), (X[7:14], y[7:14], w[7:14]), (X[14:], y[14:], w[14:])]
    loss = nnx.losses.BinaryCrossEntropy(reduction="mean_with_sample_weight")

    def fit(comm):
        model = _model(dropout=True)
        d = None if comm is None else dist.DataParallel(comm, shard_update=True)
        hist = model.fit(batches, optimizer=OPTIMIZERS["lion"](model.parameters()), epochs=3, loss=loss,
                         distributed=d)
        return model.state_dict(), hist.history, model.optimizer.state_dict()
    _equal_to_one_process(3, fit)


@pytest.mark.parametrize("backend", ["torch", "array_api_strict"])
def test_a_frozen_layer_and_a_switch_between_sharded_and_all_reduce_fits_equal_one_process(backend):
    """An optimizer given a subset of the parameters (a frozen first layer), a sharded fit then an all-reduce one
    then a sharded one with another batch size: the flat layout follows each fit."""
    if backend not in nnx.available_backends():
        pytest.skip(f"{backend} not installed")
    X, y = _data(23)

    def fit(comm):
        model = _model(dropout=True, backend=backend)
        d = (lambda s: None) if comm is None else (lambda s: dist.DataParallel(comm, shard_update=s))
        model.fit(X, y, optimizer=nnx.optim.Adam(model.parameters()[2:], lr=0.02, amsgrad=True), epochs=2,
                  batch_size=7, distributed=d(True))
        model.fit(X, y, epochs=1, batch_size=7, distributed=d(False))
        hist = model.fit(X, y, epochs=2, batch_size=5, distributed=d(True))
        return ({k: model.backend.to_host(v) for k, v in model.state_dict().items()}, hist.history,
                {k: v for k, v in model.optimizer.state_dict().items() if k != "state"})
    _equal_to_one_process(3, fit)


@pytest.mark.parametrize("shard", [False, True], ids=["all-reduce", "sharded"])
def test_ranks_whose_optimizers_update_other_parameters_raise_the_same_error_everywhere(shard):
    """Rank 0 froze the first layer (its optimizer holds the last layer's parameters), rank 1 did not: the
    all-reduce trained every rank on the same averaged gradients but rank 1 updated parameters rank 0 kept, and the
    ranks' weights drifted apart (0.15 after two epochs) without a word; sharded, the ranks cut flat buffers of
    other sizes and failed on a broadcast of (7,) against (37,)."""
    X, y = _data(24)

    def rank(comm):
        model = nnx.Sequential(nnx.Dense(4, 6), nnx.Tanh(), nnx.Dense(6, 1), nnx.Sigmoid(), dtype="float64", seed=5)
        params = model.parameters()[2:] if comm.rank == 0 else model.parameters()
        try:
            model.fit(X, y, optimizer=nnx.optim.SGD(params, lr=0.1), epochs=2, batch_size=8,
                      distributed=dist.DataParallel(comm, shard_update=shard))
        except ValueError as exc:
            return str(exc)
        return "trained"

    got = run_ranks(2, rank)
    assert got[0] == got[1] and "parameters the optimizer updates" in got[0], got
    assert "2.weight" in got[0] and "0.weight" in got[0], got[0]


FAILING_RANK = """
import numpy as np
import nnx
from nnx import distributed as dist

comm = dist.init()
X = np.random.default_rng(0).normal(size=(20, 3))
y = (X[:, 0] > 0).astype(np.float64)


class FailsOnRank1(nnx.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if comm.rank == 1:
            raise RuntimeError("rank 1 failed on purpose")


model = nnx.Sequential(nnx.Dense(3, 1), nnx.Sigmoid(), dtype="float64", seed=0)
model.fit(X, y, epochs=3, batch_size=5, distributed=comm, callbacks=[FailsOnRank1()])
print("rank", comm.rank, "finished")
"""


@pytest.mark.slow  # starts an MPI job
@needs_mpi
def test_a_rank_that_raises_under_plain_python_ends_the_mpi_job(tmp_path):
    """`mpiexec -n 2 python script.py` (not ``-m mpi4py``): rank 1's exception ended rank 1, and rank 0 waited in
    its next collective forever (the job ran until a 30 s time limit killed it). The MPI communicator now aborts
    the job when an exception ends a rank's script, after its traceback."""
    script = tmp_path / "fails.py"
    script.write_text(FAILING_RANK)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
    try:
        proc = run_job([tool("mpiexec"), "-n", "2", sys.executable, str(script)], capture_output=True, text=True,
                       timeout=90, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("the other rank waited in a collective after rank 1 raised: the job hung")
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "rank 1 failed on purpose" in proc.stderr, proc.stderr[-3000:]
    assert "finished" not in proc.stdout, proc.stdout


def test_the_abort_hook_prints_the_traceback_first_and_is_installed_once(monkeypatch):
    from nnx.distributed.mpi import abort_on_uncaught

    calls = []

    class FakeMPI:
        Is_initialized = staticmethod(lambda: True)
        Is_finalized = staticmethod(lambda: False)

    class FakeComm:
        def Abort(self, code):
            calls.append(("abort", code))

    monkeypatch.delitem(sys.modules, "mpi4py.run", raising=False)  # plain python, not the mpi4py runner
    monkeypatch.setattr(sys, "excepthook", lambda *a: calls.append(("printed", a[0])))
    abort_on_uncaught(FakeMPI, FakeComm())
    hook = sys.excepthook
    abort_on_uncaught(FakeMPI, FakeComm())
    assert sys.excepthook is hook  # not wrapped twice by a second communicator
    hook(RuntimeError, RuntimeError("x"), None)
    assert calls == [("printed", RuntimeError), ("abort", 1)]


class _Node:
    """A fake mpi4py communicator of 4 ranks on one host, each bound by the launcher to its own 8 cores."""

    def __init__(self, rank: int = 1, size: int = 4) -> None:
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Split_type(self, kind):
        return self

    def Free(self):
        pass

    def allgather(self, obj):
        return [list(range(8 * r, 8 * r + 8)) for r in range(self.size)]


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity masks here")
@pytest.mark.parametrize("shared", [False, True], ids=["bound", "one mask"])
def test_ranks_a_launcher_bound_to_their_own_cores_keep_them(monkeypatch, shared):
    """`srun -n 4 --cpus-per-task=8` (or mpiexec --bind-to) binds each rank to its own 8 cores of a 32-core host:
    each rank's affinity mask holds 8 cores, and init divided those 8 among the 4 ranks again, leaving each rank 2
    threads on 8 cores of its own (a quarter of the CPU it was given, without a word). Ranks that share one mask
    (a job's cgroup) still split it."""
    pytest.importorskip("mpi4py")
    from nnx.distributed import launch, local
    from nnx.distributed.mpi import MPICommunicator

    node = _Node()
    if shared:
        node.allgather = lambda obj: [list(range(8))] * 4
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8, 16)) if not shared else set(range(8)))
    monkeypatch.setattr(launch, "launched_by_mpi", lambda: True)
    monkeypatch.setattr(launch, "_torch_group_ready", lambda: False)
    monkeypatch.setattr(launch, "MPICommunicator", lambda: MPICommunicator(node))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr("threadpoolctl.threadpool_limits", lambda limits: None)
    torch = sys.modules.get("torch")
    if torch is not None:
        monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    for var in local.THREAD_VARS:
        monkeypatch.setenv(var, "1")  # recorded, so what init sets is taken back after the test
        monkeypatch.delenv(var)
    comm = dist.init()
    assert (comm.rank, comm.size, comm.local_size) == (1, 4, 4)
    assert os.environ["OMP_NUM_THREADS"] == ("2" if shared else "8")


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_every_rule_replayed_into_uneven_slices_on_three_ranks_equals_one_process(optimizer, monkeypatch):
    """From `replay.MIN_ELEMENTS` parameters (here: any) each rank's slice is updated by the replayed rule: amsgrad's
    running maximum, Lion's sign, centered RMSprop and the rest, on slices of 13/12/12 elements with dropout and
    clip_value, equal to one process to 1e-12."""
    from nnx.training import replay

    monkeypatch.setattr(replay, "MIN_ELEMENTS", 0)
    replayed = []
    real_apply = replay.RuleReplay.apply
    monkeypatch.setattr(replay.RuleReplay, "apply", lambda self, *args, **kwargs: replayed.append(
        real_apply(self, *args, **kwargs)) or replayed[-1])
    _equal_to_one_process(3, _fit_with(optimizer, shard=True, dropout=True, clip_value=0.05))
    assert replayed and all(replayed)


def _no_mpi():
    raise ImportError('MPI needs mpi4py (No module named mpi4py): pip install "nnx-mlp[mpi]"')


@pytest.mark.parametrize("env, single", [
    # sbatch runs the batch script as task 0 of the job: `python train.py` in it is one process, without srun
    ({"SLURM_PROCID": "0", "SLURM_JOB_ID": "7"}, True),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, True),
    ({"PMI_RANK": "0", "PMI_SIZE": "1"}, True),
    # a launcher that started several ranks: without MPI they could not train together, so the error stands
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "8"}, False),
    ({"PMI_RANK": "0", "PMI_SIZE": "2"}, False),
    ({"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "4"}, False),
])
def test_a_one_process_job_under_slurm_without_mpi4py_runs_alone(monkeypatch, env, single):
    """A single-process script in an sbatch job (`python train.py`, no srun) sees SLURM_PROCID, so init took it for
    an MPI launch and raised an ImportError telling the user to install mpi4py, where the documented promise is a
    single-process communicator for a script started without a launcher (the same with an mpi4py that finds no MPI
    library). A launcher's world of one without MPI is now that single process; a world of several still raises."""
    from nnx.distributed import comm as comm_module
    from nnx.distributed import launch

    for name in (*comm_module.MPI_ENV, "SLURM_NTASKS", "SLURM_NPROCS", "SLURM_STEP_NUM_TASKS", "PMI_SIZE",
                 "OMPI_COMM_WORLD_SIZE", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(launch, "_torch_group_ready", lambda: False)
    monkeypatch.setattr(launch, "MPICommunicator", _no_mpi)
    if single:
        assert isinstance(dist.init(), dist.SingleProcess)
    else:
        with pytest.raises(ImportError, match="mpi4py"):
            dist.init()
