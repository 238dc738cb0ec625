"""Data-parallel training with real processes: mpiexec -n 2 and -n 3 (mpi4py), torchrun with gloo.

Each job runs tests/distributed/scenarios.py on every rank; the ranks write what they saw to
JSON files that the tests below check. Jobs start once per session (module fixtures) under a
timeout, with one BLAS/OpenMP thread per rank so that 3 ranks fit on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from launchers import needs_mpi, run_job, tool
from user_code import SetAfterFirstEpoch

import nnx
from nnx import distributed as dist

HERE = Path(__file__).parent
SCRIPT = HERE / "distributed" / "scenarios.py"
TOL = 1e-10  # float64: N ranks against one process on the same global batches
SHARD_TOL = 1e-12  # float64: the sharded update against the all-reduce on the same ranks
BACKENDS = [b for b in ("numpy", "array_api_strict", "torch", "jax") if b in nnx.available_backends()]
EQUIVALENCE = ("sgd_momentum_dropout_clipnorm", "adam_l2_clipvalue_accumulate", "sgd_batchnorm_per_slice")




def _env() -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    # one XLA thread per rank, added to the suite's flags (conftest: XLA's classic code generator, which compiles
    # the ranks' many small JAX programs in about 60% of the time); replacing them made the 2-rank job ~1.6x slower
    threads = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {threads}".strip()
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])
    env.pop("NNX_FASTPATH", None)
    return env


def _run(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    proc = run_job(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=HERE.parent)
    return proc, time.time()


def _ranks(out: Path, size: int) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(size)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """mpiexec -n 2 over every installed backend; leaves a checkpoint written by rank 0 after 2 epochs."""
    out = tmp_path_factory.mktemp("mpi2")
    proc, _ = _run([tool("mpiexec"), "-n", "2", sys.executable, "-m", "mpi4py", str(SCRIPT), str(out),
                    "--backends", ",".join(BACKENDS), "--save", str(out / "ckpt.npz")], timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, _ranks(out, 2)


@pytest.fixture(scope="module")
def three_ranks(two_ranks, tmp_path_factory):
    """mpiexec -n 3: resumes the 2-rank checkpoint, saves a sharded one, then rank 1 raises mid-training
    (the job must abort)."""
    out = tmp_path_factory.mktemp("mpi3")
    proc, ended = _run([tool("mpiexec"), "-n", "3", sys.executable, "-m", "mpi4py", str(SCRIPT), str(out),
                        "--backends", "numpy,array_api_strict", "--resume", str(two_ranks[0] / "ckpt.npz"),
                        "--save-sharded", str(out / "sharded.npz"), "--fault"], timeout=240)
    return out, proc, ended


@pytest.fixture(scope="module")
def sharded_resumed(three_ranks, tmp_path_factory):
    """The 3-rank sharded checkpoint continued sharded by 2 ranks (mpiexec -n 2) and by one process."""
    ckpt = three_ranks[0] / "sharded.npz"
    got = {}
    for ranks in (1, 2):
        out = tmp_path_factory.mktemp(f"resume{ranks}")
        launch = [tool("mpiexec"), "-n", "2", sys.executable, "-m", "mpi4py"] if ranks == 2 else [sys.executable]
        proc, _ = _run([*launch, str(SCRIPT), str(out), "--backends", "", "--resume-sharded", str(ckpt)],
                       timeout=120)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        got[ranks] = _ranks(out, ranks)
    return got


def _check_equivalence(ranks: list[dict], backends: list[str]) -> None:
    for backend in backends:
        for name in EQUIVALENCE:
            _check_same(ranks, f"{backend}/{name}")
            # on a backend that compiles, each rank's forward, loss and backward ran as one program: what matched
            # one process above is that program (`nnx.training.compiled_passes`)
            compiled = "run as one compiled program" in ranks[0]["scenarios"][f"{backend}/{name}"]["reason"]
            assert compiled == (backend == "jax"), (backend, name, ranks[0]["scenarios"][f"{backend}/{name}"])


def _check_same(ranks: list[dict], key: str) -> None:
    for r in ranks:
        got = r["scenarios"][key]
        assert got["param_diff"] <= TOL, (key, r["rank"], got["param_diff"])
        assert got["hist_diff"] <= TOL, (key, r["rank"], got["hist_diff"])
    # every rank ends with the same weights, bit for bit, and logs the same History
    assert len({r["scenarios"][key]["digest"] for r in ranks}) == 1, key
    assert all(r["scenarios"][key]["history"] == ranks[0]["scenarios"][key]["history"] for r in ranks), key


def _check_sharded(ranks: list[dict], backends: list[str]) -> None:
    """The sharded update equals one process, and the all-reduce run to 1e-12, weights and optimizer state."""
    for backend in backends:
        for name in ("sgd_momentum_dropout_clipnorm", "adam_l2_clipvalue_accumulate"):
            key = f"{backend}/sharded_{name}"
            _check_same(ranks, key)
            for r in ranks:
                got = r["scenarios"][key]
                assert got["execution"] == "sharded", (key, got["execution"])
                assert ("run as one compiled program" in got["reason"]) == (backend == "jax"), (key, got["reason"])
                assert got["vs_unsharded"] <= SHARD_TOL, (key, r["rank"], got["vs_unsharded"])
                assert got["state_vs_unsharded"] <= SHARD_TOL, (key, r["rank"], got["state_vs_unsharded"])
        if backend in ("numpy", "torch"):
            # the gradient buffer offered to the Dense kernels changes no bit, and the gradients the model holds
            # after each step are this rank's own, as the backward wrote them
            for r in ranks:
                offered = r["scenarios"][f"{backend}/sharded_offered"]
                assert offered["param_diff"] == offered["state_diff"] == offered["grad_diff"] == 0.0, offered
                assert offered["steps"][0] == offered["steps"][1] > 0, offered
                assert offered["taken"] > 0, offered  # the kernels wrote every gradient where it was offered


@pytest.mark.slow  # starts MPI or torchrun jobs
@needs_mpi
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_equal_one_process(two_ranks, backend):
    """SGD+momentum with dropout and clip_norm, Adam with L2, clip_value and accumulation, BatchNorm per slice."""
    _check_equivalence(two_ranks[1], [backend])


@pytest.mark.slow  # starts MPI or torchrun jobs
@needs_mpi
@pytest.mark.parametrize("backend", BACKENDS)
def test_sharded_update_on_two_ranks_equals_the_all_reduce(two_ranks, backend):
    """ZeRO-1 on 2 ranks, 163 parameters (uneven slices): clip_norm's global norm, clip_value, accumulation."""
    _check_sharded(two_ranks[1], [backend])


def _check_collectives(ranks: list[dict]) -> None:
    for r in ranks:
        assert r["collectives"]["failures"] == [], (r["rank"], r["collectives"]["failures"])
    assert len({r["collectives"]["digest"] for r in ranks}) == 1  # every rank holds the same bits


@pytest.mark.slow  # starts MPI or torchrun jobs
@needs_mpi
def test_collectives_on_two_ranks_equal_the_sums_worked_out_on_one(two_ranks):
    """allreduce, reduce_scatter, allgather: NumPy and torch, float32 and float64, uneven blocks, below and
    above the size from which the ranks pass blocks around a ring (`nnx.distributed.ring`)."""
    _check_collectives(two_ranks[1])


@needs_mpi
def test_collectives_on_three_ranks_equal_the_sums_worked_out_on_one(three_ranks):
    _check_collectives(_ranks(three_ranks[0], 3))


@needs_mpi
def test_sharded_update_on_three_ranks_equals_the_all_reduce(three_ranks):
    _check_sharded(_ranks(three_ranks[0], 3), [b for b in ("numpy", "array_api_strict") if b in BACKENDS])


@needs_mpi
@pytest.mark.parametrize("size", [2, 3])
def test_a_sharded_step_not_finite_on_one_rank_is_refused_with_the_whole_state_kept(two_ranks, three_ranks, size):
    """Every rank raises at the same batch; the optimizer state is whole and that of the last finite step."""
    _check_sharded_refusal(two_ranks[1] if size == 2 else _ranks(three_ranks[0], 3), "numpy")


def _check_sharded_refusal(ranks, backend):
    got = [r["scenarios"][f"{backend}/sharded_one_rank_not_finite"] for r in ranks]
    assert all(g["raised"] is not None and "at epoch 2, batch 3;" in g["raised"] for g in got), got
    assert all(g["state_diff"] <= SHARD_TOL and g["steps"][0] == g["steps"][1] for g in got), got
    assert len({g["digest"] for g in got}) == 1


@needs_mpi
def test_a_sharded_checkpoint_holds_the_whole_state_and_resumes_on_one_or_two_ranks(three_ranks, sharded_resumed):
    """Written by rank 0 of 3 sharded ranks after 2 epochs; continued for 2 more on 1 process and on 2 sharded
    ranks, it equals 4 epochs in one process."""
    for r in _ranks(three_ranks[0], 3):
        assert r["saved_sharded"]["execution"] == "sharded"
        assert r["saved_sharded"]["state_diff"] <= TOL, r["saved_sharded"]
    for ranks, results in sharded_resumed.items():
        for r in results:
            got = r["resumed_sharded"]
            assert got["param_diff"] <= TOL and got["hist_diff"] <= TOL and got["state_diff"] <= TOL, (ranks, got)


@needs_mpi
def test_three_ranks_equal_one_process_and_resume_from_two(three_ranks):
    out, proc, _ = three_ranks
    ranks = _ranks(out, 3)
    assert [r["size"] for r in ranks] == [3, 3, 3] and all(r["engine"] == "mpi" for r in ranks)
    _check_equivalence(ranks, [b for b in ("numpy", "array_api_strict") if b in BACKENDS])
    # two epochs on 2 ranks, saved by rank 0, then two on 3 ranks == four epochs in one process
    for r in ranks:
        assert r["resumed"]["param_diff"] <= TOL and r["resumed"]["hist_diff"] <= TOL, r["resumed"]


@pytest.mark.slow  # starts MPI or torchrun jobs
@needs_mpi
@pytest.mark.parametrize("source", ["gathered", "host", "iterable"])
def test_every_batch_source_gives_the_one_process_result(two_ranks, source):
    """Arrays gathered per batch and host array-likes read only each rank's rows; iterables are cut per rank."""
    _check_source(two_ranks[1], "numpy", source)


def _check_source(ranks, backend, source):
    key = f"{backend}/source_{source}"
    for r in ranks:
        assert r["scenarios"][key]["param_diff"] <= TOL and r["scenarios"][key]["hist_diff"] <= TOL, (r["rank"], key)
    assert len({r["scenarios"][key]["digest"] for r in ranks}) == 1, key


@pytest.mark.slow  # starts MPI or torchrun jobs
@needs_mpi
@pytest.mark.parametrize("how", ["unsharded", "sharded"])
def test_mean_with_sample_weight_on_two_and_three_ranks_equals_one_process(two_ranks, three_ranks, how):
    """The ranks' gradients weighed by their slices' sums of weights (uneven, one slice 0), not by rows."""
    for ranks in (two_ranks[1], _ranks(three_ranks[0], 3)):
        _check_same(ranks, f"numpy/mean_with_sample_weight_{how}")


@pytest.mark.slow  # starts MPI or torchrun jobs
@needs_mpi
def test_negative_control_without_allreduce_differs(two_ranks):
    """With the all-reduce removed the same comparison fails: the equivalence tests would catch it."""
    ranks = two_ranks[1]
    for r in ranks:
        assert r["scenarios"]["numpy/negative_control"]["param_diff"] > 1e-3
    assert len({r["scenarios"]["numpy/negative_control"]["digest"] for r in ranks}) == 2


@pytest.mark.slow  # starts MPI or torchrun jobs
@needs_mpi
def test_a_step_not_finite_on_one_rank_is_refused_by_every_rank(two_ranks):
    """The poisoned all-reduce carries one rank's non-finite step to all: they raise together, no extra collective."""
    _check_refusal(two_ranks[1], "numpy")


def _check_refusal(ranks, backend):
    messages = [r["scenarios"][f"{backend}/one_rank_not_finite"]["raised"] for r in ranks]
    assert all(m is not None and "at epoch 2, batch 3;" in m for m in messages), messages


@pytest.mark.slow  # starts MPI or torchrun jobs
@needs_mpi
def test_early_stopping_stops_every_rank_together(two_ranks):
    _check_early_stopping(two_ranks[1], "numpy")


def _check_early_stopping(ranks, backend):
    got = [r["scenarios"][f"{backend}/early_stopping"] for r in ranks]
    assert 1 < got[0]["epochs"] < 30  # it did stop early
    assert all(g["epochs"] == got[0]["epochs"] and g["history"] == got[0]["history"] for g in got)
    assert got[0]["hist_diff"] <= TOL  # at the epoch a single process stops


@pytest.mark.slow  # starts MPI or torchrun jobs
@needs_mpi
def test_rank_zero_writes_the_checkpoint(two_ranks):
    out, ranks = two_ranks
    assert all(r["saved"] == {"exists": True, "epochs": 2} for r in ranks)
    model = nnx.load(out / "ckpt.npz")
    assert model.epochs_trained == 2
    assert not list(out.glob(".ckpt.npz.*"))  # no temporary file left by a second writer


@pytest.mark.slow  # starts MPI or torchrun jobs
@needs_mpi
def test_a_failing_rank_ends_the_job_quickly_and_the_checkpoint_loads(three_ranks):
    out, proc, ended = three_ranks
    assert proc.returncode != 0
    assert "injected failure on rank 1 at epoch 2" in proc.stderr + proc.stdout
    raised = float((out / "fault_time").read_text())
    assert ended - raised < 10, f"the job took {ended - raised:.1f} s to end after a rank raised"
    model = nnx.load(out / "fault.npz")
    assert model.epochs_trained in (2, 3)  # rank 0 saved epochs 0..1 (maybe 2) before the abort


@pytest.mark.slow  # starts MPI or torchrun jobs
@pytest.mark.skipif("torch" not in nnx.available_backends() or tool("torchrun") is None,
                    reason="torch (with torchrun) not installed")
def test_torchrun_gloo_equals_one_process(tmp_path):
    """The torch.distributed engine (gloo): torch tensors reduced in place, NumPy arrays through torch."""
    proc, _ = _run([tool("torchrun"), "--standalone", "--nproc_per_node=2", str(SCRIPT), str(tmp_path),
                    "--backends", "torch,numpy", "--controls", "torch"], timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = _ranks(tmp_path, 2)
    assert all(r["engine"] == "torch" and r["size"] == 2 for r in ranks)
    _check_equivalence(ranks, ["torch", "numpy"])
    _check_sharded(ranks, ["torch", "numpy"])  # gloo: reduce-scatter as an all-reduce, padded all-gather
    for how in ("unsharded", "sharded"):
        _check_same(ranks, f"torch/mean_with_sample_weight_{how}")
    assert all(r["scenarios"]["torch/negative_control"]["param_diff"] > 1e-3 for r in ranks)
    # what the MPI job checks of its control backend, checked of this one's (the torch engine's collectives)
    for source in ("gathered", "host", "iterable"):
        _check_source(ranks, "torch", source)
    _check_refusal(ranks, "torch")
    _check_sharded_refusal(ranks, "torch")
    _check_early_stopping(ranks, "torch")


TAKES_DOWN_ITS_GROUP = """
import atexit
import torch.distributed as tdist
from nnx import distributed as dist

atexit.register(lambda: print("initialized at exit:", tdist.is_initialized()))  # runs after nnx's hook
comm = dist.init()
print("engine:", comm.engine, comm.size)
"""


@pytest.mark.skipif("torch" not in nnx.available_backends(), reason="torch not installed")
def test_the_group_init_makes_under_torchrun_is_taken_down_at_exit(tmp_path):
    """Left to the interpreter's exit, gloo's threads could abort the process after its work was done."""
    env = dict(os.environ, TORCHELASTIC_RUN_ID="test", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0",
               LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    proc = subprocess.run([sys.executable, "-c", TAKES_DOWN_ITS_GROUP], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "engine: torch 1" in proc.stdout and "initialized at exit: False" in proc.stdout, proc.stdout


# -- in this process ------------------------------------------------------------------------------
def test_init_without_a_launcher_is_a_single_process():
    comm = dist.init()
    assert (comm.rank, comm.size) == (0, 1)
    x = np.arange(4.0)
    assert comm.allreduce(x, op="mean") is x and comm.broadcast(x) is x


def test_rank_rows_cover_the_batch_contiguously():
    for rows in range(0, 12):
        for size in (1, 2, 3, 5):
            parts = [dist.rank_rows(rows, r, size) for r in range(size)]
            assert parts[0][0] == 0 and parts[-1][1] == rows
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
            assert max(b - a for a, b in parts) - min(b - a for a, b in parts) <= 1


def test_fit_with_a_world_of_one_equals_plain_fit():
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = (X[:, 0] > 0).astype(float)

    def run(**kw):
        m = nnx.Sequential(nnx.Dense(4, 5), nnx.ReLU(), nnx.Dense(5, 1), nnx.Sigmoid(), dtype="float64", seed=3)
        return m, m.fit(X, y, epochs=2, batch_size=8, optimizer="sgd", lr=0.1, **kw)

    a, ha = run()
    b, hb = run(distributed=dist.init())
    assert ha.history == hb.history
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])


def test_fit_rejects_a_non_communicator():
    m = nnx.Sequential(nnx.Dense(2, 1), seed=0)
    with pytest.raises(TypeError, match="distributed must be an nnx.distributed communicator"):
        m.fit(np.zeros((4, 2)), np.zeros(4), distributed="mpi")


class WorldOfOne(dist.SingleProcess):
    """A single process that `fit` treats as a real engine, so the data-parallel stages run in this process."""

    engine = "test"


class NotElementwiseSGD(nnx.optim.SGD):
    """SGD declaring a rule that is not elementwise (as a rule mixing elements would)."""

    elementwise = False


def _tiny(seed=3):
    return nnx.Sequential(nnx.Dense(4, 5), nnx.ReLU(), nnx.Dense(5, 1), nnx.Sigmoid(), dtype="float64", seed=seed)


def test_reduce_scatter_and_allgather_of_a_single_process():
    comm = dist.init()
    x = np.arange(5.0)
    assert comm.reduce_scatter(x, [5]) is x and comm.allgather(x, [5]) is x
    with pytest.raises(ValueError, match="counts must be 1 non-negative ints"):
        comm.reduce_scatter(x, [2, 3])
    with pytest.raises(ValueError, match="flat"):
        comm.allgather(np.zeros((2, 2)), [4])


def test_sharded_fit_in_a_world_of_one_equals_plain_fit():
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = (X[:, 0] > 0).astype(float)
    a, b = _tiny(), _tiny()
    ha = a.fit(X, y, epochs=2, batch_size=8, optimizer="adam", lr=0.01, clip_norm=0.3)
    hb = b.fit(X, y, epochs=2, batch_size=8, optimizer="adam", lr=0.01, clip_norm=0.3,
               distributed=dist.DataParallel(WorldOfOne(), shard_update=True))
    assert hb.execution == "sharded"
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=0, atol=1e-12)
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(v, b.state_dict()[k], rtol=0, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_the_sharded_update_with_the_replayed_rule_equals_plain_fit(optimizer, monkeypatch):
    """From `replay.MIN_ELEMENTS` parameters in a rank's slice (here: any) the rule is replayed into the slices."""
    from nnx.training import replay

    monkeypatch.setattr(replay, "MIN_ELEMENTS", 0)
    applied = []  # what each replay reported: True means the rule ran replayed
    real_apply = replay.RuleReplay.apply
    monkeypatch.setattr(replay.RuleReplay, "apply", lambda self, *args, **kwargs: applied.append(
        real_apply(self, *args, **kwargs)) or applied[-1])
    X = np.random.default_rng(1).normal(size=(30, 4))
    y = (X[:, 1] > 0).astype(float)
    a, b = _tiny(), _tiny()
    ha = a.fit(X, y, epochs=2, batch_size=8, optimizer=optimizer, lr=0.01)
    flat_steps = len(applied)
    hb = b.fit(X, y, epochs=2, batch_size=8, optimizer=optimizer, lr=0.01,
               distributed=dist.DataParallel(WorldOfOne(), shard_update=True))
    assert hb.execution == "sharded"
    assert flat_steps == 8 and len(applied) == 16 and all(applied), applied  # 4 steps an epoch, each replayed
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=0, atol=1e-12)
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(v, b.state_dict()[k], rtol=0, atol=1e-12)
    for i, entry in a.optimizer.state_dict()["state"].items():
        for key, arr in entry.items():
            np.testing.assert_allclose(arr, b.optimizer.state_dict()["state"][i][key], rtol=0, atol=1e-12)


# NumPy posing as a device library warns of the inf and NaN the device check makes on purpose (a poisoned
# rank scales by 1/0)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning",
                            "ignore:divide by zero:RuntimeWarning")
@pytest.mark.parametrize("shard", [False, True], ids=["all-reduce", "sharded"])
def test_data_parallel_fit_with_the_deferred_check_equals_plain_fit(shard, monkeypatch):
    """On a GPU the finite check stays on the device (flat: one flag over the gathered gradients, which the
    all-reduce or the reduce-scatter then takes); forced here by making NumPy report device arrays."""
    X = np.random.default_rng(2).normal(size=(30, 4))
    y = (X[:, 0] > 0).astype(float)
    a, b = _tiny(), _tiny()
    ha = a.fit(X, y, epochs=2, batch_size=8, optimizer="adam", lr=0.01)
    monkeypatch.setattr(type(b.backend), "arrays_on_host", property(lambda self: False))
    hb = b.fit(X, y, epochs=2, batch_size=8, optimizer="adam", lr=0.01,
               distributed=dist.DataParallel(WorldOfOne(), shard_update=shard))
    assert hb.execution == ("sharded" if shard else "flat")
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=0, atol=1e-12)
    for k, v in a.state_dict().items():
        np.testing.assert_allclose(v, b.state_dict()[k], rtol=0, atol=1e-12)
    X[5] = 1e308  # the first batch's products overflow: a non-finite step, refused on every path, naming its batch
    before = {k: np.array(v) for k, v in b.state_dict().items()}
    with pytest.raises(FloatingPointError, match="epoch 3, batch 1;"):
        b.fit(X, y, epochs=1, batch_size=8, shuffle=False, optimizer="adam", lr=0.01,
              distributed=dist.DataParallel(WorldOfOne(), shard_update=shard))
    for k, v in before.items():
        np.testing.assert_array_equal(b.state_dict()[k], v, err_msg=k)


def test_sharded_update_refuses_a_rule_that_is_not_elementwise():
    m = _tiny()
    with pytest.raises(ValueError, match="NotElementwiseSGD declares elementwise = False"):
        m.fit(np.zeros((4, 4)), np.zeros(4), optimizer=NotElementwiseSGD(m.parameters(), lr=0.1),
              distributed=dist.DataParallel(WorldOfOne(), shard_update=True))


def test_sharded_update_names_a_rule_declared_elementwise_that_reads_across_elements():
    """On a rank's slice of the flat buffer a norm mixes parameters: the first call says so, before writing."""
    from test_derived_user_code import NormalizedSGD

    m = _tiny()
    before = {k: np.array(v) for k, v in m.state_dict().items()}
    with pytest.raises(TypeError, match=r"NormalizedSGD declares elementwise = True, but its update calls xp\.sum"):
        m.fit(np.ones((4, 4)), np.ones(4), optimizer=NormalizedSGD(m.parameters()),
              distributed=dist.DataParallel(WorldOfOne(), shard_update=True))
    for key, value in m.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_sharded_update_refuses_a_rule_that_reads_its_arrays_shape():
    """On a rank's slice ``value.ndim`` is the slice's: a rule decaying matrices only would decay nothing."""
    from test_derived_user_code import ShapedSGD

    m = _tiny()
    with pytest.raises(ValueError, match=r"ShapedSGD\.update reads \.shape of an array: there it would see the "
                                         r"slice's shape.*shard_update=False"):
        m.fit(np.ones((4, 4)), np.ones(4), optimizer=ShapedSGD(m.parameters()),
              distributed=dist.DataParallel(WorldOfOne(), shard_update=True))


def test_sharded_update_makes_the_initial_state_parameter_by_parameter():
    """Found in review: joined, init_state saw one flat array; an accumulator started by the parameter's ndim
    started at 0 everywhere, and momentum kept for matrices only was kept for none."""
    from test_derived_user_code import ShapedStartSGD

    X, y = np.random.default_rng(0).normal(size=(16, 4)), np.arange(16.0) % 2
    models = [_tiny(), _tiny()]
    for model, shard in zip(models, (True, False), strict=True):
        model.fit(X, y, epochs=2, batch_size=8, optimizer=ShapedStartSGD(model.parameters()),
                  distributed=dist.DataParallel(WorldOfOne(), shard_update=shard))
    for k, v in models[1].state_dict().items():
        np.testing.assert_allclose(models[0].state_dict()[k], v, rtol=0, atol=1e-12, err_msg=k)
    m = _tiny()
    with pytest.raises(ValueError, match=r"ShapedStartSGD\.init_state makes other keys for some"):
        m.fit(X, y, optimizer=ShapedStartSGD(m.parameters(), kind="keys"),
              distributed=dist.DataParallel(WorldOfOne(), shard_update=True))


def test_sharded_update_refuses_a_transform_that_needs_whole_gradients():
    class Hook(nnx.callbacks.Callback):
        def on_gradients(self, grads):
            return None

    with pytest.raises(ValueError, match="cannot run CallbackHook after the gradient average"):
        _tiny().fit(np.zeros((4, 4)), np.zeros(4), callbacks=[Hook()],
                    distributed=dist.DataParallel(WorldOfOne(), shard_update=True))


def test_data_parallel_checks_its_arguments():
    with pytest.raises(TypeError, match="comm must be an nnx.distributed communicator"):
        dist.DataParallel("mpi")
    with pytest.raises(TypeError, match="shard_update must be True or False"):
        dist.DataParallel(dist.init(), shard_update=1)


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_window_of_rows_is_cut_from_the_whole_batch_draw(backend_name):
    """``DeviceRNG.rows``: a rank's dropout draw is its rows of the draw one process makes for the batch."""
    be = nnx.get_backend(backend_name)
    whole, part = be.rng(5), be.rng(5)
    part.rows = (2, 5, 8)
    expected = be.to_host(whole.uniform((8, 3), "float64"))[2:5]
    np.testing.assert_array_equal(be.to_host(part.uniform((3, 3), "float64")), expected)
    assert part.get_state() == whole.get_state()
    part.rows = None
    assert tuple(part.uniform((3, 3), "float64").shape) == (3, 3)


@pytest.mark.parametrize("optimizer,kwargs,change", [
    ("sgd", {"lr": 0.05, "dampening": 0.3}, {"momentum": 0.9}),
    ("adam", {"lr": 0.01, "amsgrad": True}, {"amsgrad": False}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.5, "centered": True}, {"momentum": 0.0, "centered": False}),
], ids=["sgd-momentum-on", "adam-amsgrad-off", "rmsprop-momentum-centered-off"])
def test_the_sharded_update_follows_a_rule_whose_state_keys_change_mid_fit(optimizer, kwargs, change):
    """Momentum switched on between epochs: the sharded update dropped the new buffer (every step then started
    it again at the gradient: no momentum, silently); state switched off raised a bare KeyError."""
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = (X[:, 0] > 0).astype(float)
    runs = []
    for shard in (False, True):
        m = _tiny()
        opt = nnx.optim.get_optimizer(optimizer, m.parameters(), **kwargs)
        extra = {"distributed": dist.DataParallel(WorldOfOne(), shard_update=True)} if shard else {}
        h = m.fit(X, y, epochs=3, batch_size=8, optimizer=opt, callbacks=[SetAfterFirstEpoch(**change)], **extra)
        runs.append((h, m, opt.state_dict()))
    assert runs[1][0].execution == "sharded"
    np.testing.assert_allclose(runs[0][0].history["loss"], runs[1][0].history["loss"], rtol=0, atol=1e-12)
    for k, v in runs[0][1].state_dict().items():
        np.testing.assert_allclose(v, runs[1][1].state_dict()[k], rtol=0, atol=1e-12, err_msg=k)
    assert runs[0][2]["state"].keys() == runs[1][2]["state"].keys()
    for i, entry in runs[0][2]["state"].items():
        assert entry.keys() == runs[1][2]["state"][i].keys()
        for key, arr in entry.items():
            np.testing.assert_allclose(arr, runs[1][2]["state"][i][key], rtol=0, atol=1e-12, err_msg=key)


def test_the_sharded_update_names_a_rule_that_changes_a_dtype():
    """A float64 hyper-parameter on a float32 model (NumPy promotes): the plain loop's TypeError, not a silent cast."""
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = (X[:, 0] > 0).astype(float)
    for shard in (False, True):
        m = nnx.Sequential(nnx.Dense(4, 5), nnx.ReLU(), nnx.Dense(5, 1), nnx.Sigmoid(), dtype="float32", seed=3)
        opt = nnx.optim.SGD(m.parameters(), lr=0.05, momentum=0.5)
        extra = {"distributed": dist.DataParallel(WorldOfOne(), shard_update=True)} if shard else {}
        with pytest.raises(TypeError, match="SGD.update returned a new value of dtype float64"):
            m.fit(X, y, epochs=2, batch_size=8, optimizer=opt,
                  callbacks=[SetAfterFirstEpoch(momentum=np.float64(0.9))], **extra)


def test_the_sharded_update_refuses_parameters_of_mixed_dtypes():
    """One buffer joining a float32 model's parameters with a user's float64 one turned them all to float64."""
    from test_execution import Float64Scale

    m = nnx.Sequential(nnx.Dense(4, 5), Float64Scale(), nnx.ReLU(), nnx.Dense(5, 1), nnx.Sigmoid(), dtype="float32",
                       seed=3)
    with pytest.raises(ValueError, match=r"needs parameters of one dtype.*\['float32', 'float64'\]"):
        m.fit(np.zeros((8, 4)), np.zeros(8), epochs=1, batch_size=8, optimizer="adam",
              distributed=dist.DataParallel(WorldOfOne(), shard_update=True))
    assert {str(p.value.dtype) for p in m.parameters()} == {"float32", "float64"}


class OneProcessEngine(dist.SingleProcess):
    """A single process that `fit` treats as a real engine, so the data-parallel stages run in this process."""

    engine = "test"


class Float64Gain(nnx.Layer):
    """A user's layer keeping its gain in float64 whatever the model's dtype, cast where it meets the activations."""

    def build(self, input_shape):
        self.gain = self.add_parameter("gain", tuple(input_shape), "ones")
        self.gain.value = self.xp.astype(self.gain.value, self.xp.float64)

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, X, training=False):
        if training:
            self.X = X
        return X * self.xp.astype(self.gain.value, X.dtype)

    def backward(self, dY, need_dX=True):
        self.gain.grad = self.xp.astype(self.xp.sum(dY * self.X, axis=0), self.xp.float64)
        return dY * self.xp.astype(self.gain.value, dY.dtype) if need_dX else None


@pytest.mark.parametrize("elementwise", [True, False], ids=["elementwise", "not elementwise"])
def test_the_gradient_all_reduce_keeps_each_gradients_dtype(backend, elementwise):
    """A float32 model with a user's float64 parameter trains in one process; with data parallelism the
    all-reduce concatenated the gradients into one float64 buffer and handed float64 gradients back to the
    float32 parameters, which the optimizer then refused, blaming the parameter's gradient."""
    X = np.random.default_rng(0).normal(size=(32, 4))  # whole batches of 8: one JAX program less
    y = (X[:, 0] > 0).astype(float)

    def run(be, distributed):
        model = nnx.Sequential(nnx.Dense(4, 5), Float64Gain(), nnx.ReLU(), nnx.Dense(5, 1), nnx.Sigmoid(),
                               backend=be, dtype="float32", seed=3)
        model(np.zeros((1, 4)))
        opt = nnx.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
        opt.elementwise = elementwise
        extra = {"distributed": dist.DataParallel(OneProcessEngine(), shard_update=False)} if distributed else {}
        model.fit(X, y, epochs=2, batch_size=8, optimizer=opt, **extra)
        return model

    plain, parallel = run(backend.with_fastpath(False), False), run(backend, True)
    for p, q in zip(plain.parameters(), parallel.parameters(), strict=True):
        assert str(q.value.dtype) == str(p.value.dtype), p.name
        np.testing.assert_allclose(np.asarray(backend.to_host(q.value)), np.asarray(backend.to_host(p.value)),
                                   rtol=1e-6, atol=1e-7, err_msg=p.name)


class HalveInPlace(nnx.training.GradientTransform):
    """A user's stage after the all-reduce that halves ``p.grad`` by writing into it, where arrays take writes."""

    def apply(self, params, rows):
        for p in params:
            p.grad[...] = p.grad * 0.5
        return True


class HalveAnew(nnx.training.GradientTransform):
    """The same halving, binding new arrays to ``p.grad``."""

    def apply(self, params, rows):
        for p in params:
            p.grad = p.grad * 0.5
        return True


def test_the_flat_update_takes_the_all_reduced_gradients_without_joining_them_again(backend, monkeypatch):
    """The all-reduce joins the gradients into one array and cuts them back into ``p.grad``; the finite check
    after it and the flat update read that array as their gathered gradients, instead of a third join of the
    same numbers (three joins of 235,146 gradients a step on JAX took 1.6 ms of 5)."""
    from nnx.training.flat import FlatUpdate

    joined, read = [], []
    take = dist.AverageGradients.take_joined

    def taken(self):
        out = take(self)
        joined.append(None if out is None else out[0])
        return out

    run = FlatUpdate.run

    def update(self, *args, **kwargs):
        read.append(self.grads is not None and self.grads is joined[-1])
        return run(self, *args, **kwargs)

    monkeypatch.setattr(dist.AverageGradients, "take_joined", taken)
    monkeypatch.setattr(FlatUpdate, "run", update)
    X = np.random.default_rng(0).normal(size=(32, 4))
    y = (X[:, 0] > 0).astype(float)
    model = nnx.Sequential(nnx.Dense(4, 5), nnx.ReLU(), nnx.Dense(5, 1), nnx.Sigmoid(), backend=backend, seed=3)
    opt = nnx.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
    model.fit(X, y, epochs=2, batch_size=8, optimizer=opt,
              distributed=dist.DataParallel(OneProcessEngine(), shard_update=False))
    assert read and all(read), read


class HoldEveryOther(nnx.training.GradientTransform):
    """A user's stage after the all-reduce that holds every other update back (its own accumulation)."""

    def __init__(self):
        self.calls = 0

    def apply(self, params, rows):
        self.calls += 1
        return self.calls % 2 == 0


def test_the_all_reduced_array_is_given_up_in_its_own_step_even_when_the_update_is_held_back(monkeypatch):
    """The average keeps its joined array only until the step takes it (`take_joined`), also in a step whose update
    a later stage holds back: kept past it, it would hold a second copy of every gradient between steps."""
    events = []
    apply, take = dist.AverageGradients.apply, dist.AverageGradients.take_joined

    def applied(self, params, rows):
        events.append("joined")
        return apply(self, params, rows)

    def taken(self):
        out = take(self)
        events.append("taken" if out is not None else "nothing")
        return out

    monkeypatch.setattr(dist.AverageGradients, "apply", applied)
    monkeypatch.setattr(dist.AverageGradients, "take_joined", taken)
    X = np.random.default_rng(0).normal(size=(32, 4))
    y = (X[:, 0] > 0).astype(float)
    model = nnx.Sequential(nnx.Dense(4, 5), nnx.ReLU(), nnx.Dense(5, 1), nnx.Sigmoid(), seed=3)
    model.fit(X, y, epochs=1, batch_size=8, optimizer="sgd", lr=0.1, gradient_transforms=[HoldEveryOther()],
              distributed=dist.DataParallel(OneProcessEngine(), shard_update=False))
    assert events == ["joined", "taken"] * 4, events  # each step: joined by the average, then taken by the step


@pytest.mark.parametrize("stage", [HalveInPlace, HalveAnew], ids=["in place", "new arrays"])
def test_a_stage_after_the_all_reduce_that_changes_the_gradients_is_what_the_update_reads(backend, stage):
    """A gradient transform after the all-reduce that writes into ``p.grad`` (where the library's arrays take
    writes) or binds new arrays: the data-parallel fit equals one process with the same stage, so the update
    read the halved gradients, not the all-reduce's array as it was."""
    if stage is HalveInPlace and backend.name == "jax":
        pytest.skip("JAX arrays take no writes")
    X = np.random.default_rng(0).normal(size=(32, 4))
    y = (X[:, 0] > 0).astype(float)

    def run(be, distributed):
        model = nnx.Sequential(nnx.Dense(4, 5), nnx.ReLU(), nnx.Dense(5, 1), nnx.Sigmoid(), backend=be,
                               dtype="float64", seed=3)
        opt = nnx.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
        extra = {"distributed": dist.DataParallel(OneProcessEngine(), shard_update=False)} if distributed else {}
        model.fit(X, y, epochs=2, batch_size=8, optimizer=opt, gradient_transforms=[stage()], **extra)
        return model

    plain, parallel = run(backend.with_fastpath(False), False), run(backend, True)
    for p, q in zip(plain.parameters(), parallel.parameters(), strict=True):
        np.testing.assert_allclose(np.asarray(backend.to_host(q.value)), np.asarray(backend.to_host(p.value)),
                                   rtol=1e-12, atol=1e-14, err_msg=p.name)


def test_the_abort_hook_is_left_to_the_mpi4py_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under ``python -m mpi4py`` the runner aborts the job itself, at exit, after the traceback was printed; the
    # hook of e850873 (for plain ``python script.py``) ran first there and aborted at once, and a CI run lost the
    # failing rank's traceback (tests/test_distributed.py's three-rank fault job): it is not installed there
    from nnx.distributed.mpi import abort_on_uncaught

    class FakeMPI:
        Is_initialized = staticmethod(lambda: True)
        Is_finalized = staticmethod(lambda: False)

    class FakeComm:
        def Abort(self, code: int) -> None:
            raise AssertionError("aborted")

    def printing(*args: Any) -> None:
        pass

    monkeypatch.setattr(sys, "excepthook", printing)
    monkeypatch.setitem(sys.modules, "mpi4py.run", types.ModuleType("mpi4py.run"))
    abort_on_uncaught(FakeMPI, FakeComm())
    assert sys.excepthook is printing


_HOOK_PROBE = textwrap.dedent("""
    import sys
    from nnx.distributed.mpi import abort_on_uncaught

    class FakeMPI:
        Is_initialized = staticmethod(lambda: True)
        Is_finalized = staticmethod(lambda: False)

    class FakeComm:
        def Abort(self, code):
            raise AssertionError("aborted")

    before = sys.excepthook
    abort_on_uncaught(FakeMPI, FakeComm())
    print("left alone" if sys.excepthook is before else "installed")
""")


@pytest.mark.parametrize("runner", ["mpi4py", "mpi4py.run"])
def test_the_abort_hook_is_left_to_either_spelling_of_the_mpi4py_runner(runner: str) -> None:
    """a5abd39 left the abort hook to ``python -m mpi4py``'s runner (it aborts at exit itself, after the launcher
    forwarded the traceback) by looking for ``mpi4py.run`` in sys.modules; ``python -m mpi4py.run script.py``, the
    spelling the runner's own main documents, runs that module as ``__main__``, so the name is not there, the hook
    was installed and aborted the job before the failing rank's traceback was forwarded."""
    pytest.importorskip("mpi4py")
    done = subprocess.run([sys.executable, "-m", runner, "-c", _HOOK_PROBE], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "left alone"


def test_plain_python_still_gets_the_abort_hook() -> None:
    pytest.importorskip("mpi4py")
    done = subprocess.run([sys.executable, "-c", _HOOK_PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "installed"


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
    from nnx.distributed import mpi
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
    monkeypatch.setattr(mpi, "ABORT_GRACE_S", 0.0)  # the launcher's time to forward the traceback: none here
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
