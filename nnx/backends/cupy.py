"""The CuPy adapter: NVIDIA GPUs, with counter-based dropout streams.

CuPy ships one wheel per CUDA major version, hence two extras (``cupy12``, ``cupy13``).
The library is imported only inside functions (``import cupy`` here is the library:
imports are absolute), so that ``import nnx`` needs no GPU.
"""

# Without CuPy installed, pyright resolves `import cupy` to this very module and reports
# cupy.cuda, cupy.asarray, ... as unknown attributes.
# pyright: reportAttributeAccessIssue=false

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from .base import Backend, BackendUnavailableError, import_library
from .rng import DeviceRNG

INSTALL = 'pip install "nnx-mlp[cupy12]" (CUDA 12) or pip install "nnx-mlp[cupy13]" (CUDA 13)'


class CupyBackend(Backend):
    """CuPy through array_api_compat on one GPU (``"cupy"``: GPU 0, ``"cupy:1"``)."""

    name = "cupy"
    distributions = ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy-rocm-6-0", "cupy-rocm-5-0")

    @classmethod
    def load(cls, label: str | None) -> CupyBackend:
        cupy = import_library("cupy", cls.name, f"{INSTALL}, on a machine with an NVIDIA GPU")
        xp = importlib.import_module("array_api_compat.cupy")
        if label and not label.isdigit():
            raise ValueError(f"backend 'cupy:{label}': the device must be a GPU number, got {label!r}")
        index = int(label) if label else 0
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # the CUDA runtime raises its own error types
            raise BackendUnavailableError(f"backend 'cupy' cannot run here: no usable CUDA device ({exc})") from exc
        if index >= count:
            raise BackendUnavailableError(f"backend 'cupy:{index}' cannot run here: {count} CUDA device(s) found")
        return cls(xp, cupy.cuda.Device(index), label)

    @classmethod
    def devices(cls) -> list[str]:
        cupy = importlib.import_module("cupy")
        found = []
        for i in range(cupy.cuda.runtime.getDeviceCount()):
            label = cupy.cuda.runtime.getDeviceProperties(i).get("name", b"")
            found.append(f"{i} ({label.decode() if isinstance(label, bytes) else label})")
        return found

    def from_host(self, host: np.ndarray) -> Any:
        import cupy

        with cupy.cuda.Device(self.device.id):
            return cupy.asarray(host)

    def _to_host(self, x: Any) -> np.ndarray:
        return x.get()

    def _device_label(self, device: Any) -> str:
        return str(device.id)  # str() gives "<CUDA Device 1>"

    @property
    def arrays_on_host(self) -> bool:
        return False

    def rng(self, seed: int) -> CupyRNG:
        return CupyRNG(self, seed)

    def synchronize(self, x: Any = None) -> None:
        import cupy

        cupy.cuda.Device(self.device.id).synchronize()



class CupyRNG(DeviceRNG):
    """A generator made per draw from ``(seed, counter)`` on the backend's GPU: the state is those two ints."""

    def _draw(self, shape: tuple[int, ...], label: str) -> Any:
        import cupy

        with cupy.cuda.Device(self.backend.device.id):
            gen = cupy.random.default_rng((self.seed * 1_000_003 + self.counter) % 2**63)
            return gen.random(shape, dtype=label)
