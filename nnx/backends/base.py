"""The one seam between the portable core and concrete array libraries.

Everything the array API standard leaves out lives here: choosing a namespace
and device, moving arrays to and from the host, random numbers, dtype names and
device synchronisation. The rest of nnx only sees a `Backend`.
"""

from __future__ import annotations

import importlib
import os
import types
from typing import Any

import array_api_compat
import numpy as np

BACKEND_NAMES = ("numpy", "array_api_strict", "torch", "jax", "cupy")
FLOAT_DTYPES = ("float32", "float64")

_ALIASES = {
    "np": "numpy",
    "strict": "array_api_strict",
    "pytorch": "torch",
    "cp": "cupy",
    "jax.numpy": "jax",
}
_MODULE_TO_NAME = {
    "numpy": "numpy",
    "array_api_compat.numpy": "numpy",
    "array_api_strict": "array_api_strict",
    "torch": "torch",
    "array_api_compat.torch": "torch",
    "jax": "jax",
    "jax.numpy": "jax",
    "cupy": "cupy",
    "array_api_compat.cupy": "cupy",
}


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run on this machine."""


class Backend:
    """An array namespace bound to one device.

    Args:
        name: one of `BACKEND_NAMES`.
        xp: the array-API namespace used for all math.
        device: the device arrays are created on.
        device_label: the part after the colon in the spec, e.g. ``"cuda:0"``.
        fastpath: the backend's optional in-place fast paths (`nnx.fastpath.FastPath`, or the
            library's module name to build one from on first use), or None where only the
            portable array-API code runs (JAX, array_api_strict, or ``NNX_FASTPATH=0``).
    """

    def __init__(self, name: str, xp: Any, device: Any, device_label: str | None = None,
                 fastpath: Any = None) -> None:
        self.name = name
        self.xp = xp
        self.device = device
        self.device_label = device_label
        self._fastpath = fastpath

    @property
    def fastpath(self) -> Any:
        """The `nnx.fastpath.FastPath` of this backend, or None (loaded on first use, so `import nnx` stays lean)."""
        fastpath = self._fastpath
        if isinstance(fastpath, str):
            from .fastpath import FastPath, Kernels

            fastpath = self._fastpath = FastPath(Kernels(importlib.import_module(fastpath)))
        return fastpath

    def with_fastpath(self, enabled: bool) -> Backend:
        """This backend with its fast paths on (where the library has them) or off, e.g. to compare."""
        fastpath = _make_fastpath(self.name) if enabled else None
        return Backend(self.name, self.xp, self.device, self.device_label, fastpath)

    @property
    def spec(self) -> str:
        """The string `get_backend` turns back into this backend."""
        return self.name if self.device_label is None else f"{self.name}:{self.device_label}"

    def __repr__(self) -> str:
        return f"Backend({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backend) and (self.name, str(self.device)) == (other.name, str(other.device))

    def __hash__(self) -> int:
        return hash((self.name, str(self.device)))

    # -- dtypes -----------------------------------------------------------
    def float_dtype(self, dtype: Any) -> Any:
        """The namespace's float dtype for a name (``"float32"``) or dtype object."""
        label = dtype_name(dtype)
        if label not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {label!r}")
        return getattr(self.xp, label)

    # -- moving data ------------------------------------------------------
    def owns(self, x: Any) -> bool:
        """Whether `x` is an array of this backend's library."""
        return backend_name_of(x) == self.name

    def asarray(self, x: Any, dtype: Any = None, argname: str = "X", copy: bool = False) -> Any:
        """Put `x` on this backend, cast to `dtype` when given.

        NumPy arrays, Python scalars and lists are always accepted and moved; an
        array of this backend on another device is moved to ours; an array from
        another non-NumPy library raises `TypeError` naming both backends. The
        result may share memory with `x` unless `copy=True` (needed for anything
        that will be updated in place, such as parameters).
        """
        target = None if dtype is None else self.float_dtype(dtype)
        # NumPy arrays take the host path even on the numpy backend, so the dtype check below applies there too
        if self.owns(x) and self.name != "numpy":
            if str(array_api_compat.device(x)) != str(self.device):
                x = self._device_move(x)
            if target is not None and x.dtype != target:
                return self.xp.astype(x, target)
            return self.xp.asarray(x, copy=True) if copy else x
        other = backend_name_of(x)
        if other not in (None, "numpy"):
            accepted = "a NumPy array" if self.name == "numpy" else f"a NumPy array or a {self.name} array"
            raise TypeError(
                f"{argname} is a {other} array but this model runs on the {self.name} backend; "
                f"pass {accepted} (model.to({other!r}) moves the model)"
            )
        try:
            host = np.asarray(x)
        except (ValueError, TypeError) as exc:  # ragged nesting, objects NumPy cannot make an array of
            raise TypeError(f"{argname} must be an array of numbers, got {type(x).__name__} ({exc})") from None
        if host.dtype.kind not in "biuf":
            raise TypeError(f"{argname} must hold numbers, got dtype {host.dtype}")
        if dtype is not None or copy:
            host = host.astype(dtype_name(dtype) if dtype is not None else host.dtype, copy=copy)
        return self._from_host(host)

    def _device_move(self, x: Any) -> Any:
        if self.name == "torch":
            return x.to(self.device)
        if self.name == "jax":
            import jax

            return jax.device_put(x, self.device)
        return array_api_compat.to_device(x, self.device)

    def _from_host(self, host: np.ndarray) -> Any:
        if self.name == "numpy":
            return host
        if self.name == "torch":
            import torch

            # not np.ascontiguousarray: it turns a 0-d array into shape (1,)
            # torch cannot share a read-only buffer (np.load, broadcast views): copy those
            if not (host.flags.c_contiguous and host.flags.writeable):
                host = np.array(host, order="C", copy=True)
            return torch.as_tensor(host, device=self.device)
        if self.name == "jax":
            import jax

            return jax.device_put(host, self.device)
        if self.name == "cupy":
            import cupy

            with cupy.cuda.Device(self.device.id):
                return cupy.asarray(host)
        return self.xp.asarray(host, device=self.device)

    def to_host(self, x: Any) -> np.ndarray:
        """A NumPy copy (or view, on the numpy backend) of a backend array."""
        if self.name == "numpy" or isinstance(x, (np.ndarray, np.generic)):
            return np.asarray(x)  # host arrays are accepted everywhere, as in `asarray`
        if self.name == "torch":
            return x.detach().cpu().numpy()
        if self.name == "cupy":
            return x.get()
        if self.name == "array_api_strict":
            return np.asarray(x.to_device(self.xp.Device("CPU_DEVICE")))
        return np.asarray(x)

    def to_float(self, x: Any) -> float:
        """A Python float from a 0-d array: the one place the host waits for the device."""
        return float(self.to_host(x))

    # -- randomness and timing -------------------------------------------
    def rng(self, seed: int) -> DeviceRNG:
        """A random stream on this device for dropout masks, seeded reproducibly."""
        return DeviceRNG(self, seed)

    def synchronize(self, x: Any = None) -> None:
        """Wait until queued device work (or the work producing `x`) is done; for timing."""
        if self.name == "cupy":
            import cupy

            cupy.cuda.Device(self.device.id).synchronize()
        elif self.name == "torch" and self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        elif self.name == "jax" and x is not None:
            x.block_until_ready()


class DeviceRNG:
    """Uniform random numbers on a backend's device, with a state that can be saved.

    NumPy and array_api_strict draw from a host PCG64 stream; torch uses a
    `torch.Generator` on the device; JAX and CuPy use a counter-based stream
    (a fresh key per draw from ``(seed, counter)``), so their state is two ints.
    """

    def __init__(self, backend: Backend, seed: int) -> None:
        self.backend = backend
        self.seed = int(seed)
        self.counter = 0
        self._torch_gen = None
        self._host_gen = None
        if backend.name in ("numpy", "array_api_strict"):
            self._host_gen = np.random.default_rng(self.seed)
        elif backend.name == "torch":
            import torch

            self._torch_gen = torch.Generator(device=backend.device)
            self._torch_gen.manual_seed(self.seed)

    def uniform(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """An array of `shape` with values uniform in [0, 1)."""
        be = self.backend
        label = dtype_name(dtype)
        self.counter += 1
        if self._host_gen is not None:
            host = self._host_gen.random(shape, dtype=np.dtype(label))
            return host if be.name == "numpy" else be.xp.asarray(host, device=be.device)
        if self._torch_gen is not None:
            import torch

            return torch.rand(shape, generator=self._torch_gen, dtype=getattr(torch, label), device=be.device)
        if be.name == "jax":
            import jax

            key = jax.random.fold_in(jax.random.PRNGKey(self.seed), self.counter)
            return jax.random.uniform(key, shape, dtype=getattr(be.xp, label))
        import cupy

        with cupy.cuda.Device(be.device.id):
            gen = cupy.random.default_rng((self.seed * 1_000_003 + self.counter) % 2**63)
            return gen.random(shape, dtype=label)

    def get_state(self) -> dict:
        """A JSON-serialisable snapshot of the stream."""
        state: dict[str, Any] = {"seed": self.seed, "counter": self.counter}
        if self._host_gen is not None:
            state["pcg64"] = self._host_gen.bit_generator.state
        if self._torch_gen is not None:
            state["torch"] = self._torch_gen.get_state().tolist()
        return state

    def set_state(self, state: dict) -> None:
        """Restore a snapshot taken by `get_state`."""
        self.seed = int(state["seed"])
        self.counter = int(state["counter"])
        if self._host_gen is not None and "pcg64" in state:
            self._host_gen.bit_generator.state = state["pcg64"]
        if self._torch_gen is not None and "torch" in state:
            import torch

            self._torch_gen.set_state(torch.tensor(state["torch"], dtype=torch.uint8))


def host_rng(seed: int | None) -> np.random.Generator:
    """The host random generator behind initialisation and shuffling, identical on every backend."""
    return np.random.default_rng(seed)


def dtype_name(dtype: Any) -> str:
    """Canonical name (``"float32"``) for a dtype given as a string, NumPy dtype or namespace dtype."""
    if isinstance(dtype, str):
        return dtype
    text = str(dtype)
    for name in ("float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64",
                 "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128"):
        if text.endswith(name) or text.endswith(f"'{name}'>") or text == f"dtype('{name}')":
            return name
    try:
        return np.dtype(dtype).name
    except TypeError:
        return text


def backend_name_of(x: Any) -> str | None:
    """Which of nnx's backends an array belongs to, or None for non-arrays."""
    if isinstance(x, np.ndarray) or isinstance(x, np.generic):
        return "numpy"
    module = type(x).__module__.split(".")[0]
    if module == "array_api_strict":
        return "array_api_strict"
    if module == "torch":
        return "torch"
    if module in ("jax", "jaxlib"):
        return "jax"
    if module == "cupy":
        return "cupy"
    if array_api_compat.is_array_api_obj(x):
        return module
    return None


# -- constructing backends ----------------------------------------------------

def _make_fastpath(name: str) -> str | None:
    """Whether a library's arrays have views and ``out=`` for the fast paths: its module name, or None.

    `Backend.fastpath` builds the `FastPath` from the name when it is first asked for.
    """
    if name not in ("numpy", "cupy") or os.environ.get("NNX_FASTPATH", "1").strip() == "0":
        return None
    return name


def _load_numpy(label: str | None) -> Backend:
    if label not in (None, "cpu"):
        raise ValueError(f"numpy has only the 'cpu' device, got {label!r}")
    xp = np if hasattr(np, "__array_api_version__") else importlib.import_module("array_api_compat.numpy")
    return Backend("numpy", xp, "cpu", None, _make_fastpath("numpy"))


def _load_strict(label: str | None) -> Backend:
    xp = importlib.import_module("array_api_strict")
    devices = {d._device: d for d in xp.__array_namespace_info__().devices()}
    if label is None:
        return Backend("array_api_strict", xp, xp.Device("CPU_DEVICE"), None)
    if label not in devices:
        raise ValueError(f"array_api_strict has devices {sorted(devices)}, got {label!r}")
    return Backend("array_api_strict", xp, devices[label], label)


def _load_torch(label: str | None) -> Backend:
    torch = importlib.import_module("torch")
    xp = importlib.import_module("array_api_compat.torch")
    try:
        device = torch.device(label or "cpu")
    except RuntimeError as exc:  # torch's message lists the device types it knows
        raise ValueError(f"backend 'torch:{label}' names no torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("backend 'torch:cuda' cannot run here: torch sees no CUDA device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise BackendUnavailableError(f"backend 'torch:{label}' cannot run here: "
                                      f"{torch.cuda.device_count()} CUDA device(s) found")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise BackendUnavailableError("backend 'torch:mps' cannot run here: torch sees no MPS device")
    if device.type not in ("cpu", "cuda", "mps"):
        raise BackendUnavailableError(f"backend 'torch:{label}': nnx runs torch on cpu, cuda or mps devices")
    return Backend("torch", xp, device, label)


def _load_jax(label: str | None) -> Backend:
    jax = importlib.import_module("jax")
    # nnx models carry an explicit dtype; without x64 JAX would silently turn float64 into float32.
    jax.config.update("jax_enable_x64", True)
    xp = importlib.import_module("jax.numpy")
    platform, _, index = (label or "").partition(":")
    if index and not index.isdigit():
        raise ValueError(f"backend 'jax:{label}': the device index must be a number, got {index!r}")
    try:
        devices = jax.devices(platform) if platform else jax.devices()
    except RuntimeError as exc:  # JAX raises RuntimeError both for unknown and for absent platforms
        if platform.lower() in ("cpu", "gpu", "cuda", "rocm", "tpu", "metal"):
            raise BackendUnavailableError(f"backend 'jax:{label}' cannot run here: {exc}") from None
        raise ValueError(f"backend 'jax:{label}' names no JAX platform: {exc}") from None
    if int(index or 0) >= len(devices):
        raise BackendUnavailableError(f"backend 'jax:{label}' cannot run here: {len(devices)} "
                                      f"{platform or 'default'} device(s) found")
    return Backend("jax", xp, devices[int(index or 0)], label)


def _load_cupy(label: str | None) -> Backend:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend 'cupy' cannot run here: cupy is not installed ({exc}); "
            "install nnx with the cupy12 or cupy13 extra on a machine with an NVIDIA GPU"
        ) from exc
    xp = importlib.import_module("array_api_compat.cupy")
    index = int(label) if label else 0
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # the CUDA runtime raises its own error types
        raise BackendUnavailableError(f"backend 'cupy' cannot run here: no usable CUDA device ({exc})") from exc
    if index >= count:
        raise BackendUnavailableError(f"backend 'cupy:{index}' cannot run here: {count} CUDA device(s) found")
    return Backend("cupy", xp, cupy.cuda.Device(index), label, _make_fastpath("cupy"))


_LOADERS = {
    "numpy": _load_numpy,
    "array_api_strict": _load_strict,
    "torch": _load_torch,
    "jax": _load_jax,
    "cupy": _load_cupy,
}
_CACHE: dict[str, Backend] = {}


def _device_label(name: str, device: Any) -> str:
    """The label after the colon in a spec for `device`, so that `get_backend(backend.spec)` round-trips."""
    if name == "array_api_strict":
        return device._device  # str() gives "array_api_strict.Device('device1')", which no loader parses
    if name == "cupy":
        return str(device.id)  # str() gives "<CUDA Device 1>"
    return str(device)  # torch "cuda:1", jax "cuda:0"


def get_backend(spec: Any = "numpy") -> Backend:
    """Resolve a backend from a name (``"cupy:1"``), a namespace module, an array or a `Backend`."""
    if isinstance(spec, Backend):
        return spec
    if isinstance(spec, types.ModuleType):
        name = _MODULE_TO_NAME.get(spec.__name__)
        if name is None:
            raise ValueError(f"unknown array namespace {spec.__name__!r}; known backends: {list(BACKEND_NAMES)}")
        return get_backend(name)
    if not isinstance(spec, str):
        name = backend_name_of(spec)
        if name not in BACKEND_NAMES:
            raise TypeError(f"backend must be a name, namespace, array or Backend, got {type(spec).__name__}")
        backend = get_backend(name)
        device = array_api_compat.device(spec)
        if str(device) != str(backend.device):
            backend = Backend(name, backend.xp, device, _device_label(name, device), backend._fastpath)
        return backend
    key = spec.strip()
    if key in _CACHE:
        return _CACHE[key]
    name, _, label = key.partition(":")
    name = _ALIASES.get(name, name)
    if name not in _LOADERS:
        raise ValueError(f"unknown backend {spec!r}; valid names: {list(BACKEND_NAMES)}")
    try:
        backend = _LOADERS[name](label or None)
    except ImportError as exc:
        raise BackendUnavailableError(f"backend {name!r} cannot run here: {exc}") from exc
    _CACHE[key] = backend
    return backend


def backend_status(name: str) -> tuple[bool, str]:
    """Whether a backend imports and runs an operation here, and if not, why."""
    try:
        be = get_backend(name)
        xp = be.xp
        total = xp.sum(xp.ones((4,), dtype=xp.float32, device=be.device))
        if be.to_float(total) != 4.0:
            return False, "a test sum gave a wrong result"
    except Exception as exc:  # any failure means "does not run here", and we report why
        return False, f"{type(exc).__name__}: {exc}"
    return True, "ok"


def available_backends() -> list[str]:
    """Names of the backends that import and run an operation on this machine."""
    return [name for name in BACKEND_NAMES if backend_status(name)[0]]
