"""Every example script runs with --quick on numpy and array_api_strict, and writes its figures.

The scripts run as a user runs them, each in its own Python process, with RuntimeWarnings (overflow,
invalid values) turned into errors; they are started together (as many at a time as there are CPUs)
when the first test of this module asks, so the module takes about as long as its slowest share. On
Linux the quick runs are forked from one interpreter that has imported matplotlib, scikit-learn and
nnx once (`forked_scripts.py`), which saves each run about a second of imports; the breast-cancer
run the README gives a new user starts a fresh `python`, as everywhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from nnx.backends import backend_status

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("[0-9][0-9]_*.py"))
BACKENDS = ["numpy", "array_api_strict"]
TIMEOUT_S = 300
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# what the examples import, imported once by the server the quick runs are forked from
SHARED_IMPORTS = ["matplotlib.pyplot", "sklearn.datasets", "nnx"]
FORKS = sys.platform == "linux"

pytestmark = pytest.mark.slow

# the scripts run side by side: one BLAS thread each keeps them from fighting for cores
ENV = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
           MKL_NUM_THREADS="1")


def _fresh(script: str, args: list[str], out: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-W", "error::RuntimeWarning", str(EXAMPLES / script), *args, "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=ENV, cwd=EXAMPLES.parent)


@contextlib.contextmanager
def _forked(requests: dict[tuple[str, str], tuple[list[str], Path]], logs: Path, jobs: int, folder: Path = EXAMPLES,
            preload: list[str] = SHARED_IMPORTS, timeout_s: int = TIMEOUT_S) -> Iterator[dict[tuple[str, str], Future]]:
    """Start `forked_scripts.py` on every (script in `folder`, backend) -> (args, out) request, `jobs` at a time;
    a future of each one's result, as `subprocess.run` gives it. On leaving, the server and the scripts it still
    runs (a test that stopped early) are ended."""
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("forked_scripts.py")), "--jobs", str(jobs),
         "--error-on", "RuntimeWarning", *preload],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=EXAMPLES.parent, start_new_session=True,
        env=dict(ENV, PYTHONPATH=os.pathsep.join([str(EXAMPLES.parent), *filter(None, [ENV.get("PYTHONPATH")])])))
    futures, by_id = {}, {}
    for i, ((script, backend), (args, out)) in enumerate(requests.items()):
        cmd = [str(folder / script), *args, "--out", str(out)]
        by_id[i] = (cmd, logs / f"{i}.out", logs / f"{i}.err", futures.setdefault((script, backend), Future()))
        server.stdin.write(json.dumps({"id": i, "script": cmd[0], "args": cmd[1:], "stdout": str(by_id[i][1]),
                                       "stderr": str(by_id[i][2]), "timeout_s": timeout_s}) + "\n")
    server.stdin.close()

    def collect() -> None:
        try:
            for line in server.stdout:
                reply = json.loads(line)
                cmd, stdout, stderr, future = by_id.pop(reply["id"])
                future.set_result(subprocess.CompletedProcess(cmd, reply["returncode"], stdout.read_text(),
                                                              stderr.read_text()))
        finally:  # the server failed (or was ended): every run it still owed fails, none waits forever
            code = server.wait()
            for cmd, _, _, future in by_id.values():
                future.set_result(subprocess.CompletedProcess(cmd, code, "", f"forked_scripts.py exited with {code}"))

    threading.Thread(target=collect, daemon=True).start()
    try:
        yield futures
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)  # its session: the server and the scripts forked from it
        server.wait()


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """(script, backend) -> (future of the finished process, its --out folder) for the selected tests.

    Only the runs that the selected tests of this module need are started, all at once.
    """
    quick, full = {}, []
    for item in request.session.items:
        if item.module is not request.module:
            continue
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "script" in params and backend_status(params["backend"])[0]:
            script, backend = params["script"], params["backend"]
            quick[(script, backend)] = (["--quick", "--backend", backend],
                                       tmp_path_factory.mktemp(f"{script[:2]}_{backend}"))
        elif item.name == "test_breast_cancer_full_run_reaches_96_percent":
            full.append(("10_breast_cancer.py", "full"))
    cpus = os.cpu_count() or 2
    pool = ThreadPoolExecutor(max_workers=cpus)
    jobs = {}
    for key in full:  # the longest run, started first
        out = tmp_path_factory.mktemp("10_full")
        jobs[key] = (pool.submit(_fresh, key[0], [], out), out)
    with contextlib.ExitStack() as stack:
        if FORKS and quick:
            forked = stack.enter_context(_forked(quick, tmp_path_factory.mktemp("forked_logs"), jobs=cpus))
            jobs.update({key: (forked[key], out) for key, (_, out) in quick.items()})
        else:
            jobs.update({key: (pool.submit(_fresh, key[0], args, out), out) for key, (args, out) in quick.items()})
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


@pytest.mark.skipif(not FORKS, reason="the fork server runs on Linux only")
def test_the_fork_server_ends_each_script_as_a_fresh_python_would(tmp_path):
    """The quick runs' server (forked_scripts.py) must not turn a failing script into a passing one."""
    scripts = {"ok": "import atexit\natexit.register(print, 'at exit')\nprint(__name__, __file__)\n",
               "exits": "import sys\nsys.exit(3)\n", "raises": "raise ValueError('boom')\n",
               "warns": "import numpy as np\nnp.float64(1e308) * 10\n", "hangs": "import time\ntime.sleep(30)\n"}
    for name, text in scripts.items():
        (tmp_path / f"{name}.py").write_text(text)
    with _forked({(f"{name}.py", "numpy"): ([], tmp_path) for name in scripts}, tmp_path, jobs=len(scripts),
                 folder=tmp_path, preload=["numpy"], timeout_s=2) as futures:
        done = {script[:-3]: future.result(timeout=60) for (script, _), future in futures.items()}
    assert done["ok"].returncode == 0
    assert done["ok"].stdout.splitlines() == [f"__main__ {tmp_path / 'ok.py'}", "at exit"]
    assert done["exits"].returncode == 3
    assert done["raises"].returncode == 1 and "ValueError: boom" in done["raises"].stderr
    assert done["warns"].returncode == 1 and "RuntimeWarning: overflow" in done["warns"].stderr
    assert done["hangs"].returncode == -14  # SIGALRM at the timeout
