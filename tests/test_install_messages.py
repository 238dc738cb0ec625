"""What a backend that cannot run says about its install: the messages that name a fix must name the right one."""

from __future__ import annotations

import sys

import pytest

import nnx
from nnx.backends.base import import_library


def _installed_but_broken(tmp_path, monkeypatch, name: str, body: str) -> None:
    """A package `name` that is on the path (installed) and raises while importing, as a wheel without its
    shared libraries does (CuPy: "CuPy is not correctly installed ... libcudart.so.12: cannot open ...")."""
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.parametrize("body", [
    "raise ImportError('CuPy is not correctly installed: libcudart.so.12: cannot open shared object file')",
    "import nnx_no_such_dependency_of_it",  # a dependency of the library is missing, not the library
])
def test_an_installed_library_that_fails_to_import_is_not_called_missing(tmp_path, monkeypatch, body):
    _installed_but_broken(tmp_path, monkeypatch, "nnx_broken_lib", body)
    with pytest.raises(nnx.BackendUnavailableError) as info:
        import_library("nnx_broken_lib", "broken", 'pip install "nnx-mlp[broken]"')
    message = str(info.value)
    assert "not installed" not in message, message
    assert "nnx_broken_lib is installed but fails to import" in message, message
    assert "nnx_no_such_dependency_of_it" in message or "libcudart" in message, message  # the library's own words


def test_a_library_that_is_not_there_is_called_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "nnx_absent_lib", None)
    with pytest.raises(nnx.BackendUnavailableError, match=r"nnx_absent_lib is not installed .*install it with: pip"):
        import_library("nnx_absent_lib", "absent", "pip install nnx-absent-lib")


def test_a_rocm_torch_without_a_gpu_is_not_called_a_cpu_only_build():
    # ROCm builds of torch run "torch:cuda" on AMD GPUs and have torch.version.cuda None, as CPU-only ones do:
    # telling that user to uninstall torch for a CUDA wheel would be the wrong fix
    from nnx.backends.torch import cuda_unavailable

    message = cuda_unavailable("torch:cuda", "2.13.0+rocm6.4", None, None, hip="6.4.43482")
    assert "CPU-only" not in message and "pip uninstall" not in message, message
    assert "ROCm" in message and "AMD GPU" in message, message
    assert "CPU-only build" in cuda_unavailable("torch:cuda", "2.13.0+cpu", None, None, hip=None)
