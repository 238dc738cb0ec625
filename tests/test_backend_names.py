"""Backend names are case-insensitive and their documented aliases work; device labels keep their case."""

from __future__ import annotations

from pathlib import Path

import pytest

import nnx
from nnx.backends import backend_status

ALIASES = {"np": "numpy", "pytorch": "torch", "strict": "array_api_strict", "cp": "cupy"}


@pytest.mark.parametrize("spelling, name", [("NumPy", "numpy"), ("NUMPY", "numpy"), ("Np", "numpy"),
                                            ("PyTorch", "torch"), ("Torch", "torch"), ("JAX", "jax"),
                                            ("Array_API_Strict", "array_api_strict"), ("Strict", "array_api_strict")])
def test_backend_names_are_case_insensitive(spelling, name):
    if not backend_status(name)[0]:
        pytest.skip(f"{name} not available: {backend_status(name)[1]}")
    assert nnx.get_backend(spelling) is nnx.get_backend(name)
    model = nnx.Sequential(nnx.Dense(2, 1), backend=spelling, seed=0)
    assert model.backend.spec == nnx.get_backend(name).spec


def test_the_documented_aliases_resolve_to_their_backends():
    root = Path(__file__).resolve().parent.parent
    guide = (root / "docs" / "getting_started.md").read_text(encoding="utf-8")
    readme = (root / "README.md").read_text(encoding="utf-8")
    for alias, name in ALIASES.items():
        assert f'`"{alias}"`' in guide and f'`"{alias}"`' in readme, f"the alias {alias!r} is not documented"
        if backend_status(name)[0]:
            assert nnx.get_backend(alias) is nnx.get_backend(name)


def test_an_unknown_name_still_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'NumPie'; valid names: \['numpy'"):
        nnx.get_backend("NumPie")
