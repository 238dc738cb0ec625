"""ONNX export: `Sequential.to_onnx` writes a model's inference pass as an ONNX graph.

The graph has one input named ``"input"`` and one output named ``"output"``. Their
first axis is the symbolic batch dimension ``"batch"`` (any number of rows); the
other axes are the model's per-sample input and output shapes when the model knows
them. Tensors are in the model's dtype (float32 or float64); parameters and buffers
become initializers under their `state_dict` names (``"0.weight"``,
``"2.running_mean"``), pulled to the host from whichever backend the model is on.

Every layer writes its own nodes through the public hook `Layer.to_onnx(graph, X)`,
built-in layers included. `OnnxGraph` is the small builder such a hook receives.
A layer whose class has no exporter makes the export fail before anything is
written, with an error naming the layer.

The `onnx` package is imported only when a graph is built (install the ``onnx``
extra: ``pip install "nnx-mlp[onnx]"``), so ``import nnx`` never needs it.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._version import __version__
from .io import file_destination, write_atomically
from .layers.base import Layer
from .layers.containers import _Chain
from .layers.own_arrays import require_own_arrays
from .layers.parameter import Buffer, Parameter, require_built_shapes

__all__ = ["BATCH_DIM", "DEFAULT_OPSET", "INPUT_NAME", "MIN_OPSET", "OUTPUT_NAME", "OnnxGraph", "build_model",
           "export", "missing_exporters"]

INPUT_NAME = "input"
"""Name of the graph's input: the batch, shaped ``(batch, *model.input_shape)``."""
OUTPUT_NAME = "output"
"""Name of the graph's output: what `model.predict` returns, shaped ``(batch, *model.output_sample_shape)``."""
BATCH_DIM = "batch"
"""The symbolic name of the first (batch) axis of the input and the output."""
MIN_OPSET = 17
"""Oldest ONNX opset written: the first with LayerNormalization."""
DEFAULT_OPSET = 17
"""The opset `to_onnx` writes unless told otherwise (onnxruntime has run it since 1.14)."""

GUIDE = "docs/custom_layers.md, section \"Exporting to ONNX\""

_INSTALL = 'pip install "nnx-mlp[onnx]"  (or: pip install onnx onnxruntime)'


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx package, which is not installed: {_INSTALL}") from exc
    return onnx


class OnnxGraph:
    """The ONNX graph under construction, as a layer's `to_onnx(graph, X)` sees it.

    A layer's exporter adds nodes that compute its inference output from the tensor
    named `X` and returns the name of that output. Tensor names are strings; the
    builder makes every name it hands out unique, prefixed with the current layer's
    index (``"3.Gemm"``).

    Attributes:
        dtype: the model's float dtype name, ``"float32"`` or ``"float64"``; every float
            tensor in the graph has it.
        opset: the ONNX opset version being written (at least `MIN_OPSET`).
        prefix: the current layer's name prefix (``"3."``), as in its parameter names.
        backend: the model's `Backend` (to pull arrays to the host with ``backend.to_host``).

    `array_names` maps ``id(parameter or buffer)`` to the name it is stored under: the
    exported model's `state_dict` name, which for a nested model leaves out its path in
    the outer one. An array not in it is stored under its own `name`.
    """

    def __init__(self, dtype: str, opset: int, backend: Any, array_names: Mapping[int, str] | None = None) -> None:
        self.dtype = dtype
        self.opset = opset
        self.backend = backend
        self.prefix = ""
        # id(parameter or buffer) -> its name in the exported model's state_dict: a nested model's
        # arrays carry their path in the outer model (``"2.0.weight"``), its state_dict does not
        self._array_names = dict(array_names or {})
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = {INPUT_NAME, OUTPUT_NAME}
        self._onnx = _import_onnx()

    def unique_name(self, hint: str) -> str:
        """A tensor name not used yet: ``prefix + hint``, with ``_1``, ``_2``, ... appended if taken."""
        return self._claim(self.prefix + hint)

    def _claim(self, base: str) -> str:
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def add_initializer(self, value: Any, name: str | None = None, dtype: str | None = None) -> str:
        """Store a constant tensor in the graph and return its name.

        Args:
            value: an `nnx.Parameter` or `nnx.Buffer` (stored under its `state_dict` name in the
                exported model, ``"0.weight"``), an array on the model's backend or on the host, or a
                Python number or nested list.
            name: the name hint (prefixed and made unique); by default the parameter's
                name, else ``"const"``.
            dtype: ``None`` for the model's float dtype, or a NumPy dtype name such as
                ``"int64"`` (shapes and axes that ops like Reshape take as inputs).
        """
        if isinstance(value, (Parameter, Buffer)):
            own = self._array_names.get(id(value), value.name)
            unique = self._claim(own) if name is None else self.unique_name(name)
            value = value.value
        else:
            unique = self.unique_name(name or "const")
        if isinstance(value, (numbers.Number, list, tuple)):
            host = np.asarray(value)
        else:
            host = self.backend.to_host(value)
        host = np.ascontiguousarray(host, dtype=np.dtype(dtype or self.dtype))
        self.initializers.append(self._onnx.numpy_helper.from_array(host, unique))
        return unique

    def add_node(self, op_type: str, inputs: Sequence[str], n_outputs: int = 1, name: str | None = None,
                 domain: str = "", **attributes: Any) -> Any:
        """Add one ONNX operator and return its output's name (a tuple of names when `n_outputs` > 1).

        Args:
            op_type: the operator, as the ONNX operator list spells it (``"Gemm"``, ``"Tanh"``).
            inputs: names of its input tensors in order; ``""`` skips an optional input.
            n_outputs: how many outputs to name.
            name: hint for the node's and output's name (default: `op_type`).
            domain: the operator set's domain; ``""`` is the standard one.
            **attributes: the operator's attributes (``axis=-1``, ``alpha=0.1``). ONNX
                float attributes are 32-bit: give a float64 model's exact constants as
                initializer inputs instead.
        """
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(i, str) for i in inputs):
            raise TypeError(f"{op_type}: inputs must be a list of tensor names (str), got {inputs!r}")
        base = self.unique_name(name or op_type)
        outputs = [base] + [self.unique_name(f"{name or op_type}_out{k}") for k in range(1, n_outputs)]
        self.nodes.append(self._onnx.helper.make_node(op_type, list(inputs), outputs, name=base,
                                                      domain=domain or None, **attributes))
        return outputs[0] if n_outputs == 1 else tuple(outputs)


def _defined_by(cls: type, method: str) -> type | None:
    """The class in `cls`'s method resolution order whose own body defines `method`."""
    return next((c for c in cls.__mro__ if method in vars(c)), None)


# what predict runs of a layer: its forward, and a model's forward_to_head, through which its forward runs;
# of the exported model itself also predict and the input preparation it calls first
_INFERENCE_PASSES = ("forward", "forward_to_head")
_MODEL_PASSES = (*_INFERENCE_PASSES, "predict", "prepare_inputs")


def _no_exporter(layer: Any, passes: Sequence[str] = _INFERENCE_PASSES) -> str | None:
    """Why `layer` cannot export its inference pass, or None when it can; `passes` are the methods whose
    computation the export must reproduce (what predict runs of the layer)."""
    cls = type(layer)
    own = getattr(layer, "__dict__", {})
    if "to_onnx" in own:  # an exporter set on the object itself goes with whatever forward it has
        return None
    for method in passes:
        if method in own:  # as the training kernels honour it, predict runs this one, not the class's
            return (f"{cls.__name__}: its {method} was replaced on the object, but its to_onnx is its class's, "
                    f"which exports the class's {method}")
    exporter = _defined_by(cls, "to_onnx")
    if exporter is None or exporter is Layer:
        return cls.__name__
    mro = cls.__mro__
    for method in passes:
        definer = _defined_by(cls, method)
        # a definer ahead of the exporter in the MRO (the class itself, a subclass of the exporter's class or a
        # mixin listed before it) replaces the pass the exporter was written for: it would export that, silently
        if definer is not None and mro.index(definer) < mro.index(exporter):
            where = "" if definer is cls else f" (from {definer.__name__})"
            return (f"{cls.__name__}: its class overrides {method}{where} but inherits to_onnx from "
                    f"{exporter.__name__}, which exports that class's {method}")
    return None


def missing_exporters(model: Any) -> list[str]:
    """``"<path> (<why>)"`` for each layer in `model`'s tree (``"2.0 (MyLayer)"``), the model included, whose
    class has no `to_onnx`, or has one only from a class after the one whose `forward` (a model's
    `forward_to_head`; of `model` itself also `predict` and `prepare_inputs`) it runs, or whose `forward` was
    replaced on the object without a `to_onnx` of its own."""
    found = [("model", _no_exporter(model, _MODEL_PASSES))]
    found += [(path, _no_exporter(layer)) for path, layer in model.named_layers()]
    return [f"{path} ({why})" for path, why in found if why is not None]


def _shape_lost_at(model: Any) -> str:
    """Which layer of `model` (known input shape) gives an unknown output shape, and what to do about it."""
    for path, layer in model.named_layers():
        if layer.input_shape is not None and layer.output_sample_shape is None and not layer.named_layers():
            return (f"layer {path} ({type(layer).__name__}) gets samples of shape {tuple(layer.input_shape)} but "
                    f"its output_shape returns None; make it return the shape of one output sample")
    return "a layer's output_shape returns None; make it return the shape of one output sample"


def _check_opset(opset: Any, onnx: Any) -> int:
    newest = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral) or not MIN_OPSET <= int(opset) <= newest:
        raise ValueError(f"opset must be an int from {MIN_OPSET} to {newest} (the newest this onnx package knows), "
                         f"got {opset!r}")
    return int(opset)


def build_model(model: Any, opset: int = DEFAULT_OPSET) -> Any:
    """The `onnx.ModelProto` of `model`'s inference pass (see the module docstring for its names).

    Raises:
        NotImplementedError: a layer's class has no ONNX exporter (the message names it).
        ImportError: the onnx package is not installed.
    """
    require_own_arrays(model)  # a tied array: the file would name it after one layer only, not as state_dict does
    require_built_shapes(model, "ONNX export")
    missing = missing_exporters(model)
    if missing:
        which = ", ".join(missing)
        raise NotImplementedError(
            f"cannot export to ONNX: layer {which} has no ONNX exporter of its own. Give the class a "
            f"`to_onnx(self, graph, X) -> str` method that adds its inference nodes and returns the output's "
            f"name; see {GUIDE}")
    if model.input_shape is None:
        raise ValueError("cannot export to ONNX a model that does not know its sample shapes (an ONNX graph's input "
                         "and output need them); build it with Sequential(..., input_shape=<one sample's shape>)")
    if model.output_sample_shape is None:
        raise ValueError(f"cannot export to ONNX a model whose output's sample shape is unknown (the ONNX graph's "
                         f"output needs it): {_shape_lost_at(model)}")
    onnx = _import_onnx()
    opset = _check_opset(opset, onnx)
    helper = onnx.helper
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(model.dtype))
    # names as the model's state_dict gives them, which for a nested model drop its path in the outer one
    names = {id(a): name for name, a in model._arrays_by_name().items()}
    graph = OnnxGraph(model.dtype, opset, model.backend, names)
    X = model.to_onnx(graph, INPUT_NAME)  # each layer adds its nodes, a container's under their paths
    graph.nodes.append(helper.make_node("Identity", [X], [OUTPUT_NAME], name="output"))

    def value_info(name: str, shape: Any) -> Any:
        return helper.make_tensor_value_info(name, elem, [BATCH_DIM, *(int(s) for s in shape)])

    body = helper.make_graph(graph.nodes, "nnx.Sequential", [value_info(INPUT_NAME, model.input_shape)],
                             [value_info(OUTPUT_NAME, model.output_sample_shape)], graph.initializers)
    imports = [helper.make_opsetid("", opset)]
    domains = {n.domain for n in graph.nodes} - {""}
    imports += [helper.make_opsetid(d, 1) for d in sorted(domains)]
    proto = helper.make_model(body, opset_imports=imports, producer_name="nnx", producer_version=__version__,
                              doc_string=f"nnx Sequential ({model.dtype}) exported for inference")
    # the oldest IR version that carries this opset, so older runtimes can read the file
    proto.ir_version = helper.find_min_ir_version_for(imports, ignore_unknown=True)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
        # the declared shapes come from the layers' output_shape: one that is not what the layer computes made
        # onnx's shape inference fail naming only a node of the graph (often the last, "output")
        wrong = _declared_shape_wrong(model)
        if wrong is None:
            raise
        raise ValueError(f"cannot export to ONNX: {wrong}, and the graph declares the shapes output_shape gives; "
                         f"make it return the shape of one output sample (onnx: {str(exc).strip()})") from exc
    return proto


def _declared_shape_wrong(model: Any) -> str | None:
    """The first layer of `model` whose inference output on one sample of zeros is not shaped as its
    `output_sample_shape` says, described; None when every layer's is (or when that pass itself fails)."""

    def walk(layers: Sequence[Any], X: Any, prefix: str) -> str | None:
        for i, layer in enumerate(layers):
            path = f"{prefix}{i}"
            if isinstance(layer, _Chain):  # Sequential, Residual: their layers first, applied to X in order
                found = walk(layer.layers, X, f"{path}.")
                if found is not None:
                    return found
            Y = layer.forward(X, False)
            declared = layer.output_sample_shape
            if declared is not None and tuple(Y.shape[1:]) != tuple(declared):
                return (f"layer {path} ({type(layer).__name__}) declares output samples of shape {tuple(declared)} "
                        f"(its output_shape) but computes samples of shape {tuple(Y.shape[1:])}")
            X = Y
        return None

    try:
        X = model.prepare_inputs(np.zeros((1, *model.input_shape)))
        return walk(model.layers, X, "")
    except Exception:  # noqa: BLE001 - a diagnosis only: the export's own error is raised instead
        return None


def export(model: Any, path: str | os.PathLike, opset: int = DEFAULT_OPSET) -> None:
    """Write `build_model(model, opset)` to `path`, atomically: a temporary file beside it, renamed into place.

    A failure at any point (a layer without an exporter, a full disk) leaves `path`
    as it was. After a data-parallel `fit` only rank 0 writes, as with `save`.
    """
    comm = getattr(model, "distributed", None)
    if comm is not None and comm.rank != 0:
        return
    path = file_destination(path, "a file", "export", "model.onnx")
    proto = build_model(model, opset)
    if proto.ByteSize() >= 2**31:
        raise ValueError("the model is too large for a single ONNX file (protobuf's 2 GiB limit)")
    data = proto.SerializeToString()
    write_atomically(path, lambda handle: handle.write(data))
