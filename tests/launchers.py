"""The process launchers the distributed tests start (mpiexec, torchrun), found once for every test module."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

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
