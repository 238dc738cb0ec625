"""The repository's conftest.py asks for pytest-xdist workers once, from the controlling process."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("xdist")

ROOT_CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"

REPORTS_PARENT = """
import os

def test_report_parent():
    with open(os.environ["PARENT_FILE"], "a") as out:
        out.write(f"{os.getppid()}\\n")
"""


def test_workers_do_not_start_workers_of_their_own(tmp_path: Path) -> None:
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
