"""The seam between the portable core and concrete array libraries (adapters, registry)."""

from .base import Backend, BackendUnavailableError
from .names import backend_name_of, dtype_name
from .registry import BACKEND_NAMES, available_backends, backend_status, get_backend
from .rng import DeviceRNG, host_rng

__all__ = [
    "BACKEND_NAMES", "Backend", "BackendUnavailableError", "DeviceRNG", "available_backends", "backend_name_of",
    "backend_status", "dtype_name", "get_backend", "host_rng",
]
