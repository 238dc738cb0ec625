"""Sequential: a stack of layers bound to one backend and dtype, with the training loop."""

from __future__ import annotations

import math
import numbers
import secrets
import warnings
from collections.abc import Mapping
from typing import Any

from .backend import Backend, dtype_name, get_backend, host_rng
from .callbacks import Callback, CallbackList, ProgressBar
from .layers import Dense, Layer, Sigmoid, Softmax, layer_from_config
from .losses import BinaryCrossEntropy, CrossEntropy, Loss, get_loss
from .optim import OPTIMIZERS, Optimizer, get_optimizer
from .parameter import Parameter
from .regularizers import Regularizer, get_regularizer
from .training import History, InterruptGuard, batch_slices, resolve_metrics


class Sequential:
    """Layers applied in order, on one backend, in one float dtype.

    Args:
        *layers: `Layer` instances (or one list of them).
        backend: anything `nnx.get_backend` accepts: ``"numpy"``, ``"cupy:1"``, a namespace, an array.
        dtype: ``"float32"`` (default) or ``"float64"``; inputs are cast once at the boundary.
        seed: seeds initialisation, shuffling and dropout; None draws one (kept in `seed`).
        regularizer: a penalty applied to every Dense weight (biases are never penalised).
    """

    def __init__(self, *layers: Layer, backend: Any = "numpy", dtype: Any = "float32",
                 seed: int | None = None, regularizer: Regularizer | str | None = None) -> None:
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layer {i} must be an nnx Layer, got {type(layer).__name__}")
        # torch and JAX seed their device generators with a signed 64-bit int
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or not 0 <= seed < 2**63):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r} (below 2**63 for torch and JAX)")
        seed = None if seed is None else int(seed)
        self.backend: Backend = get_backend(backend)
        self.xp = self.backend.xp
        self.backend.float_dtype(dtype)  # rejects integer and unknown dtypes with a clear message
        self.dtype = dtype_name(dtype)
        self.seed = secrets.randbits(32) if seed is None else seed
        self.regularizer = get_regularizer(regularizer)
        self.layers = list(layers)
        self.in_features, self.out_features = self._check_chain()
        self.optimizer: Optimizer | None = None
        self.loss: Loss | None = None
        self.epochs_trained = 0
        self.stop_training = False
        self.shuffle_rng = host_rng((self.seed, 1))
        self.dropout_rng = self.backend.rng(self.seed)
        gen = host_rng(self.seed)
        for i, layer in enumerate(self.layers):
            layer.build(self.backend, self.dtype, gen, f"{i}.", self.dropout_rng)

    def _check_chain(self) -> tuple[int | None, int | None]:
        features: int | None = None
        first: int | None = None
        for i, layer in enumerate(self.layers):
            if first is None and isinstance(layer, Dense):
                first = layer.in_features
            try:
                features = layer.output_features(features)
            except ValueError as exc:
                raise ValueError(f"layer {i}: {exc}") from None
        return first, features

    # -- introspection ------------------------------------------------------
    def parameters(self) -> list[Parameter]:
        """All trainable parameters in layer order (weight before bias)."""
        return [p for layer in self.layers for p in layer.parameters()]

    def state_dict(self) -> dict[str, Any]:
        """Parameter name -> array on this backend, PyTorch-style names (``"0.weight"``)."""
        return {p.name: p.value for p in self.parameters()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Copy arrays (NumPy or this backend's) into the parameters, checking names and shapes."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state_dict must be a dict of parameter name -> array, got {type(state).__name__}")
        params = {p.name: p for p in self.parameters()}
        missing = sorted(set(params) - set(state))
        unexpected = sorted(set(state) - set(params), key=repr)
        if missing or unexpected:
            raise ValueError(f"state_dict does not match the model: missing {missing}, unexpected {unexpected}")
        new_values = {}
        for name, p in params.items():
            value = self.backend.asarray(state[name], dtype=self.dtype, argname=f"state_dict[{name!r}]", copy=True)
            if tuple(value.shape) != p.shape:
                raise ValueError(f"state_dict[{name!r}] has shape {tuple(value.shape)}, the model expects {p.shape}")
            self._check_finite(value, f"state_dict[{name!r}]")  # NaN weights would make every output NaN
            new_values[name] = value
        # all checked before any is assigned, so a bad entry never leaves a half-loaded model
        for name, p in params.items():
            p.value = new_values[name]
            p.grad = None

    def get_config(self) -> dict:
        """JSON-serialisable description that rebuilds the architecture."""
        return {
            "layers": [layer.get_config() for layer in self.layers],
            "dtype": self.dtype,
            "seed": self.seed,
            "regularizer": None if self.regularizer is None else self.regularizer.get_config(),
            "backend": self.backend.spec,
        }

    @classmethod
    def from_config(cls, config: dict, backend: Any = None, dtype: Any = None) -> Sequential:
        """Rebuild an (untrained) model from `get_config()` output, optionally elsewhere."""
        layers = [layer_from_config(c) for c in config["layers"]]
        return cls(*layers, backend=backend or config.get("backend", "numpy"),
                   dtype=dtype or config.get("dtype", "float32"), seed=config.get("seed"),
                   regularizer=get_regularizer(config.get("regularizer")))

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n) on {self.backend.spec}, {self.dtype}"

    # -- moving -----------------------------------------------------------
    def to(self, backend: Any, dtype: Any = None) -> Sequential:
        """A copy of this model (weights, optimizer, training counters) on another backend or dtype."""
        other = Sequential.from_config(self.get_config(), backend=get_backend(backend), dtype=dtype or self.dtype)
        other.load_state_dict({name: self.backend.to_host(v) for name, v in self.state_dict().items()})
        other.epochs_trained = self.epochs_trained
        other.loss = self.loss
        other.shuffle_rng.bit_generator.state = self.shuffle_rng.bit_generator.state
        if self.optimizer is not None:
            other.optimizer = rebuild_optimizer(self.optimizer.state_dict(), other.parameters(), self.backend)
        return other

    def save(self, path: Any, include_optimizer: bool = True) -> None:
        """Write weights and config (and optimizer/RNG state) to one `.npz`, atomically."""
        from .io import save_model

        save_model(self, path, include_optimizer=include_optimizer)

    # -- input handling ------------------------------------------------------
    def _prepare_X(self, X: Any, argname: str = "X") -> Any:
        X = self.backend.asarray(X, dtype=self.dtype, argname=argname)
        if X.ndim != 2:
            raise ValueError(f"{argname} must be 2-D (samples, features), got shape {tuple(X.shape)}")
        if self.in_features is not None and X.shape[1] != self.in_features:
            raise ValueError(f"{argname} has {X.shape[1]} features but the model expects {self.in_features}")
        return X

    def _prepare_y(self, y: Any, loss: Loss, n_rows: int, argname: str = "y", x_argname: str = "X") -> Any:
        xp = self.xp
        if isinstance(loss, CrossEntropy):
            y = self.backend.asarray(y, argname=argname)
            if y.ndim == 1:
                if xp.isdtype(y.dtype, "real floating"):
                    if not self._all_true(y == xp.round(y)):
                        raise ValueError(f"{argname} holds class indices but has non-integer values")
                    y = xp.astype(y, xp.int64)
                elif not xp.isdtype(y.dtype, "integral"):
                    raise TypeError(f"{argname} must hold class indices or one-hot rows, got dtype {y.dtype}")
                n_classes = self.out_features
                if y.shape[0] and not self._all_true((y >= 0) & (y < n_classes)):
                    lo, hi = self.backend.to_host(xp.min(y)), self.backend.to_host(xp.max(y))
                    raise ValueError(f"{argname} has class indices in [{lo}, {hi}] but the model has "
                                     f"{n_classes} outputs (valid: 0..{n_classes - 1})")
            else:
                y = self.backend.asarray(y, dtype=self.dtype, argname=argname)
                if tuple(y.shape) != (n_rows, self.out_features):
                    raise ValueError(f"{argname} one-hot rows must have shape ({n_rows}, {self.out_features}), "
                                     f"got {tuple(y.shape)}")
        else:
            y = self.backend.asarray(y, dtype=self.dtype, argname=argname)
            if y.ndim == 1 and self.out_features == 1:
                y = xp.reshape(y, (-1, 1))
            if y.ndim != 2 or (self.out_features is not None and y.shape[1] != self.out_features):
                raise ValueError(f"{argname} must have shape ({n_rows}, {self.out_features}) to match the "
                                 f"model's outputs, got {tuple(y.shape)}")
        if y.shape[0] != n_rows:
            raise ValueError(f"{x_argname} has {n_rows} samples but {argname} has {y.shape[0]}")
        # training never checks values (check=False in the step), so check once here: targets outside
        # [0, 1] would make BCE unbounded below and training silently chase them
        if isinstance(loss, BinaryCrossEntropy) and y.shape[0] and not self._all_true((y >= 0) & (y <= 1)):
            raise ValueError(f"{argname} for binary cross-entropy must lie in [0, 1] (and not be NaN)")
        return y

    def _all_true(self, condition: Any) -> bool:
        return bool(self.backend.to_host(self.xp.all(condition)))

    def _check_finite(self, arr: Any, argname: str) -> None:
        xp = self.xp
        if xp.isdtype(arr.dtype, "real floating") and not self._all_true(xp.isfinite(arr)):
            raise ValueError(f"{argname} contains NaN or inf values")

    # -- forward and backward -------------------------------------------------
    def forward(self, X: Any, training: bool = False) -> Any:
        """Run every layer; `training=True` enables dropout and keeps what `backward` needs."""
        Y = self._prepare_X(X)
        for layer in self.layers:
            Y = layer.forward(Y, training)
        if training:
            self._train_output_shape = tuple(Y.shape)  # what `backward` checks dY against
        return Y

    __call__ = forward

    def backward(self, dY: Any) -> Any:
        """Backpropagate dL/dY from the last `forward(training=True)`; fills `p.grad` and returns dL/dX.

        Regularizer gradients are included, so `p.grad` is the gradient of loss + penalty.
        """
        dY = self.backend.asarray(dY, dtype=self.dtype, argname="dY")
        expected = getattr(self, "_train_output_shape", None)
        if expected is None:
            raise RuntimeError("backward needs a forward(X, training=True) first; each such forward is "
                               "backpropagated once (training=False keeps nothing to backpropagate)")
        if tuple(dY.shape) != expected:
            raise ValueError(f"dY has shape {tuple(dY.shape)} but the last forward's output has shape {expected}")
        self._train_output_shape = None
        return self._backward(dY, len(self.layers), need_dX=True)

    def _backward(self, dY: Any, n_layers: int, need_dX: bool) -> Any:
        for i in range(n_layers - 1, -1, -1):
            dY = self.layers[i].backward(dY, need_dX=need_dX or i > 0)
        if self.regularizer is not None:
            for p in self.parameters():
                if p.regularized:
                    p.grad = p.grad + self.regularizer.gradient(p.value)
        return dY

    def penalty(self) -> Any:
        """The regularization term added to the loss (0-d array), or None when there is none."""
        total = None
        for layer in self.layers:
            for p in layer.parameters():
                if not p.regularized:
                    continue
                for reg in (layer.regularizer, self.regularizer):
                    if reg is not None:
                        term = reg.penalty(p.value)
                        total = term if total is None else total + term
        return total

    def _fused_output(self, loss: Loss) -> tuple[int, Loss, bool]:
        """How many layers to run before the loss, the loss to apply there, and whether it sees logits.

        A final Sigmoid with BCE (or Softmax with cross-entropy) is folded into the loss
        computed from logits: exact where probabilities saturate, and one step cheaper.
        """
        last = self.layers[-1]
        if isinstance(last, Sigmoid) and isinstance(loss, BinaryCrossEntropy) and not loss.from_logits:
            return len(self.layers) - 1, BinaryCrossEntropy(from_logits=True), True
        if isinstance(last, Softmax) and isinstance(loss, CrossEntropy) and not loss.from_logits:
            return len(self.layers) - 1, CrossEntropy(from_logits=True), True
        from_logits = getattr(loss, "from_logits", False) and not isinstance(last, (Sigmoid, Softmax))
        return len(self.layers), loss, from_logits

    def _loss_and_grads(self, X: Any, y: Any, loss: Loss, need_dX: bool = False) -> tuple[Any, Any, Any]:
        """One forward (training mode) and backward pass: (loss incl. penalty, outputs, dL/dX)."""
        n_run, head_loss, _ = self._fused_output(loss)
        Z = X
        for layer in self.layers[:n_run]:
            Z = layer.forward(Z, True)
        value, dZ = head_loss.value_and_grad(y, Z, check=False)
        reg = self.penalty()
        if reg is not None:
            value = value + reg
        dX = self._backward(dZ, n_run, need_dX)
        return value, Z, dX

    # -- training -------------------------------------------------------------
    def _resolve_loss(self, loss: Any) -> Loss:
        if loss is None:
            if self.loss is not None:
                return self.loss
            last = self.layers[-1]
            loss = "bce" if isinstance(last, Sigmoid) else CrossEntropy(from_logits=False) \
                if isinstance(last, Softmax) else "mse"
        resolved = get_loss(loss)
        last = self.layers[-1]
        pair = {Softmax: CrossEntropy, Sigmoid: BinaryCrossEntropy}.get(type(last))
        if pair is not None and type(resolved) is pair and resolved.from_logits:
            # The output layer already gives probabilities; reading them as logits would apply the
            # activation twice. A name follows the model (Keras's "categorical_crossentropy" means
            # probabilities); an explicit from_logits=True instance is kept, with a warning as Keras gives.
            if isinstance(loss, str):
                return pair(from_logits=False)
            warnings.warn(f"{resolved!r} treats the outputs as logits, but the model ends in "
                          f"{type(last).__name__}, so they are probabilities; pass from_logits=False",
                          stacklevel=3)
        return resolved

    def _resolve_optimizer(self, optimizer: Any, lr: float | None) -> Optimizer:
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
        if isinstance(name, str) and current is not None and type(current) is OPTIMIZERS.get(name.lower()) \
                and (lr is None or lr == current.lr):
            return current  # a second fit() call continues with the same optimizer state
        kwargs = {} if lr is None else {"lr": lr}
        return get_optimizer(name, self.parameters(), **kwargs)

    def fit(self, X: Any, y: Any, loss: Any = None, optimizer: Any = None, lr: float | None = None,
            epochs: int = 1, batch_size: int | None = 32, validation_data: tuple | None = None,
            validation_split: float = 0.0, metrics: Any = None, callbacks: list[Callback] | None = None,
            verbose: int = 0, shuffle: bool = True, check_finite: bool = True) -> History:
        """Mini-batch training; returns a `History` of per-epoch loss and metrics.

        Args:
            X, y: training data (NumPy or this backend's arrays); y as class indices or one-hot for
                cross-entropy, else shaped like the outputs ((n,) is accepted for one output).
            loss: a `Loss` or name; None reuses the last one, or picks bce/cross-entropy/mse
                from the output layer.
            optimizer: an `Optimizer` or name (default "adam"); a name matching the model's
                current optimizer continues with its state.
            lr: learning rate for an optimizer created by name.
            epochs: epochs to run in this call (counting continues in `epochs_trained`).
            batch_size: samples per step; None for full batch.
            validation_data: (X_val, y_val) evaluated after each epoch.
            validation_split: fraction in [0, 1) of the data (taken from the end) held out instead.
            metrics: names among `nnx.training.METRICS`, or (name, function) pairs.
            callbacks: `nnx.callbacks.Callback` instances.
            verbose: 1 prints loss and metrics each epoch.
            shuffle: reshuffle every epoch with the model's host RNG (same batches on every backend).
            check_finite: stop with FloatingPointError naming epoch and batch when the loss is NaN/inf.
        """
        xp, be = self.xp, self.backend
        loss_fn = self._resolve_loss(loss)
        metric_fns = resolve_metrics(metrics)
        _check_positive_int("epochs", epochs, allow_zero=True)
        if batch_size is not None:
            _check_positive_int("batch_size", batch_size)
        if not (isinstance(validation_split, (int, float)) and 0.0 <= validation_split < 1.0):
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split!r}")
        X_d = self._prepare_X(X)
        n = X_d.shape[0]
        if n == 0:
            raise ValueError("X has 0 samples; fit needs at least one")
        y_d = self._prepare_y(y, loss_fn, n)
        self._check_finite(X_d, "X")
        self._check_finite(y_d, "y")
        if validation_split:
            n_val = int(math.floor(n * validation_split))
            if n_val == 0 or n_val == n:
                raise ValueError(f"validation_split={validation_split} leaves {n - n_val} training and "
                                 f"{n_val} validation samples out of {n}")
            validation_data = (X_d[n - n_val:, ...], y_d[n - n_val:, ...])
            X_d, y_d, n = X_d[:n - n_val, ...], y_d[:n - n_val, ...], n - n_val
        val = None
        if validation_data is not None:
            if not (isinstance(validation_data, (tuple, list)) and len(validation_data) == 2):
                raise TypeError("validation_data must be a pair (X_val, y_val)")
            Xv = self._prepare_X(validation_data[0], "validation X")
            val = (Xv, self._prepare_y(validation_data[1], loss_fn, Xv.shape[0], "validation y", "validation X"))
            self._check_finite(val[0], "validation X")
            self._check_finite(val[1], "validation y")

        self.loss = loss_fn
        opt = self._resolve_optimizer(optimizer, lr)
        self.optimizer = opt
        try:
            cbs = list(callbacks or [])
        except TypeError:
            raise TypeError(f"callbacks must be a list of nnx.callbacks.Callback, got {type(callbacks).__name__}") \
                from None
        if verbose and not any(isinstance(cb, ProgressBar) for cb in cbs):
            cbs.append(ProgressBar(epochs))
        cb = CallbackList(cbs)
        cb.set_model(self)
        history = History()
        self.history = history
        self.stop_training = False
        slices = batch_slices(n, batch_size or n)
        _, _, from_logits = self._fused_output(loss_fn)
        # the backend's buffered step where it has one (NumPy, CuPy); the same gradients either way
        fast_step = None if be.fastpath is None else be.fastpath.train_step(self, loss_fn)
        # A shuffled copy of a big X would double what training holds in memory: gather each batch instead.
        gather = shuffle and n * math.prod(X_d.shape[1:]) * xp.finfo(X_d.dtype).bits // 8 > _COPY_LIMIT
        # "metrics" and "validation" let callbacks reject a monitored name that will never be logged, up front
        cb.on_train_begin({"epochs": epochs, "steps": len(slices), "metrics": list(metric_fns),
                           "validation": val is not None})
        guard = InterruptGuard().install()  # Ctrl-C never lands between two parameters' updates
        try:
            for _ in range(epochs):
                epoch = self.epochs_trained
                cb.on_epoch_begin(epoch, {})
                if shuffle:
                    perm = be.asarray(self.shuffle_rng.permutation(n), argname="permutation")
                    Xs = X_d if gather else xp.take(X_d, perm, axis=0)
                    ys = xp.take(y_d, perm, axis=0)
                else:
                    Xs, ys = X_d, y_d
                batch_losses, outputs = [], []
                for b, part in enumerate(slices):
                    cb.on_batch_begin(b, {"size": part.stop - part.start})
                    Xb = xp.take(X_d, perm[part], axis=0) if gather else Xs[part, ...]
                    if fast_step is not None:
                        value, Z, _ = fast_step(Xb, ys[part, ...])
                    else:
                        value, Z, _ = self._loss_and_grads(Xb, ys[part, ...], loss_fn)
                    guard.in_step = True
                    opt.step()
                    guard.end_step()
                    batch_losses.append(value)
                    if metric_fns:
                        outputs.append(Z)
                    cb.on_batch_end(b, {"loss": value, "size": part.stop - part.start})
                    if self.stop_training:
                        break  # a callback (e.g. TerminateOnNaN) stops mid-epoch
                losses = be.to_host(xp.stack(batch_losses))
                if check_finite and not self.stop_training:  # a stopping callback has handled it
                    _raise_if_not_finite(losses, epoch)
                weights = [s.stop - s.start for s in slices[:len(batch_losses)]]
                n_seen = sum(weights)
                logs = {"loss": float(sum(w * float(v) for w, v in zip(weights, losses, strict=True)) / n_seen)}
                if metric_fns:
                    Z_all = xp.concat(outputs, axis=0)
                    logs.update(self._metric_values(metric_fns, ys[:n_seen, ...], Z_all, from_logits))
                if val is not None:
                    logs.update({f"val_{k}": v for k, v in self._evaluate(val[0], val[1], loss_fn,
                                                                           metric_fns, None).items()})
                self.epochs_trained += 1
                cb.on_epoch_end(epoch, logs)
                history.append(epoch, logs)  # after the callbacks, so what they add (e.g. "lr") is recorded
                if self.stop_training:
                    break
        except KeyboardInterrupt:
            # Ctrl-C between steps: the weights are those of the last finished step; hand back what we have.
            history.interrupted = True
        finally:
            guard.uninstall()
        cb.on_train_end({"history": history})
        return history

    def _metric_values(self, metric_fns: dict, y: Any, Z: Any, from_logits: bool) -> dict[str, float]:
        values = [fn(self.xp, y, Z, from_logits) for fn in metric_fns.values()]
        host = self.backend.to_host(self.xp.stack([self.xp.astype(v, Z.dtype) for v in values]))
        return {name: float(v) for name, v in zip(metric_fns, host, strict=True)}

    # -- inference ----------------------------------------------------------------
    def predict(self, X: Any, batch_size: int | None = None) -> Any:
        """Outputs for X in inference mode (dropout off), as an array on this model's backend."""
        X_d = self._prepare_X(X)
        if batch_size is not None:
            _check_positive_int("batch_size", batch_size)
        if batch_size is None or X_d.shape[0] <= batch_size:
            return self._infer(X_d)
        parts = [self._infer(X_d[s, ...]) for s in batch_slices(X_d.shape[0], batch_size)]
        return self.xp.concat(parts, axis=0)

    def _infer(self, X: Any) -> Any:
        for layer in self.layers:
            X = layer.forward(X, False)
        return X

    def evaluate(self, X: Any, y: Any, loss: Any = None, metrics: Any = None,
                 batch_size: int | None = None) -> dict[str, float]:
        """Loss (with the regularization penalty, as `fit` reports it) and metrics on (X, y)."""
        loss_fn = self._resolve_loss(loss)
        if batch_size is not None:
            _check_positive_int("batch_size", batch_size)
        X_d = self._prepare_X(X)
        y_d = self._prepare_y(y, loss_fn, X_d.shape[0])
        self._check_finite(X_d, "X")  # a NaN loss from NaN data would look like a result
        self._check_finite(y_d, "y")
        return self._evaluate(X_d, y_d, loss_fn, resolve_metrics(metrics), batch_size)

    def _evaluate(self, X: Any, y: Any, loss_fn: Loss, metric_fns: dict, batch_size: int | None) -> dict:
        if X.shape[0] == 0:
            raise ValueError("cannot evaluate on 0 samples")
        n_run, head_loss, from_logits = self._fused_output(loss_fn)
        parts = batch_slices(X.shape[0], batch_size or X.shape[0])
        outs = []
        for part in parts:
            Zp = X[part, ...]
            for layer in self.layers[:n_run]:
                Zp = layer.forward(Zp, False)
            outs.append(Zp)
        Z = outs[0] if len(outs) == 1 else self.xp.concat(outs, axis=0)
        value = head_loss(y, Z, check=False)
        reg = self.penalty()
        if reg is not None:
            value = value + reg
        result = {"loss": self.backend.to_float(value)}
        if metric_fns:
            result.update(self._metric_values(metric_fns, y, Z, from_logits))
        return result


# Bytes of training data above which fit gathers each shuffled batch instead of copying X once an epoch.
_COPY_LIMIT = 16 * 2**20


def _check_positive_int(name: str, value: Any, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _raise_if_not_finite(losses: Any, epoch: int) -> None:
    for b, value in enumerate(losses):
        if not math.isfinite(float(value)):
            raise FloatingPointError(
                f"training loss became {float(value)} at epoch {epoch}, batch {b}; lower the learning rate, "
                "scale the inputs, or pass check_finite=False to keep going"
            )


def rebuild_optimizer(state: dict, params: list[Parameter], source: Backend | None = None) -> Optimizer:
    """An optimizer of the type in `state`, on `params`, carrying that state (arrays may be anywhere)."""
    kind = str(state.get("type", "")).lower()
    if kind not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer type {state.get('type')!r}; known: {sorted(OPTIMIZERS)}")
    opt = OPTIMIZERS[kind](params, **state.get("hyperparams", {}))
    if source is not None:
        state = _state_to_host(state, source)
    opt.load_state_dict(state)
    return opt


def _state_to_host(state: Any, source: Backend) -> Any:
    if isinstance(state, dict):
        return {k: _state_to_host(v, source) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_state_to_host(v, source) for v in state)
    if source.owns(state):
        return source.to_host(state)
    return state
