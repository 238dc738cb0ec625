"""The one registry of backends: names, aliases and module names mapped to adapter classes.

Adding a backend is one adapter module plus one `register_backend` line (below, for the
built-ins, or in the user's own code). Adapters are registered by ``"module:Class"`` so
that registering imports nothing: the adapter module, and its library, load when the
backend is first asked for.
"""

from __future__ import annotations

import importlib
import threading
import types
from typing import Any

import array_api_compat

from .base import Backend, BackendUnavailableError
from .generic import PREFIX as GENERIC
from .generic import GenericBackend, generic_backend, is_namespace
from .names import backend_for_module, backend_name_of, claim_modules

# name -> the adapter class, or "module:Class" naming it until it is first needed
_ENTRIES: dict[str, type[Backend] | str] = {}
_ALIASES: dict[str, str] = {}
_CACHE: dict[str, Backend] = {}
# one per library, held while one of its backends is looked up or loaded, and while `backend_status` tries it and
# puts the library's settings back: a thread asking for JAX meanwhile would get the backend the check loaded, then
# lose its 64-bit mode. Other libraries' lookups never wait for that check
_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_GUARD = threading.Lock()
_GENERIC_CACHE: dict[tuple[str, str], Backend] = {}  # (namespace module name, device) -> generic adapter
# what a torch or JAX user may pass as the backend when they mean a device
_DEVICE_WORDS = ("cpu", "cuda", "gpu", "mps", "tpu", "rocm", "xpu", "metal")


def register_backend(name: str, adapter: type[Backend] | str, aliases: tuple[str, ...] = (),
                     module_names: tuple[str, ...] = ()) -> None:
    """Make backend `name` known to `get_backend`.

    Args:
        name: the backend's name; arrays of its library report it (`backend_name_of`).
        adapter: the `Backend` subclass, or ``"package.module:Class"`` to import on first use.
        aliases: other names `get_backend` accepts for it (``"np"``).
        module_names: namespace modules, and top packages of array types, that belong to it
            (``"torch"``, ``"array_api_compat.torch"``), so that namespaces and arrays resolve to it.
    """
    if name == GENERIC or ":" in name:
        raise ValueError(f"backend name {name!r} is reserved or contains ':'")
    _ENTRIES[name] = adapter
    for alias in aliases:
        _ALIASES[alias] = name
    claim_modules(name, (name, *module_names))
    for key in [k for k in _CACHE if k.partition(":")[0] in (name, *aliases)]:
        del _CACHE[key]  # a re-registration replaces what was loaded before


def adapter_class(name: str) -> type[Backend]:
    """The adapter class registered for backend `name` (importing its module, not its library)."""
    name = _ALIASES.get(name, name)
    adapter = _ENTRIES[name]
    if isinstance(adapter, str):
        module, _, cls = adapter.partition(":")
        adapter = _ENTRIES[name] = getattr(importlib.import_module(module), cls)
    return adapter


def backend_names() -> tuple[str, ...]:
    """Every registered backend name, built-ins first, in registration order."""
    return tuple(_ENTRIES)


def get_backend(spec: Any = "numpy") -> Backend:
    """Resolve a backend from a name (``"cupy:1"``), a namespace module, an array or a `Backend`.

    ``"generic:<module>"`` runs any array-API library through the generic adapter
    (`nnx.backends.generic`); so do namespaces and arrays no registered backend claims.
    """
    if isinstance(spec, Backend):
        return spec
    if isinstance(spec, types.ModuleType):
        return _from_namespace(spec)
    if not isinstance(spec, str):
        return _from_array(spec)
    with _library_lock(spec):
        return _by_name(spec)


def _library_lock(spec: str) -> threading.RLock:
    """The lock of the library a backend spec names (``"torch"`` for ``"Torch:cuda"``)."""
    name = spec.strip().partition(":")[0].lower()
    name = _ALIASES.get(name, name)
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(name, threading.RLock())


def _by_name(spec: str) -> Backend:
    """`get_backend` of a name, under its library's lock."""
    key = spec.strip()
    backend = _CACHE.get(key)
    if backend is not None and (":" in key or not _follows_default(type(backend))):
        return backend
    name, _, label = key.partition(":")
    name = name.lower()  # "NumPy", "Torch:cuda": names are case-insensitive, device labels and modules are not
    name = _ALIASES.get(name, name)
    if name != GENERIC and name not in _ENTRIES:
        if name in _DEVICE_WORDS:  # "cuda", as torch spells a device: the library goes first
            raise ValueError(f"{key.partition(':')[0]!r} is a device, not a backend: name the library, then the "
                             "device, as in 'torch:cuda', 'torch:cuda:1', 'jax:gpu', 'cupy' or 'numpy' (the CPU); "
                             f"backends: {list(_ENTRIES)}")
        raise ValueError(f"unknown backend {spec!r}; valid names: {list(_ENTRIES)} "
                         f"(or '{GENERIC}:<module>' for another array API library)")
    try:
        adapter = GenericBackend if name == GENERIC else adapter_class(name)
    except ImportError as exc:  # a user's adapter module that does not import
        raise BackendUnavailableError(f"backend {name!r} cannot run here: {exc}") from exc
    current = None if label else adapter.default_label()  # a bare name that follows the current device
    label = label or current or ""
    canonical = f"{name}:{label}" if label else name  # an alias gets the very backend its name does
    backend = _CACHE.get(canonical)
    if backend is None:
        try:
            backend = _CACHE[canonical] = adapter.load(label or None)
        except ImportError as exc:  # an adapter's own checks say how to install; this is a failure deeper down
            raise BackendUnavailableError(f"backend {name!r} cannot run here: {exc}") from exc
    if current is None:
        _CACHE[key] = backend
    return backend


def _follows_default(adapter: type[Backend]) -> bool:
    """Whether a bare name of `adapter` may mean another device later (it has a `Backend.default_label`)."""
    return adapter.default_label.__func__ is not Backend.default_label.__func__


def _from_namespace(module: types.ModuleType) -> Backend:
    name = backend_for_module(module.__name__)
    if name is not None:
        return get_backend(name)
    if is_namespace(module):
        return _generic(module, None)
    raise ValueError(f"unknown array namespace {module.__name__!r}; known backends: {list(_ENTRIES)}")


def _from_array(x: Any) -> Backend:
    name = backend_name_of(x)
    # a library's other objects (torch.float64, torch.device("cpu")) carry its module name but are no arrays
    if name is None or not array_api_compat.is_array_api_obj(x):
        spelled = _device_spec(x)
        hint = (f"for this device write backend={spelled!r}" if spelled else
                "a device goes in the name, \"torch:cuda\"; a model's dtype in dtype=")
        raise TypeError(f"backend must be a name, namespace, array or Backend, got {type(x).__name__} {x!r} ({hint})")
    device = array_api_compat.device(x)
    if name not in _ENTRIES:
        return _generic(array_api_compat.array_namespace(x), device)
    backend = get_backend(name)
    return backend if str(device) == str(backend.device) else backend.on_device(device)


def _device_spec(x: Any) -> str | None:
    """The backend spec naming device object `x` (a ``torch.device``, a JAX ``Device``); None for anything else."""
    module = type(x).__module__.split(".")[0]
    try:
        if module == "torch" and type(x).__name__ == "device":
            return f"torch:{x}"
        if module in ("jax", "jaxlib") and hasattr(x, "platform"):
            import jax  # already imported: the device came from it

            return f"jax:{x.platform}:{jax.devices(x.platform).index(x)}"
    except Exception:  # a device JAX no longer lists: the generic hint
        return None
    return None


def loaded_namespace(x: Any) -> Any:
    """The namespace nnx computes array `x` with: its backend adapter's where that backend is loaded (as a
    model on it loads it), array_api_compat's otherwise.

    Only a loaded adapter is used, since loading one has effects (JAX's 64-bit mode) that a function
    merely given arrays, such as a loss called on them, must not have.
    """
    name = backend_name_of(x)
    if name in _ENTRIES and any(key.partition(":")[0] == name for key in _CACHE):
        return _from_array(x).xp
    return array_api_compat.array_namespace(x)


def _generic(xp: types.ModuleType, device: Any) -> Backend:
    """The generic adapter for a namespace no adapter claims, made once per namespace and device."""
    key = (xp.__name__, str(device))
    backend = _GENERIC_CACHE.get(key)
    if backend is None or backend.xp is not xp:
        backend = _GENERIC_CACHE[key] = generic_backend(xp, device)
    return backend



def host_fallback(spec: str) -> str:
    """Where what was made on backend `spec` goes when `spec` cannot run here (saved or pickled on a GPU,
    loaded without one): the same library on its default device (``torch`` for ``torch:cuda``), else numpy."""
    library = spec.partition(":")[0].strip().lower()
    if library != spec.strip().lower() and backend_status(library)[0]:
        return get_backend(library).spec
    return "numpy"


def backend_status(name: str) -> tuple[bool, str]:
    """Whether a backend imports and runs an operation here, and if not, why.

    Trying a backend that is not loaded yet leaves it unloaded, and the library's process-wide settings
    as they were (loading JAX's turns on its 64-bit mode): asking changes nothing.
    """
    with _library_lock(name):
        return _status(name)


def _status(name: str) -> tuple[bool, str]:
    """`backend_status`, under the lock."""
    adapter = _adapter_of(name)
    before, cached = (adapter.process_settings(), set(_CACHE)) if adapter is not None else (None, set())
    loaded: Backend | None = None
    try:
        be = loaded = get_backend(name)
        xp = be.xp
        total = xp.sum(xp.ones((4,), dtype=xp.float32, device=be.device))
        if be.to_float(total) != 4.0:
            return False, "a test sum gave a wrong result"
    except Exception as exc:  # any failure means "does not run here", and we report why
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        if adapter is not None and adapter.process_settings() != before:
            # what this call loaded, which would run without those settings (not what another thread loaded
            # meanwhile of another library, under that library's lock)
            for key in set(_CACHE) - cached:
                if _CACHE[key] is loaded:
                    del _CACHE[key]
            adapter.restore_process_settings(before)
    return True, "ok"


def _adapter_of(spec: str) -> type[Backend] | None:
    """The adapter class a backend spec names; None where it names none (or its module does not import)."""
    name = spec.strip().partition(":")[0].lower()
    name = _ALIASES.get(name, name)
    if name not in _ENTRIES:
        return None
    try:
        return adapter_class(name)
    except ImportError:
        return None


def available_backends() -> list[str]:
    """Names of the registered backends that import and run an operation on this machine.

    Asking loads none of them for good and changes no library's settings (see `backend_status`).
    """
    return [name for name in _ENTRIES if backend_status(name)[0]]


# -- the built-in adapters, one module each -------------------------------------------------------
register_backend("numpy", "nnx.backends.numpy:NumpyBackend", aliases=("np",),
                 module_names=("array_api_compat.numpy",))
register_backend("array_api_strict", "nnx.backends.array_api_strict:ArrayApiStrictBackend", aliases=("strict",))
register_backend("torch", "nnx.backends.torch:TorchBackend", aliases=("pytorch",),
                 module_names=("array_api_compat.torch",))
register_backend("jax", "nnx.backends.jax:JaxBackend", aliases=("jax.numpy",), module_names=("jax.numpy", "jaxlib"))
register_backend("cupy", "nnx.backends.cupy:CupyBackend", aliases=("cp",), module_names=("array_api_compat.cupy",))

#: the built-in backends, in the order `available_backends` lists them
BACKEND_NAMES = backend_names()
