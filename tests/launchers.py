"""The process launchers the distributed tests start (mpiexec, torchrun), found once for every test module."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    """The venv's launcher first (CI installs mpich into the venv), else the one on PATH."""
    local = BIN / name
    return str(local) if local.exists() else shutil.which(name)


def mpi_ready() -> bool:
    """Whether mpi4py imports and an mpiexec exists."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return tool("mpiexec") is not None


needs_mpi = pytest.mark.skipif(not mpi_ready(), reason="mpi4py or mpiexec not installed (pip install mpich mpi4py)")


# MPICH's mpiexec (hydra) keeps the host's topology in a file of this name for the job's life; a job that
# aborts (a test's deliberate fault) leaves it behind, outside any $TMPDIR
HYDRA_LEFTOVERS = "/tmp/hydra_hwloc_xmlfile_*"


@contextlib.contextmanager
def one_job_at_a_time() -> Iterator[None]:
    """Run the body while no other launcher job of this test run does, then remove what mpiexec left behind.

    The lock spans the pytest-xdist workers (a file in the run's temporary folder), so the
    topology files that appear meanwhile are this job's own and removing them is safe. Two
    multi-process jobs on a small machine gain nothing from running side by side anyway.
    """
    import fcntl  # POSIX, as the launchers themselves

    lock_path = Path(os.environ.get("NNX_TEST_TMPDIR", tempfile.gettempdir())) / "launcher-jobs.lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        before = set(glob.glob(HYDRA_LEFTOVERS))
        try:
            yield
        finally:
            for path in set(glob.glob(HYDRA_LEFTOVERS)) - before:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def run_job(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """`subprocess.run` of a launcher job (mpiexec, torchrun), one at a time (`one_job_at_a_time`)."""
    with one_job_at_a_time():
        return subprocess.run(cmd, **kwargs)
