"""Sequential: a stack of layers bound to one backend and dtype; its state, its passes, and moving it."""

from __future__ import annotations

import copy
import inspect
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, cast

from ._validate import flag as check_flag
from .backends import Backend, dtype_name, get_backend, stream_rng
from .distributed.parallel import DataParallelFit
from .layers import LAYERS, BuildContext, Layer, layer_from_config
from .layers.base import constructor_config
from .layers.containers import _Chain, raise_no_dX
from .layers.own_arrays import require_own_arrays
from .layers.parameter import Buffer, Parameter, require_built_shapes
from .losses import Loss
from .optim import Optimizer, rebuild_optimizer
from .regularizers import Regularizer, get_regularizer, require_regularizer
from .summary import summary as layer_table
from .training import evaluation, head, inference, inputs, loop, resolve, targets, weights
from .training.history import History
from .training.loss_fit import RANGE_KEEPING

Shape = tuple[int, ...]

# what every model's config holds; any other constructor argument is a subclass's own
_MODEL_KEYS = ("layers", "dtype", "seed", "regularizer", "backend", "input_shape")


class LoadedKeys(NamedTuple):
    """What `Sequential.load_state_dict` did not match, as torch's ``load_state_dict`` returns it."""

    missing_keys: list[str]  # the model's arrays the state lacked (kept as they were; strict=False only)
    unexpected_keys: list[str]  # the state's names the model has no array for (left out; strict=False only)


class Sequential(_Chain):
    """Layers applied in order, on one backend, in one float dtype; itself a layer, so models nest.

    Args:
        *layers: `Layer` instances (or one list of them), containers included.
        backend: anything `nnx.get_backend` accepts: ``"numpy"``, ``"cupy:1"``, a namespace, an array.
        dtype: ``"float32"`` (default; ``None`` means it too) or ``"float64"``; inputs are cast once at the
            boundary.
        seed: seeds initialisation, shuffling and dropout, each from its own stream; None draws one.
        regularizer: a penalty applied to every regularized weight (biases are never penalised).
        input_shape: the shape of one sample, e.g. ``(28, 28)``; by default the first layer's
            (a `Dense` knows its ``(in_features,)``), else unknown: the model takes any sample shape its
            layers accept and does not learn one from data (ONNX export needs it).

    Placed inside another model, a `Sequential` is rebuilt there as one of its layers: it takes
    that model's backend, dtype and random streams, and its arrays are named by path (``"2.0.weight"``).
    """

    def __init__(self, *layers: Layer, backend: Any = "numpy", dtype: Any = "float32",
                 seed: int | None = None, regularizer: Regularizer | str | None = None,
                 input_shape: Any = None, _provided: Mapping[str, Any] | None = None, _bind: bool = True) -> None:
        super().__init__(*layers)
        model_backend: Backend = get_backend(backend)
        if dtype is None:  # the default, as None means in torch and in `to`/`load` (np.dtype(None) is float64)
            dtype = "float32"
        model_backend.float_dtype(dtype)  # rejects integer and unknown dtypes with a clear message
        self.seed = inputs.model_seed(seed)
        self.regularizer = get_regularizer(regularizer)
        self.optimizer: Optimizer | None = None
        self.loss: Loss | None = None
        self.history: History | None = None
        self.epochs_trained = 0
        # what callbacks keep for a later fit (ModelCheckpoint's best so far), JSON; checkpoints hold it
        self.callback_state: dict[str, Any] = {}
        # the column names of the data frame it was first fit on (scikit-learn's name): a later frame's are checked
        self.feature_names_in_: tuple[str, ...] | None = None
        self.stop_training = False
        self.distributed: Any = None  # the communicator of a data-parallel fit (rank 0 writes checkpoints)
        self.nested = False
        self._weights_loaded = _provided is not None  # nesting would rebuild the model and drop them
        # independent streams of one seed: initial values, the shuffle, and dropout never share a state
        init_rng = stream_rng(self.seed, 0)
        self.shuffle_rng = stream_rng(self.seed, 1)
        self.dropout_rng = model_backend.rng(int(stream_rng(self.seed, 2).integers(2**63)))
        # only a shape the caller gave is part of the config; one taken from the first layer follows that layer
        self._given_input_shape = None if input_shape is None else inputs.sample_shape(input_shape)
        if not _bind:
            return  # a layer read from a config: built by the model it joins, from that model's arrays
        context = BuildContext(model_backend, dtype_name(dtype), init_rng, self.dropout_rng, "", _provided)
        super().attach(context, self._given_input_shape or self.expected_input_shape())
        for layer in (self, *(sub for _, sub in self.named_layers())):
            cast(BuildContext, layer.context).provided = None  # a loaded model does not keep the file's arrays
        self._initial_arrays = _InitialArrays(self)  # nesting refuses a model whose arrays were set since

    def attach(self, context: BuildContext, input_shape: Shape | None) -> Shape | None:
        """Rebuild this model as a layer of another: its backend, dtype and streams; new arrays named by path."""
        if self.nested and self.context is not None:  # rebuilt, it would re-initialise or share its holder's weights
            raise ValueError(f"{self!r} already belongs to a model; build each model from new layer objects")
        if self.optimizer is not None or self.epochs_trained:
            raise ValueError("a trained Sequential cannot be placed inside another model: it would be rebuilt with "
                             "new weights there; nest a new Sequential and copy the weights with load_state_dict")
        if self._weights_loaded:
            raise ValueError("a Sequential whose weights were loaded (load_state_dict, nnx.load, to()) cannot be "
                             "placed inside another model: it would be rebuilt with new weights there; nest a new "
                             "Sequential and copy the weights into it with outer.layers[i].load_state_dict("
                             "model.state_dict())")
        initial = getattr(self, "_initial_arrays", None)
        changed = None if initial is None else initial.first_rebound(self)
        if changed is not None:
            raise ValueError(f"a Sequential whose {changed!r} was set after it was built cannot be placed inside "
                             "another model: it would be rebuilt with new weights there, dropping the values set; "
                             "nest a new Sequential and set them (or copy them with outer.layers[i]."
                             "load_state_dict(model.state_dict())) once the outer model is built")
        self._initial_arrays = None
        if input_shape is None:
            input_shape = self._given_input_shape
        elif self._given_input_shape is not None and tuple(input_shape) != self._given_input_shape:
            raise ValueError(f"Sequential(input_shape={self._given_input_shape}) gets samples of shape "
                             f"{tuple(input_shape)}")
        self.detach()
        self.nested = True
        self.dropout_rng = context.rng
        return super().attach(context, input_shape)

    # -- shapes -------------------------------------------------------------------
    @property
    def in_features(self) -> int | None:
        """Features per sample for flat (2-D) input, or None when the input is not flat or not known."""
        return self.input_shape[0] if self.input_shape is not None and len(self.input_shape) == 1 else None

    @property
    def out_features(self) -> int | None:
        """Size of the last output axis, or None when not known."""
        return self.output_sample_shape[-1] if self.output_sample_shape else None

    # -- state --------------------------------------------------------------------
    def state_dict(self, copy: bool = True) -> dict[str, Any]:
        """Name -> a copy of every parameter and buffer (``"0.weight"``, ``"1.running_mean"``), on this backend.

        Copies on every backend: a held state dict never follows later training. Names are within
        this model: a nested one's are those a standalone copy of it has (torch's ``model[2].state_dict()``).
        ``copy=False`` gives the arrays the model holds, as torch's ``state_dict()`` does: for reading them at
        once (writing a file), without a second copy of every weight in memory. Unlike torch's, they are no live
        view: the next update may write into them (NumPy and torch, within a fit) or replace them (every fit,
        and every step on JAX), so one held across steps may show the weights of neither.
        """
        xp = self.xp
        return {name: xp.asarray(a.value, copy=True) if copy else a.value
                for name, a in self._arrays_by_name().items()}

    def _require_float_arrays(self, what: str) -> None:
        """TypeError naming a parameter or buffer a layer rebound to a non-float array (an integer counter): a file
        and `to()` rebuild every array in the model's float dtype, so it would come back as floats, or not load."""
        xp = self.xp
        for name, a in self._arrays_by_name().items():
            if not xp.isdtype(a.value.dtype, "real floating"):
                kind = "buffer" if isinstance(a, Buffer) else "parameter"
                raise TypeError(f"{kind} {name!r} holds {dtype_name(a.value.dtype)}, so the model cannot be {what}: "
                                f"parameters and buffers are kept in the model's float dtype ({self.dtype}); keep a "
                                "count in a float buffer (exact up to 2**24 in float32, 2**53 in float64)")

    def _arrays_by_name(self) -> dict[str, Parameter | Buffer]:
        """Every parameter and buffer by its name within this model (without a nested model's path)."""
        return {self._local_name(a.name): a for a in [*self.parameters(), *self.buffers()]}

    def _local_name(self, name: Any) -> Any:
        """An array's name within this model: a nested model's path prefix (``"2."``) taken off."""
        prefix = cast(BuildContext, self.context).prefix
        return name[len(prefix):] if isinstance(name, str) and name.startswith(prefix) else name

    def load_state_dict(self, state: Mapping[str, Any], strict: bool = True) -> LoadedKeys:
        """Copy arrays (NumPy or this backend's) into parameters and buffers, checking names, shapes and values.

        With ``strict=False`` (torch's partial load, e.g. a pretrained body under a new head) the model's arrays
        that `state` lacks keep their values and names in `state` the model lacks are left out; shapes and
        values are checked all the same. Returns the names of both, as torch's ``(missing_keys,
        unexpected_keys)``.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state_dict must be a dict of name -> array, got {type(state).__name__}")
        strict = check_flag("strict", strict)
        targets = self._arrays_by_name()
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets), key=repr)
        if strict and (missing or unexpected):
            raise ValueError(f"state_dict does not match the model: missing {missing}, unexpected {unexpected} "
                             "(strict=False loads the arrays whose names match)")
        targets = {name: target for name, target in targets.items() if name in state}
        new_values = inputs.state_values(self, state, targets)
        # all checked before any is assigned, so a bad entry never leaves a half-loaded model
        for name, target in targets.items():
            target.value = new_values[name]
            if isinstance(target, Parameter):
                target.grad = None
        self._weights_loaded = self._weights_loaded or bool(targets)
        if getattr(self, "_train_output_shape", None) is not None:
            # the pending forward's activations belong to the old weights: a backward through the new ones would be
            # a gradient of neither (torch refuses it too, the in-place copy having changed the weights' version)
            self._train_output_shape = None
            self._forward_dropped_by = "load_state_dict"
        return LoadedKeys(missing, unexpected)

    def get_config(self) -> dict:
        """JSON-serialisable description that rebuilds the architecture (as a layer: no backend, dtype or seed)."""
        reg = require_regularizer("the model's regularizer", self.regularizer)
        reg = None if reg is None else reg.get_config()
        shape = None if self._given_input_shape is None else list(self._given_input_shape)
        # a subclass's own constructor arguments (`MLP(width=64)`), beside what every model's config holds
        own = constructor_config(self, leave_out=_MODEL_KEYS, positional_kept=True)  # *layers: saved below
        if self.nested:
            return {**own, "layers": [layer.get_config() for layer in self.layers], "regularizer": reg,
                    "input_shape": shape}
        return {
            **own,
            "layers": [layer.get_config() for layer in self.layers],
            "dtype": self.dtype,
            "seed": self.seed,
            "regularizer": reg,
            "backend": self.backend.spec,
            "input_shape": shape,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], backend: Any = None, dtype: Any = None,
                    arrays: Mapping[str, Any] | None = None) -> Sequential:
        """Rebuild a model from `get_config()` output, optionally elsewhere.

        With `arrays` (host arrays by state name) each layer takes its values from
        there, checked against the shapes it asks for, instead of initialising them.
        A config naming a subclass of `Sequential` (``"type"``) rebuilds that class;
        one without a type (older files) rebuilds `cls`. A layer's config (a nested model:
        no backend) gives an unbuilt model, built by the model it joins. A subclass gets its own
        constructor arguments back, and the layers where its constructor takes them (``*layers``
        or ``layers``); one whose constructor makes its own layers is rebuilt from its arguments.
        """
        if config.get("type") is not None:
            found = LAYERS.lookup(config["type"])
            if not (isinstance(found, type) and issubclass(found, Sequential)):
                raise ValueError(f"a model config must name Sequential or a subclass of it, got {config['type']!r}")
            cls = found
        settings = dict(backend=backend or config.get("backend", "numpy"),
                        dtype=dtype or config.get("dtype", "float32"), seed=config.get("seed"),
                        regularizer=get_regularizer(config.get("regularizer")),
                        input_shape=config.get("input_shape"), _provided=arrays,
                        _bind="backend" in config or backend is not None)
        if cls is not Sequential:  # a subclass's own constructor arguments
            settings.update((k, v) for k, v in config.items() if k not in _MODEL_KEYS and k != "type")
        parameters = inspect.signature(cls.__init__).parameters
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters.values()):
            return cls(*[layer_from_config(c) for c in config["layers"]], **settings)
        if "layers" in parameters:
            subclass: Any = cls  # one whose constructor names its layers argument
            return subclass(layers=[layer_from_config(c) for c in config["layers"]], **settings)
        return cls(**settings)  # a subclass that makes its own layers; `arrays` fills them by name

    def __repr__(self) -> str:
        return super().__repr__() if self.nested else f"{super().__repr__()} on {self.backend.spec}, {self.dtype}"

    # -- moving and saving ------------------------------------------------------------
    def to(self, backend: Any = None, dtype: Any = None) -> Sequential:
        """A copy of this model (weights, buffers, optimizer, training counters) on another backend or dtype.

        `backend` None keeps this model's (``model.to(dtype="float64")``); `dtype` None keeps its dtype.

        The random streams go along as a checkpoint keeps them: the shuffle always, dropout's where the
        other backend's stream is of the same kind (elsewhere its masks start from the model's seed).
        """
        self._require_float_arrays("moved")
        # the arrays themselves: building the other model copies each (a snapshot first would hold a second copy)
        host = {name: self.backend.to_host(v) for name, v in self.state_dict(copy=False).items()}
        target = self.backend if backend is None else get_backend(backend)
        other = type(self).from_config(self.get_config(), backend=target, dtype=dtype or self.dtype,
                                       arrays=host)
        other.epochs_trained = self.epochs_trained
        other.callback_state = copy.deepcopy(self.callback_state)
        other.feature_names_in_ = self.feature_names_in_
        other.loss = self.loss
        other.shuffle_rng.bit_generator.state = self.shuffle_rng.bit_generator.state
        dropout_state = self.dropout_rng.get_state()
        if other.dropout_rng.accepts(dropout_state):  # a stream of the same kind goes on, as from a checkpoint
            other.dropout_rng.set_state(dropout_state)
        if self.optimizer is not None:
            _require_state_in_range(self.optimizer, self.backend, other.dtype)
            state = self.optimizer.state_dict(copy=False)  # rebuilding copies each array
            state["param_names"] = [self._local_name(name) for name in state["param_names"]]
            other.optimizer = rebuild_optimizer(state, other.parameters(), self.backend)
        return other

    def save(self, path: Any, include_optimizer: bool = True) -> None:
        """Write weights, buffers and config (and optimizer/RNG state) to one `.npz`, atomically.

        A nested model is written as a standalone copy of itself, which `nnx.load` rebuilds.
        """
        from .io import save_model

        self._require_float_arrays("saved")
        require_own_arrays(self)  # a tied or hand-made array: the file would hold another than the layer computes with
        require_built_shapes(self, "save")  # a file nnx.load would refuse
        save_model(self.to(self.backend) if self.nested else self, path, include_optimizer=include_optimizer)

    def to_onnx(self, path: Any, opset: Any = 17) -> Any:
        """Write the inference pass as an ONNX graph to `path`, atomically (needs the ``onnx`` extra).

        Input ``"input"``, output ``"output"``, both with a dynamic first axis ``"batch"``, in
        the model's dtype; dropout is the identity and BatchNorm uses its running statistics.
        A layer without an exporter raises `NotImplementedError` naming it. See docs/export.md.
        Given an `nnx.onnx.OnnxGraph` and a tensor name instead, it is the layer hook
        `Layer.to_onnx(graph, X)`: it adds its layers' nodes and returns the output's name.
        """
        from .onnx import OnnxGraph, export

        if isinstance(path, OnnxGraph):
            return super().to_onnx(path, opset)
        export(self, path, opset=opset)
        return None

    # -- forward and backward -------------------------------------------------------------
    def forward(self, X: Any, training: bool = False) -> Any:
        """Run every layer; `training=True` enables dropout and keeps what `backward` needs."""
        if self.nested:  # a layer of another model: X is already prepared
            return self.forward_to_head(X, len(self.layers), training)
        Y = self.forward_to_head(self.prepare_inputs(X), len(self.layers), training)
        if training:
            self._train_output_shape = tuple(Y.shape)  # what `backward` checks dY against
            self._forward_dropped_by = None
        return Y

    def __call__(self, X: Any, training: bool = False) -> Any:
        """`forward` on a caller's data: a nested model, called directly, prepares X as a standalone one does.

        Inside its model it runs through `forward` on arrays already prepared at the outer boundary.
        """
        return self.forward(self.prepare_inputs(X) if self.nested else X, training)

    def forward_to_head(self, X: Any, n_layers: int, training: bool, runners: Sequence[Any] | None = None) -> Any:
        """The output of the first `n_layers` layers for a prepared batch (see `output_head`).

        `runners`, when given, run those layers instead: one per layer, each a kernel declared for it,
        its class's own passes, or the layer itself (`nnx.kernels.layer_runners`), with the layer's
        `forward` and `backward`; the layers they run past the wrappers count as called from the start
        of a training pass.
        """
        running = self.layers[:n_layers] if runners is None else runners
        passes = None if not training or self.context is None else self.context.forward_pass
        with self.backend.eager_scope():  # op by op, as compiled (JAX on a GPU: full float32 products)
            if passes is None or passes.seen is not None:  # inference, or a nested model inside its holder's pass
                for layer in running:
                    X = layer.forward(X, training)
                return X
            # a training pass: each layer object may run once (see `nnx.layers.passes.ForwardPass`)
            passes.seen = set(getattr(runners, "counted_layers", ()))
            try:
                for layer in running:
                    X = layer.forward(X, training)
            finally:
                passes.seen = None
        return X

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        """Backpropagate dL/dY from the last `forward(training=True)`; fills `p.grad` and returns dL/dX.

        Regularizer gradients are included, so `p.grad` is the gradient of loss + penalty.
        `need_dX=False` lets the first layer skip computing dL/dX; the return value may then be None.
        """
        if self.nested:
            return self.backward_from_head(dY, len(self.layers), need_dX)
        dY = self.backend.asarray(dY, dtype=self.dtype, argname="dY")
        expected = getattr(self, "_train_output_shape", None)
        if expected is None:
            if getattr(self, "_forward_dropped_by", None):
                raise RuntimeError(f"{self._forward_dropped_by} replaced the weights after the last forward(X, "
                                   "training=True), whose activations belong to the old ones: run the forward again "
                                   "before backward")
            raise RuntimeError("backward needs a forward(X, training=True) first; each such forward is "
                               "backpropagated once (training=False keeps nothing to backpropagate)")
        if tuple(dY.shape) != expected:
            # a 0-d dY is most often the loss itself, from torch's `loss.backward()` habit
            hint = ("; backward takes the gradient of the loss w.r.t. the output, loss_fn.gradient(y, out), not the "
                    "loss's value (nnx has no autograd)") if dY.ndim == 0 else ""
            raise ValueError(f"dY has shape {tuple(dY.shape)} but the last forward's output has shape {expected}"
                             f"{hint}")
        self._train_output_shape = None
        return self.backward_from_head(dY, len(self.layers), need_dX)

    def backward_from_head(self, dY: Any, n_layers: int, need_dX: bool, runners: Sequence[Any] | None = None) -> Any:
        """Backpropagate through the first `n_layers` layers (or the `runners` of `forward_to_head`),
        adding the model-wide regularizer's gradient."""
        layers = self.layers if runners is None else runners
        with self.backend.eager_scope():
            for i in range(n_layers - 1, -1, -1):
                dY = layers[i].backward(dY, need_dX=need_dX or i > 0)
                if dY is None and i > 0:
                    raise_no_dX(self.layers[i], self.layers[i - 1])  # named by the layers, not their kernels
        if self.regularizer is not None:
            for p in self.parameters():
                if p.regularized and p.grad is not None:
                    p.grad = p.grad + self.regularizer.gradient(p.value)
        return dY

    def penalty(self) -> Any:
        """The regularization term added to the loss (0-d array), or None when there is none."""
        total = None
        for term in _penalty_terms(self, ()):
            total = term if total is None else total + term
        return total

    def penalizes(self) -> bool:
        """Whether `penalty` has a term: a regularizer covers a regularized weight (read without computing it)."""
        return _penalizes(self, False)

    def output_layer(self) -> Layer:
        """The layer that sets the range of the model's outputs, which decides how a loss reads them.

        The last layer, looked for inside nested `Sequential`s too, passing over those that keep the
        range of the layer before (`RANGE_KEEPING`: Dropout, Flatten, Identity); a container that
        changes its input's range (`Residual`: X + f(X)) is itself the answer. A model of range-keeping
        layers only gives its last one.
        """
        leaves = _last_first(self)
        return next((layer for layer in leaves if type(layer) not in RANGE_KEEPING), leaves[0])

    # -- what the model is used for: functions of the model written once in nnx/training (and summary.py) --
    fit = loop.fit
    predict = inference.predict
    evaluate = inference.evaluate
    summary = layer_table
    prepare_inputs = inputs.prepare_inputs
    require_finite = inputs.require_finite
    prepare_targets = targets.prepare_targets
    prepare_sample_weight = weights.prepare_sample_weight
    resolve_loss = resolve.resolve_loss
    resolve_optimizer = resolve.resolve_optimizer
    output_head = head.output_head
    loss_and_grads = head.loss_and_grads
    metric_values = evaluation.metric_values

    def data_parallel(self, distributed: Any) -> DataParallelFit:
        """A fit's data-parallel parts over `distributed`; here, so `nnx.training` never imports `nnx.distributed`."""
        return DataParallelFit(self, distributed)


class _InitialArrays:
    """Weak references to the arrays a standalone model was built with, to tell whether any was set since.

    A model built on its own and then placed inside another is rebuilt there with new weights, so pretrained values
    given with ``layer.weight.value = W`` were dropped without a word (`load_state_dict` and `nnx.load` were
    refused already). Weak references hold no array alive; a deep copy refers to its own copies, so a copy of an
    untouched model nests as the original does. An edit in place (``value[...] = W``) is not seen.
    """

    def __init__(self, model: Sequential) -> None:
        self.refs = [(a.name, _ref(a.value)) for a in (*model.parameters(), *model.buffers())]

    def first_rebound(self, model: Sequential) -> str | None:
        """The name of the first parameter or buffer whose array is not the one it was built with, or None."""
        arrays = [*model.parameters(), *model.buffers()]
        for (name, ref), a in zip(self.refs, arrays, strict=False):
            if (ref() if callable(ref) else ref) is not a.value:
                return name
        return None

    def __deepcopy__(self, memo: dict[int, Any]) -> _InitialArrays:
        copied = _InitialArrays.__new__(_InitialArrays)
        copied.refs = []
        for name, ref in self.refs:
            array = ref() if callable(ref) else ref
            copied.refs.append((name, None if array is None else _ref(copy.deepcopy(array, memo))))
        return copied


def _ref(array: Any) -> Any:
    """A weak reference to `array`, or `array` itself for a type without them (held, as the model holds it)."""
    try:
        return weakref.ref(array)
    except TypeError:
        return array


def _last_first(model: Sequential) -> list[Layer]:
    """The model's layers from the last to the first, nested `Sequential`s opened in place."""
    leaves: list[Layer] = []
    for layer in reversed(model.layers):
        leaves += _last_first(layer) if isinstance(layer, Sequential) else [layer]
    return leaves


def _penalty_terms(layer: Layer, enclosing: tuple[Regularizer, ...]) -> list[Any]:
    """Each regularized weight's penalties: its layer's regularizer, then those of the models around it."""
    if isinstance(layer, Sequential) and layer.regularizer is not None:
        enclosing = (layer.regularizer, *enclosing)  # a model's regularizer covers every weight inside it
    own = () if isinstance(layer, Sequential) or layer.regularizer is None else (layer.regularizer,)
    regularizers = (*own, *enclosing)  # none for most layers: their parameters are then not listed at all
    try:
        terms = [reg.penalty(p.value) for p in layer.parameters(recurse=False) if p.regularized
                 for reg in regularizers] if regularizers else []
    except AttributeError:  # only when it failed: no work in a training step
        _require_regularizers(layer, own, enclosing)
        raise
    for _, sub in layer.named_layers(recurse=False):
        terms += _penalty_terms(sub, enclosing)
    return terms


def _penalizes(layer: Layer, enclosed: bool) -> bool:
    """Whether `_penalty_terms` of `layer` (inside a model with a regularizer, where `enclosed`) has one; TypeError
    naming a regularizer that is none (a name set as the attribute), as computing the terms raises."""
    model = isinstance(layer, Sequential)
    if layer.regularizer is not None and not isinstance(layer.regularizer, Regularizer):
        require_regularizer("the model's regularizer" if model else f"{type(layer).__name__}.regularizer",
                            layer.regularizer)
    enclosed = enclosed or (model and layer.regularizer is not None)
    own = not model and layer.regularizer is not None
    if (own or enclosed) and any(p.regularized for p in layer.parameters(recurse=False)):
        return True
    return any(_penalizes(sub, enclosed) for _, sub in layer.named_layers(recurse=False))


def _require_regularizers(layer: Layer, own: tuple[Any, ...], enclosing: tuple[Any, ...]) -> None:
    """TypeError naming the attribute when one of the regularizers is no `Regularizer` (see `require_regularizer`)."""
    for reg in own:
        require_regularizer(f"{type(layer).__name__}.regularizer", reg)
    for reg in enclosing:
        require_regularizer("the model's regularizer", reg)


def _require_state_in_range(optimizer: Optimizer, backend: Backend, dtype: str) -> None:
    """ValueError when an optimizer state array holds finite values that the cast to `dtype` would make inf.

    `to()` checks its weights where the copy's layers are built; Adam's second moment in a float64 model can
    exceed float32 where a weight does not, and an inf there freezes that parameter without a word.
    """
    xp = backend.xp
    limit = float(xp.finfo(backend.float_dtype(dtype)).max)
    for i, entry in sorted(optimizer.state.items()):
        for key, value in entry.items():
            if not xp.isdtype(value.dtype, "real floating") or float(xp.finfo(value.dtype).max) <= limit \
                    or math.prod(value.shape) == 0:
                continue
            largest = backend.to_float(xp.max(xp.abs(value)))
            if limit < largest < math.inf:
                raise ValueError(f"optimizer state {key!r} of parameter {optimizer.params[i].name!r} has values up "
                                 f"to {largest:.4g}, beyond the range of {dtype} (+-{limit:.4g}), which would turn "
                                 f"them into inf; keep the model's dtype {dtype_name(value.dtype)}")
