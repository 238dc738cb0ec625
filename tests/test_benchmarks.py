"""The benchmark scripts run end to end at tiny size, so they cannot rot. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bench_train_tiny(tmp_path):
    script = ROOT / "benchmarks" / "bench_train.py"
    res = subprocess.run([sys.executable, str(script), "--tiny", "--out", str(tmp_path)], capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
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
            assert shape["nnx_syncs_per_epoch"] == 1, "one host sync per epoch: the reported loss"
            if "torch" in results:
                # same initial weights, same batches: the two must have done the same training
                assert results["torch"]["loss"] == pytest.approx(results["nnx"]["loss"], rel=1e-3)
        assert variant["gemm"]["gemm_set_s"] > 0 and variant["gemm"]["nnx_step_s"] > 0
    assert report["memory"]["need_total"] > 0 and report["memory"]["traced_peak"] > 0
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "samples_per_s_vs_batch.png").stat().st_size > 0


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run(tmp_path):
    # the dry run's tests are two: one process runs them sooner than starting pytest-xdist workers
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, TEST_ARGS="-k test_fastpath_switch",
               TEST_WORKERS="0")
    res = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                         text=True, timeout=900, cwd=ROOT, env=env)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    summary = res.stdout[res.stdout.index("nnx GPU check (DRY RUN)"):]
    assert "tests      passed" in summary
    assert "benchmark  ok" in summary
    assert "tiny_ce" in summary and "nnx/peer" in summary
    for backend in ("numpy", "torch"):  # nnx on each against its native loop
        assert f"\n{backend} " in summary, backend
    assert (tmp_path / "RESULTS.md").exists()
