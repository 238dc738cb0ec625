"""The JAX adapter: immutable arrays on a JAX device, with dropout from counter-based keys.

JAX is put in 64-bit mode when the backend loads, since nnx models carry an explicit
dtype and JAX would otherwise turn float64 into float32 without a word. The programs nnx
compiles, and a model's layers run op by op on a GPU (`JaxBackend.eager_scope`), multiply float32
matrices in full float32 (`MATMUL_PRECISION`). The library is
imported only inside functions (``import jax`` here is the library: imports are absolute).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np

from .base import Backend, BackendUnavailableError, CarryChanged, TraceRefused, import_library
from .names import dtype_name
from .nvidia import JAX_CUDA_INSTALL, driver_cuda_version, gpu_cause
from .rng import DeviceRNG

_PLATFORMS = ("cpu", "gpu", "cuda", "rocm", "tpu", "metal")
_CUDA_PLUGINS = {12: "jax_cuda12_plugin", 13: "jax_cuda13_plugin"}
# XLA options for the programs nnx compiles (`JaxBackend.jit`, `JaxBackend.compile`): an option's name without
# its "--" and its value, e.g. {"xla_cpu_use_fusion_emitters": False} to compile small CPU programs faster
# (jaxlib before 0.11 only: 0.11 removed that option).
# Empty: XLA's defaults. A program compiled under other options is never reused (see `program_signature`).
COMPILER_OPTIONS: dict[str, Any] = {}
#: the precision of the matrix products in nnx's programs (`JaxBackend.jit`, `JaxBackend.compile`) and its layers
#: run op by op on a GPU (`JaxBackend.eager_scope`), where
#: ``jax_default_matmul_precision`` is unset: full float32, as torch (without allow_tf32) and CuPy compute them.
#: JAX's own default lets a GPU round float32 operands to TensorFloat-32: on an H200 a 1024 x 1024 product was
#: off by 2.8e-4 relative, against 4.6e-7 at float32. A precision the user sets is theirs and is kept.
MATMUL_PRECISION = "float32"
# JAX settings that change what a traced and compiled program computes or how it is optimised
_PROGRAM_SETTINGS = ("jax_enable_x64", "jax_disable_most_optimizations", "jax_default_matmul_precision",
                     "jax_numpy_rank_promotion", "jax_numpy_dtype_promotion", "jax_debug_nans", "jax_debug_infs")


def cuda_plugin_installed() -> int | None:
    """The CUDA major of jaxlib's installed CUDA plugin (``jax[cuda12]`` brings one), None for CPU-only JAX."""
    return next((major for major, name in _CUDA_PLUGINS.items() if importlib.util.find_spec(name)), None)


def gpu_unavailable(spec: str, error: Exception, plugin: int | None, driver: tuple[int, int] | None) -> str:
    """Why `spec` cannot run: no CUDA plugin installed, or no driver or GPU for the one that is."""
    if plugin is None:
        return (f"backend {spec!r} cannot run here: the installed JAX runs on CPUs only; "
                f"install its CUDA build with: {JAX_CUDA_INSTALL}")
    return f"backend {spec!r} cannot run here: {gpu_cause((plugin, 0), driver)} (JAX says: {error})"


SLICE_WRITES_UP_TO = 8  # pieces a CPU join writes slice by slice; more are concatenated (see `_joined_on_cpu`)


def _joined_on_cpu(arrays: tuple[Any, ...]) -> Any:
    """`Backend.concat_flat` for a CPU: a few pieces written slice by slice into one new buffer, in the dtype a
    concatenation promotes to; more concatenated, as elsewhere.

    XLA's CPU concatenate of raveled pieces ran 3-7x a copy's time (the reshape of a matrix fused into it): the
    medium network's six gradients (235,146 elements) took 327-575 us against 91 us slice by slice. Each slice
    write passes over the whole buffer, though, so from some twenty pieces the concatenate wins (twenty pieces of
    256 x 256 and 256: 413 against 825 us; jaxlib 0.10, one thread)."""
    jnp = importlib.import_module("jax.numpy")
    lax = importlib.import_module("jax.lax")
    if not arrays or len(arrays) > SLICE_WRITES_UP_TO:
        return jnp.concat([jnp.reshape(a, (-1,)) for a in arrays])  # (nothing to join is refused as jnp refuses it)
    dtype = jnp.result_type(*arrays)
    pieces = [jnp.reshape(a, (-1,)).astype(dtype) for a in arrays]
    flat = jnp.empty((sum(piece.shape[0] for piece in pieces),), dtype=dtype)
    start = 0
    for piece in pieces:
        flat = lax.dynamic_update_slice(flat, piece, (start,))
        start += piece.shape[0]
    return flat


def _options() -> dict[str, Any]:
    """The keyword that passes `COMPILER_OPTIONS` to ``jax.jit`` or ``compile``; none while it is empty."""
    return {"compiler_options": dict(COMPILER_OPTIONS)} if COMPILER_OPTIONS else {}


def _precise(fn: Any) -> Any:
    """`fn`, tracing its matrix products at `MATMUL_PRECISION` unless the user set a default precision.

    JAX fixes a product's precision when it is traced (the ``@`` operator's too), so the scope is
    entered inside the traced function; a precision the user sets outside changes JAX's cache key,
    and the program is traced again with theirs.
    """
    jax = importlib.import_module("jax")

    @functools.wraps(fn)
    def traced(*args: Any, **kwargs: Any) -> Any:
        if jax.config.jax_default_matmul_precision is not None:
            return fn(*args, **kwargs)
        with jax.default_matmul_precision(MATMUL_PRECISION):
            return fn(*args, **kwargs)

    return traced


@functools.cache
def _setting_readers() -> tuple[Any, ...]:
    """A function reading each of `_PROGRAM_SETTINGS` this JAX has: a setting with a context manager as an
    attribute (it may differ per thread), the others by name. Found once: asking which exist costs microseconds,
    and `JaxBackend.program_settings` is read at every call of a program."""
    config = importlib.import_module("jax").config
    known = config.values
    return tuple(functools.partial(getattr, config, name) if hasattr(config, name) else
                 functools.partial(config.read, name) for name in _PROGRAM_SETTINGS if name in known)


def _input_type(leaf: Any) -> tuple:
    """What a compiled program needs of one input: an array's shape, dtype and weak typing; a Python number's type."""
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return tuple(leaf.shape), str(leaf.dtype), bool(getattr(leaf, "weak_type", False))
    return (type(leaf),)


class JaxBackend(Backend):
    """jax.numpy on one device (``"jax"``: JAX's default device (`default_label`), ``"jax:cpu"``, ``"jax:gpu:1"``)."""

    name = "jax"
    distributions = ("jax",)
    gpu_spec = "jax:gpu"

    @classmethod
    def load(cls, label: str | None) -> JaxBackend:
        jax = import_library("jax", cls.name, 'pip install "nnx-mlp[jax]"')
        jax.config.update("jax_enable_x64", True)
        xp = importlib.import_module("jax.numpy")
        label = label.lower() if label else label  # JAX's platform names are lower case: "jax:GPU" means "jax:gpu"
        platform, _, index = (label or "").partition(":")
        if index and not index.isdigit():
            raise ValueError(f"backend 'jax:{label}': the device index must be a number, got {index!r}")
        try:
            devices = jax.devices(platform) if platform else jax.devices()
        except RuntimeError as exc:  # JAX raises RuntimeError both for unknown and for absent platforms
            if platform.lower() in ("gpu", "cuda"):
                raise BackendUnavailableError(gpu_unavailable(f"jax:{label}", exc, cuda_plugin_installed(),
                                                              driver_cuda_version())) from None
            if platform.lower() in _PLATFORMS:
                raise BackendUnavailableError(f"backend 'jax:{label}' cannot run here: {exc}") from None
            raise ValueError(f"backend 'jax:{label}' names no JAX platform: {exc}") from None
        if int(index or 0) >= len(devices):
            raise BackendUnavailableError(f"backend 'jax:{label}' cannot run here: {len(devices)} "
                                          f"{platform or 'default'} device(s) found")
        return cls(xp, devices[int(index or 0)], label)

    @classmethod
    def default_label(cls) -> str | None:
        """``"jax"`` is JAX's default device: the one ``jax.default_device(...)`` or the ``jax_default_device``
        setting names where the user set one (a platform's name: its first device); None, JAX's first device,
        where nothing is set.

        Read on every call, as CuPy's current GPU is, so a model built inside ``with jax.default_device(d):``
        lives on ``d``, as the user's own arrays made there do.
        """
        try:
            jax = importlib.import_module("jax")
            chosen = jax.config.jax_default_device
            if chosen is None or isinstance(chosen, str):
                return (chosen or "").strip().lower() or None
            return f"{chosen.platform}:{jax.devices(chosen.platform).index(chosen)}"
        except Exception:  # no JAX, or a device it no longer lists: `load` says why
            return None

    @classmethod
    def devices(cls) -> list[str]:
        jax = importlib.import_module("jax")
        return [f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices()]

    @classmethod
    def process_settings(cls) -> Any:
        try:
            return importlib.import_module("jax").config.jax_enable_x64
        except ImportError:  # `load` says how to install it
            return None

    @classmethod
    def restore_process_settings(cls, settings: Any) -> None:
        if settings is not None:
            importlib.import_module("jax").config.update("jax_enable_x64", settings)

    def float_dtype(self, dtype: Any) -> Any:
        """As `Backend.float_dtype`; float64 only while JAX's 64-bit mode is on.

        `load` turns it on, but code may turn it off again: JAX would then make every float64 array
        float32 with a warning, and a float64 model would compute in float32 until something fails.
        """
        resolved = super().float_dtype(dtype)
        if dtype_name(dtype) == "float64" and not importlib.import_module("jax").config.jax_enable_x64:
            raise ValueError("float64 on the jax backend needs JAX's 64-bit mode, which nnx turned on when the "
                             "backend loaded and which is off now; turn it back on with "
                             "jax.config.update('jax_enable_x64', True), or use dtype='float32'")
        return resolved

    def from_host(self, host: np.ndarray) -> Any:
        jax = importlib.import_module("jax")  # the library: pyright would take this adapter for it

        # A copy first: on the CPU, device_put may share a NumPy array's memory, or copy it later in the background,
        # so a caller refilling its buffer after predict returned changed the prediction (seen in 5 of 5 calls on
        # jax 0.10). A read-only array is no exception: its memory may be written through another view of it.
        return jax.device_put(np.array(host, copy=True), self.device)

    def _to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def _move(self, x: Any) -> Any:
        jax = importlib.import_module("jax")  # the library: pyright would take this adapter for it

        return jax.device_put(x, self.device)

    @property
    def arrays_on_host(self) -> bool:
        return self.device.platform == "cpu"

    def eager_scope(self) -> Any:
        # JAX's default lets a GPU or TPU round float32 products (TensorFloat-32, bfloat16 passes), where nnx's programs
        # ask for full float32 (`MATMUL_PRECISION`): model(X) would then differ from predict, and a step run op by
        # op from the compiled one, by about 1e-4. A CPU computes in full either way, and a precision the user set is
        # kept. Only the layers' passes run in it: the settings a compiled program compares (`program_settings`)
        # are those outside.
        jax = importlib.import_module("jax")
        if self.device.platform == "cpu" or jax.config.jax_default_matmul_precision is not None:
            return super().eager_scope()
        return jax.default_matmul_precision(MATMUL_PRECISION)

    @functools.cached_property
    def _flat_programs(self) -> tuple[Any, Any]:
        # `concat_flat` (on a CPU `_joined_on_cpu`) and `split_flat`, each one compiled program per layout: op
        # by op, JAX dispatches every reshape and slice on its own (about 0.1 ms each on a CPU), two per parameter,
        # several times a data-parallel step. Data movement only: the same values. They read only this object's
        # namespace, which a copy on another device (`on_device`, `with_fastpath`) shares with it.
        jax = importlib.import_module("jax")
        join = _joined_on_cpu if self.device.platform == "cpu" else functools.partial(Backend.concat_flat, self)
        return jax.jit(join), jax.jit(functools.partial(Backend.split_flat, self), static_argnums=(1, 2))

    @functools.cached_property
    def _fused_programs(self) -> dict[Any, Any]:
        # `fused`'s programs, one per function: eager, each op of a check compiles for every new shape (about 25 ms
        # on a CPU), and fit's first call at a new shape ran some twenty such ops
        return {}

    def fused(self, fn: Callable[..., Any], static: tuple[str, ...] = ()) -> Callable[..., Any]:
        program = self._fused_programs.get(fn)
        if program is None:
            jax = importlib.import_module("jax")
            program = self._fused_programs[fn] = jax.jit(functools.partial(fn, self.xp), static_argnames=static)
        return program

    def concat_flat(self, arrays: list[Any]) -> Any:
        return self._flat_programs[0](tuple(arrays))

    def split_flat(self, flat: Any, bounds: list[tuple[int, int]], shapes: list[tuple[int, ...]]) -> list[Any]:
        return self._flat_programs[1](flat, tuple(bounds), tuple(shapes))

    @property
    def can_compile(self) -> bool:
        """True while JAX's 64-bit mode is on and ``jax.disable_jit()`` is not: nnx's programs carry int64 counters
        and the dropout seed (drawn below 2**63), which JAX cannot take with the mode off, and JAX refuses to run
        a compiled program while jit is disabled (its debugging switch); a model then runs op by op."""
        return self.compiler_off() is None

    def compiler_off(self) -> str | None:
        config = importlib.import_module("jax").config
        if not config.jax_enable_x64:
            return "while JAX's 64-bit mode is off"
        if config.jax_disable_jit:
            return "while jax.disable_jit() is on"
        return None

    def jit(self, fn: Any) -> Any:
        jax = importlib.import_module("jax")  # the library: pyright would take this adapter for it

        return jax.jit(_precise(fn), **_options())

    def compile(self, fn: Any, args: tuple) -> Any:
        jax = importlib.import_module("jax")

        traced = jax.jit(_precise(fn)).trace(*args)
        if not jax.tree_util.tree_leaves(traced.out_info) and not traced.jaxpr.effects:
            # it computes nothing it returns and has no effect (a model's penalty without regularizers: None), yet
            # XLA took about 0.1 s on a CPU to compile the program that does nothing
            return _NothingComputed(self, jax.tree_util.tree_structure(traced.out_info), args)
        return traced.lower().compile(**_options())

    def program_settings(self) -> tuple:
        settings = tuple(read() for read in _setting_readers())
        return settings, MATMUL_PRECISION, tuple(sorted(COMPILER_OPTIONS.items())) if COMPILER_OPTIONS else ()

    def program_signature(self, args: tuple) -> tuple:
        jax = importlib.import_module("jax")
        leaves, structure = jax.tree_util.tree_flatten(args)
        return self.program_settings(), structure, tuple(map(_input_type, leaves))

    def scan(self, body: Any, carry: Any, xs: Any) -> tuple[Any, Any]:
        jax = importlib.import_module("jax")
        try:
            return jax.lax.scan(body, carry, xs)
        except TypeError:
            first = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), xs)
            out, _ = jax.eval_shape(body, carry, first)
            if jax.tree.structure(out) != jax.tree.structure(carry):
                raise CarryChanged("the loop's carry changed structure in its body") from None
            for before, after in zip(jax.tree.leaves(carry), jax.tree.leaves(out), strict=True):
                if (tuple(before.shape), before.dtype) != (tuple(after.shape), after.dtype):
                    raise CarryChanged(f"the loop's body changed a {before.dtype} {tuple(before.shape)} of its carry "
                                       f"to {after.dtype} {tuple(after.shape)}") from None
            raise

    def inputs_read(self, fn: Any, arrays: list[Any]) -> list[bool]:
        jax = importlib.import_module("jax")
        stand_ins = [jax.ShapeDtypeStruct(tuple(a.shape), a.dtype) for a in arrays]
        jaxpr = jax.make_jaxpr(fn)(*stand_ins).jaxpr
        position = {id(v): i for i, v in enumerate(jaxpr.invars)}  # by identity: a literal is not hashable
        read = [False] * len(arrays)
        for operands in [eqn.invars for eqn in jaxpr.eqns] + [jaxpr.outvars]:
            for v in operands:
                i = position.get(id(v))
                if i is not None:
                    read[i] = True
        return read

    @property
    def trace_errors(self) -> tuple[type[BaseException], ...]:  # pyright: ignore[reportIncompatibleVariableOverride]
        errors = importlib.import_module("jax.errors")
        return (errors.ConcretizationTypeError, errors.TracerArrayConversionError,
                errors.TracerIntegerConversionError, errors.TracerBoolConversionError, TraceRefused)

    def is_traced(self, x: Any) -> bool:
        return isinstance(x, importlib.import_module("jax.core").Tracer)

    def rng(self, seed: int) -> JaxRNG:
        return JaxRNG(self, seed)

    def synchronize(self, x: Any = None) -> None:
        if x is not None:
            x.block_until_ready()
            return
        # JAX has no device-wide wait: wait on every live array of this device, so queued work is done
        jax = importlib.import_module("jax")
        live = [a for a in jax.live_arrays(self.device.platform) if self.device in a.devices()]
        jax.block_until_ready(live)
        jax.effects_barrier()  # and on computations run only for their effects

    def take_rows(self, x: Any, rows: Any) -> Any:
        # JAX's take checks every index and fills the rows of those out of range by default: a comparison, a
        # reduction and a select in each gather of a program's step. nnx's indices are in range, and "clip" gathers
        # the same rows without them (a small network's epoch programs: 5-16% less XLA compile time, the same run time).
        jnp = importlib.import_module("jax.numpy")
        return jnp.take(x, rows, axis=0, mode="clip")

    def split_rows(self, x: Any, sizes: list[int]) -> list[Any]:
        # one dispatch for the epoch instead of one eager slice (~40 us on a CPU) per batch
        lax = importlib.import_module("jax.lax")
        return list(lax.split(x, sizes, axis=0))


class _NothingComputed:
    """`JaxBackend.compile`'s program for a function that returns no array and has no effect: its result (the
    output's `structure`, which has no leaves), made anew each call, for arguments of the structure, shapes and
    dtypes it was traced for (TypeError for others, as a compiled program raises)."""

    def __init__(self, backend: JaxBackend, structure: Any, args: tuple) -> None:
        self.backend, self.structure, self.signature = backend, structure, backend.program_signature(args)

    def __call__(self, *args: Any) -> Any:
        if self.backend.program_signature(args) != self.signature:
            raise TypeError("arguments of another structure, shape or dtype than the program was traced for")
        return importlib.import_module("jax").tree_util.tree_unflatten(self.structure, [])  # (None, (), ...)


class JaxRNG(DeviceRNG):
    """A fresh key per draw, folded from ``(seed, counter)``: the state is those two ints."""

    traceable_counter = True
    """Draws are a function of `counter` alone, so a compiled step may bind a traced counter."""

    def _draw(self, shape: tuple[int, ...], label: str) -> Any:
        jax = importlib.import_module("jax")  # the library: pyright would take this adapter for it

        key = jax.random.fold_in(_key(jax, self.seed), self.counter)
        with jax.default_device(self.backend.device):
            return jax.random.uniform(key, shape, dtype=getattr(self.backend.xp, label))


def _key(jax: Any, seed: Any) -> Any:
    """JAX's key for `seed` (up to 64 bits) as 64-bit mode makes it, also with the mode off.

    A float32 model runs op by op with the mode off, where ``PRNGKey`` keeps only the low 32 bits of a Python
    int: the dropout seed (drawn below 2**63) would give other masks than the same model seed gives with it on.
    A traced seed is a compiled program's, which runs in 64-bit mode only.
    """
    if jax.config.jax_enable_x64 or not isinstance(seed, int):
        return jax.random.PRNGKey(seed)
    wide = getattr(jax, "enable_x64", None)  # a config state, whose truth JAX refuses; older JAX's is experimental
    if wide is None:
        wide = importlib.import_module("jax.experimental").enable_x64
    with wide(True):
        return jax.random.PRNGKey(seed)
