"""Every example script runs with --quick on numpy and array_api_strict, and writes its figures.

The scripts run as a user runs them, each in its own Python process; they are
started together (as many at a time as there are CPUs) when the first test of
this module asks, so the module takes about as long as its slowest share.
RuntimeWarnings (overflow, invalid values) are turned into errors.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nnx.backends import backend_status

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
BACKENDS = ["numpy", "array_api_strict"]
TIMEOUT_S = 300
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.slow


def _run(script: str, args: list[str], out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0",
               # the scripts run side by side: one BLAS thread each keeps them from fighting for cores
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    cmd = [sys.executable, "-W", "error::RuntimeWarning", str(EXAMPLES / script), *args, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=EXAMPLES.parent)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """(script, backend) -> (future of the finished process, its --out folder) for the selected tests.

    Only the runs that the selected tests of this module need are started, all at once.
    """
    wanted = []
    for item in request.session.items:
        if item.module is not request.module:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "script" in params:
            wanted.append((params["script"], params["backend"]))
        elif item.name == "test_breast_cancer_full_run_reaches_96_percent":
            wanted.insert(0, ("10_breast_cancer.py", "full"))  # the longest run goes first
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
    jobs = {}
    for script, backend in wanted:
        if backend != "full" and not backend_status(backend)[0]:
            continue
        args = [] if backend == "full" else ["--quick", "--backend", backend]
        out = tmp_path_factory.mktemp(f"{script[:2]}_{backend}")
        jobs[(script, backend)] = (pool.submit(_run, script, args, out), out)
    yield jobs
    pool.shutdown(wait=True, cancel_futures=True)


def _finished(runs, key) -> tuple[subprocess.CompletedProcess, Path]:
    future, out = runs[key]
    proc = future.result()
    assert proc.returncode == 0, (
        f"{' '.join(map(str, proc.args))} exited with {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout[-3000:]}\n--- stderr ---\n{proc.stderr[-3000:]}"
    )
    return proc, out


def test_every_topic_has_a_script():
    # the tutorial's 13 topics, then the guides' examples (custom layer, out-of-core, ...), numbered without gaps
    assert len(SCRIPTS) >= 13, SCRIPTS
    assert [s[:2] for s in SCRIPTS] == [f"{i:02d}" for i in range(1, len(SCRIPTS) + 1)]


def test_the_examples_readme_lists_every_script():
    listed = re.findall(r"^\| \[`(\d\d_\w+\.py)`\]", (EXAMPLES / "README.md").read_text(encoding="utf-8"), re.M)
    assert listed == SCRIPTS, f"examples/README.md lists {listed}, the folder holds {SCRIPTS}"
    count = re.search(r"(\w+) scripts in \[`examples/`\]", (EXAMPLES.parent / "README.md").read_text(encoding="utf-8"))
    assert count is not None and count.group(1).lower() == NUMBER_WORDS[len(SCRIPTS)], count


NUMBER_WORDS = {13: "thirteen", 14: "fourteen", 15: "fifteen", 16: "sixteen", 17: "seventeen", 18: "eighteen"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_and_writes_figures(runs, script, backend):
    ok, why = backend_status(backend)
    if not ok:
        pytest.skip(f"{backend} not available: {why}")
    proc, out = _finished(runs, (script, backend))
    written = sorted(out.glob("*.png"))
    assert written, f"{script} wrote no PNG into {out}"
    announced = [Path(line.split(":", 1)[1].strip()) for line in proc.stdout.splitlines()
                 if line.startswith("figure:")]
    assert sorted(announced) == written, f"{script} announced {announced} but wrote {written}"
    for png in written:
        assert png.name.startswith(script[:3]), f"{png.name} should carry the script's number"
        assert png.read_bytes()[:8] == PNG_SIGNATURE, f"{png} is not a PNG file"


def test_breast_cancer_full_run_reaches_96_percent(runs):
    proc, out = _finished(runs, ("10_breast_cancer.py", "full"))
    match = re.search(r"^\s*accuracy\s+([0-9.]+)$", proc.stdout, re.MULTILINE)
    assert match, proc.stdout
    assert float(match.group(1)) >= 0.96, proc.stdout
    assert re.search(r"^\s*malignant\s+\d+\s+\d+$", proc.stdout, re.MULTILINE), "confusion matrix missing"
