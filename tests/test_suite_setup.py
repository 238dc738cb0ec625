"""The suite's own setup: the repository's conftest.py asks for pytest-xdist workers once, from the
controlling process, and the suite's test ids do not depend on the order its modules are collected in."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"

REPORTS_PARENT = """
import os

def test_report_parent():
    with open(os.environ["PARENT_FILE"], "a") as out:
        out.write(f"{os.getppid()}\\n")
"""


def test_workers_do_not_start_workers_of_their_own(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    shutil.copy(ROOT_CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_parent.py").write_text(REPORTS_PARENT)
    parents = tmp_path / "parents.txt"
    env = {**os.environ, "PARENT_FILE": str(parents)}
    env.pop("PYTEST_XDIST_WORKER", None)  # this test may itself run in a worker
    # no -n given: the conftest chooses `auto`, and the test must run in a direct child
    outer = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        # nested workers never reach a test: they only start more workers, so give up early
        output, _ = outer.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already: nothing left behind
            os.killpg(outer.pid, signal.SIGKILL)  # the workers too, however deep they went
    assert outer.returncode == 0, output
    assert parents.read_text().split() == [str(outer.pid)], output


def _collect_ids(orders: list[list[str]], env: dict[str, str]) -> list[set[str]]:
    """The test ids of a `pytest --collect-only` of each module order, the processes side by side."""
    root = Path(__file__).resolve().parent.parent
    in_process = ["-n", "0"] if importlib.util.find_spec("xdist") else []
    # --assert=plain: collecting compiles no test module with pytest's rewritten asserts (about a third of the time)
    collections = [subprocess.Popen([sys.executable, "-m", "pytest", "--collect-only", "-q", *in_process, "-p",
                                     "no:cacheprovider", "--assert=plain", *order], cwd=root, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                   for order in orders]
    ids = []
    try:
        for proc in collections:
            output, _ = proc.communicate(timeout=300)
            assert proc.returncode == 0, output[-2000:]
            ids.append({line for line in output.splitlines() if "::" in line})
    finally:
        for proc in collections:
            proc.kill()  # nothing, where it has ended
            proc.wait()
    return ids


def _collected_the_whole_folder(session: pytest.Session, files: list[str]) -> bool:
    """Whether this session was given the tests folder (the full run, and each of its pytest-xdist workers) and
    collected its modules in name order, as pytest does, so in the order of `files` (those skipped at import
    among them, without a test)."""
    if [str(Path(arg).resolve()) for arg in session.config.args] != [str(Path(__file__).resolve().parent)]:
        return False
    paths = [str(item.path) for item in session.items]
    order = list(dict.fromkeys(paths))
    runs = sum(1 for i, path in enumerate(paths) if i == 0 or paths[i - 1] != path)  # each module's tests together
    return runs == len(order) and order == sorted(order) and set(order) <= set(files)


def test_test_ids_do_not_depend_on_the_order_modules_are_collected_in(request: pytest.FixtureRequest) -> None:
    """Each pytest-xdist worker collects the ids it is given on its own; an id that exists only after some
    other module was imported (a parametrization over a registry that test modules add to) is missing
    there, and the workers then collect nothing at all, without an error (seen on a GPU machine).

    Where this session collected the whole folder (the full run, in each worker), its ids are the name order's,
    and one process collects the modules in the reverse order; where they differ (the session may have deselected
    some, with -k or --lf), a process collecting in name order is what the reverse order is compared with."""
    tests = Path(__file__).resolve().parent
    files = sorted(str(f) for f in tests.glob("test_*.py"))
    if not _collected_the_whole_folder(request.session, files):
        env = {**os.environ, "NNX_TEST_BACKEND": "numpy"}  # one backend case: the ids' other parts are what count
        forward, backward = _collect_ids([files, files[::-1]], env)
    else:
        env = dict(os.environ)  # the session's backend cases: its ids are compared as they are
        (backward,) = _collect_ids([files[::-1]], env)
        forward = {item.nodeid for item in request.session.items}
        if forward != backward:  # the session's own selection (-k, --lf), or the bug: a process in name order tells
            (forward,) = _collect_ids([files], env)
    assert forward == backward, f"only in one order: {sorted(forward ^ backward)[:10]}"


def test_only_backend_cases_keeps_every_device_case_of_the_backend() -> None:
    """`NNX_TEST_ONLY_BACKEND_CASES=1 bash backends/run_tests.sh array_api_strict` selects its CPU and device1
    cases; matching only the bare name dropped device1's, the run that catches a forgotten device= (found in
    review)."""
    ids, out = _one_backends_ids("test_activations.py", "array_api_strict", only_its_cases=True)
    assert any("[array_api_strict-" in i for i in ids), out
    assert any("[array_api_strict:device1-" in i for i in ids), out


def test_one_backends_run_leaves_out_tests_listing_only_other_backends() -> None:
    """`bash backends/run_tests.sh numpy` (NNX_TEST_BACKEND=numpy) narrowed only the `backend` fixture: a test that
    lists its backends itself (``parametrize("backend", ["numpy", "torch", "jax"])``) still ran on torch and JAX
    (found in review). Those cases are left out now; a test naming no backend, and this backend's, still run."""
    ids, out = _one_backends_ids("test_changes_after_fit.py", "numpy", only_its_cases=False)
    assert any("[numpy" in i for i in ids), out
    assert not [i for i in ids if "[torch" in i or "[jax" in i or "-torch" in i or "-jax" in i], out
    assert any("[" not in i for i in ids), "the tests that name no backend run too"


def _one_backends_ids(module: str, backend: str, only_its_cases: bool) -> tuple[list[str], str]:
    """The test ids `pytest --collect-only` of one module gives with NNX_TEST_BACKEND set (and
    NNX_TEST_ONLY_BACKEND_CASES, where `only_its_cases`), and the end of its output for a failing assert."""
    tests = Path(__file__).resolve().parent
    env = {**os.environ, "NNX_TEST_BACKEND": backend}
    env.pop("NNX_TEST_ONLY_BACKEND_CASES", None)
    if only_its_cases:
        env["NNX_TEST_ONLY_BACKEND_CASES"] = "1"
    in_process = ["-n", "0"] if importlib.util.find_spec("xdist") else []
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *in_process, "-p", "no:cacheprovider",
                          str(tests / module)], cwd=tests.parent, env=env, capture_output=True, text=True, timeout=120)
    return [line for line in out.stdout.splitlines() if "::" in line], out.stdout[-2000:]
