"""A test run leaves nothing in the temporary folder ($TMPDIR) it was given."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_test_run_leaves_the_temp_folder_as_it_found_it(tmp_path):
    temp = tmp_path / "given-tmpdir"
    temp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NNX_TEST_TMPDIR", "JAX_COMPILATION_CACHE_DIR")}
    env.update(TMPDIR=str(temp), NNX_TEST_BACKEND="numpy")
    # tests that use tmp_path (pytest-of-<user> in the temp folder) and the JAX cache folder conftest makes
    proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "0", "-q", "-p", "no:cacheprovider",
                           "tests/test_extras.py", "tests/test_callbacks.py::test_csv_logger_writes_and_appends",
                           "tests/test_backend_names.py::test_an_unknown_name_still_names_the_valid_ones"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    left = sorted(p.name for p in temp.iterdir())
    assert not left, f"the test run left {left} in its TMPDIR"
