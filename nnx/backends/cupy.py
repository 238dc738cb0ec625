"""The CuPy adapter: NVIDIA GPUs, with counter-based dropout streams.

CuPy ships one wheel per CUDA major version, hence two extras (``cupy12``, ``cupy13``).
The library is imported only inside functions (``import cupy`` here is the library:
imports are absolute), so that ``import nnx`` needs no GPU.
"""

# Without CuPy installed, pyright resolves `import cupy` to this very module and reports
# cupy.cuda, cupy.asarray, ... as unknown attributes.
# pyright: reportAttributeAccessIssue=false

from __future__ import annotations

import functools
import importlib
import types
from typing import Any

import numpy as np

from .base import Backend, BackendUnavailableError, import_library
from .nvidia import CUPY_INSTALL, driver_cuda_version, gpu_cause
from .rng import DeviceRNG

INSTALL = CUPY_INSTALL
#: the array API's creation functions: CuPy (and array_api_compat's wrappers) allocate on the *current* GPU
CREATION = ("arange", "asarray", "empty", "empty_like", "eye", "from_dlpack", "full", "full_like", "linspace",
            "meshgrid", "ones", "ones_like", "tril", "triu", "zeros", "zeros_like")
#: cuRAND's counter-based generator: seeding it sets two numbers, with no per-thread state to build
PHILOX = 161  # CURAND_RNG_PSEUDO_PHILOX4_32_10


def on_device(xp: Any, device: Any) -> types.ModuleType:
    """Namespace `xp` whose creation functions run under `device` (or the ``device=`` they are given).

    array_api_compat's CuPy functions accept ``device=`` and ignore it, so without this a
    backend on GPU 1 would make its biases and buffers on GPU 0. Everything else is `xp`'s own.
    """
    xp = getattr(xp, "_unbound", xp)  # a namespace made here for another device: start from the library's
    namespace = types.ModuleType(xp.__name__, xp.__doc__)
    namespace.__dict__.update({k: v for k, v in vars(xp).items() if k not in ("__name__", "__doc__")})
    for name in CREATION:
        if hasattr(xp, name):
            setattr(namespace, name, _created_on(getattr(xp, name), device))
    # a module object this function just made, not another object's state: the unwrapped namespace
    namespace._unbound = xp  # pyright: ignore[reportAttributeAccessIssue]
    return namespace


def _created_on(create: Any, default: Any) -> Any:
    @functools.wraps(create)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        device = kwargs.get("device")
        with default if device is None else device:
            return create(*args, **kwargs)

    return wrapper


def runtime_cuda(cupy: Any) -> tuple[int, int] | None:
    """The CUDA version CuPy's runtime was built for, e.g. (12, 8); None when even that cannot be read."""
    try:
        version = int(cupy.cuda.runtime.runtimeGetVersion())
    except Exception:  # a missing libcudart raises CuPy's own error types
        return None
    return version // 1000, (version % 1000) // 10


class CupyBackend(Backend):
    """CuPy through array_api_compat on one GPU (``"cupy"``: the current GPU, ``"cupy:1"``: GPU 1)."""

    name = "cupy"
    distributions = ("cupy", "cupy-cuda13x", "cupy-cuda12x", "cupy-cuda11x", "cupy-rocm-6-0", "cupy-rocm-5-0")

    @classmethod
    def load(cls, label: str | None) -> CupyBackend:
        cupy = import_library("cupy", cls.name, f"{INSTALL}, on a machine with an NVIDIA GPU")
        xp = importlib.import_module("array_api_compat.cupy")
        if label and not label.isdigit():
            raise ValueError(f"backend 'cupy:{label}': the device must be a GPU number, got {label!r}")
        spec = f"cupy:{label}" if label else "cupy"
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # the CUDA runtime raises its own error types
            cause = gpu_cause(runtime_cuda(cupy), driver_cuda_version())
            raise BackendUnavailableError(f"backend {spec!r} cannot run here: {cause} (CuPy says: {exc})") from exc
        index = int(label) if label else cupy.cuda.runtime.getDevice()
        if index >= count:
            raise BackendUnavailableError(f"backend {spec!r} cannot run here: {count} CUDA device(s) found")
        device = cupy.cuda.Device(index)
        return cls(on_device(xp, device), device, str(index))

    @classmethod
    def default_label(cls) -> str | None:
        """``"cupy"`` is the current GPU: the one `nnx.distributed.init` binds a rank to, GPU 0 otherwise."""
        try:
            cupy = importlib.import_module("cupy")
            return str(cupy.cuda.runtime.getDevice())
        except Exception:  # no CuPy, or no GPU: `load` says why
            return None

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

        with self.device:
            return cupy.asarray(host)

    def _to_host(self, x: Any) -> np.ndarray:
        return x.get()

    def _device_label(self, device: Any) -> str:
        return str(device.id)  # str() gives "<CUDA Device 1>"

    def on_device(self, device: Any) -> Backend:
        other = super().on_device(device)
        other.xp = on_device(self.xp, device)
        return other

    @property
    def arrays_on_host(self) -> bool:
        return False

    def rng(self, seed: int) -> CupyRNG:
        return CupyRNG(self, seed)

    def synchronize(self, x: Any = None) -> None:
        self.device.synchronize()



class CupyRNG(DeviceRNG):
    """One cuRAND Philox generator on the backend's GPU, reseeded per draw from ``(seed, counter)``.

    The state is those two ints. Philox is counter-based, so reseeding sets two numbers and
    builds no state, unlike a fresh `cupy.random.default_rng` (XORWOW: 256k states) per draw.
    """

    _gen: Any = None

    def _draw(self, shape: tuple[int, ...], label: str) -> Any:
        import cupy

        with self.backend.device:
            if self._gen is None:
                self._gen = cupy.random.RandomState(0, PHILOX)
            self._gen.seed((self.seed * 1_000_003 + self.counter) % 2**63)
            return self._gen.random_sample(shape, np.dtype(label))
