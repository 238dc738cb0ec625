"""The benchmark scripts run end to end at tiny size, so they cannot rot. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # runs the benchmark scripts in subprocesses
def test_bench_train_tiny(tmp_path):
    script = ROOT / "benchmarks" / "bench_train.py"
    # one fresh interpreter per import-time figure (--tiny's default is 2): the section is written all the same.
    # One OpenMP/BLAS thread in every process, the script's own and its children (the memory child, the import
    # timings), as its --threads 1 gives the measurements: at tiny size a second thread only spins, on a core
    # the suite's other worker needs
    res = subprocess.run([sys.executable, str(script), "--tiny", "--import-runs", "1", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-4000:]
    text = (tmp_path / "RESULTS.md").read_text()
    for section in ("## BLAS and environment", "## Targets", "## Epoch times", "### GEMMs of the tiny_ce shape",
                    "### nnx fast paths on and off", "### Samples/s against batch size", "## Peak memory",
                    "## Import time", "python benchmarks/bench_train.py --tiny"):
        assert section in text, section
    report = json.loads((tmp_path / "results.json").read_text())
    for variant in report["variants"].values():
        assert set(variant["shapes"]) == {"tiny_bce", "tiny_ce"}
        for shape in variant["shapes"].values():
            results = shape["results"]
            # NumPy's arrays are in host memory: the steps read nothing through Backend.to_host, and neither does
            # the epoch's loss, read where it lies (on a device that is the epoch's one transfer)
            assert shape["nnx_syncs_per_epoch"] == 0, "no Backend.to_host in a NumPy epoch"
            if "torch" in results:
                # same initial weights, same batches: the two must have done the same training
                assert results["torch"]["loss"] == pytest.approx(results["nnx"]["loss"], rel=1e-3)
        assert variant["gemm"]["gemm_set_s"] > 0 and variant["gemm"]["nnx_step_s"] > 0
    assert report["memory"]["need_total"] > 0 and report["memory"]["traced_peak"] > 0
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "samples_per_s_vs_batch.png").stat().st_size > 0


def _dry_run_env(out: Path) -> dict[str, str]:
    # step 5 narrowed to one backend-parametrized test, in this process (no pytest-xdist workers to start), from a
    # module that imports only the backend under test (test_backend.py imports every installed one to collect)
    return dict(os.environ, OUT=str(out), PYTHON=sys.executable, TEST_FILES="tests/test_layers.py",
                TEST_ARGS="-k test_dropout_masks_change_between_steps", TEST_WORKERS="0")


def _rows(summary: str, step: str) -> list[str]:
    return [line[11:] for line in summary.splitlines() if line.startswith(f"{step:<10} ")]


@pytest.mark.slow  # runs the benchmark scripts in subprocesses
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_dry_run(tmp_path):
    script = ROOT / "benchmarks" / "gpu_check.sh"
    text = script.read_text()
    for budget in ("Time budget", "TOTAL", "timeout each", "what is left"):  # the budget table heads the script
        assert budget in text.split("set -uo pipefail")[0], budget
    res = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, timeout=900, cwd=ROOT,
                         env=_dry_run_env(tmp_path))
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert "nnx GPU check (DRY RUN)" in summary
    # the steps in their order: installs, probes, benchmarks small to wide, compiled epochs, the profiled
    # epochs, data parallel, then the tests
    steps = [line.split()[0] for line in summary.splitlines()[1:] if line and not line.startswith("(")]
    order = ["driver", "install", "probe", "benchmark", "epochs", "profile", "parallel", "tests", "end"]
    assert [s for i, s in enumerate(steps) if i == 0 or steps[i - 1] != s] == order, steps
    install = _rows(summary, "install")
    assert all("would run" in row for row in install)
    # nnx's own requirement first: every later check imports nnx
    assert [row.split(":")[0] for row in install] == ["array-api-compat", "array-api-strict", "cupy", "torch", "jax"]
    assert any("pip install jax[cuda12]" in row for row in _rows(summary, "install"))
    assert all("kernel, 1024x1024 matmul and dropout draw match NumPy" in row for row in _rows(summary, "probe"))
    bench = _rows(summary, "benchmark")
    assert all(row.startswith("ok: ") for row in bench) and len(bench) == 4
    assert [row.split(",")[1].split(":")[0].strip() for row in bench] == ["tiny_bce"] * 2 + ["tiny_ce"] * 2
    for backend in ("numpy", "torch"):  # nnx on each against its native loop
        assert any(row.startswith(f"ok: {backend} vs ") for row in bench), backend
    epochs = _rows(summary, "epochs")  # compiled epochs against per step and torch eager (CPU stand-ins)
    assert len(epochs) == 1 and epochs[0].startswith("ok: jax:cpu tiny") and "nnx_step" in epochs[0], epochs
    assert "torch" in epochs[0], epochs
    profile = _rows(summary, "profile")  # one profiled epoch of nnx and of native torch (the CPU's operators)
    assert [row.split(":")[1].strip() for row in profile] == ["nnx", "torch"], profile
    assert all("ms wall (profiled)" in row and "6 steps" in row for row in profile), profile
    parallel = _rows(summary, "parallel")
    assert len(parallel) == 4 and all('"ranks"' in row for row in parallel), parallel
    assert parallel[-1].startswith("torchrun-2-gloo-sharded:") and '"shard": true' in parallel[-1], parallel
    tests = _rows(summary, "tests")
    assert len(tests) == 1 and tests[0].startswith("torch: 1 collected; ok: 1 passed"), summary
    assert "all passed" in _rows(summary, "end")[0]
    assert (tmp_path / "RESULTS.md").exists()


def test_gpu_check_installs_the_requirements_pyproject_names():
    """The GPU check installs nnx's requirement and the tests' array-api-strict with pyproject's own bounds."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    wanted = [r for r in project["dependencies"] + project["optional-dependencies"]["test"]
              if r.startswith("array-api-")]
    assert len(wanted) == 2, wanted
    for requirement in wanted:
        assert f'"{requirement}"' in script, requirement


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_refuses_a_step_it_does_not_have(tmp_path):
    """A misspelt STEPS word would otherwise run only the probes and end with "all passed"."""
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                         text=True, timeout=60, cwd=ROOT, env=dict(_dry_run_env(tmp_path), STEPS="tests test"))
    assert res.returncode == 2 and "no step 'test'" in res.stderr, res.stdout + res.stderr


@pytest.mark.slow  # runs the benchmark scripts in subprocesses
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_gpu_check_killed_halfway_still_leaves_a_summary(tmp_path):
    """A run killed in the middle (as a time limit does) keeps every finished row and says where it stopped."""
    proc = subprocess.Popen(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=ROOT,
                            env=_dry_run_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    summary = tmp_path / "summary.txt"
    try:
        deadline = time.monotonic() + 300
        while not (summary.exists() and "probe " in summary.read_text()):  # killed in step 2 or 3
            assert proc.poll() is None and time.monotonic() < deadline, "the dry run never reached its probes"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = summary.read_text()
    assert "install    " in text and "probe      " in text, text  # what finished is there
    assert "INTERRUPTED" in text, text
    assert _rows(text, "end") and "something FAILED" in _rows(text, "end")[0], text
    assert "INTERRUPTED" in (tmp_path / "RESULTS.md").read_text()
    assert proc.returncode != 0


def test_bench_distributed_times_a_finished_allreduce_and_releases_the_communicator(monkeypatch, capsys):
    """Each timed all-reduce waits for the device (NCCL returns once launched); the communicator is closed after."""
    spec = importlib.util.spec_from_file_location("bench_distributed", ROOT / "benchmarks" / "bench_distributed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import nnx
    from nnx import distributed as dist

    comm = dist.SingleProcess()
    events = []
    real_allreduce = comm.allreduce
    comm.allreduce = lambda x, op="sum": events.append("reduce") or real_allreduce(x, op)
    comm.close = lambda: events.append("close")
    monkeypatch.setattr(dist, "init", lambda engine=None: comm)
    monkeypatch.setattr(type(nnx.get_backend("numpy")), "synchronize", lambda self, x=None: events.append("sync"))
    bench.worker(1, engine="single", backend="numpy", batch=64, global_steps=2)
    reduces = [i for i, e in enumerate(events) if e == "reduce"]
    assert reduces and all(events[i + 1] == "sync" for i in reduces), events  # every reduction timed to its end
    assert events[-1] == "close"
    assert "allreduce" not in vars(comm), "the timing wrapper (which holds comm itself) was left on the communicator"
    assert '"ranks": 1' in capsys.readouterr().out


def test_bench_torch_steps_reports_every_stage_of_both_steps(monkeypatch, capsys):
    """A tiny run of the stage-by-stage comparison against native torch: both rows, four stages, the ratio."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("bench_torch_steps", ROOT / "benchmarks" / "bench_torch_steps.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["bench_torch_steps.py", "--shape", "small", "--optimizer", "adam",
                                      "--rounds", "1", "--steps", "2"])
    bench.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| native torch |", "| nnx |"))]
    assert len(rows) == 2 and all(len(row.split("|")) == 8 for row in rows), out
    assert "nnx / native torch, whole step: " in out and "(execution: flat)" in out


def test_bench_numpy_floor_runs_nnx_operations_bit_for_bit(monkeypatch, capsys):
    """A tiny run of nnx's step against its operations written out bare: every stage, and the same final bits
    (the bare step is only a floor while it runs exactly nnx's operations)."""
    spec = importlib.util.spec_from_file_location("bench_numpy_floor", ROOT / "benchmarks" / "bench_numpy_floor.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["bench_numpy_floor.py", "--rounds", "1", "--steps", "20"])
    bench.main()
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line.count("|") == 5]
    assert [row.split("|")[1].strip() for row in rows[1:]] == [*bench.STAGES, "forward+loss+backward", "step"], out
    assert "final weights: the same bits in both" in out


@pytest.mark.slow  # two fresh interpreters
@pytest.mark.parametrize("in_one_fit", [False, True], ids=["a fit call each", "in one fit"])
def test_bench_against_times_each_checkout_in_its_own_process(capsys, in_one_fit):
    """A tiny run against this very checkout: each process imports nnx from its tree, one row per tree."""
    pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("bench_against", ROOT / "benchmarks" / "bench_against.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main([str(ROOT), "--shape", "tiny_bce", "--processes", "1", "--epochs", "2"] +
               (["--in-one-fit"] if in_one_fit else []))
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| this checkout |") or line.startswith(f"| {ROOT} |")]
    assert len(rows) == 2 and all(len(row.split("|")) == 7 for row in rows), out
    assert f"this checkout / {ROOT}: " in out
    assert (f"whole fit calls, this checkout / {ROOT}: " in out) is not in_one_fit


@pytest.mark.slow  # two fresh interpreters, each compiling a few JAX programs
def test_bench_first_calls_times_every_case_in_each_checkouts_own_process(capsys):
    """A run against this very checkout: one row per case, each with both checkouts' seconds and their ratio."""
    pytest.importorskip("jax")
    spec = importlib.util.spec_from_file_location("bench_first_calls", ROOT / "benchmarks" / "bench_first_calls.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main([str(ROOT), "--processes", "1"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(bench.CASES) <= set(rows), out
    assert all(rows[case].rstrip().endswith("x |") and len(rows[case].split("|")) == 6 for case in bench.CASES), out
