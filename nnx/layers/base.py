"""The `Layer` base class: the public API every layer, built-in or a user's, is written against.

A layer is constructed with plain Python arguments and bound to a model's
backend later: `Sequential` calls `attach`, which hands it a `BuildContext`
and the per-sample input shape, and the layer's `build` creates its
parameters and buffers through `add_parameter` / `add_buffer`. Those two
calls are also where a checkpoint's arrays come in at load time (checked
against the shapes the layer asks for, before anything is allocated).

Subclasses register themselves under their class name when they are
defined, and remember the arguments they were constructed with, so a user's
layer can be saved, loaded and moved between backends with no extra code as
long as those arguments are JSON values.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import array_api_compat

from ..init import INITIALIZERS, fans
from ..registry import (
    CONFIG_KEY,
    Registry,
    config_repr,
    config_type,
    json_arguments,
    recorded_args,
    recording_init,
    register,
)
from ..regularizers import Regularizer
from .other_flags import OtherLibrariesFlags
from .parameter import Buffer, Parameter
from .passes import ForwardPass, wrap_backward, wrap_forward

LAYERS = Registry(
    "layer",
    "A subclass of nnx.Layer registers itself under its class name when its module is imported: import "
    "the module that defines it before loading, or pass `name=` in the class statement "
    "(`class MyLayer(nnx.Layer, name=\"mylib.MyLayer\")`) if two classes share a name (in any case).",
)

Shape = tuple[int, ...]


class ExportGraph(Protocol):
    """What a layer's `to_onnx` uses of the ONNX graph under construction (`nnx.onnx.OnnxGraph` is one).

    Declared here, beside the hook, so that layers never import the exporter: `nnx.onnx`
    depends on layers, never the other way round.
    """

    dtype: str
    opset: int
    prefix: str
    backend: Any

    def unique_name(self, hint: str) -> str:
        """A tensor name not used yet, from `hint`."""
        ...

    def add_initializer(self, value: Any, name: str | None = None, dtype: str | None = None) -> str:
        """Store a constant (a parameter, buffer, array or number) and return its name."""
        ...

    def add_node(self, op_type: str, inputs: Sequence[str], n_outputs: int = 1, name: str | None = None,
                 domain: str = "", **attributes: Any) -> Any:
        """Add one operator and return its output's name (a tuple of names for several outputs)."""
        ...


class BuildContext:
    """What a model hands its layers when binding them: backend, dtype, random streams, names.

    Args:
        backend: the model's `Backend`.
        dtype: the model's float dtype name (``"float32"``).
        init_rng: host NumPy generator for initial values (identical on every backend).
        rng: the model's device random stream for stochastic layers (dropout).
        prefix: prepended to parameter and buffer names (``"0."``).
        provided: host arrays by full name to use instead of initialising (a checkpoint), or None.
        forward_pass: the model's `ForwardPass`, shared with its sub-layers; None makes a new one.
    """

    def __init__(self, backend: Any, dtype: str, init_rng: Any, rng: Any, prefix: str = "",
                 provided: Mapping[str, Any] | None = None, forward_pass: ForwardPass | None = None) -> None:
        self.backend = backend
        self.dtype = dtype
        self.init_rng = init_rng
        self.rng = rng
        self.prefix = prefix
        self.provided = provided
        self.forward_pass = ForwardPass() if forward_pass is None else forward_pass

    def child(self, name: str) -> BuildContext:
        """The context for a sub-layer called `name`: the same model, names prefixed ``<prefix><name>.``."""
        return BuildContext(self.backend, self.dtype, self.init_rng, self.rng, f"{self.prefix}{name}.", self.provided,
                            self.forward_pass)

    def initial_value(self, name: str, shape: Shape, init: Any, finite: bool = False) -> Any:
        """The array for a new parameter or buffer: from `provided` when loading, else from `init`.

        `finite` (a parameter's) refuses an initial value with NaN or inf, or beyond the model's dtype: an
        initializer with a bad argument (a negative gain under a square root, a NaN constant) draws NaN without
        raising, and such a model predicted NaN while `fit` blamed its first step's learning rate. A buffer may
        start at +inf (a running minimum); a checkpoint's arrays are checked where the file is read.
        """
        full = self.prefix + name
        if self.provided is not None:
            host = self.provided.get(full)
            if host is None:
                raise ValueError(f"the saved arrays have no {full!r}, which the layer creates with shape {shape}")
            if tuple(host.shape) != shape:
                raise ValueError(f"the saved array {full!r} has shape {tuple(host.shape)} but the layer "
                                 f"creates it with shape {shape}")
            self._require_in_range(full, host)
            return self.backend.asarray(host, dtype=self.dtype, argname=full, copy=True)
        xp, device = self.backend.xp, self.backend.device
        dtype = self.backend.float_dtype(self.dtype)
        # a string test before `==`: an array given as init would compare elementwise (NumPy's "truth value ...
        # is ambiguous", naming neither init nor the parameter)
        named = isinstance(init, str)
        if named and init == "zeros":
            return xp.zeros(shape, dtype=dtype, device=device)
        if named and init == "ones":
            return xp.ones(shape, dtype=dtype, device=device)
        if isinstance(init, numbers.Real) and not isinstance(init, bool):
            if finite:
                self._require_finite_start(full, float(init))
            return xp.full(shape, float(init), dtype=dtype, device=device)
        # nnx.init's own functions take fans, not the (rng, shape) of a user's: given as functions, they draw as named
        if isinstance(init, str) or any(init is known for known in INITIALIZERS.values()):
            fn = INITIALIZERS.get(init.lower()) if isinstance(init, str) else init
            if fn is None:
                raise ValueError(f"unknown init {init!r} for {full!r}; valid: zeros, ones, a number, a "
                                 f"callable (rng, shape) -> array, or one of {sorted(INITIALIZERS)}")
            fan_in, fan_out = fans(shape)
            # a matrix is drawn as (fan_in, fan_out) itself; any other shape is asked for by name
            host = fn(self.init_rng, fan_in, fan_out) if len(shape) == 2 else fn(self.init_rng, fan_in, fan_out, shape)
        elif callable(init):
            host = init(self.init_rng, shape)
        else:
            given = ("; to start from given values, pass init=lambda rng, shape: values (a host array of that "
                     "shape)") if hasattr(init, "shape") else ""
            raise TypeError(f"init for {full!r} must be a name, a number or a callable (rng, shape) -> array, "
                            f"got {type(init).__name__}{given}")
        value = self.backend.asarray(host, dtype=self.dtype, argname=f"init of {full!r}", copy=True)
        if tuple(value.shape) != shape:  # reshaped, a transposed draw would land scrambled
            raise ValueError(f"init of {full!r} returned shape {tuple(value.shape)}, but the parameter has shape "
                             f"{shape}")
        if finite and math.prod(shape):
            # read where the draw is: the host array itself (a reduction on the device would compile one program per
            # new shape on JAX, about 5x a small model's build), or a host copy of anything else
            drawn = host if array_api_compat.is_array_api_obj(host) else self.backend.to_host(value)
            hxp = array_api_compat.array_namespace(drawn)
            self._require_finite_start(full, float(hxp.max(hxp.abs(drawn))))
        return value

    def _require_finite_start(self, full: str, largest: float) -> None:
        """ValueError naming parameter `full` unless its largest magnitude is finite in the model's dtype."""
        limit = float(self.backend.xp.finfo(self.backend.float_dtype(self.dtype)).max)
        if abs(largest) <= limit:  # False for NaN too
            return
        raise ValueError(f"the initial value of parameter {full!r} holds NaN or inf in {self.dtype}: check its "
                         f"initializer's arguments (a negative gain or scale under a square root, a NaN constant, "
                         f"values beyond the range of {self.dtype}, +-{limit:.4g})")

    def _require_in_range(self, full: str, host: Any) -> None:
        """ValueError when a wider float array (float64 into a float32 model) holds finite values its cast makes inf."""
        finfo = self.backend.xp.finfo(self.backend.float_dtype(self.dtype))
        if getattr(host.dtype, "itemsize", 0) <= finfo.bits // 8 or math.prod(host.shape) == 0:
            return
        hxp = array_api_compat.array_namespace(host)
        largest = float(hxp.max(hxp.abs(host)))
        if float(finfo.max) < largest < math.inf:  # NaN and inf are the file's own, refused where it is read
            raise ValueError(f"the saved array {full!r} has values up to {largest:.4g}, beyond the range of "
                             f"{self.dtype} (+-{float(finfo.max):.4g}), which would turn them into inf; keep the "
                             f"model's dtype float64")



class Layer(OtherLibrariesFlags):
    """One step of a `Sequential` model: `forward` maps X to Y, `backward` maps dY to dX.

    To write a layer, subclass this, create arrays in `build` with `add_parameter`
    (trained) and `add_buffer` (kept, not trained), and implement `forward` and
    `backward` with the namespace `self.xp`. Override `output_shape` when the
    layer changes the per-sample shape, and `get_config` only when a constructor
    argument is not a JSON value. A block made of other layers holds them with
    `add_layer`; their arrays are named by path (``"mlp.0.weight"``) and everything
    that walks a model (saving, `to()`, gradient checks, summaries) reaches them.
    See the custom-layer guide in ``docs/``.

    Class keyword ``name=`` registers the class under another name than its own; a class
    whose name starts with ``_`` is registered, and so can be saved, only with one.
    """

    registered_name: str = "Layer"
    regularizer: Any = None

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = recording_init(cls.__init__)  # type: ignore[method-assign]
        # every layer's backward, a user's included, fails the same clear way before a training forward
        if "forward" in cls.__dict__:
            plain = cls.__dict__["forward"]
            cls.forward = wrap_forward(plain)  # type: ignore[method-assign]
            if cls.__dict__.get("__call__") is plain:  # `__call__ = forward` in the class body
                cls.__call__ = cls.forward  # type: ignore[method-assign]
        if "backward" in cls.__dict__:
            cls.backward = wrap_backward(cls.backward)  # type: ignore[method-assign]
        register(LAYERS, cls, name, "registered_name")

    def __init__(self) -> None:
        self.context: BuildContext | None = None
        self.backend: Any = None
        self.xp: Any = None
        self.dtype: Any = None
        self.input_shape: Shape | None = None
        self.output_sample_shape: Shape | None = None
        self._params: dict[str, Parameter] = {}
        self._buffers: dict[str, Buffer] = {}
        self._layers: dict[str, Layer] = {}
        self._declared_layers: dict[str, tuple[Layer, Shape | None]] = {}
        self._ran_training_forward = False  # set by forward(X, training=True); backward needs it
        self._building = False  # True while `attach` builds the layer: the only time arrays may be made

    def __deepcopy__(self, memo: dict[int, Any]) -> Layer:
        """An independent copy (`copy.deepcopy`): its own arrays, sub-layers, optimizer state and random streams.

        The backend and its namespace are shared, as a device is: a module cannot be copied, and the
        copy computes where the original does. An optimizer's parameters become the copy's.
        """
        backend = getattr(self, "backend", None)
        if backend is not None:
            memo.setdefault(id(backend), backend)
            memo.setdefault(id(backend.xp), backend.xp)
        copied = type(self).__new__(type(self))
        memo[id(self)] = copied
        copied.__dict__.update({key: copy.deepcopy(value, memo) for key, value in vars(self).items()})
        return copied

    def __copy__(self) -> Layer:
        """A shallow copy (`copy.copy`), sharing the arrays and sub-layers, as without `__reduce_ex__` below."""
        copied = type(self).__new__(type(self))
        copied.__dict__.update(vars(self))
        return copied

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Pickle an unbound layer as any object; refuse one in a model, saying how to keep and copy it."""
        backend = getattr(self, "backend", None)
        if backend is not None:  # its backend holds the library's module, which pickle would name as the problem
            raise TypeError(f"{type(self).__name__} on the {backend.spec} backend is not pickled: keep a model with "
                            "model.save(path) and nnx.load(path) (no pickle), copy it in memory with "
                            "copy.deepcopy(model), move it with model.to(backend)")
        return super().__reduce_ex__(protocol)

    # -- binding to a model --------------------------------------------------------
    def attach(self, context: BuildContext, input_shape: Shape | None) -> Shape | None:
        """Bind to a backend, build the arrays for per-sample `input_shape` (None: unknown); return the output shape."""
        if getattr(self, "context", None) is not None:
            raise ValueError(f"{self!r} already belongs to a model; build each model from new layer objects")
        output = self.output_shape(input_shape)
        self.context = context
        self.backend, self.xp, self.dtype = context.backend, context.backend.xp, context.dtype
        self.input_shape = input_shape
        self._params, self._buffers, self._layers = {}, {}, {}
        self._ran_training_forward = False
        self._building = True
        try:
            for name, (layer, shape) in self._declared_layers.items():
                self._attach_layer(name, layer, shape)
            self.build(input_shape)
        except BaseException:
            self.detach()  # the model is never made: the sub-layers built so far are free for another
            raise
        finally:
            self._building = False
        self.output_sample_shape = output
        return output

    def detach(self) -> None:
        """Unbind this layer and its sub-layers from their model, dropping their arrays, so it can join another."""
        for layer in self._layers.values():
            layer.detach()
        self.context = None
        self.backend = self.xp = self.dtype = None
        self.input_shape = self.output_sample_shape = None
        self._params, self._buffers, self._layers = {}, {}, {}
        self._ran_training_forward = False

    def expected_input_shape(self) -> Shape | None:
        """The sample shape this layer needs when it comes first (None: it takes what it gets)."""
        return None

    def build(self, input_shape: Shape | None) -> None:
        """Create parameters and buffers for inputs of per-sample shape `input_shape` (None if unknown)."""

    def output_shape(self, input_shape: Shape | None) -> Shape | None:
        """The per-sample output shape for a per-sample input shape (None: unknown); ValueError if it can't take it."""
        return input_shape

    def add_parameter(self, name: str, shape: Shape, init: Any = "zeros", regularized: bool = False) -> Parameter:
        """Create a trained array named ``<prefix><name>``.

        Args:
            name: the attribute-like name (``"weight"``); unique within the layer.
            shape: its shape.
            init: ``"zeros"``, ``"ones"``, a number, a name in `nnx.init.INITIALIZERS` or its function
                (fans from the shape by `nnx.init.fans`, as Keras counts them), or
                ``callable(rng, shape) -> array`` drawing from the host generator, so every
                backend starts from the same numbers.
            regularized: whether weight penalties (L1/L2) apply to it.
        """
        shape = self._new_name_and_shape(name, shape)
        context = self._require_building(f"add_parameter({name!r})")
        value = context.initial_value(name, shape, init, finite=True)
        param = Parameter(context.prefix + name, value, regularized=regularized)
        self._params[name] = param
        return param

    def add_buffer(self, name: str, shape: Shape, init: Any = "zeros") -> Buffer:
        """Create an array that is saved, loaded and moved with the model but never trained (see `add_parameter`)."""
        shape = self._new_name_and_shape(name, shape)
        context = self._require_building(f"add_buffer({name!r})")
        value = context.initial_value(name, shape, init)
        buffer = Buffer(context.prefix + name, value)
        self._buffers[name] = buffer
        return buffer

    def add_layer(self, name: str, layer: Layer, input_shape: Shape | None = None) -> Layer:
        """Hold `layer` as a sub-layer called `name`; its arrays are named ``<name>.<array>``. Returns `layer`.

        Called in `__init__`, the sub-layer is built when this layer joins a model, before
        `build`; called in `build`, it is built at once. `input_shape` is the per-sample shape
        it receives (None: it takes what it gets, as `Dense` does). Its parameters and buffers
        become part of this layer's; `forward` and `backward` call its own.
        """
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{type(self).__name__}: sub-layer names must be non-empty strings without dots, "
                             f"got {name!r}")
        if not isinstance(layer, Layer):
            raise TypeError(f"{type(self).__name__}.add_layer({name!r}): expected an nnx Layer, got "
                            f"{type(layer).__name__}")
        if name in self._layers or name in self._declared_layers or name in self._params or name in self._buffers:
            raise ValueError(f"{type(self).__name__} already has a sub-layer or array named {name!r}")
        if layer is self or any(layer is held for held, _ in self._declared_layers.values()) \
                or any(layer is held for held in self._layers.values()):
            raise ValueError(f"{type(self).__name__}.add_layer({name!r}): this layer object is already held here; "
                             "create a new one for each place it is used")
        shape = None if input_shape is None else tuple(int(s) for s in input_shape)
        if self.context is None:
            self._declared_layers[name] = (layer, shape)
        else:
            self._require_building(f"add_layer({name!r})")
            self._attach_layer(name, layer, shape)
        return layer

    def _attach_layer(self, name: str, layer: Layer, input_shape: Shape | None) -> None:
        layer.attach(self._require_context().child(name), input_shape)
        self._layers[name] = layer

    def _require_building(self, call: str) -> BuildContext:
        """The context while the layer is being built; RuntimeError naming `call` at any other time."""
        context = self._require_context()
        if not getattr(self, "_building", False):
            raise RuntimeError(
                f"{type(self).__name__}.{call} after the layer was built: parameters, buffers and sub-layers are made "
                "in build(), which runs when the layer joins a model (its input_shape is the per-sample shape, or "
                "None where the model does not know it: give the model input_shape=...), or sub-layers held in "
                "__init__. One made later would be missed by the optimizer, which fit makes before the first batch")
        return context

    def _require_context(self) -> BuildContext:
        if self.context is None:
            raise RuntimeError(f"{type(self).__name__}: parameters and buffers are created in build(), once the "
                               "layer is part of a model")
        return self.context

    def _new_name_and_shape(self, name: str, shape: Any) -> Shape:
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{type(self).__name__}: array names must be non-empty strings without dots, got {name!r}")
        if name in self._params or name in self._buffers or name in self._layers or name in self._declared_layers:
            raise ValueError(f"{type(self).__name__} already has an array or sub-layer named {name!r}")
        try:
            shape = tuple(int(s) for s in shape)
        except TypeError:
            raise TypeError(f"{type(self).__name__}.{name}: shape must be a tuple of ints, got {shape!r}") from None
        if any(s <= 0 for s in shape):
            raise ValueError(f"{type(self).__name__}.{name}: every size must be > 0, got {shape}")
        return shape

    # -- what the model reads ----------------------------------------------------------
    def parameters(self, recurse: bool = True) -> list[Parameter]:
        """The layer's trained arrays in creation order, then (with `recurse`) its sub-layers', in order."""
        own = list(self._params.values())
        return own + [p for layer in self._layers.values() for p in layer.parameters()] if recurse else own

    def buffers(self, recurse: bool = True) -> list[Buffer]:
        """The layer's untrained arrays (e.g. running statistics), then (with `recurse`) its sub-layers'."""
        own = list(self._buffers.values())
        return own + [b for layer in self._layers.values() for b in layer.buffers()] if recurse else own

    def named_layers(self, recurse: bool = True) -> list[tuple[str, Layer]]:
        """The sub-layers with their paths (``"2"``, ``"2.0"``), parents first; only direct ones without `recurse`.

        Sub-layers are known once the layer is built (part of a model).
        """
        found: list[tuple[str, Layer]] = []
        for name, layer in self._layers.items():
            found.append((name, layer))
            if recurse:
                found.extend((f"{name}.{path}", sub) for path, sub in layer.named_layers())
        return found

    @property
    def rng(self) -> Any:
        """The model's device random stream (`nnx.backends.DeviceRNG`) for stochastic layers."""
        return self._require_context().rng

    def forward(self, X: Any, training: bool = False) -> Any:
        """Output for a batch; with `training=True`, also keep what `backward` needs."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward(X, training)")

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        """Fill each parameter's `grad` from dL/dY and return dL/dX (None allowed when `need_dX` is False)."""
        raise NotImplementedError(f"{type(self).__name__} must implement backward(dY, need_dX)")

    # -- export --------------------------------------------------------------------------
    def to_onnx(self, graph: ExportGraph, X: str) -> str:
        """Add this layer's inference computation to an ONNX graph; return the name of its output tensor.

        `X` names the input tensor (batch axis first, in the model's dtype). Add nodes
        with ``graph.add_node(op_type, [inputs], **attributes)`` and constants with
        ``graph.add_initializer(self.weight)``; `Sequential.to_onnx` calls this for each
        layer in order. A layer that does not override it cannot be exported: see
        "Exporting to ONNX" in docs/custom_layers.md.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no ONNX exporter: give the class a `to_onnx(self, graph, X) -> str` "
            "method that adds its inference nodes and returns the output's name (docs/custom_layers.md, "
            "\"Exporting to ONNX\")")

    # -- configuration -------------------------------------------------------------------
    def get_config(self) -> dict:
        """JSON-serialisable constructor arguments, with the registered class name under ``"type"``.

        The default returns the arguments the layer was constructed with (a regularizer as
        its config, which `nnx.regularizers.get_regularizer` takes back; NumPy numbers as
        Python ones); override it (and `from_config`) when one of them is not a JSON value.
        """
        return constructor_config(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Layer:
        """A new, unbuilt layer from `get_config()` output (sub-layers passed as arguments are rebuilt too)."""
        return cls(**{key: _argument_value(value) for key, value in config_type(config, "layer")[1].items()})

    def __repr__(self) -> str:
        return config_repr(self)


def constructor_config(layer: Layer, leave_out: Sequence[str] = (), positional_kept: bool = False) -> dict:
    """`layer`'s registered name and the arguments it was constructed with, but `leave_out`: the default config.

    A built-in that writes some of its config itself starts from this, so that a subclass's own
    constructor arguments are saved too; `positional_kept` says it saves what ``*args`` took (a container's layers).
    """
    args = {key: _argument_config(layer, value) for key, value in recorded_args(layer).items()
            if key not in leave_out}
    name = type(layer).registered_name
    return {CONFIG_KEY: name, **json_arguments(layer, "layer", args, "override get_config() and from_config()",
                                               positional_kept)}


# the key of a saved argument that was a sub-layer (or a list of them) the layer holds: {LAYER_ARGUMENT: config}
LAYER_ARGUMENT = "nnx_layer"


def _argument_config(layer: Layer, value: Any) -> Any:
    """A constructor argument as saved: a regularizer as its config (`get_regularizer` takes it back); a layer,
    or a list or tuple of layers, that `layer` holds (`add_layer` in its constructor, as a wrapper of a given
    layer does) as their configs under `LAYER_ARGUMENT`, which `from_config` rebuilds. A layer it does not hold
    (a reference to another part of the model) is left as it is, and refused as not JSON: a copy built from
    its config would be a second layer with weights of its own."""
    if isinstance(value, Regularizer):
        return value.get_config()
    items = [value] if isinstance(value, Layer) else value if isinstance(value, (list, tuple)) else []
    held = [sub for sub, _ in layer._declared_layers.values()]  # (Layer's table, in this module)
    if not items or not all(any(item is sub for sub in held) for item in items):
        if items and all(isinstance(item, Layer) for item in items):
            key = next((k for k, v in recorded_args(layer).items() if v is value), "?")
            raise TypeError(f"{type(layer).__name__}: constructor argument {key}={value!r} is not a JSON value: it is "
                            f"a layer {type(layer).__name__} does not hold, and a copy built from its config would be "
                            f"a second layer with weights of its own. To save the layer with the block, hold it with "
                            f"self.add_layer(name, layer) in __init__; for a reference, override get_config() and "
                            f"from_config()")
        return value
    configs = [item.get_config() for item in items]
    return {LAYER_ARGUMENT: configs[0] if isinstance(value, Layer) else configs}


def _argument_value(value: Any) -> Any:
    """A saved constructor argument as the constructor takes it: sub-layers (`_argument_config`) rebuilt."""
    if not isinstance(value, Mapping) or set(value) != {LAYER_ARGUMENT}:
        return value
    saved = value[LAYER_ARGUMENT]
    return [layer_from_config(c) for c in saved] if isinstance(saved, list) else layer_from_config(saved)


def layer_from_config(config: Any) -> Layer:
    """Rebuild a layer from `Layer.get_config()` output; an unregistered type raises `UnknownNameError`."""
    if not isinstance(config, Mapping):
        raise ValueError(f"a layer config must be a dict with a {CONFIG_KEY!r}, got {config!r}")
    name, _ = config_type(config, "layer")
    cls = LAYERS.lookup(name)
    try:
        return cls.from_config(config)
    except TypeError as exc:
        raise ValueError(f"bad arguments for layer {name}: {exc}") from exc
