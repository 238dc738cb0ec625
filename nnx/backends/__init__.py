"""The seam between the portable core and concrete array libraries: the `Backend` protocol, one registry,
and one adapter module per library.

    base.py              the `Backend` protocol and the checks every adapter shares
    registry.py          `register_backend`, `get_backend`, `available_backends`, `backend_status`, `host_fallback`
    names.py, rng.py     which backend an array belongs to, dtype names; the host and device random streams
    numpy.py, cupy.py, torch.py, jax.py, array_api_strict.py
                         one adapter per library: loader, host<->device transfer, RNG stream, device sync
    generic.py           any other array-API library, through DLPack (``"generic:<module>"``)

The adapter modules carry their library's name: imports are absolute, so ``import torch`` in
``nnx/backends/torch.py`` is the library, and each adapter imports its library only inside
functions, so that ``import nnx`` loads none of them. Adding a backend is one adapter module
(a `Backend` subclass) and one `register_backend` line.
"""

from .base import Backend, BackendUnavailableError
from .generic import generic_backend
from .names import backend_name_of, dtype_name
from .registry import (
    BACKEND_NAMES,
    available_backends,
    backend_status,
    get_backend,
    host_fallback,
    loaded_namespace,
    register_backend,
)
from .rng import DeviceRNG, host_rng, stream_rng

__all__ = [
    "BACKEND_NAMES", "Backend", "BackendUnavailableError", "DeviceRNG", "available_backends", "backend_name_of",
    "backend_status", "dtype_name", "generic_backend", "get_backend", "host_fallback", "host_rng", "loaded_namespace",
    "register_backend", "stream_rng",
]
