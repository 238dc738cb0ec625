"""The array_api_strict adapter: the standard and nothing more, on its CPU device and its test devices.

Running the suite here is how nnx catches NumPy-only calls and creation calls without
``device=``; its extra devices (``"array_api_strict:device1"``) behave like a second GPU.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from .base import Backend, BackendUnavailableError, import_library


def _has_int64(xp: Any, device: Any) -> bool:
    """Whether `device` holds int64 arrays (array_api_strict's ``no_x64`` test device does not)."""
    return "int64" in xp.__array_namespace_info__().dtypes(device=device)


class ArrayApiStrictBackend(Backend):
    """array_api_strict on one of its devices (``"array_api_strict"``, ``"array_api_strict:device1"``)."""

    name = "array_api_strict"
    distributions = ("array-api-strict",)

    @classmethod
    def load(cls, label: str | None) -> ArrayApiStrictBackend:
        xp = import_library("array_api_strict", cls.name, "pip install array-api-strict")
        if label is None:
            return cls(xp, xp.Device("CPU_DEVICE"))
        # array_api_strict's Device has no public name; `_device` is the label its repr shows
        devices = {d._device: d for d in xp.__array_namespace_info__().devices()}
        if label not in devices:
            raise ValueError(f"array_api_strict has devices {sorted(devices)}, got {label!r}")
        if not _has_int64(xp, devices[label]):
            raise BackendUnavailableError(
                f"array_api_strict's device {label!r} has no int64, which nnx uses for indices (the shuffle, class "
                f"labels); use one of {cls.devices()}")
        return cls(xp, devices[label], label)

    @classmethod
    def devices(cls) -> list[str]:
        """The devices nnx runs on (those with int64)."""
        xp = importlib.import_module("array_api_strict")
        return [getattr(d, "_device", str(d)) for d in xp.__array_namespace_info__().devices() if _has_int64(xp, d)]

    def from_host(self, host: np.ndarray) -> Any:
        return self.xp.asarray(host, device=self.device)

    def finite_probe(self, x: Any) -> Any:
        # the largest magnitude: it cannot overflow, where the sum of huge finite gradients does and the NumPy
        # beneath reports that as a floating-point error; NumPy's max keeps a NaN
        return self.xp.max(self.xp.abs(x))

    def _to_host(self, x: Any) -> np.ndarray:
        # NumPy reads only arrays on the CPU device
        return np.asarray(x.to_device(self.xp.Device("CPU_DEVICE")))

    def _device_label(self, device: Any) -> str:
        return device._device  # str() gives "array_api_strict.Device('device1')", which `load` does not parse
