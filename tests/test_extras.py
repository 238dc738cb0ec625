"""Every optional feature has a pip extra named after it, and the README names the extras it relies on."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_optional_features_have_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    wanted = {"sklearn": "scikit-learn", "mpi": "mpi4py", "onnx": "onnx", "plot": "matplotlib", "progress": "tqdm",
              "torch": "torch", "jax": "jax"}
    for extra, package in wanted.items():
        assert extra in extras, f'pip install "nnx-mlp[{extra}]" is missing from pyproject.toml'
        assert any(req.startswith(package) for req in extras[extra]), (extra, extras[extra])
