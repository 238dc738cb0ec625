"""The GPU side of the adapters, checked without a GPU: error causes, device placement, synchronisation.

What a GPU machine would decide (the driver's CUDA version, the current device) is handed in, so
these tests check nnx's own logic; the CuPy calls themselves are checked in test_cupy_conformance.py.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import nnx
from nnx.backends import registry
from nnx.backends.base import Backend
from nnx.backends.cupy import CREATION, on_device
from nnx.backends.nvidia import driver_cuda_version, gpu_cause, parse_cuda, torch_cuda_install
from nnx.backends.torch import cuda_unavailable

HAS_JAX = importlib.util.find_spec("jax") is not None


# -- issue 20 item 6: each GPU error names its cause and the install line ---------------------------------------
def test_no_driver_is_told_apart_from_an_old_one():
    assert "no NVIDIA driver or GPU" in gpu_cause((12, 8), None)
    old = gpu_cause((12, 8), (11, 4))
    assert "older than the CUDA 12.8" in old and "update the driver" in old
    assert "no usable GPU" in gpu_cause((12, 8), (12, 2))  # any 12.x driver runs 12.8 code
    assert parse_cuda("12.8") == (12, 8) and parse_cuda(None) is None


def test_the_driver_probe_reads_libcuda_or_says_none():
    found = driver_cuda_version()
    assert found is None or (isinstance(found, tuple) and found[0] >= 9)


def test_torch_messages_name_the_wheel_the_driver_and_the_device_index():
    cpu_wheel = cuda_unavailable("torch:cuda:1", "2.13.0+cpu", None, None)
    assert "'torch:cuda:1'" in cpu_wheel and "CPU-only build" in cpu_wheel
    assert "pip install torch --index-url https://download.pytorch.org/whl/cu128" in cpu_wheel
    assert "whl/cu130" in torch_cuda_install((13, 0))
    assert "no NVIDIA driver or GPU" in cuda_unavailable("torch:cuda", "2.13.0", "12.8", None)
    assert "older than the CUDA 12.8" in cuda_unavailable("torch:cuda", "2.13.0", "12.8", (11, 8))


def test_torch_cpu_wheel_message_removes_it_before_installing_the_cuda_one():
    # found in review: with a CPU-only torch installed, `pip install torch --index-url .../cu128` answers
    # "Requirement already satisfied" and changes nothing, so the line alone could not fix the error it ends
    message = cuda_unavailable("torch:cuda", "2.13.0+cpu", None, None)
    assert "whl/cu128, after pip uninstall -y torch" in message, message


@pytest.mark.skipif(not HAS_JAX, reason="jax not installed")
def test_jax_gpu_on_cpu_only_jax_names_the_cuda_extra():
    from nnx.backends.jax import cuda_plugin_installed, gpu_unavailable

    assert "pip install \"jax[cuda12]\"" in gpu_unavailable("jax:gpu", RuntimeError("x"), None, None)
    assert "no NVIDIA driver or GPU" in gpu_unavailable("jax:gpu:1", RuntimeError("x"), 12, None)
    if cuda_plugin_installed() is None:
        with pytest.raises(nnx.BackendUnavailableError, match=r"'jax:gpu:1' cannot run here: .*jax\[cuda12\]"):
            nnx.get_backend("jax:gpu:1")


# -- issue 22 item 7: cupy:N creates on GPU N ---------------------------------------------------------------------
class RecordingDevice:
    """A device that records which one is current, as CUDA's current device decides where CuPy allocates."""

    current = 0

    def __init__(self, index):
        self.id = index
        self._saved = []

    def __enter__(self):
        self._saved.append(RecordingDevice.current)
        RecordingDevice.current = self.id

    def __exit__(self, *exc):
        RecordingDevice.current = self._saved.pop()


class CurrentDeviceNamespace:
    """Creation functions that, like CuPy's, ignore ``device=`` and allocate on the current device."""

    __name__ = "array_api_compat.cupy"

    def __init__(self):
        for name in CREATION:
            setattr(self, name, self._make(name))
        self.add = np.add

    @staticmethod
    def _make(name):
        def create(*args, **kwargs):
            return (name, RecordingDevice.current)

        return create


def test_every_creation_call_runs_on_the_backends_gpu():
    xp = on_device(CurrentDeviceNamespace(), RecordingDevice(2))
    for name in CREATION:
        assert getattr(xp, name)((3,), device=None) == (name, 2), name
    assert xp.zeros((3,), device=RecordingDevice(1)) == ("zeros", 1)  # an explicit device wins
    assert RecordingDevice.current == 0  # and the current device is restored
    assert xp.add is np.add  # everything else is the library's own function, unwrapped
    again = on_device(xp, RecordingDevice(3))  # rebinding starts from the library, not from GPU 2's wrapper
    assert again.ones((1,), device=None) == ("ones", 3)


# -- the registry follows an adapter's current device -------------------------------------------------------------
class FollowingBackend(Backend):
    """An adapter whose bare name means a device that changes, like CuPy's current GPU."""

    name = "following"
    now = "0"

    @classmethod
    def default_label(cls):
        return cls.now

    @classmethod
    def load(cls, label):
        return cls(np, f"dev{label}", label)


def test_a_bare_name_follows_the_adapters_current_device(monkeypatch):
    monkeypatch.setitem(registry._ENTRIES, "following", FollowingBackend)
    assert nnx.get_backend("following").spec == "following:0"
    monkeypatch.setattr(FollowingBackend, "now", "1")
    assert nnx.get_backend("following").spec == "following:1"
    assert nnx.get_backend("following:0").spec == "following:0"
    for key in [k for k in registry._CACHE if k.startswith("following")]:
        monkeypatch.delitem(registry._CACHE, key)


# -- issue 22 item 8: JaxBackend.synchronize() with no argument waits --------------------------------------------
@pytest.mark.skipif(not HAS_JAX, reason="jax not installed")
def test_jax_synchronize_without_an_argument_waits_on_the_devices_arrays(monkeypatch):
    import jax

    be = nnx.get_backend("jax")
    x = be.asarray(np.ones((4, 4)))
    y = be.xp.matmul(x, x)
    waited = []
    real = jax.block_until_ready
    monkeypatch.setattr(jax, "block_until_ready", lambda tree: waited.append(tree) or real(tree))
    be.synchronize()
    assert waited, "synchronize() returned without waiting on anything"
    assert any(a is y for a in waited[0]), "the array just computed was not waited on"
