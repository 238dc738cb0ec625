"""A CuPy stand-in for machines without a GPU: NumPy underneath, the installed CuPy's signatures on top.

`standin()` builds a module tree (``cupy``, ``cupy.cuda``, ``cupy.random``, ``cupyx.distributed``, ...)
in which every attribute nnx or array_api_compat reaches for is looked up in the real CuPy: a
name CuPy lacks raises AttributeError, and every call is bound to the real function's signature
(from ``inspect.signature``, or the signature line Cython writes at the top of its docstrings) before
NumPy does the work. A call CuPy would refuse (too many positional arguments, an unknown keyword)
raises TypeError here too. Arrays are NumPy arrays; devices are numbered stand-ins of which one is
current, as in CUDA. Needs CuPy installed (it imports without a GPU).
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import types
from typing import Any

import numpy as np

_SKIP = object()


def signature_of(obj: Any) -> inspect.Signature | None:
    """The real signature of a CuPy callable: `inspect.signature`, else the one Cython embeds in its docstring."""
    try:
        return inspect.signature(obj)
    except (TypeError, ValueError):
        pass
    first = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    match = re.match(r"^[\w.]*?(\w+)\((.*)\)(\s*->.*)?$", first[0].strip()) if first else None
    if match is None:
        return None
    params = match.group(2).replace("\\*", "*")
    # Cython writes C types before names ("int device"); keep the names
    params = ", ".join(re.sub(r"^(?:[\w.]+\s+)+(\**\w+)", r"\1", p.strip()) for p in params.split(",") if p.strip())
    try:
        tree = ast.parse(f"def f({params}): pass")
    except SyntaxError:
        return None
    namespace: dict[str, Any] = {}
    exec(compile(tree, "<cupy signature>", "exec"), namespace)  # a function with nothing but that signature
    return inspect.signature(namespace["f"])


def check_call(name: str, real: Any, args: tuple, kwargs: dict, method: bool = False) -> None:
    """Raise TypeError, as CuPy would, when `args`/`kwargs` do not fit the real callable's signature."""
    sig = signature_of(real)
    if sig is None:
        nargs = getattr(real, "nargs", None)  # a CuPy ufunc: inputs and outputs positional, a few keywords
        if nargs is not None and len(args) > nargs:
            raise TypeError(f"cupy {name} takes at most {nargs} positional arguments, {len(args)} given")
        return
    try:
        sig.bind(*((None,) if method else ()), *args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"cupy {name}{sig}: {exc}") from None


def checked(name: str, real: Any, impl: Any, method: bool = False) -> Any:
    """`impl` behind the real CuPy callable's signature check."""
    def call(*args: Any, **kwargs: Any) -> Any:
        check_call(name, real, args, kwargs, method)
        return impl(*args, **kwargs)

    call.__name__ = name.rsplit(".", 1)[-1]
    call.real = real  # type: ignore[attr-defined]
    return call


class Device:
    """A numbered stand-in device; ``with`` makes it current, as `cupy.cuda.Device` does."""

    current = 0
    count = 2
    synchronized: list[int] = []

    def __init__(self, device: int | None = None) -> None:
        self.id = Device.current if device is None else int(device)
        self._saved: list[int] = []

    def use(self) -> None:
        Device.current = self.id

    def synchronize(self) -> None:
        Device.synchronized.append(self.id)

    def __enter__(self) -> Device:
        self._saved.append(Device.current)
        Device.current = self.id
        return self

    def __exit__(self, *exc: Any) -> None:
        Device.current = self._saved.pop()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return self.id

    def __int__(self) -> int:
        return self.id

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


class StandinArray(np.ndarray):
    """A NumPy array with CuPy's `get` (checked against ``cupy.ndarray.get``)."""

    real_get: Any = None

    def get(self, *args: Any, **kwargs: Any) -> np.ndarray:
        check_call("cupy.ndarray.get", StandinArray.real_get, args, kwargs, method=True)
        return np.array(self)


class RandomState:
    """`cupy.random.RandomState` over NumPy's Philox, its methods checked; counts how many were built."""

    built = 0
    real: Any = None

    def __init__(self, seed: Any = None, method: Any = None) -> None:
        RandomState.built += 1
        self.method = method
        self.seed(seed)

    def seed(self, *args: Any, **kwargs: Any) -> None:
        check_call("cupy.random.RandomState.seed", RandomState.real.seed, args, kwargs, method=True)
        self._gen = np.random.Generator(np.random.Philox(*args, **kwargs))

    def random_sample(self, *args: Any, **kwargs: Any) -> np.ndarray:
        check_call("cupy.random.RandomState.random_sample", RandomState.real.random_sample, args, kwargs, method=True)
        size, dtype = (list(args) + [None, float][len(args):])[:2]
        dtype = kwargs.get("dtype", dtype)
        return self._gen.random(kwargs.get("size", size), dtype=np.dtype(dtype)).view(StandinArray)


class NCCLGroup:
    """A world of one for `cupyx.distributed`'s NCCL backend: collectives are the identity."""

    def __init__(self) -> None:
        self.stopped = 0

    def all_reduce(self, in_array: Any, out_array: Any, op: str = "sum", stream: Any = None) -> None:
        out_array[...] = in_array

    def broadcast(self, in_out_array: Any, root: int = 0, stream: Any = None) -> None:
        pass

    def barrier(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped += 1


class _Module(types.ModuleType):
    """A stand-in module: explicit stand-ins first, else NumPy's namesake behind the real CuPy's signature."""

    def __init__(self, name: str, real: Any, numpy_side: Any, explicit: dict[str, Any]) -> None:
        super().__init__(name)
        self._real, self._numpy, self._explicit = real, numpy_side, explicit
        public = [n for n in dir(real) if not n.startswith("_")]
        self.__all__ = [n for n in public if n in explicit or (
            numpy_side is not None and not isinstance(getattr(numpy_side, n, np), types.ModuleType))]

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if attr in self._explicit:
            value = self._explicit[attr]
            return value
        real = getattr(self._real, attr)  # AttributeError: CuPy has no such name
        if isinstance(real, type) or not callable(real):
            return real  # dtypes, ndarray-like classes and constants are NumPy's own in CuPy
        impl = getattr(self._numpy, attr, None) if self._numpy is not None else None
        if impl is None:
            raise NotImplementedError(f"the CuPy stand-in has no NumPy counterpart for {self.__name__}.{attr}: "
                                      "add one to tests/cupy_standin.py")
        if attr == "asarray":
            impl = _asarray
        fn = checked(f"{self.__name__}.{attr}", real, _device_arrays(impl))
        setattr(self, attr, fn)
        return fn


def _device_arrays(impl: Any) -> Any:
    """`impl` returning its arrays as `StandinArray`, as every CuPy function returns device arrays."""
    def call(*args: Any, **kwargs: Any) -> Any:
        out = impl(*args, **kwargs)
        return out.view(StandinArray) if isinstance(out, np.ndarray) and not isinstance(out, StandinArray) else out

    return call


def _asarray(a: Any, dtype: Any = None, order: Any = None, *, copy: Any = None, blocking: bool = False) -> np.ndarray:
    return np.array(a, dtype=dtype, order=order, copy=copy).view(StandinArray)


def standin() -> dict[str, types.ModuleType]:
    """Fresh stand-in modules by name, to put into `sys.modules` in place of CuPy (state reset)."""
    import cupy
    import cupyx
    import cupyx.distributed
    from cupyx.distributed._nccl_comm import NCCLBackend

    Device.current, Device.synchronized, RandomState.built = 0, [], 0
    RandomState.real, StandinArray.real_get = cupy.random.RandomState, cupy.ndarray.get
    random_state = checked("cupy.random.RandomState", RandomState.real, RandomState)
    runtime = types.SimpleNamespace(
        getDeviceCount=checked("cupy.cuda.runtime.getDeviceCount", cupy.cuda.runtime.getDeviceCount,
                               lambda: Device.count),
        getDevice=checked("cupy.cuda.runtime.getDevice", cupy.cuda.runtime.getDevice, lambda: Device.current),
        getDeviceProperties=checked("cupy.cuda.runtime.getDeviceProperties", cupy.cuda.runtime.getDeviceProperties,
                                    lambda device: {"name": b"stand-in"}),
        runtimeGetVersion=checked("cupy.cuda.runtime.runtimeGetVersion", cupy.cuda.runtime.runtimeGetVersion,
                                  lambda: 12080),
    )
    cuda = _Module("cupy.cuda", cupy.cuda, None, {"Device": Device, "runtime": runtime,
                                                  "device": types.SimpleNamespace(Device=Device)})
    random = _Module("cupy.random", cupy.random, np.random, {"RandomState": random_state})
    group = NCCLGroup()
    group_methods = {n: checked(f"NCCLBackend.{n}", getattr(NCCLBackend, n), getattr(group, n), method=True)
                     for n in ("all_reduce", "broadcast", "barrier", "stop")}
    group_proxy = types.SimpleNamespace(**group_methods, impl=group, _store=None)
    distributed = _Module("cupyx.distributed", cupyx.distributed, None, {
        "init_process_group": checked("cupyx.distributed.init_process_group", cupyx.distributed.init_process_group,
                                      lambda n_devices, rank, **kw: group_proxy)})
    top = _Module("cupy", cupy, np, {"cuda": cuda, "random": random, "ndarray": np.ndarray,
                                     "linalg": _Module("cupy.linalg", cupy.linalg, np.linalg, {}),
                                     "fft": _Module("cupy.fft", cupy.fft, np.fft, {})})
    top.__version__ = cupy.__version__
    x = _Module("cupyx", cupyx, None, {"distributed": distributed})
    return {"cupy": top, "cupy.cuda": cuda, "cupy.cuda.device": cuda.device, "cupy.random": random,
            "cupy.linalg": top.linalg, "cupy.fft": top.fft, "cupyx": x, "cupyx.distributed": distributed}


def compat_namespace(modules: dict[str, types.ModuleType]) -> types.ModuleType:
    """array_api_compat's CuPy namespace imported over the stand-in, so its calls into CuPy are checked too."""
    import array_api_compat

    def ours(key: str) -> bool:
        return key == "cupy" or key.startswith(("cupy.", "cupyx", "array_api_compat.cupy"))

    saved = {k: v for k, v in sys.modules.items() if ours(k)}
    saved_attr = array_api_compat.__dict__.get("cupy", _SKIP)
    for key in saved:
        del sys.modules[key]
    sys.modules.update(modules)
    try:
        import array_api_compat.cupy as xp
    finally:
        for key in [k for k in sys.modules if ours(k)]:
            del sys.modules[key]
        sys.modules.update(saved)
        if saved_attr is _SKIP:
            array_api_compat.__dict__.pop("cupy", None)
        else:
            array_api_compat.cupy = saved_attr  # pyright: ignore[reportAttributeAccessIssue]
    return xp
