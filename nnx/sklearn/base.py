"""What the two estimators share: parameters and their checks, data validation, the network, inference, weights."""

from __future__ import annotations

import importlib
import math
import numbers
import operator
import pickle
import warnings
from typing import Any, cast

import array_api_compat
import numpy as np
from sklearn import get_config
from sklearn.base import BaseEstimator
from sklearn.utils import check_array
from sklearn.utils.validation import check_consistent_length, check_is_fitted, column_or_1d, validate_data

from .. import _validate as check
from .. import layers as L
from ..backends import Backend, BackendUnavailableError, dtype_name, get_backend, host_fallback
from ..losses import MSE
from ..model import Sequential
from ..optim import get_optimizer, rebuild_optimizer
from .arrays import dense, describe, host, io_of, reduction, to_host_tree, to_namespace
from .optimizers import OptimizerView, SklearnAdam, SklearnSGD
from .poisson import Exp

HIDDEN_ACTIVATIONS = ("identity", "logistic", "tanh", "relu", "leaky_relu")  # scikit-learn's, and leaky_relu
STOCHASTIC = ("sgd", "adam", "rmsprop", "adamw", "adagrad", "momentum")
SOLVERS = (*STOCHASTIC, "lbfgs")
_ROW_BLOCK = 32
_ARRAYS = {"coefs_": "weight", "intercepts_": "bias"}


class MLPBase(BaseEstimator):
    """Shared parameters, their checks, data validation, network, inference and pickling of the two estimators."""

    _is_classifier = False
    out_activation_: str  # set by the subclasses' target encoding in fit (declared here for type checkers)

    def __init__(self, hidden_layer_sizes: Any = (100,), activation: str = "relu", *, solver: str = "adam",
                 alpha: float = 0.0001, batch_size: Any = "auto", learning_rate: str = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5, max_iter: int = 200,
                 shuffle: bool = True, random_state: Any = None, tol: float = 1e-4, verbose: bool = False,
                 warm_start: bool = False, momentum: float = 0.9, nesterovs_momentum: bool = True,
                 early_stopping: bool = False, validation_fraction: float = 0.1, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: Any = 10, max_fun: int = 15000,
                 backend: Any = None, dtype: Any = None, dropout: float = 0.0) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.dtype = dtype
        self.dropout = dropout

    # -- tags -------------------------------------------------------------------------
    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # accepted and densified: an MLP multiplies dense matrices anyway
        tags.array_api_support = True
        return tags

    # -- parameter checks (in fit, as scikit-learn wants: __init__ only stores) ----------------
    def _hidden_sizes(self) -> list[int]:
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral) and not isinstance(sizes, bool):
            sizes = [sizes]
        try:
            sizes = list(sizes)
        except TypeError:
            raise ValueError(f"hidden_layer_sizes must be an int or a sequence of ints, got {sizes!r}") from None
        for s in sizes:
            if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s <= 0:
                raise ValueError(f"hidden_layer_sizes must be > 0, got {self.hidden_layer_sizes!r}")
        return [int(s) for s in sizes]

    def _check_params(self) -> None:
        check.one_of("activation", self.activation, sorted(HIDDEN_ACTIVATIONS))
        check.one_of("solver", self.solver, SOLVERS)
        check.one_of("learning_rate", self.learning_rate, ("constant", "invscaling", "adaptive"))
        for name in ("alpha", "power_t", "tol"):
            check.non_negative(name, getattr(self, name))
        for name in ("learning_rate_init", "epsilon"):
            check.positive(name, getattr(self, name))
        for name in ("validation_fraction", "beta_1", "beta_2", "dropout"):
            check.probability(name, getattr(self, name))
        check.real("momentum", self.momentum, 0.0, 1.0)
        # read as conditions: a string such as "no" would otherwise be true (np.bool_ is no Integral: as bool)
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping"):
            value = getattr(self, name)
            check.flag(name, bool(value) if isinstance(value, np.bool_) else value)
        if not isinstance(self.verbose, (bool, np.bool_)):
            check.integer("verbose (a bool or an int)", self.verbose, low=0)
        check.positive_int("max_iter", self.max_iter)
        check.positive_int("max_fun", self.max_fun)
        if self.n_iter_no_change != math.inf:
            check.positive_int("n_iter_no_change (an int or inf)", self.n_iter_no_change)
        if not (self.batch_size == "auto" or (isinstance(self.batch_size, numbers.Integral)
                                              and not isinstance(self.batch_size, bool)
                                              and cast(int, self.batch_size) >= 1)):
            raise ValueError(f"batch_size must be 'auto' or an int >= 1, got {self.batch_size!r}")
        if self.dtype is not None and dtype_name(self.dtype) not in ("float32", "float64"):
            # as nnx.Sequential takes it: a name or a dtype object (np.float32, torch.float64)
            raise ValueError(f"dtype must be None (the data's), 'float32' or 'float64', got {self.dtype!r}")
        if self.solver == "lbfgs" and self.dropout > 0:
            raise ValueError("dropout needs a stochastic solver; 'lbfgs' needs a deterministic objective")
        if self.backend is not None:
            get_backend(self.backend)  # unknown or unavailable backends fail here, naming themselves

    # -- data -----------------------------------------------------------------------------
    def _validate_X(self, X: Any, reset: bool, y: Any = "no_validation") -> Any:
        """X validated (kept in its namespace under array-API dispatch, else NumPy), and y as NumPy."""
        io = io_of(X)
        if io is None:
            # another library's array read on the host as its nnx backend reads it (torch's bfloat16 as float32,
            # which NumPy has no dtype for: scikit-learn's own conversion failed there, "unsupported ScalarType")
            X = host(X)
        dtype = (np.float64, np.float32) if io is None else (io[0].float64, io[0].float32)
        kwargs: dict[str, Any] = dict(accept_sparse=True, dtype=dtype, reset=reset)
        if isinstance(y, str) and y == "no_validation":
            return dense(validate_data(self, X, **kwargs))
        y = host(y)  # labels and targets are small: read on the host once (label encoding needs them there)
        if io is None:
            X, y = validate_data(self, X, y, multi_output=True, y_numeric=not self._is_classifier, **kwargs)
        else:
            X = validate_data(self, X, **kwargs)
            # scikit-learn leaves dtype unannotated: pyright infers `str` from its default "numeric"
            y = check_array(y, ensure_2d=False, dtype=None, input_name="y")  # pyright: ignore[reportArgumentType]
            if not self._is_classifier and y.dtype.kind == "O":
                y = y.astype(np.float64)
            check_consistent_length(X, y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return dense(X), y

    def _batch(self, n: int) -> int:
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped",
                          stacklevel=5)  # the caller of fit/partial_fit
        return int(np.clip(self.batch_size, 1, n))

    # -- network ------------------------------------------------------------------------------
    def _build(self, X: Any, n_outputs: int, rs: np.random.RandomState, io: Any, assigned: bool) -> Sequential:
        """The network with scikit-learn's initial weights drawn from `rs` in its order, or the assigned ones.

        `assigned`: take `coefs_` and `intercepts_` as the user set them on the unfitted estimator
        (scikit-learn continues from those in `partial_fit` and warm starts) and draw nothing.
        """
        dtype = dtype_name(self.dtype) if self.dtype is not None \
            else "float32" if str(X.dtype).endswith("float32") else "float64"
        backend = self.backend if self.backend is not None else (get_backend(X) if io is not None else "numpy")
        act = L.ACTIVATIONS[self.activation]
        units = [X.shape[1], *self._hidden_sizes(), n_outputs]
        layers: list[L.Layer] = []
        dense_at: list[int] = []
        for i, (fan_in, fan_out) in enumerate(zip(units[:-1], units[1:], strict=True)):
            dense_at.append(len(layers))
            layers.append(L.Dense(fan_in, fan_out, init="glorot_uniform"))
            if i < len(units) - 2:
                layers.append(act())
                if self.dropout > 0:
                    layers.append(L.Dropout(self.dropout))
        if self.out_activation_ == "exp":  # the Poisson regressor's output, not an activation of nnx's table
            layers.append(Exp())
        elif self.out_activation_ != "identity":
            layers.append(L.ACTIVATIONS[self.out_activation_]())
        state = self._assigned_state(units, dense_at) if assigned else {}
        # scikit-learn's _init_coef: Glorot-uniform bounds (sqrt(2/...) for logistic units), weights
        # then intercepts, layer by layer, drawn in float64 and cast to the data's dtype
        factor = 2.0 if self.activation == "logistic" else 6.0
        for index, fan_in, fan_out in zip(dense_at, units[:-1], units[1:], strict=True):
            if assigned:
                continue
            bound = np.sqrt(factor / (fan_in + fan_out))
            state[f"{index}.weight"] = rs.uniform(-bound, bound, (fan_in, fan_out))
            state[f"{index}.bias"] = rs.uniform(-bound, bound, fan_out)
        # dropout's own stream (scikit-learn has none), drawn after everything scikit-learn draws at init
        seed = int(rs.randint(np.iinfo(np.int32).max)) if self.dropout > 0 else 0
        model = Sequential(*layers, backend=backend, dtype=dtype, seed=seed)
        model.load_state_dict({k: v.astype(dtype) for k, v in state.items()})
        return model

    def _check_continuation(self) -> None:
        """ValueError when hidden_layer_sizes, activation, dropout, backend or dtype no longer describe the
        fitted network.

        A warm start or `partial_fit` continues `model_` as it was built; a changed parameter would
        otherwise be ignored without a word.
        """
        layers = self.model_.layers
        dense = [layer for layer in layers if isinstance(layer, L.Dense)]
        fitted: dict[str, Any] = {"hidden_layer_sizes": [layer.out_features for layer in dense[:-1]]}
        wanted: dict[str, Any] = {"hidden_layer_sizes": self._hidden_sizes()}
        if len(dense) > 1:  # a network without hidden layers has no hidden activation to change
            fitted["activation"] = type(layers[layers.index(dense[0]) + 1])
            wanted["activation"] = L.ACTIVATIONS[self.activation]
        rates = [layer.rate for layer in layers if isinstance(layer, L.Dropout)]
        fitted["dropout"], wanted["dropout"] = (rates[0] if rates else 0.0), float(self.dropout)
        # None follows the data at a first fit; a value given later must be where the network is
        if self.backend is not None:
            fitted["backend"], wanted["backend"] = self.model_.backend, get_backend(self.backend)
        if self.dtype is not None:
            fitted["dtype"], wanted["dtype"] = self.model_.dtype, dtype_name(self.dtype)
        for name, value in fitted.items():
            if value != wanted[name]:
                was = next(n for n in HIDDEN_ACTIVATIONS if L.ACTIVATIONS[n] is value) if name == "activation" \
                    else value.spec if name == "backend" else value
                raise ValueError(f"{name}={getattr(self, name)!r} does not match the fitted network ({name} "
                                 f"{was!r}), which warm_start and partial_fit continue; set it back, or fit "
                                 "with warm_start=False to train a new network")

    def _assigned_state(self, units: list[int], dense_at: list[int]) -> dict[str, np.ndarray]:
        """The assigned `coefs_`/`intercepts_` as a state dict for a network of `units`, or ValueError on a misfit."""
        arrays = {name: self.__dict__.get("_assigned_" + name) for name in _ARRAYS}
        missing = [name for name, value in arrays.items() if value is None]
        if missing:
            raise ValueError(f"{missing[0]} must be assigned too: continuing from assigned weights needs both "
                             "coefs_ and intercepts_")
        state: dict[str, np.ndarray] = {}
        for name, which in _ARRAYS.items():
            given = list(cast(Any, arrays[name]))
            if len(given) != len(dense_at):
                raise ValueError(f"{name} has {len(given)} arrays but hidden_layer_sizes="
                                 f"{self.hidden_layer_sizes!r} makes a network of {len(dense_at)} layers")
            for i, (index, a) in enumerate(zip(dense_at, given, strict=True)):
                want = (units[i], units[i + 1]) if which == "weight" else (units[i + 1],)
                value = np.asarray(host(a), dtype=np.float64)
                if value.shape != want:
                    raise ValueError(f"{name}[{i}] has shape {value.shape} but the network for "
                                     f"{units[0]} features, hidden_layer_sizes={self.hidden_layer_sizes!r} and "
                                     f"{units[-1]} outputs needs {want}")
                state[f"{index}.{which}"] = value
        return state

    def _on_model(self, a: Any) -> Any:
        """`a` as a batch on the model's backend, in its dtype (moved through the host from another library)."""
        model = self.model_
        if not isinstance(a, np.ndarray) and not model.backend.owns(a):
            a = host(a)
        return model.prepare_inputs(a)

    def _loss(self, weighted: bool = False) -> Any:
        return MSE(reduction=reduction(weighted))

    def _training_loss(self, weighted: bool = False) -> Any:
        """The loss the training step takes: `_loss`, unless the output layer folds into it (see `output_head`)."""
        return self._loss(weighted)

    def _scales(self) -> tuple[float, float]:
        """(scikit-learn's loss / nnx's loss, scikit-learn's gradient / nnx's gradient) for this output."""
        return 1.0, 1.0

    def _new_optimizer(self, model: Sequential) -> Any:
        params = model.parameters()
        if self.solver == "adam":
            return SklearnAdam(params, lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        if self.solver == "sgd":
            return SklearnSGD(params, lr=self.learning_rate_init, momentum=self.momentum,
                              nesterov=bool(self.nesterovs_momentum))
        # the estimator's optimizer parameters that mean the same for nnx's own solvers
        options: dict[str, Any] = {"momentum": {"momentum": self.momentum},
                                   "adamw": {"betas": (self.beta_1, self.beta_2), "eps": self.epsilon},
                                   "rmsprop": {"eps": self.epsilon},
                                   "adagrad": {"eps": self.epsilon}}.get(self.solver, {})
        return get_optimizer(self.solver, params, lr=self.learning_rate_init, **options)

    # -- hooks the subclasses fill in -----------------------------------------------------------
    def _encode_targets(self, y: Any, first: bool, incremental: bool) -> Any:
        raise NotImplementedError

    def _multiclass(self) -> bool:
        return False

    def _n_model_outputs(self, y_model: Any) -> int:
        return 1 if y_model.ndim == 1 else y_model.shape[1]

    def _score_model(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        raise NotImplementedError

    # -- inference ------------------------------------------------------------------------------
    def _check_namespace(self, X: Any, io: Any, method: str) -> None:
        """Under array-API dispatch, X must come from the namespace and device the estimator was fitted on."""
        if not get_config()["array_api_dispatch"]:
            return
        fitted = getattr(self, "_fit_io", None)
        if isinstance(fitted, str):  # unpickled: the fit's namespace is not known any more
            return
        if io is None and fitted is None:
            return
        if io is not None and fitted is not None and io[0] is fitted[0] and str(io[1]) == str(fitted[1]):
            return
        raise ValueError(f"Inputs passed to {type(self).__name__}.{method}() must use the same namespace and the "
                         f"same device as those passed to fit(). fit() got {describe(fitted)}, {method}() got "
                         f"{describe(io)}.")

    def _forward(self, X: Any, method: str) -> Any:
        """The network's outputs for X, in X's float dtype: NumPy, or X's namespace and device under dispatch."""
        check_is_fitted(self, "model_")
        io = io_of(X)
        self._check_namespace(X, io, method)
        X = self._validate_X(X, reset=False)
        model = self.model_
        if io is not None:
            return to_namespace(model.predict(self._on_model(X)), io, X.dtype)
        n = X.shape[0]
        # Pad to whole blocks of rows: BLAS picks its kernels by matrix shape, and in float32 a
        # sample's prediction could otherwise change in the last bits with the batch it came in.
        padded = -(-n // _ROW_BLOCK) * _ROW_BLOCK
        if padded != n:
            X = np.concatenate([X, np.zeros((padded - n, X.shape[1]), dtype=X.dtype)])
        return np.asarray(model.backend.to_host(model.predict(X)), dtype=X.dtype)[:n]

    # -- the weights under scikit-learn's names ---------------------------------------------------
    @property
    def coefs_(self) -> list[Any]:
        """The weight matrices, layer by layer (scikit-learn's layout: (in, out)); NumPy, or the fit's namespace.

        Assigning the list, or one item of it, writes into the network; before the first fit the
        assigned list is kept as given and `partial_fit` or a warm start continues from it.
        """
        return self._arrays("coefs_")

    @coefs_.setter
    def coefs_(self, value: Any) -> None:
        self._assign("coefs_", value)

    @property
    def intercepts_(self) -> list[Any]:
        """The bias vectors, layer by layer; NumPy, or the fit's namespace. Assignable as `coefs_` is."""
        return self._arrays("intercepts_")

    @intercepts_.setter
    def intercepts_(self, value: Any) -> None:
        self._assign("intercepts_", value)

    def _arrays(self, name: str) -> list[Any]:
        if "model_" not in self.__dict__:
            assigned = self.__dict__.get("_assigned_" + name)
            if assigned is None:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            return assigned
        which = _ARRAYS[name]
        return _LayerArrays(self, name, [self._fitted_array(getattr(layer, which).value)
                                         for layer in self._dense_layers()])

    def _assign(self, name: str, value: Any) -> None:
        if "model_" not in self.__dict__:
            if isinstance(value, _LayerArrays):  # another estimator's view: its items would write into that network
                value = list(value)
            self.__dict__["_assigned_" + name] = value  # kept as given: scikit-learn's tests fill it in item by item
            return
        arrays = list(value)
        if len(arrays) != len(self._dense_layers()):
            raise ValueError(f"{name} must hold {len(self._dense_layers())} arrays, one per layer, got {len(arrays)}")
        for i, a in enumerate(arrays):
            self._set_layer_array(name, i, a)

    def _set_layer_array(self, name: str, i: int, value: Any) -> None:
        """Write `value` into layer i's weight (`coefs_`) or bias (`intercepts_`), checking its shape."""
        model = self.model_
        layers = self._dense_layers()
        if not -len(layers) <= i < len(layers):
            raise IndexError(f"{name} has {len(layers)} arrays, got index {i}")
        which = _ARRAYS[name]
        shape = tuple(getattr(layers[i], which).value.shape)
        value = np.asarray(host(value))
        if value.shape != shape:
            raise ValueError(f"{name}[{i}] must have shape {shape}, got {value.shape}")
        state = model.state_dict()
        state[f"{model.layers.index(layers[i])}.{which}"] = value
        model.load_state_dict(state)

    def _fitted_array(self, value: Any) -> Any:
        io = getattr(self, "_fit_io", None)
        if isinstance(io, tuple):
            return to_namespace(value, io, None)
        out = np.array(self.model_.backend.to_host(value))
        out.flags.writeable = False  # a copy: an in-place edit would silently miss the network, so it raises
        return out

    def _dense_layers(self) -> list[Any]:
        return [layer for layer in self.model_.layers if isinstance(layer, L.Dense)]

    @property
    def _optimizer(self) -> OptimizerView:
        """scikit-learn's `_optimizer` attribute, read-only: ``_optimizer.learning_rate`` (stochastic solvers)."""
        optimizer = self.__dict__.get("_optimizer_")
        if optimizer is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute '_optimizer' (it exists after a "
                                 "fit with a stochastic solver)")
        return OptimizerView(optimizer)

    # -- pickling: backend objects hold modules, so the network travels as plain NumPy ----------
    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        optimizer = state.pop("_optimizer_", None)
        if isinstance(state.get("_fit_io"), tuple):  # a namespace module does not pickle: it travels by name
            state["_fit_io"] = _PickledIO(*state["_fit_io"])
        if isinstance(state.get("backend"), Backend):  # backend=nnx.get_backend(...): it holds a module too
            state["backend"] = _PickledBackend(state["backend"].spec, state["backend"].fastpath_enabled)
        if model is not None:
            be = model.backend
            if state.get("_best_state") is not None:
                state["_best_state"] = to_host_tree(state["_best_state"], be)
            state["_model_portable"] = {
                "config": model.get_config(),
                "backend": be.spec,
                "weights": {k: np.array(be.to_host(v)) for k, v in model.state_dict().items()},
                "epochs_trained": model.epochs_trained,
                "shuffle_rng": model.shuffle_rng.bit_generator.state,
                # where dropout's masks are: a copy that trains on must not replay them from the seed
                "dropout_rng": model.dropout_rng.get_state(),
                "optimizer": None if optimizer is None else to_host_tree(optimizer.state_dict(), be),
            }
        return state

    def __setstate__(self, state: dict) -> None:
        portable = state.pop("_model_portable", None)
        if isinstance(state.get("backend"), _PickledBackend):
            try:
                state["backend"] = state["backend"].resolve()
            except BackendUnavailableError:
                state["backend"] = state["backend"].spec  # as valid a parameter; a fit there says it cannot run
        if isinstance(state.get("_fit_io"), _PickledIO):
            state["_fit_io"] = state["_fit_io"].resolve()
        super().__setstate__(state)
        if portable is not None:
            backend = _loadable(portable.get("backend", self.backend if self.backend is not None else "numpy"))
            model = Sequential.from_config(portable["config"], backend=backend)
            model.load_state_dict(portable["weights"])
            model.epochs_trained = portable["epochs_trained"]
            model.shuffle_rng.bit_generator.state = portable["shuffle_rng"]
            dropout_rng = portable.get("dropout_rng")  # absent from pickles made before it was kept
            if dropout_rng is not None and model.dropout_rng.accepts(dropout_rng):
                model.dropout_rng.set_state(dropout_rng)
            self.model_ = model
            self._optimizer_ = None
            if portable["optimizer"] is not None:
                self._optimizer_ = rebuild_optimizer(portable["optimizer"], model.parameters())
                model.optimizer = self._optimizer_

    def _check_solver(self) -> bool:
        """partial_fit exists only for the stochastic solvers, as in scikit-learn."""
        if self.solver not in STOCHASTIC:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} is "
                                 "not stochastic.")
        return True


def _loadable(spec: Any) -> Any:
    """Where a pickled network loads: its own backend, or, where that cannot run (fitted on a GPU, unpickled
    without one), the same library on the host (NumPy for CuPy), with a warning. Its weights travel as NumPy
    arrays, so nothing is lost; only a fit asked of the unavailable backend fails."""
    try:
        get_backend(spec)
        return spec
    except BackendUnavailableError as exc:
        reason = exc
    host_spec = host_fallback(spec)
    warnings.warn(f"this estimator's network was fitted on backend {spec!r}, which cannot run here ({reason}); "
                  f"it is loaded on {host_spec!r} instead", UserWarning, stacklevel=3)
    return host_spec


class _PickledBackend:
    """A `Backend` given as the `backend` parameter, pickled as its spec and fast-path setting."""

    def __init__(self, spec: str, fastpath: bool) -> None:
        self.spec = spec
        self.fastpath = fastpath

    def resolve(self) -> Backend:
        backend = get_backend(self.spec)
        return backend if backend.fastpath_enabled == self.fastpath else backend.with_fastpath(self.fastpath)


class _PickledIO:
    """The (namespace, device) of an array-API fit, pickled as the namespace's module name and the device.

    Restored, the estimator answers in that namespace and on that device again (`coefs_`, `predict`), and still
    refuses inputs from another, as scikit-learn's own estimators do after a copy.
    """

    def __init__(self, xp: Any, device: Any) -> None:
        self.namespace = xp.__name__
        self.device_name = str(device)
        try:  # torch's and array_api_strict's devices pickle; JAX's do not, and are found again by name
            self.device = pickle.loads(pickle.dumps(device))
        except Exception:
            self.device = None

    def resolve(self) -> Any:
        """(namespace, device) again, or "unknown" where that namespace or device cannot be found here."""
        try:
            xp = importlib.import_module(self.namespace)
        except ImportError:
            return "unknown"
        if self.device is not None:
            return xp, self.device
        default = array_api_compat.device(xp.asarray(0))
        return (xp, default) if str(default) == self.device_name else "unknown"


class _LayerArrays(list):
    """`coefs_` or `intercepts_` of a fitted estimator: assigning an item writes that layer's array into the network."""

    def __init__(self, owner: MLPBase, name: str, arrays: list[Any]) -> None:
        super().__init__(arrays)
        self._owner = owner
        self._name = name

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, slice):
            raise TypeError(f"assign {self._name}[i] one layer at a time, or the whole {self._name} list")
        i = operator.index(index)
        # (the estimator's own helpers, in this module: this list is its view of coefs_ or intercepts_)
        self._owner._set_layer_array(self._name, i, value)
        super().__setitem__(i, self._owner._arrays(self._name)[i])

    def __reduce__(self) -> Any:
        return list, (list(self),)  # pickled and copied as the plain list it shows, without the estimator
