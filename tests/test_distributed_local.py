"""A rank's place on its host: GPU binding and thread limits, from fake launcher environments and real mpiexec runs.

The arithmetic (which GPU, how many threads) is checked with the environments torchrun, MPICH and
Open MPI set; no GPU is faked. The thread limits are also checked in real ``mpiexec -n 2`` jobs,
and the documented recipe (examples/16_data_parallel.py) is run with the thread variables unset.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from launchers import needs_mpi, run_job, tool

from nnx.distributed import launch as launch_module
from nnx.distributed.local import (
    THREAD_VARS,
    gpu_for_rank,
    group_devices,
    limit_threads,
    local_placement,
    threads_per_rank,
    torch_group_choice,
)

ROOT = Path(__file__).resolve().parent.parent



# -- the arithmetic ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env, expected", [
    ({"LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4", "RANK": "5"}, (1, 4)),  # torchrun, second node
    ({"MPI_LOCALRANKID": "2", "MPI_LOCALNRANKS": "3", "PMI_RANK": "5"}, (2, 3)),  # MPICH / Hydra
    ({"OMPI_COMM_WORLD_LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_SIZE": "8"}, (0, 8)),  # Open MPI
    ({}, (0, 1)),  # no launcher
])
def test_local_placement_from_each_launchers_variables(env, expected):
    assert local_placement(env) == expected


def test_each_rank_gets_its_share_of_the_cores():
    assert [threads_per_rank(16, n) for n in (1, 2, 3, 4, 16, 32)] == [16, 8, 5, 4, 1, 1]


def test_thread_limits_set_the_variables_and_the_running_pools(monkeypatch):
    limited = []
    monkeypatch.setattr("threadpoolctl.threadpool_limits", lambda limits: limited.append(limits))
    torch = sys.modules.get("torch")
    if torch is not None:
        monkeypatch.setattr(torch, "set_num_threads", lambda n: limited.append(("torch", n)))
    env: dict[str, str] = {}
    assert limit_threads(4, env, cores=16) == 4
    assert all(env[var] == "4" for var in THREAD_VARS)
    assert limited[0] == 4 and (torch is None or ("torch", 4) in limited)


def test_thread_variables_the_user_set_are_left_alone(monkeypatch):
    monkeypatch.setattr("threadpoolctl.threadpool_limits", lambda limits: pytest.fail("limited anyway"))
    env = {"OMP_NUM_THREADS": "3"}
    assert limit_threads(4, env, cores=16) is None and env == {"OMP_NUM_THREADS": "3"}
    assert limit_threads(1, {}, cores=16) is None  # one rank on the host keeps every core


@pytest.mark.parametrize("cuda, local_rank, local_size, gpus, expected", [
    (True, 1, 2, 2, ("cpu:gloo,cuda:nccl", 1)),  # a GPU per rank: bound, both engines
    (True, 3, 4, 8, ("cpu:gloo,cuda:nccl", 3)),
    (True, 1, 2, 1, ("gloo", None)),  # two ranks, one GPU: NCCL would refuse; gloo, unbound
    (False, 0, 2, 0, ("gloo", None)),  # CPU only
])
def test_torchrun_ranks_bind_to_gpu_local_rank(cuda, local_rank, local_size, gpus, expected):
    assert torch_group_choice(cuda, local_rank, local_size, gpus) == expected


def test_an_nccl_rank_takes_gpu_local_rank_or_says_there_are_too_few():
    assert [gpu_for_rank(r, 4, 4) for r in range(4)] == [0, 1, 2, 3]
    with pytest.raises(RuntimeError, match="3 ranks run on this host but it has 2 GPU"):
        gpu_for_rank(2, 3, 2)


def test_group_devices_of_plain_and_combined_torch_backends():
    assert group_devices("gloo") == {"cpu"} and group_devices("nccl") == {"cuda"}
    assert group_devices("cpu:gloo,cuda:nccl") == {"cpu", "cuda"}


def test_torchrun_init_sets_the_device_before_the_group(monkeypatch):
    """Under torchrun with 2 GPUs, rank 1 calls torch.cuda.set_device(1), then makes a cpu:gloo,cuda:nccl group."""
    torch = pytest.importorskip("torch")
    import torch.distributed as tdist

    calls = []
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "fake")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(tdist, "is_initialized", lambda: bool(calls) and calls[-1][0] == "init")
    monkeypatch.setattr(tdist, "init_process_group", lambda backend: calls.append(("init", backend)))
    assert launch_module._torch_group_ready()
    assert calls == [("set_device", 1), ("init", "cpu:gloo,cuda:nccl")]


def test_mpi4py_without_an_mpi_library_gives_an_error_naming_the_fix(tmp_path):
    """mpi4py 4 raises RuntimeError without an MPI library; nnx turns it into an ImportError saying what to do."""
    script = tmp_path / "no_mpi.py"
    script.write_text(textwrap.dedent("""
        import sys
        class NoMPI:  # mpi4py.MPI as it fails to load without an MPI library
            def find_spec(self, name, path=None, target=None):
                if name == "mpi4py.MPI":
                    raise RuntimeError("cannot load MPI library")
        sys.meta_path.insert(0, NoMPI())
        from nnx import distributed as dist
        try:
            dist.init("mpi")
        except ImportError as exc:
            print("ImportError:", exc)
    """))
    pytest.importorskip("mpi4py")
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert "ImportError: mpi4py is installed but cannot load an MPI library" in res.stdout, res.stderr[-2000:]
    assert "pip install mpich" in res.stdout


# -- real processes (issue 20 item 2) ------------------------------------------------------------------------------
def _unset_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


PROBE = textwrap.dedent("""
    import json, os, sys
    from threadpoolctl import threadpool_info
    from nnx import distributed as dist
    comm = dist.init()
    pools = sorted({p["num_threads"] for p in threadpool_info()})
    with open(os.path.join(sys.argv[1], f"rank{comm.rank}.json"), "w") as f:
        json.dump({"local": [comm.local_rank, comm.local_size], "pools": pools,
                   "omp": os.environ.get("OMP_NUM_THREADS")}, f)
""")


@needs_mpi
@pytest.mark.parametrize("user_threads", [None, "2"])
def test_mpiexec_ranks_limit_their_threads_unless_the_user_did(tmp_path, user_threads):
    import json

    pytest.importorskip("threadpoolctl")
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = _unset_env()
    if user_threads:
        env["OMP_NUM_THREADS"] = user_threads
    res = run_job([tool("mpiexec"), "-n", "2", sys.executable, "-m", "mpi4py", str(script), str(tmp_path)],
                  capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["local"] for r in ranks] == [[0, 2], [1, 2]]
    share = str(max(1, len(os.sched_getaffinity(0)) // 2)) if hasattr(os, "sched_getaffinity") else None
    for r in ranks:
        if user_threads:
            assert r["omp"] == user_threads  # the user's choice stands
        else:
            assert r["omp"] == share and r["pools"] == [int(share)], r


def _recipe_result(cmd: list[str]) -> tuple[float, float]:
    """Run examples/16_data_parallel.py (--quick) and read the loss and validation accuracy rank 0 printed."""
    res = run_job(cmd, capture_output=True, text=True, timeout=180, cwd=ROOT, env=_unset_env())
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    match = re.search(r"^[0-9.]+ s; loss ([0-9.]+), val_accuracy ([0-9.]+)", res.stdout, re.M)
    assert match, res.stdout[-2000:]
    return float(match.group(1)), float(match.group(2))


@needs_mpi
@pytest.mark.slow
def test_the_documented_mpi_recipe_with_thread_variables_unset_gives_the_one_process_numbers(tmp_path):
    """``mpiexec -n 2 python -m mpi4py examples/16_data_parallel.py``, thread variables unset, as a user runs it.

    Its speed (before each rank limited its threads, the two BLAS pools fought over the cores and
    the recipe took 22-50x as long as one process) is measured by benchmarks/bench_distributed.py,
    and the limit itself by the probe test above; here the recipe must run and train as one process does.
    """
    example = [str(ROOT / "examples" / "16_data_parallel.py"), "--quick", "--out", str(tmp_path)]
    one = _recipe_result([sys.executable, *example])
    two = _recipe_result([tool("mpiexec") or "mpiexec", "-n", "2", sys.executable, "-m", "mpi4py", *example])
    assert two == pytest.approx(one, abs=2e-4), f"2 ranks: loss, val_accuracy {two}; one process: {one}"
