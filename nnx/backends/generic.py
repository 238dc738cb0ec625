"""The generic adapter: any array-API library that nnx has no adapter for, with data moved through DLPack.

Spelling: ``get_backend("generic:<module>")`` imports ``<module>`` and uses it as the
namespace, on its default device (``"generic:array_api_strict"``); ``"generic:<module>:<n>"``
picks the n-th device of its ``__array_namespace_info__().devices()``. For a namespace
object, `generic_backend(xp, device)` does the same. `get_backend` falls back to this
adapter by itself for a namespace module or an array that no adapter claims.

Everything goes through the standard: host arrays come in with ``xp.from_dlpack`` and go
out with ``np.from_dlpack`` (each falling back to ``asarray`` where a library cannot
exchange), dropout draws from a host PCG64 stream moved to the device, DLPack says
whether the device is the host, and there is nothing to synchronise. No kernel (`nnx.kernels`) is declared for
it and its passes are not recorded: the flat update, which any backend gets, is its one derived execution.
"""

from __future__ import annotations

import importlib
import types
from typing import Any

import array_api_compat
import numpy as np

from .base import Backend, BackendUnavailableError
from .names import backend_name_of

PREFIX = "generic"

_DLPACK_CPU = 1  # kDLCPU, DLPack's device type for host memory
# what a library may raise when it cannot exchange an array through DLPack
_NO_DLPACK = (AttributeError, BufferError, NotImplementedError, RuntimeError, TypeError, ValueError)


#: the namespace's functions, dtypes and constants that nnx's own code calls (``xp.<name>``); a library of an
#: older standard lacks some (``isdtype`` is 2022.12, ``maximum``, ``minimum`` and ``clip`` are 2023.12)
NAMESPACE_NEEDS = ("abs", "all", "any", "arange", "argmax", "asarray", "astype", "bool", "broadcast_to", "clip",
                   "concat", "empty", "empty_like", "exp", "finfo", "float32", "float64", "floor", "from_dlpack",
                   "full", "full_like", "inf", "int64", "isdtype", "isfinite", "isnan", "log", "log1p",
                   "matrix_transpose", "max", "maximum", "mean", "min", "minimum", "ones", "ones_like", "reshape",
                   "round", "sign", "sqrt", "stack", "sum", "take", "tanh", "where", "zeros", "zeros_like")
# what nnx copes without (`GenericBackend.from_host` falls back to asarray)
_OPTIONAL = ("from_dlpack",)


def is_namespace(module: Any) -> bool:
    """Whether `module` looks like an array-API namespace (it declares the standard's version)."""
    return hasattr(module, "__array_api_version__") and hasattr(module, "asarray")


def _devices_of(xp: Any) -> list[Any]:
    info = getattr(xp, "__array_namespace_info__", None)
    return list(info().devices()) if info is not None else []


def generic_backend(xp: types.ModuleType, device: Any = None) -> GenericBackend:
    """The generic adapter over namespace `xp`, on `device` (None: the library's default device)."""
    if not is_namespace(xp):
        raise ValueError(f"{getattr(xp, '__name__', xp)!r} is not an array API namespace "
                         "(it has no __array_api_version__)")
    missing = [name for name in NAMESPACE_NEEDS if name not in _OPTIONAL and not hasattr(xp, name)]
    if missing:
        raise ValueError(f"{getattr(xp, '__name__', xp)!r} (array API {xp.__array_api_version__}) lacks "
                         f"{', '.join(missing)}, which nnx calls; nnx needs the namespace of the 2023.12 standard "
                         "or later")
    info = getattr(xp, "__array_namespace_info__", None)
    default = info().default_device() if info is not None else None
    if device is None:
        device = default
    backend = GenericBackend(xp, device)
    if str(device) != str(default):
        # the factory of GenericBackend, in its module: it sets up the object it just created
        backend.device_label = backend._device_label(device)
    # name the backend after the library its arrays report, so `owns` and the messages agree
    probe = xp.zeros((), device=device) if device is not None else xp.zeros(())
    backend.name = backend_name_of(probe) or xp.__name__.split(".")[0]
    backend._on_host = _dlpack_on_cpu(probe)  # the factory again, setting up what it created
    return backend


def _dlpack_on_cpu(x: Any) -> bool:
    """Whether DLPack places `x` in CPU memory (device type 1); False when the library cannot say."""
    try:
        return int(x.__dlpack_device__()[0]) == _DLPACK_CPU
    except _NO_DLPACK:
        return False


class GenericBackend(Backend):
    """Any array-API namespace on one of its devices (see the module docstring for the spec)."""

    name = PREFIX

    @classmethod
    def load(cls, label: str | None) -> GenericBackend:
        module, _, index = (label or "").partition(":")
        if not module:
            raise ValueError("backend 'generic' needs a namespace module: 'generic:<module>', "
                             "e.g. 'generic:array_api_strict'")
        try:
            xp = importlib.import_module(module)
        except ImportError as exc:
            raise BackendUnavailableError(f"backend 'generic:{module}' cannot run here: {exc}") from exc
        if not is_namespace(xp):
            raise ValueError(f"backend 'generic:{label}': module {module!r} is not an array API namespace "
                             "(it has no __array_api_version__)")
        if not index:
            return generic_backend(xp)
        devices = _devices_of(xp)
        if not index.isdigit() or int(index) >= len(devices):
            raise ValueError(f"backend 'generic:{label}': the device must be an index below {len(devices)} "
                             f"into {module}'s devices {[str(d) for d in devices]}, got {index!r}")
        return generic_backend(xp, devices[int(index)])

    _on_host = False

    @property
    def arrays_on_host(self) -> bool:
        return self._on_host

    @property
    def spec(self) -> str:
        base = f"{PREFIX}:{self.xp.__name__}"
        return base if self.device_label is None else f"{base}:{self.device_label}"

    def from_host(self, host: np.ndarray) -> Any:
        if not host.flags.writeable:
            host = np.array(host, copy=True)  # a read-only view would make the library's array read-only too
        try:
            x = self.xp.from_dlpack(host)
        except _NO_DLPACK:
            x = self.xp.asarray(host)
        if self.device is not None and str(array_api_compat.device(x)) != str(self.device):
            x = self._move(x)
        return x

    def _to_host(self, x: Any) -> np.ndarray:
        try:
            return np.from_dlpack(x)
        except _NO_DLPACK:
            return np.asarray(x)

    def _device_label(self, device: Any) -> str:
        for i, known in enumerate(_devices_of(self.xp)):
            if str(known) == str(device):
                return str(i)
        return str(device)
