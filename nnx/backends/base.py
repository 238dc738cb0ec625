"""The `Backend` protocol: what the portable core may ask of an array library beyond the standard.

A `Backend` is an array namespace bound to one device. The core does its math with
``backend.xp`` and asks the backend only for what the array API standard leaves out:
moving arrays to and from the host, random numbers, device synchronisation, dtype
objects, and the library's compiler where it has one. Each library's adapter is a subclass in its own
module (``nnx/backends/<library>.py``) that fills in the hooks marked below; the shared
checks (dtypes, foreign arrays, device moves) live here once.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import math
import os
import types
from collections.abc import Callable, Sequence
from typing import Any

import array_api_compat
import numpy as np

from .names import FLOAT_DTYPES, article, backend_name_of, dtype_name, is_scipy_sparse
from .rng import DeviceRNG, HostRNG

_NO_SCOPE = contextlib.nullcontext()  # `Backend.eager_scope` where nothing needs setting


def _numbers(complex_given: bool) -> str:
    """What an input must hold, as a message says it: "real numbers" where complex ones were given."""
    return "real numbers" if complex_given else "numbers"


class BackendUnavailableError(RuntimeError):
    """A backend was asked for that cannot run on this machine."""


def _sums(xp: Any, arrays: tuple[Any, ...]) -> tuple[Any, ...]:
    """The sum of each array (`Backend.sums_finite`)."""
    return tuple(xp.sum(a) for a in arrays)


def import_library(module: str, backend: str, install: str) -> Any:
    """Import an adapter's library, or raise `BackendUnavailableError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # Only the library itself missing is "not installed"; an installed one can fail too (a CuPy wheel without
        # its CUDA libraries, a missing dependency), and then installing it is not what is needed.
        if isinstance(exc, ModuleNotFoundError) and exc.name == module:
            raise BackendUnavailableError(
                f"backend {backend!r} cannot run here: {module} is not installed ({exc}); install it with: {install}"
            ) from exc
        raise BackendUnavailableError(
            f"backend {backend!r} cannot run here: {module} is installed but fails to import ({exc}); "
            f"reinstall it with: {install}"
        ) from exc


def namespace_with(module: types.ModuleType, **replaced: Any) -> types.ModuleType:
    """A copy of namespace `module`, under its name, with the `replaced` functions: every other name is the
    module's own object (an adapter's faster, equal versions of a few of its functions)."""
    xp = types.ModuleType(module.__name__, module.__doc__)
    xp.__dict__.update({k: v for k, v in vars(module).items() if k not in ("__name__", "__doc__")})
    xp.__dict__.update(replaced)
    return xp


_SWITCH_OFF, _SWITCH_ON = ("0", "false", "off", "no"), ("", "1", "true", "on", "yes")


def fastpath_allowed() -> bool:
    """False when the environment turns the fast paths off (``NNX_FASTPATH=0``, or false, off, no).

    Read when asked, not once when a backend loads, so that setting the variable in a running process
    (``os.environ`` in a notebook) takes effect from the next fit; a value that is no switch is refused.
    """
    value = os.environ.get("NNX_FASTPATH", "1").strip().lower()
    if value in _SWITCH_OFF or value in _SWITCH_ON:
        return value not in _SWITCH_OFF
    raise ValueError(f"NNX_FASTPATH must be 0 or 1 (or false/true, off/on, no/yes), got {value!r}")


class TraceRefused(Exception):
    """Raised while tracing a step when nnx finds its code cannot be one program (the compiler would not
    notice): every adapter's `trace_errors` include it, so the step runs op by op instead."""


class CarryChanged(Exception):
    """Raised by `Backend.scan` when the body returns its carry in another structure than it took (an optimizer's
    state gained or lost a key, after a callback changed a hyper-parameter) or with another dtype or shape (a
    layer rebinds a buffer to integers): such an epoch runs step by step."""


class Backend:
    """An array namespace bound to one device; subclass it to adapt a library.

    Args:
        xp: the array-API namespace used for all math.
        device: the device arrays are created on.
        device_label: the part after the colon in the spec (``"cuda:0"``), None for the default device.
        fastpath: whether `fit` may derive faster executions here (`fastpath_enabled`).

    A subclass sets `name` and `distributions`, implements `load`, `from_host` and
    `_to_host`, and overrides `rng`, `synchronize`, `devices`, `_move`, `_device_label`
    or `can_compile`/`jit`/`trace_errors` where its library differs from the defaults.
    """

    #: the backend's name, as `get_backend` takes it; arrays of this backend report it (`backend_name_of`)
    name: str = ""
    #: pip distributions that provide the library, first match wins (``python -m nnx info`` reports the version)
    distributions: tuple[str, ...] = ()
    #: for a library that also runs on CPUs, the spec of its GPU that ``python -m nnx info`` checks
    gpu_spec: str | None = None

    def __init__(self, xp: Any, device: Any, device_label: str | None = None, fastpath: bool = True) -> None:
        self.xp = xp
        self.device = device
        self.device_label = device_label
        self._fastpath_on = bool(fastpath)

    # -- what an adapter provides ----------------------------------------------
    @classmethod
    def load(cls, label: str | None) -> Backend:
        """The backend for the device `label` names (None: the library's default device)."""
        raise NotImplementedError

    @classmethod
    def default_label(cls) -> str | None:
        """The device label the bare name means right now, where that changes (CuPy: the current GPU); else None.

        `get_backend` resolves a bare name through it on every call instead of caching one device.
        """
        return None

    @classmethod
    def devices(cls) -> list[str]:
        """The devices the library reports here (for ``python -m nnx info``); imports the library."""
        return []

    @classmethod
    def process_settings(cls) -> Any:
        """The library's process-wide settings that `load` changes (JAX: its 64-bit mode), as they are now.

        `backend_status` puts them back (`restore_process_settings`) after trying a backend that was not
        loaded, so that asking what runs here changes nothing. None where `load` changes none.
        """
        return None

    @classmethod
    def restore_process_settings(cls, settings: Any) -> None:
        """Put back settings `process_settings` returned."""

    def from_host(self, host: np.ndarray) -> Any:
        """A NumPy array on this backend's device, unchecked (`asarray` is the checked entry point)."""
        raise NotImplementedError

    def _to_host(self, x: Any) -> np.ndarray:
        """A NumPy array holding a backend array's values."""
        raise NotImplementedError

    def _move(self, x: Any) -> Any:
        """An array of this library moved to this backend's device."""
        return array_api_compat.to_device(x, self.device)

    def _device_label(self, device: Any) -> str:
        """The spec label (after the colon) that `load` turns back into `device`."""
        return str(device)

    def rng(self, seed: int) -> DeviceRNG:
        """A random stream on this device for dropout masks, seeded reproducibly."""
        return HostRNG(self, seed)

    def synchronize(self, x: Any = None) -> None:
        """Wait until queued device work (or the work producing `x`) is done; for timing."""

    def split_rows(self, x: Any, sizes: list[int]) -> list[Any]:
        """`x` cut into consecutive blocks of rows of these sizes (summing to its rows).

        An epoch's batches come from here. Slicing is one operation per block; a library
        whose every operation is a dispatch (JAX) cuts them all in one.
        """
        out, start = [], 0
        for size in sizes:
            out.append(x[start:start + size, ...])
            start += size
        return out

    def take_rows(self, x: Any, rows: Any) -> Any:
        """`x`'s rows at the integer indices `rows`, which nnx made itself (an epoch's permutation, a batch's part
        of it), so each one is in range. Batches are gathered with it."""
        return self.xp.take(x, rows, axis=0)

    def concat_flat(self, arrays: list[Any]) -> Any:
        """The arrays raveled and joined into one new 1-D array (the flat-buffer update gathers with it)."""
        xp = self.xp
        return xp.concat([xp.reshape(a, (-1,)) for a in arrays])

    def split_flat(self, flat: Any, bounds: list[tuple[int, int]], shapes: list[tuple[int, ...]]) -> list[Any]:
        """1-D `flat` cut at `bounds` (start, stop) into arrays of `shapes`: views where the library has them (the
        flat update writes through them), else new arrays. The flat update and the gradient all-reduce cut so."""
        xp = self.xp
        return [xp.reshape(flat[a:b], shape) for (a, b), shape in zip(bounds, shapes, strict=True)]

    def fused(self, fn: Callable[..., Any], static: tuple[str, ...] = ()) -> Callable[..., Any]:
        """`fn(xp, *arrays, **settings)`, a small pure function of arrays (a check of fit's data, a split of its
        rows), as one call: here `fn` on this namespace. A library that compiles every eager op as a program of
        its own, once per shape (JAX), runs it as one program instead, `static` naming the keyword settings the
        program is specific to; `fn` must then be a module-level function, since its programs are kept by it."""
        return functools.partial(fn, self.xp)

    def sums_finite(self, arrays: Sequence[Any]) -> bool:
        """Whether the sum of each floating-point array is finite, all computed in one call (`fused`) and each read.

        An array's sum is finite when every element is, unless finite elements overflow it: True answers for the
        data, and False asks for a look element by element (`nnx.training.inputs.require_finite` names the array).
        """
        floats = tuple(a for a in arrays if self.xp.isdtype(a.dtype, "real floating"))
        return not floats or all(math.isfinite(self.to_float(total)) for total in self.fused(_sums)(floats))

    def finite_probe(self, x: Any) -> Any:
        """One number of 1-D `x`'s dtype (a 0-d array, or the library's scalar) that is finite when every element of
        `x` is, and NaN or infinite when one is not; it may also overflow for large finite elements (a caller
        confirms a non-finite probe element by element). The training step's finite check reads one a step over
        the flat gradients: the sum here."""
        return self.xp.sum(x)

    def eager_scope(self) -> contextlib.AbstractContextManager:
        """The context nnx runs a model's layers in when it runs them op by op (`model(X)`, `forward`, `backward`,
        a step that is not compiled), so that they compute as the programs `compile` makes do; nothing here."""
        return _NO_SCOPE

    def update_piece(self, dtype: Any) -> int | None:
        """How many elements of a flat buffer an elementwise optimizer rule should see at once; None: all.

        On a device, one call over everything is fastest. On a CPU, a rule's temporaries
        over a large buffer are large allocations, which the C allocator maps fresh and
        the page faults cost more than the arithmetic; adapters there give a slice size.
        """
        return None

    def out_functions(self) -> dict[str, Any] | None:
        """The library's functions that write their result into a given array, ``fn(*args, out=array)``.

        Keys are the namespace's elementwise function names and the Python operators
        ``+ - * / > >= < <= == !=`` plus ``neg`` and ``abs`` (``-x``, ``abs(x)``); each must
        compute exactly what the operator on the library's arrays, or the namespace's function
        of that name, computes. The flat update replays an elementwise optimizer rule with
        them (`nnx.training.replay`); ``where``, if given, also selects a deferred finite
        check's verdict in place. None where the library has none or its arrays are immutable.
        """
        return None

    def tape(self) -> Any:
        """A new `nnx.backends.recording.Tape` for this library's arrays, or None where its arrays do not tell
        what is done to them: the training step records its passes once on one and replays them (NumPy)."""
        return None

    @property
    def arrays_on_host(self) -> bool:
        """Whether arrays live in host memory, so reading a number from one waits for no device.

        The training step reads its finite check every step where this holds, and keeps it
        on the device (one read per epoch) where it does not.
        """
        return True

    # -- identity -----------------------------------------------------------
    @property
    def spec(self) -> str:
        """The string `get_backend` turns back into this backend."""
        return self.name if self.device_label is None else f"{self.name}:{self.device_label}"

    def __repr__(self) -> str:
        return f"Backend({self.spec!r})"

    def __eq__(self, other: object) -> bool:
        # same library and device: their arrays are interchangeable, whichever adapter made them
        return isinstance(other, Backend) and (self.name, str(self.device)) == (other.name, str(other.device))

    def __hash__(self) -> int:
        return hash((self.name, str(self.device)))

    def __deepcopy__(self, memo: dict[int, Any]) -> Backend:
        """The backend itself: shared like a device, and its namespace module cannot be copied."""
        return self

    def on_device(self, device: Any) -> Backend:
        """This backend on another device of the same library."""
        other = copy.copy(self)
        other.device, other.device_label = device, self._device_label(device)
        return other

    # -- derived execution ------------------------------------------------------
    @property
    def fastpath_enabled(self) -> bool:
        """Whether `fit` may derive a faster execution from the model's own code on this backend.

        That is the flat-buffer update of an elementwise optimizer rule and, where the library
        compiles (`can_compile`), the whole step as one program. Every way gives the plain
        loop's numbers; `with_fastpath(False)` runs the plain loop, e.g. to compare.
        """
        return self._fastpath_on and fastpath_allowed()

    def with_fastpath(self, enabled: bool) -> Backend:
        """This backend with derived executions on or off (see `fastpath_enabled`)."""
        other = copy.copy(self)
        other._fastpath_on = bool(enabled)  # a copy of this object, of this class
        return other

    @property
    def can_compile(self) -> bool:
        """Whether `jit` compiles a pure function of arrays into one program (JAX)."""
        return False

    def compiler_off(self) -> str | None:
        """Why `can_compile` is False for now where the library has a compiler (a setting of its own), else None."""
        return None

    def jit(self, fn: Any) -> Any:
        """`fn`, a pure function of arrays (and tuples and dicts of them), compiled by the library."""
        raise NotImplementedError(f"backend {self.spec!r} has no compiler")

    def compile(self, fn: Any, args: tuple) -> Any:
        """`fn` traced and compiled ahead of time for `args`: a callable for arguments of the same structure,
        shapes and dtypes, raising TypeError for others (`nnx.training.shared_programs`); only where `can_compile`."""
        raise NotImplementedError(f"backend {self.spec!r} has no compiler")

    def program_settings(self) -> tuple:
        """The library's settings that change what `compile` makes (a matrix-product precision, a debug
        mode), as they stand: cheap to read, since a compiled program compares them at every call."""
        raise NotImplementedError(f"backend {self.spec!r} has no compiler")

    def program_signature(self, args: tuple) -> tuple:
        """What a program `compile` makes for `args` is specific to: the arguments' structure, shapes and
        dtypes, and the library's settings that change compiled code."""
        raise NotImplementedError(f"backend {self.spec!r} has no compiler")

    def scan(self, body: Any, carry: Any, xs: Any) -> tuple[Any, Any]:
        """``lax.scan``: `body(carry, x) -> (carry, y)` over the leading axis of `xs`, inside a compiled program.

        Returns the final carry and the stacked ``y``s; only where `can_compile`. Raises `CarryChanged` when
        `body` returns its carry in another structure, dtype or shape than it took.
        """
        raise NotImplementedError(f"backend {self.spec!r} has no compiler")

    def inputs_read(self, fn: Any, arrays: list[Any]) -> list[bool]:
        """Which of `arrays` `fn(*arrays)` reads, found by tracing it on stand-ins of their shapes and dtypes (its
        Python runs once more; it may close over values of a trace in progress); only where `can_compile`.

        A compiled step asks it of the arrays a user's layer rebinds while traced: one it read first is state it
        carries from step to step (which a program would not carry), one it did not is a cache for its backward.
        """
        raise NotImplementedError(f"backend {self.spec!r} has no compiler")

    trace_errors: tuple[type[BaseException], ...] = (TraceRefused,)
    """What the library raises when traced code needs a concrete value (an ``if`` on an array, ``float(x)``),
    and `TraceRefused`."""

    # -- dtypes -------------------------------------------------------------
    def float_dtype(self, dtype: Any) -> Any:
        """The namespace's float dtype for a name (``"float32"``) or dtype object."""
        label = dtype_name(dtype)
        if label not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {label!r}")
        return getattr(self.xp, label)

    def is_traced(self, x: Any) -> bool:
        """Whether `x` is a value being traced by its library's compiler (a JAX tracer inside the user's own
        ``jax.jit``), which has no numbers to read on the host."""
        return False

    # -- moving data ----------------------------------------------------------
    def owns(self, x: Any) -> bool:
        """Whether `x` is an array of this backend's library."""
        return backend_name_of(x) == self.name

    def as_data(self, x: Any) -> Any:
        """`x`, an array of this backend, as plain data: itself, where the library keeps nothing else with it (torch
        drops a tensor's autograd history)."""
        return x

    def asarray(self, x: Any, dtype: Any = None, argname: str = "X", copy: bool = False) -> Any:
        """Put `x` on this backend, cast to `dtype` when given (else NumPy's float16 and long double become
        float32 and float64, which every library has).

        NumPy arrays, Python scalars and lists are always accepted and moved; an
        array of this backend on another device is moved to ours; an array from
        another non-NumPy library raises `TypeError` naming both backends. The
        result may share memory with `x` unless `copy=True` (needed for anything
        that will be updated in place, such as parameters).
        """
        target = None if dtype is None else self.float_dtype(dtype)
        host_array = isinstance(x, (np.ndarray, np.generic))
        # NumPy arrays take the host path even on the numpy backend, so the dtype check below applies there too
        if not host_array and self.owns(x):
            # as for host arrays below: a cast would drop an imaginary part (torch and JAX only warn)
            if not self.xp.isdtype(x.dtype, ("bool", "integral", "real floating")):
                raise TypeError(f"{argname} must hold {_numbers(self.xp.isdtype(x.dtype, 'complex floating'))}, "
                                f"got dtype {x.dtype}")
            if str(array_api_compat.device(x)) != str(self.device):
                x = self._move(x)
            if target is not None and x.dtype != target:
                return self.xp.astype(x, target)
            return self.xp.asarray(x, copy=True) if copy else x
        other = None if host_array else backend_name_of(x)
        if other is not None:
            raise TypeError(
                f"{argname} is {article(other)} array but this model runs on the {self.name} backend; "
                f"pass {self._accepted()} (model.to({other!r}) moves the model)"
            )
        if is_scipy_sparse(x):  # NumPy would make it a 0-d object array
            raise TypeError(f"{argname} is a scipy.sparse {type(x).__name__}; nnx computes on dense arrays: "
                            f"pass {argname}.toarray()")
        if isinstance(x, np.ma.MaskedArray) and np.ma.count_masked(x):
            # np.asarray (as torch and scikit-learn) reads the values under the mask: often a fill value
            hidden = int(np.ma.count_masked(x))
            raise ValueError(f"{argname} is a masked array with {hidden} masked entr{'y' if hidden == 1 else 'ies'}, "
                             "whose values are not data; fill them (x.filled(value)) or leave those rows out")
        try:
            host = np.asarray(x)
        except (ValueError, TypeError) as exc:  # ragged nesting, objects NumPy cannot make an array of
            raise TypeError(f"{argname} must be an array of numbers, got {type(x).__name__} ({exc})") from None
        if host.dtype.kind == "V" and host.dtype.name.startswith(("bfloat", "float", "int", "uint")):
            # ml_dtypes' bfloat16, float8 and int4 (np.asarray of a JAX array gives them), which NumPy holds as
            # opaque void: no library takes them from NumPy, and float32 (int32) holds each value exactly
            host = host.astype(np.float32 if "float" in host.dtype.name else np.int32)
        if host.dtype.kind not in "biuf":
            strings = host.dtype.kind in "US" or (
                host.dtype == object and any(isinstance(v, (str, bytes)) for v in host.flat))
            if strings and "weight" in argname:  # weights as text: no class labels to encode
                hint = " (strings): pass the weights as numbers"
            elif strings:
                # class names as read from a CSV (or a pandas column of them): say how to make them numbers
                hint = (" (strings): encode class labels as indices 0..k-1 (classes, y = np.unique(labels, "
                        "return_inverse=True); nnx.sklearn.MLPClassifier takes string labels as they are) and a "
                        "categorical feature as one-hot columns")
            elif host.dtype == object and hasattr(x, "iloc"):
                # pd.get_dummies puts bool columns beside float ones, which NumPy makes an object array
                # and so do several columns of pandas' nullable dtypes (Int64, Float64, boolean)
                hint = (f" (a DataFrame whose columns are of different kinds gives one; pass {argname}.to_numpy("
                        "dtype=float)), and so do columns of pandas' nullable dtypes (Int64, Float64, boolean)")
            else:
                hint = ""
            raise TypeError(f"{argname} must hold {_numbers(host.dtype.kind == 'c')}, got dtype {host.dtype}{hint}")
        if not host.dtype.isnative:
            # read from a big-endian file (FITS, a .npy from another machine): torch, JAX and array_api_strict refuse
            # another byte order, and arrays that are not cast (class labels) would reach them as they are
            host = host.astype(host.dtype.newbyteorder("="))
        if dtype is None and host.dtype.kind == "f" and host.dtype.name not in FLOAT_DTYPES:
            # float16 and long double are no array-API dtypes (array_api_strict refuses both, torch long double):
            # read without a cast (class targets, the finite check), they become float32 and float64
            dtype = "float32" if host.dtype.itemsize < 4 else "float64"
        if dtype is not None or copy:
            # C order: every library shares or gathers rows of C-ordered memory without copying all of it
            # (NumPy's take copies a Fortran-ordered X whole to gather one batch; torch copies it to share it)
            target = dtype_name(dtype) if dtype is not None else host.dtype
            if host.dtype.kind == "f" and np.dtype(target).itemsize < host.dtype.itemsize:
                # a finite float64 beyond float32's range becomes inf: the callers' check names the argument and
                # the range, where NumPy's own "overflow encountered in cast" (an error under -W error) would not
                with np.errstate(over="ignore"):
                    host = host.astype(target, order="C", copy=copy)
            else:
                host = host.astype(target, order="C", copy=copy)
        return self.from_host(host)

    def _accepted(self) -> str:
        """What `asarray` accepts, for the message refusing a foreign array."""
        return "a NumPy array" if self.name == "numpy" else f"a NumPy array or {article(self.name)} array"

    def to_host(self, x: Any) -> np.ndarray:
        """A NumPy copy (or a view, where the backend's memory is the host's) of a backend array."""
        if isinstance(x, (np.ndarray, np.generic)):
            return np.asarray(x)  # host arrays are accepted everywhere, as in `asarray`
        return self._to_host(x)

    def to_float(self, x: Any) -> float:
        """A Python float from a 0-d array: the one place the host waits for the device."""
        return float(self.to_host(x))
