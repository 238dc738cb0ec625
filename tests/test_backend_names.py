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


def test_dtype_name_tells_unsigned_and_bfloat_dtypes_from_the_names_they_end_with(backend):
    """`dtype_name` matched the first known name the dtype's text ends with, so uint8 was "int8" (NumPy's, torch's,
    array_api_strict's) and torch's bfloat16 "float16": a model asked for dtype=torch.bfloat16 said it got
    'float16', and a buffer rebound to uint8 was reported as holding int8."""
    from nnx.backends import dtype_name

    xp = backend.xp
    for name in ("uint8", "int8", "uint16", "uint32", "uint64", "int64", "float16", "float32", "float64", "bool"):
        if hasattr(xp, name):
            assert dtype_name(xp.zeros(1, dtype=getattr(xp, name), device=backend.device).dtype) == name
    if backend.name in ("torch", "jax"):
        bf16 = xp.zeros(1, dtype=xp.bfloat16, device=backend.device).dtype
        assert dtype_name(bf16) == "bfloat16"
        with pytest.raises(ValueError, match="got 'bfloat16'"):
            nnx.Sequential(nnx.Dense(2, 1), backend=backend, dtype=bf16)
