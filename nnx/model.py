"""Sequential: a stack of layers bound to one backend and dtype; its state, its passes, and moving it."""

from __future__ import annotations

import math
import numbers
import secrets
import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast

from .backends import Backend, dtype_name, get_backend, host_rng
from .layers import LAYERS, BuildContext, Layer, Sigmoid, Softmax, layer_from_config
from .layers.containers import _Chain
from .layers.parameter import Parameter
from .losses import BinaryCrossEntropy, CrossEntropy, Loss, get_loss
from .metrics import resolve_metrics
from .optim import OPTIMIZERS, Optimizer, get_optimizer, rebuild_optimizer
from .regularizers import Regularizer, get_regularizer
from .training import loop
from .training.data import batch_slices
from .training.history import History, Logs
from .training.loop import check_positive_int
from .training.loss_fit import check_loss_fits

Shape = tuple[int, ...]


class Sequential(_Chain):
    """Layers applied in order, on one backend, in one float dtype; itself a layer, so models nest.

    Args:
        *layers: `Layer` instances (or one list of them), containers included.
        backend: anything `nnx.get_backend` accepts: ``"numpy"``, ``"cupy:1"``, a namespace, an array.
        dtype: ``"float32"`` (default) or ``"float64"``; inputs are cast once at the boundary.
        seed: seeds initialisation, shuffling and dropout, each from its own stream; None draws one.
        regularizer: a penalty applied to every regularized weight (biases are never penalised).
        input_shape: the shape of one sample, e.g. ``(28, 28)``; by default the first layer's
            (a `Dense` knows its ``(in_features,)``), else unknown until data arrives.

    Placed inside another model, a `Sequential` is rebuilt there as one of its layers: it takes
    that model's backend, dtype and random streams, and its arrays are named by path (``"2.0.weight"``).
    """

    def __init__(self, *layers: Layer, backend: Any = "numpy", dtype: Any = "float32",
                 seed: int | None = None, regularizer: Regularizer | str | None = None,
                 input_shape: Any = None, _provided: Mapping[str, Any] | None = None, _bind: bool = True) -> None:
        super().__init__(*layers)
        # torch and JAX seed their device generators with a signed 64-bit int
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or not 0 <= seed < 2**63):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r} (below 2**63 for torch and JAX)")
        model_backend: Backend = get_backend(backend)
        model_backend.float_dtype(dtype)  # rejects integer and unknown dtypes with a clear message
        self.seed = secrets.randbits(32) if seed is None else int(seed)
        self.regularizer = get_regularizer(regularizer)
        self.optimizer: Optimizer | None = None
        self.loss: Loss | None = None
        self.history: History | None = None
        self.epochs_trained = 0
        self.stop_training = False
        self.nested = False
        # independent streams of one seed: initial values, the shuffle, and dropout never share a state
        init_rng = host_rng((self.seed, 0))
        self.shuffle_rng = host_rng((self.seed, 1))
        self.dropout_rng = model_backend.rng(int(host_rng((self.seed, 2)).integers(2**63)))
        # only a shape the caller gave is part of the config; one taken from the first layer follows that layer
        self._given_input_shape = None if input_shape is None else _sample_shape(input_shape)
        if not _bind:
            return  # a layer read from a config: built by the model it joins, from that model's arrays
        context = BuildContext(model_backend, dtype_name(dtype), init_rng, self.dropout_rng, "", _provided)
        super().attach(context, self._given_input_shape or self.expected_input_shape())
        for layer in (self, *(sub for _, sub in self.named_layers())):
            cast(BuildContext, layer.context).provided = None  # a loaded model does not keep the file's arrays

    def attach(self, context: BuildContext, input_shape: Shape | None) -> Shape | None:
        """Rebuild this model as a layer of another: its backend, dtype and streams; new arrays named by path."""
        if self.optimizer is not None or self.epochs_trained:
            raise ValueError("a trained Sequential cannot be placed inside another model: it would be rebuilt with "
                             "new weights there; nest a new Sequential and copy the weights with load_state_dict")
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
    def state_dict(self) -> dict[str, Any]:
        """Name -> a copy of every parameter and buffer (``"0.weight"``, ``"1.running_mean"``), on this backend.

        Copies on every backend: a held state dict never follows later training.
        """
        xp = self.xp
        return {a.name: xp.asarray(a.value, copy=True) for a in [*self.parameters(), *self.buffers()]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Copy arrays (NumPy or this backend's) into parameters and buffers, checking names, shapes and values."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state_dict must be a dict of name -> array, got {type(state).__name__}")
        targets = {a.name: a for a in [*self.parameters(), *self.buffers()]}
        missing = sorted(set(targets) - set(state))
        unexpected = sorted(set(state) - set(targets), key=repr)
        if missing or unexpected:
            raise ValueError(f"state_dict does not match the model: missing {missing}, unexpected {unexpected}")
        new_values = {}
        for name, target in targets.items():
            value = self.backend.asarray(state[name], dtype=self.dtype, argname=f"state_dict[{name!r}]", copy=True)
            if tuple(value.shape) != target.shape:
                raise ValueError(f"state_dict[{name!r}] has shape {tuple(value.shape)}, the model expects "
                                 f"{target.shape}")
            self.require_finite(value, f"state_dict[{name!r}]")  # NaN weights would make every output NaN
            new_values[name] = value
        # all checked before any is assigned, so a bad entry never leaves a half-loaded model
        for name, target in targets.items():
            target.value = new_values[name]
            if isinstance(target, Parameter):
                target.grad = None

    def get_config(self) -> dict:
        """JSON-serialisable description that rebuilds the architecture (as a layer: no backend, dtype or seed)."""
        reg = None if self.regularizer is None else self.regularizer.get_config()
        shape = None if self._given_input_shape is None else list(self._given_input_shape)
        if self.nested:
            return {**super().get_config(), "regularizer": reg, "input_shape": shape}
        return {
            "type": type(self).registered_name,
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
        no backend) gives an unbuilt model, built by the model it joins.
        """
        if config.get("type") is not None:
            found = LAYERS.lookup(config["type"])
            if not (isinstance(found, type) and issubclass(found, Sequential)):
                raise ValueError(f"a model config must name Sequential or a subclass of it, got {config['type']!r}")
            cls = found
        layers = [layer_from_config(c) for c in config["layers"]]
        return cls(*layers, backend=backend or config.get("backend", "numpy"),
                   dtype=dtype or config.get("dtype", "float32"), seed=config.get("seed"),
                   regularizer=get_regularizer(config.get("regularizer")),
                   input_shape=config.get("input_shape"), _provided=arrays,
                   _bind="backend" in config or backend is not None)

    def summary(self, print_fn: Callable[[str], Any] = print) -> None:
        """Print a table of layers, their output shapes and parameter counts.

        Args:
            print_fn: what receives the table as one string (default `print`; e.g. a logger's
                ``info``, or ``lines.append`` to keep it).
        """
        rows = [("layer", "output shape", "params")]
        for path, layer in self.named_layers():  # a sub-layer under its container, indented, named by path
            shape = layer.output_sample_shape
            count = sum(math.prod(p.shape) for p in layer.parameters())
            shown = "?" if shape is None else str(("batch", *shape)).replace("'", "")
            rows.append((f"{'  ' * path.count('.')}{path}: {type(layer).__name__}", shown, f"{count:,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        total = sum(math.prod(p.shape) for p in self.parameters())
        frozen = sum(math.prod(b.shape) for b in self.buffers())
        lines.append(f"trainable parameters: {total:,}; buffers: {frozen:,}; {self.backend.spec}, {self.dtype}")
        print_fn("\n".join(lines))

    def __repr__(self) -> str:
        return super().__repr__() if self.nested else f"{super().__repr__()} on {self.backend.spec}, {self.dtype}"

    # -- moving and saving ------------------------------------------------------------
    def to(self, backend: Any, dtype: Any = None) -> Sequential:
        """A copy of this model (weights, buffers, optimizer, training counters) on another backend or dtype."""
        host = {name: self.backend.to_host(v) for name, v in self.state_dict().items()}
        other = type(self).from_config(self.get_config(), backend=get_backend(backend), dtype=dtype or self.dtype,
                                       arrays=host)
        other.epochs_trained = self.epochs_trained
        other.loss = self.loss
        other.shuffle_rng.bit_generator.state = self.shuffle_rng.bit_generator.state
        if self.optimizer is not None:
            other.optimizer = rebuild_optimizer(self.optimizer.state_dict(), other.parameters(), self.backend)
        return other

    def save(self, path: Any, include_optimizer: bool = True) -> None:
        """Write weights, buffers and config (and optimizer/RNG state) to one `.npz`, atomically."""
        from .io import save_model

        save_model(self, path, include_optimizer=include_optimizer)

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

    # -- input handling ---------------------------------------------------------------
    def prepare_inputs(self, X: Any, argname: str = "X") -> Any:
        """`X` on this backend in the model's dtype, checked against the model's sample shape."""
        X = self.backend.asarray(X, dtype=self.dtype, argname=argname)
        flat = self.input_shape is not None and len(self.input_shape) == 1
        if X.ndim < 2 or (flat and X.ndim != 2):
            want = "2-D (samples, features)" if flat or self.input_shape is None \
                else f"shaped (samples, {', '.join(map(str, self.input_shape))})"
            raise ValueError(f"{argname} must be {want}, got shape {tuple(X.shape)}")
        if self.input_shape is not None and tuple(X.shape[1:]) != self.input_shape:
            if len(self.input_shape) == 1 and X.ndim == 2:
                raise ValueError(f"{argname} has {X.shape[1]} features but the model expects {self.input_shape[0]}")
            raise ValueError(f"{argname} has samples of shape {tuple(X.shape[1:])} but the model expects "
                             f"{self.input_shape}")
        return X

    def prepare_targets(self, y: Any, loss: Loss, n_rows: int, argname: str = "y", x_argname: str = "X") -> Any:
        """`y` on this backend as `loss` needs it: class indices or one-hot for cross-entropy, else the output shape."""
        xp = self.xp
        out = self.output_sample_shape
        if isinstance(loss, CrossEntropy):
            y = self.backend.asarray(y, argname=argname)
            if y.ndim == 2 and y.shape[1] == 1 and self.out_features != 1:
                y = xp.reshape(y, (-1,))  # a column of class indices, as (n, 1) labels come
            if y.ndim == 1:
                if xp.isdtype(y.dtype, "real floating"):
                    if not self._all_true(y == xp.round(y)):
                        raise ValueError(f"{argname} holds class indices but has non-integer values")
                    y = xp.astype(y, xp.int64)
                elif not xp.isdtype(y.dtype, "integral"):
                    raise TypeError(f"{argname} must hold class indices or one-hot rows, got dtype {y.dtype}")
                elif y.dtype != xp.int64:
                    y = xp.astype(y, xp.int64)  # torch reads uint8/bool index tensors as masks
                n_classes = cast(int, self.out_features)  # known once the model is built
                if y.shape[0] and not self._all_true((y >= 0) & (y < n_classes)):
                    lo, hi = self.backend.to_host(xp.min(y)), self.backend.to_host(xp.max(y))
                    raise ValueError(f"{argname} has class indices in [{lo}, {hi}] but the model has "
                                     f"{n_classes} outputs (valid: 0..{n_classes - 1})")
            else:
                y = self.backend.asarray(y, dtype=self.dtype, argname=argname)
                if tuple(y.shape) != (n_rows, self.out_features):
                    raise ValueError(f"{argname} for cross-entropy must be class indices of shape ({n_rows},) or "
                                     f"({n_rows}, 1), or one-hot rows of shape ({n_rows}, {self.out_features}), "
                                     f"got {tuple(y.shape)}")
        else:
            y = self.backend.asarray(y, dtype=self.dtype, argname=argname)
            if y.ndim == 1 and out == (1,):
                y = xp.reshape(y, (-1, 1))
            if y.ndim < 2 or (out is not None and tuple(y.shape[1:]) != out):
                want = f"({n_rows}, {', '.join(map(str, out))})" if out is not None else "(n, ...)"
                raise ValueError(f"{argname} must have shape {want} to match the model's outputs, "
                                 f"got {tuple(y.shape)}")
        if y.shape[0] != n_rows:
            raise ValueError(f"{x_argname} has {n_rows} samples but {argname} has {y.shape[0]}")
        # training never checks values (check=False in the step), so check once here: targets outside
        # [0, 1] would make BCE unbounded below and training silently chase them
        if isinstance(loss, BinaryCrossEntropy) and y.shape[0] and not self._all_true((y >= 0) & (y <= 1)):
            raise ValueError(f"{argname} for binary cross-entropy must lie in [0, 1] (and not be NaN)")
        return y

    def prepare_sample_weight(self, sample_weight: Any, class_weight: Mapping | None, y: Any, loss: Loss,
                              n_rows: int, argname: str = "sample_weight") -> Any:
        """Per-row weights on this backend (None when neither is given): `sample_weight` times `class_weight[y]`."""
        xp = self.xp
        w = None
        if sample_weight is not None:
            w = self.backend.asarray(sample_weight, dtype=self.dtype, argname=argname)
            if tuple(w.shape) != (n_rows,):
                raise ValueError(f"{argname} must have shape ({n_rows},), one weight per sample, "
                                 f"got {tuple(w.shape)}")
            if n_rows and not self._all_true(xp.isfinite(w) & (w >= 0)):
                raise ValueError(f"{argname} must be finite and >= 0")
        if class_weight is not None:
            cw = self._class_weight_rows(class_weight, y, loss)
            w = cw if w is None else w * cw
        return w

    def _class_weight_rows(self, class_weight: Mapping, y: Any, loss: Loss) -> Any:
        xp = self.xp
        if not isinstance(class_weight, Mapping):
            raise TypeError(f"class_weight must be a dict of class -> weight, got {type(class_weight).__name__}")
        n_classes = 2 if self.out_features == 1 else cast(int, self.out_features)
        table = [1.0] * n_classes
        for key, weight in class_weight.items():
            if isinstance(key, bool) or not isinstance(key, numbers.Integral) or not 0 <= key < n_classes:  # pyright: ignore[reportOperatorIssue]
                raise ValueError(f"class_weight keys must be class indices 0..{n_classes - 1}, got {key!r}")
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not weight >= 0:  # pyright: ignore[reportOperatorIssue]
                raise ValueError(f"class_weight[{key}] must be a number >= 0, got {weight!r}")
            table[int(key)] = float(weight)
        if isinstance(loss, CrossEntropy) and y.ndim == 1:
            classes = y
        elif self.out_features == 1:
            classes = xp.astype(xp.reshape(y, (-1,)) > 0.5, xp.int64)
        elif y.ndim == 2:
            classes = xp.argmax(y, axis=1)
        else:
            raise ValueError("class_weight needs class targets: indices, one-hot rows or 0/1 labels")
        weights = self.backend.asarray(table, dtype=self.dtype, argname="class_weight")
        return xp.take(weights, classes, axis=0)

    def _all_true(self, condition: Any) -> bool:
        return bool(self.backend.to_host(self.xp.all(condition)))

    def require_finite(self, arr: Any, argname: str) -> None:
        """Raise ValueError naming `argname` when a float array holds NaN or inf."""
        xp = self.xp
        if xp.isdtype(arr.dtype, "real floating") and not self._all_true(xp.isfinite(arr)):
            raise ValueError(f"{argname} contains NaN or inf values")

    # -- forward and backward -------------------------------------------------------------
    def forward(self, X: Any, training: bool = False) -> Any:
        """Run every layer; `training=True` enables dropout and keeps what `backward` needs."""
        if self.nested:  # a layer of another model: X is already prepared
            return self.forward_to_head(X, len(self.layers), training)
        Y = self.forward_to_head(self.prepare_inputs(X), len(self.layers), training)
        if training:
            self._train_output_shape = tuple(Y.shape)  # what `backward` checks dY against
        return Y

    __call__ = forward

    def forward_to_head(self, X: Any, n_layers: int, training: bool) -> Any:
        """The output of the first `n_layers` layers for a prepared batch (see `output_head`)."""
        for layer in self.layers[:n_layers]:
            X = layer.forward(X, training)
        return X

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        """Backpropagate dL/dY from the last `forward(training=True)`; fills `p.grad` and returns dL/dX.

        Regularizer gradients are included, so `p.grad` is the gradient of loss + penalty.
        """
        if self.nested:
            return self.backward_from_head(dY, len(self.layers), need_dX)
        dY = self.backend.asarray(dY, dtype=self.dtype, argname="dY")
        expected = getattr(self, "_train_output_shape", None)
        if expected is None:
            raise RuntimeError("backward needs a forward(X, training=True) first; each such forward is "
                               "backpropagated once (training=False keeps nothing to backpropagate)")
        if tuple(dY.shape) != expected:
            raise ValueError(f"dY has shape {tuple(dY.shape)} but the last forward's output has shape {expected}")
        self._train_output_shape = None
        return self.backward_from_head(dY, len(self.layers), need_dX=True)

    def backward_from_head(self, dY: Any, n_layers: int, need_dX: bool) -> Any:
        """Backpropagate through the first `n_layers` layers, adding the model-wide regularizer's gradient."""
        for i in range(n_layers - 1, -1, -1):
            dY = self.layers[i].backward(dY, need_dX=need_dX or i > 0)
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

    def output_head(self, loss: Loss) -> tuple[int, Loss, bool]:
        """How many layers run before the loss, the loss applied there, and whether it sees logits.

        A final Sigmoid with BCE (or Softmax with cross-entropy) is folded into the loss
        computed from logits: exact where probabilities saturate, and one step cheaper.
        """
        last = self.layers[-1]
        if type(last) is Sigmoid and type(loss) is BinaryCrossEntropy and not loss.from_logits:
            return len(self.layers) - 1, BinaryCrossEntropy(from_logits=True, reduction=loss.reduction), True
        if type(last) is Softmax and type(loss) is CrossEntropy and not loss.from_logits:
            return len(self.layers) - 1, CrossEntropy(from_logits=True, reduction=loss.reduction), True
        from_logits = getattr(loss, "from_logits", False) and not isinstance(self.output_layer(), (Sigmoid, Softmax))
        return len(self.layers), loss, from_logits

    def output_layer(self) -> Layer:
        """The layer whose output the model returns: the last one, inside nested `Sequential`s too."""
        last = self.layers[-1]
        while isinstance(last, Sequential):
            last = last.layers[-1]
        return last

    def loss_and_grads(self, X: Any, y: Any, loss: Loss, sample_weight: Any = None,
                       need_dX: bool = False) -> tuple[Any, Any, Any]:
        """One training-mode forward and backward on prepared arrays: (loss incl. penalty, head outputs, dL/dX).

        The portable path, for tools that need the plain gradient (gradient checks, L-BFGS).
        """
        n_run, head, _ = self.output_head(loss)
        Z = self.forward_to_head(X, n_run, training=True)
        if sample_weight is None:
            value, dZ = head.value_and_grad(y, Z, check=False)
        else:
            value, dZ = head.value_and_grad(y, Z, check=False, sample_weight=sample_weight)
        reg = self.penalty()
        if reg is not None:
            value = value + reg
        dX = self.backward_from_head(dZ, n_run, need_dX)
        return value, Z, dX

    # -- training ------------------------------------------------------------------------
    def resolve_loss(self, loss: Any) -> Loss:
        """The `Loss` for a fit/evaluate argument: None reuses the last one or picks it from the output layer."""
        last = self.output_layer()
        if loss is None:
            if self.loss is not None:
                return self.loss
            loss = "bce" if isinstance(last, Sigmoid) else CrossEntropy(from_logits=False) \
                if isinstance(last, Softmax) else "mse"
        resolved = get_loss(loss)
        pair = {Softmax: CrossEntropy, Sigmoid: BinaryCrossEntropy}.get(type(last))
        if pair is not None and type(resolved) is pair and cast(Any, resolved).from_logits:
            # The output layer already gives probabilities; reading them as logits would apply the
            # activation twice. A name follows the model (Keras's "categorical_crossentropy" means
            # probabilities); an explicit from_logits=True instance is kept, with a warning as Keras gives.
            if isinstance(loss, str):
                return pair(from_logits=False)
            warnings.warn(f"{resolved!r} treats the outputs as logits, but the model ends in "
                          f"{type(last).__name__}, so they are probabilities; pass from_logits=False",
                          stacklevel=4)
        return resolved

    def resolve_optimizer(self, optimizer: Any, lr: float | None) -> Optimizer:
        """The `Optimizer` for a fit argument; a name matching the current optimizer keeps its state."""
        if isinstance(optimizer, Optimizer):
            mine = {id(p) for p in self.parameters()}
            if not {id(p) for p in optimizer.params} <= mine:
                raise ValueError("optimizer was built on another model's parameters; pass model.parameters()")
            return optimizer
        current = self.optimizer
        if current is not None and optimizer is None:
            if lr is not None:
                current.lr = lr
            return current
        name = "adam" if optimizer is None else optimizer
        if isinstance(name, str) and current is not None and name in OPTIMIZERS and type(current) is OPTIMIZERS[name] \
                and (lr is None or lr == current.lr):
            return current  # a second fit() call continues with the same optimizer state
        kwargs = {} if lr is None else {"lr": lr}
        return get_optimizer(name, self.parameters(), **kwargs)

    def fit(self, X: Any, y: Any = None, loss: Any = None, optimizer: Any = None, lr: float | None = None,
            epochs: int = 1, batch_size: int | None = 32, validation_data: tuple | None = None,
            validation_split: float = 0.0, metrics: Any = None, callbacks: list | None = None,
            verbose: int = 0, shuffle: bool = True, check_finite: bool = True, sample_weight: Any = None,
            class_weight: dict | None = None, clip_norm: float | None = None, clip_value: float | None = None,
            accumulate: int = 1, gradient_transforms: list | None = None, steps_per_epoch: int | None = None,
            validation_steps: int | None = None, prefetch: Any = True, distributed: Any = None,
            chunk_batches: int | None = None) -> History:
        """Mini-batch training; returns a `History` of per-epoch loss and metrics.

        Args:
            X, y: training data (NumPy or this backend's arrays); y as class indices or one-hot for
                cross-entropy, else shaped like the outputs ((n,) is accepted for one output).
            loss: a `Loss` or name; None reuses the last one, or picks bce/cross-entropy/mse
                from the output layer.
            optimizer: an `Optimizer` or name (default "adam"); a name matching the model's
                current optimizer continues with its state.
            lr: learning rate for an optimizer created by name (or a new rate for the current one).
            epochs: epochs to run in this call (counting continues in `epochs_trained`).
            batch_size: samples per step; None for full batch.
            validation_data: (X_val, y_val) or (X_val, y_val, sample_weight) evaluated after each epoch.
            validation_split: fraction in [0, 1) of the data (taken from the end) held out instead.
            metrics: names among `nnx.metrics.METRICS`, or (name, function) pairs.
            callbacks: `nnx.callbacks.Callback` instances.
            verbose: 1 prints loss and metrics each epoch.
            shuffle: reshuffle every epoch with the model's host RNG (same batches on every backend).
            check_finite: refuse a step whose loss or gradients are NaN/inf, before it is applied,
                with FloatingPointError naming epoch and batch.
            sample_weight: per-sample weights (n,): each batch's loss is sum(w * per-sample loss) / rows,
                as in Keras.
            class_weight: {class index: weight}, multiplied into the sample weights.
            clip_norm: clip the gradients' global L2 norm to this value before each update.
            clip_value: clip every gradient element into [-clip_value, clip_value].
            accumulate: update once every `accumulate` batches with their row-weighted mean gradient,
                the same as batches `accumulate` times larger.
            gradient_transforms: extra `nnx.training.GradientTransform` stages, run after accumulation
                and before clipping (distributed training adds its all-reduce here).
            steps_per_epoch: with X an iterable of (X, y[, sample_weight]) batches (y None): batches per
                epoch; a generator then continues where it stopped, a list is re-read each epoch.
                X may also be a `np.memmap` or array-like read batch by batch (h5py, ...).
            validation_steps: batches per validation pass when validation_data is an iterable of batches.
            prefetch: prepare the next batch from a memmap or iterable in a background thread while
                the step runs (True, False, or how many batches ahead).
            distributed: a communicator from `nnx.distributed.init()`: data-parallel training where
                `batch_size` is the global batch, each rank computes its slice and gradients are
                averaged; equal to single-process training up to rounding (docs/distributed.md).
            chunk_batches: on a backend with a compiler, batches per compiled program when the data is
                read batch by batch (memmap, iterable); default from a memory budget (docs/training.md).
        """
        return loop.fit(self, X, y, loss=loss, optimizer=optimizer, lr=lr, epochs=epochs, batch_size=batch_size,
                        validation_data=validation_data, validation_split=validation_split, metrics=metrics,
                        callbacks=callbacks, verbose=verbose, shuffle=shuffle, check_finite=check_finite,
                        sample_weight=sample_weight, class_weight=class_weight, clip_norm=clip_norm,
                        clip_value=clip_value, accumulate=accumulate, gradient_transforms=gradient_transforms,
                        steps_per_epoch=steps_per_epoch, validation_steps=validation_steps, prefetch=prefetch,
                        distributed=distributed, chunk_batches=chunk_batches)

    def metric_values(self, metric_fns: dict, y: Any, Z: Any, from_logits: bool) -> dict[str, float]:
        """Each metric of head outputs `Z` against `y`, as Python floats (one host transfer for all)."""
        values = [fn(self.xp, y, Z, from_logits) for fn in metric_fns.values()]
        host = self.backend.to_host(self.xp.stack([self.xp.astype(v, Z.dtype) for v in values]))
        return {name: float(v) for name, v in zip(metric_fns, host, strict=True)}

    # -- inference ---------------------------------------------------------------------------
    def predict(self, X: Any, batch_size: int | None = None, steps: int | None = None, prefetch: Any = True,
                check_finite: bool = True) -> Any:
        """Outputs for X in inference mode (dropout off), as an array on this model's backend.

        X may also be a `np.memmap` or array-like read batch by batch (h5py, ...), or an iterable of
        X batches or (X, ...) tuples (`steps` of them when given); `prefetch` prepares the next batch
        in a background thread for those. `check_finite` refuses X holding NaN or inf with a
        ValueError, as `fit` and `evaluate` do (one reduction and one host read per call or batch);
        False skips it.
        """
        if batch_size is not None:
            check_positive_int("batch_size", batch_size)
        source = loop.inference_source(self, X, None, None, None, batch_size, steps, prefetch, check_finite)
        if source is not None:
            return loop.predict_batches(self, source)
        X_d = self.prepare_inputs(X)
        if check_finite:
            self.require_finite(X_d, "X")  # NaN in, NaN out would look like a prediction
        n = len(self.layers)
        if batch_size is None or X_d.shape[0] <= batch_size:
            return self.forward_to_head(X_d, n, training=False)
        parts = [self.forward_to_head(X_d[s, ...], n, training=False)
                 for s in batch_slices(X_d.shape[0], batch_size)]
        return self.xp.concat(parts, axis=0)

    def evaluate(self, X: Any, y: Any = None, loss: Any = None, metrics: Any = None, batch_size: int | None = None,
                 sample_weight: Any = None, steps: int | None = None, prefetch: Any = True,
                 check_finite: bool = True) -> dict[str, float]:
        """Loss (with the regularization penalty, as `fit` reports it; weighted by `sample_weight`) and metrics.

        A dict of name -> float; it prints rounded to 4 significant digits, its values are not rounded.

        X, y may also be host array-likes read batch by batch (`np.memmap`, h5py, ...), or X alone an
        iterable of (X, y) / (X, y, sample_weight) batches (`steps` of them when given).
        `check_finite` refuses X or y holding NaN or inf with a ValueError; False skips it. A loss that
        does not fit the model's outputs (see `fit`) raises ValueError.
        """
        loss_fn = self.resolve_loss(loss)
        look_at_outputs = check_loss_fits(self, loss_fn)
        if batch_size is not None:
            check_positive_int("batch_size", batch_size)
        source = loop.inference_source(self, X, y, sample_weight, loss_fn, batch_size, steps, prefetch, check_finite)
        if source is not None:
            return Logs(loop.evaluate_batches(self, source, loss_fn, resolve_metrics(metrics), look_at_outputs))
        if y is None:
            raise TypeError("y is required when X is an array; to evaluate batches pass X as an iterable "
                            "of (X, y) or (X, y, sample_weight) tuples")
        X_d = self.prepare_inputs(X)
        y_d = self.prepare_targets(y, loss_fn, X_d.shape[0])
        w_d = self.prepare_sample_weight(sample_weight, None, y_d, loss_fn, X_d.shape[0])
        if check_finite:
            self.require_finite(X_d, "X")  # a NaN loss from NaN data would look like a result
            self.require_finite(y_d, "y")
        return Logs(loop.evaluate_arrays(self, X_d, y_d, w_d, loss_fn, resolve_metrics(metrics), batch_size,
                                         look_at_outputs))


def _penalty_terms(layer: Layer, enclosing: tuple[Regularizer, ...]) -> list[Any]:
    """Each regularized weight's penalties: its layer's regularizer, then those of the models around it."""
    if isinstance(layer, Sequential) and layer.regularizer is not None:
        enclosing = (layer.regularizer, *enclosing)  # a model's regularizer covers every weight inside it
    own = () if isinstance(layer, Sequential) or layer.regularizer is None else (layer.regularizer,)
    terms = [reg.penalty(p.value) for p in layer.parameters(recurse=False) if p.regularized
             for reg in (*own, *enclosing)]
    for _, sub in layer.named_layers(recurse=False):
        terms += _penalty_terms(sub, enclosing)
    return terms


def _sample_shape(shape: Any) -> Shape:
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"input_shape must be a tuple of ints (one sample's shape), got {shape!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must be a non-empty tuple of sizes > 0, got {shape}")
    return shape
