"""Every optional feature has a pip extra named after it (``pip install "nnx-mlp[sklearn]"``, ...)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_optional_features_have_extras():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    wanted = {"sklearn": "scikit-learn", "mpi": "mpi4py", "onnx": "onnx", "plot": "matplotlib", "progress": "tqdm",
              "torch": "torch", "jax": "jax"}
    for extra, package in wanted.items():
        assert extra in extras, f'pip install "nnx-mlp[{extra}]" is missing from pyproject.toml'
        assert any(req.startswith(package) for req in extras[extra]), (extra, extras[extra])


def test_nnx_sklearn_without_scikit_learn_names_the_extra():
    """A missing optional package is named with its pip line, not a bare 'No module named ...'."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['sklearn'] = None\n"
            "import importlib.util, importlib.machinery\n"
            "real = importlib.util.find_spec\n"
            "importlib.util.find_spec = lambda name, *a: None if name == 'sklearn' else real(name, *a)\n"
            "try:\n    import nnx.sklearn\nexcept ImportError as exc:\n    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert 'pip install "nnx-mlp[sklearn]"' in out.stdout, out.stdout + out.stderr


def test_the_torch_requirements_file_called_cpu_reaches_the_cpu_wheels():
    """backends/README.md calls requirements-torch.txt the CPU install; on Linux PyPI's torch wheel is the CUDA
    build (several GB of NVIDIA libraries), so the file must point pip at torch's CPU index (found in review)."""
    text = (ROOT / "backends" / "requirements-torch.txt").read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines, lines
