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
