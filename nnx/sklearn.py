"""scikit-learn estimators backed by nnx: `MLPClassifier` and `MLPRegressor`.

They take the parameters of scikit-learn's own `sklearn.neural_network` estimators
where those mean the same thing, plus `backend`, `dtype` and `dropout`. Input and
output are NumPy arrays whatever the backend, so ``MLPClassifier(backend="cupy")``
drops into a `Pipeline` or `GridSearchCV` unchanged; the data is moved to the
device once per `fit`/`predict`. The trained network is the `model_` attribute,
an `nnx.Sequential`.

Differences from scikit-learn, on purpose:

* The regression loss is the mean squared error, scikit-learn's "half squared error"
  doubled, so `loss_curve_` reads twice as large; `alpha` is rescaled so that the
  objective (and so the fitted model) is the one scikit-learn's gradients minimise
  (for several targets that is the half squared error summed over targets). Likewise
  for multi-label targets, where scikit-learn sums the log-loss over labels.
* `alpha` is the L2 strength as in scikit-learn: the penalty ``alpha / 2 * ||W||^2``
  divided by the number of samples in a step. nnx applies one penalty for the whole
  model, so the divisor is the nominal batch size (the last, shorter batch of an
  epoch is regularised as if it were full) and the full data set for ``"lbfgs"``;
  with `sample_weight`, the nominal batch's weight (batch size times the mean weight),
  where scikit-learn divides by each batch's own sum of weights.

`sample_weight` has scikit-learn's meaning, as in its own MLP: a weight of 2 is the
row repeated. Each step's loss is the weighted mean over its batch (divided by the
batch's sum of weights), so full-batch training ("lbfgs", or a batch that holds all
samples) on weighted rows is the same as on repeated rows; early stopping splits the
weights with the rows and scores the held-out part with its weights.
* Biases start at zero (scikit-learn draws them); weights are Glorot-uniform like it.
* ``"lbfgs"`` runs SciPy's L-BFGS-B on the host, with loss and gradients computed
  on the backend and moved together once per evaluation.
* `solver` also accepts the other nnx optimizers (``"rmsprop"``, ``"adamw"``,
  ``"adagrad"``, ``"momentum"``), driven by `learning_rate_init`.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_array, check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from . import layers as L
from .backends import get_backend
from .callbacks import Callback
from .losses import MSE, BinaryCrossEntropy, CrossEntropy
from .model import Sequential
from .optim import SGD, Adam, get_optimizer, rebuild_optimizer
from .regularizers import L2

__all__ = ["MLPClassifier", "MLPRegressor"]

_ACTIVATIONS = {"identity": L.Identity, "logistic": L.Sigmoid, "tanh": L.Tanh, "relu": L.ReLU,
                "leaky_relu": L.LeakyReLU}
_STOCHASTIC = ("sgd", "adam", "rmsprop", "adamw", "adagrad", "momentum")
_SOLVERS = (*_STOCHASTIC, "lbfgs")
_ROW_BLOCK = 32


class _Monitor(Callback):
    """scikit-learn's per-epoch bookkeeping inside nnx's fit: loss curve, stopping, lr schedules."""

    def __init__(self, est: _BaseMLP, n_train: int, validation: tuple | None) -> None:
        self.est = est
        self.n_train = n_train
        self.validation = validation
        self.converged = False

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        est, model = self.est, self.model
        loss = float(logs["loss"])
        est.n_iter_ += 1
        est.t_ += self.n_train
        est.loss_curve_.append(loss)
        est.loss_ = loss
        opt = model.optimizer
        if est.solver == "sgd" and est.learning_rate == "invscaling":
            opt.lr = est.learning_rate_init / (est.t_ + 1) ** est.power_t
        if est.verbose:
            print(f"Iteration {est.n_iter_}, loss = {loss:.8f}")
        if self.validation is not None:
            score = est._score_model(*self.validation)  # (X_val, y_val, sample_weight_val)
            est.validation_scores_.append(score)
            if est.verbose:
                print(f"Validation score: {score:f}")
            if score < est.best_validation_score_ + est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if score > est.best_validation_score_:
                est.best_validation_score_ = score
                est._best_state = {k: model.xp.asarray(v, copy=True) for k, v in model.state_dict().items()}
        else:
            if loss > est.best_loss_ - est.tol:
                est._no_improvement_count += 1
            else:
                est._no_improvement_count = 0
            if loss < est.best_loss_:
                est.best_loss_ = loss
        if est._no_improvement_count > est.n_iter_no_change:
            what = "Validation score" if self.validation is not None else "Training loss"
            msg = (f"{what} did not improve more than tol={est.tol:f} for {est.n_iter_no_change} "
                   "consecutive epochs.")
            if est.solver == "sgd" and est.learning_rate == "adaptive" and opt.lr > 1e-6:
                opt.lr = opt.lr / 5.0
                est._no_improvement_count = 0
                if est.verbose:
                    print(f"{msg} Setting learning rate to {opt.lr:f}")
                return
            if est.verbose:
                print(f"{msg} Stopping.")
            self.converged = True
            model.stop_training = True


class _BaseMLP(BaseEstimator):
    """Shared parameters, validation, network construction and training of the two estimators."""

    _is_classifier = False

    def __init__(self, hidden_layer_sizes: Any = (100,), activation: str = "relu", *, solver: str = "adam",
                 alpha: float = 0.0001, batch_size: Any = "auto", learning_rate: str = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5, max_iter: int = 200,
                 shuffle: bool = True, random_state: Any = None, tol: float = 1e-4, verbose: bool = False,
                 warm_start: bool = False, momentum: float = 0.9, nesterovs_momentum: bool = True,
                 early_stopping: bool = False, validation_fraction: float = 0.1, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000,
                 backend: Any = "numpy", dtype: str = "float32", dropout: float = 0.0) -> None:
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
        def number(name: str, low: float, high: float = math.inf, low_open: bool = False,
                   high_open: bool = False) -> None:
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
            if not ok:
                interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
                raise ValueError(f"{name} must be a number in {interval}, got {value!r}")

        def integer(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")

        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver must be one of {list(_SOLVERS)}, got {self.solver!r}")
        if self.learning_rate not in ("constant", "invscaling", "adaptive"):
            raise ValueError(f"learning_rate must be 'constant', 'invscaling' or 'adaptive', "
                             f"got {self.learning_rate!r}")
        number("alpha", 0.0)
        number("learning_rate_init", 0.0, low_open=True)
        number("power_t", 0.0)
        number("tol", 0.0)
        number("momentum", 0.0, 1.0)
        number("validation_fraction", 0.0, 1.0, low_open=True, high_open=True)
        number("beta_1", 0.0, 1.0, high_open=True)
        number("beta_2", 0.0, 1.0, high_open=True)
        number("epsilon", 0.0, low_open=True)
        number("dropout", 0.0, 1.0, high_open=True)
        integer("max_iter", 1)
        integer("n_iter_no_change", 1)
        integer("max_fun", 1)
        if not (self.batch_size == "auto" or (isinstance(self.batch_size, numbers.Integral)
                                              and not isinstance(self.batch_size, bool) and self.batch_size >= 1)):
            raise ValueError(f"batch_size must be 'auto' or an int >= 1, got {self.batch_size!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.solver == "lbfgs" and self.dropout > 0:
            raise ValueError("dropout needs a stochastic solver; 'lbfgs' needs a deterministic objective")
        get_backend(self.backend)  # unknown or unavailable backends fail here, naming themselves

    # -- data -----------------------------------------------------------------------------
    def _validate_X(self, X: Any, reset: bool, y: Any = "no_validation") -> Any:
        kwargs = dict(accept_sparse=True, dtype=(np.float64, np.float32), reset=reset)
        if isinstance(y, str) and y == "no_validation":
            X = validate_data(self, X, **kwargs)
            return _dense(X)
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=not self._is_classifier, **kwargs)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        return _dense(X), y

    def _batch(self, n: int) -> int:
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped",
                          stacklevel=3)
        return int(np.clip(self.batch_size, 1, n))

    # -- network ------------------------------------------------------------------------------
    def _build(self, n_features: int, n_outputs: int, seed: int, batch: int) -> Sequential:
        act = _ACTIVATIONS[self.activation]
        layers: list[L.Layer] = []
        width = n_features
        for size in self._hidden_sizes():
            layers += [L.Dense(width, size, init="glorot_uniform"), act()]
            if self.dropout > 0:
                layers.append(L.Dropout(self.dropout))
            width = size
        layers.append(L.Dense(width, n_outputs, init="glorot_uniform"))
        head = {"logistic": L.Sigmoid, "softmax": L.Softmax}.get(self.out_activation_)
        if head is not None:
            layers.append(head())
        return Sequential(*layers, backend=self.backend, dtype=self.dtype, seed=seed,
                          regularizer=self._regularizer(batch, 1.0))

    def _regularizer(self, batch: int, mean_weight: float) -> L2 | None:
        """The L2 penalty for steps of `batch` rows whose weights average `mean_weight`."""
        # scikit-learn's penalty is alpha/2 * ||W||^2 / (the step's sum of weights, its row count
        # without weights) on top of its own loss; nnx's L2(l) is l/2 * ||W||^2 on top of nnx's
        # loss, which is `_loss_scale` times scikit-learn's.
        strength = self.alpha / (batch * mean_weight) * self._loss_scale()
        return L2(strength) if strength > 0 else None

    def _loss_scale(self) -> float:
        """nnx's loss divided by scikit-learn's, for this estimator's output."""
        return 1.0

    def _loss(self, weighted: bool = False) -> Any:
        return MSE(reduction=_reduction(weighted))

    def _optimizer(self, model: Sequential) -> Any:
        params = model.parameters()
        if self.solver == "adam":
            return Adam(params, lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        if self.solver == "sgd":
            return SGD(params, lr=self.learning_rate_init, momentum=self.momentum,
                       nesterov=bool(self.nesterovs_momentum and self.momentum > 0))
        return get_optimizer(self.solver, params, lr=self.learning_rate_init)

    # -- training ---------------------------------------------------------------------------------
    def _fit(self, X: Any, y: Any, sample_weight: Any = None, incremental: bool = False) -> _BaseMLP:
        self._check_params()
        first = not hasattr(self, "model_") or not (self.warm_start or incremental)
        X, y = self._validate_X(X, reset=first, y=y)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X.shape[0])
        y_model = self._encode_targets(y, first=first, incremental=incremental)
        if X.shape[0] < 1:
            raise ValueError("fit needs at least one sample")
        rng = check_random_state(self.random_state)
        batch = self._batch(X.shape[0]) if self.solver != "lbfgs" else X.shape[0]
        if first:
            self.n_outputs_ = n_outputs = self._n_model_outputs(y_model)
            self.n_layers_ = len(self._hidden_sizes()) + 2
            seed = int(rng.randint(np.iinfo(np.int32).max))
            self.model_ = self._build(X.shape[1], n_outputs, seed, batch)
            self.n_iter_ = 0
            self.t_ = 0
            self._optimizer_ = None
            self._no_improvement_count = 0
            for name in ("loss_curve_", "validation_scores_", "best_validation_score_", "best_loss_"):
                self.__dict__.pop(name, None)  # a refit with another solver must not keep stale curves
            # like scikit-learn, only the stochastic solvers keep curves
            if self.solver != "lbfgs" and self.early_stopping and not incremental:
                self.loss_curve_, self.validation_scores_, self.best_validation_score_, self.best_loss_ = \
                    [], [], -np.inf, None
            elif self.solver != "lbfgs":
                self.loss_curve_, self.validation_scores_, self.best_validation_score_, self.best_loss_ = \
                    [], None, None, np.inf
        elif self.solver != "lbfgs":  # warm start or partial_fit: keep the curves, fill in what this run needs
            if not hasattr(self, "loss_curve_"):
                self.loss_curve_, self.validation_scores_, self.best_validation_score_, self.best_loss_ = \
                    [], None, None, np.inf
            if self.early_stopping and not incremental:
                if self.validation_scores_ is None:
                    self.validation_scores_ = []
                if self.best_validation_score_ is None:
                    self.best_validation_score_ = -np.inf
            elif self.best_loss_ is None:
                self.best_loss_ = np.inf
        if self.solver == "lbfgs":
            self.t_ += X.shape[0]
        if not incremental:
            self._no_improvement_count = 0
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, y_model, sample_weight)
        else:
            self._fit_stochastic(X, y, y_model, sample_weight, rng, batch, incremental)
        return self

    @staticmethod
    def _unit_mean(sample_weight: np.ndarray | None, what: str) -> tuple[np.ndarray | None, float]:
        """(weights divided by their mean, that mean); (None, 1.0) without weights."""
        if sample_weight is None:
            return None, 1.0
        mean = float(np.mean(sample_weight))
        if not mean > 0:
            raise ValueError(f"The sample weights of the {what} are all zero; there is nothing to fit. Give some "
                             "of them a non-zero weight or use a different random_state / validation_fraction.")
        # The loss divides each batch by its sum of weights, so this scaling changes no step; it keeps the
        # weights near 1 in float32, and a full batch is right even where a loss divides by the row count.
        return sample_weight / mean, mean

    def _fit_stochastic(self, X: Any, y: Any, y_model: Any, sample_weight: Any, rng: Any, batch: int,
                        incremental: bool) -> None:
        model = self.model_
        if self._optimizer_ is None or not (incremental or self.warm_start):
            self._optimizer_ = self._optimizer(model)
        validation = None
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if self.early_stopping:
            stratify = y if self._is_classifier and np.ndim(y) == 1 else None
            arrays = (X, y_model, y) if sample_weight is None else (X, y_model, y, sample_weight)
            parts = train_test_split(*arrays, random_state=rng, test_size=self.validation_fraction,
                                     stratify=stratify)
            X, X_val, y_model, _, _, y_val = parts[:6]
            sample_weight, w_val = (None, None) if sample_weight is None else parts[6:]
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size "
                                 "of your dataset.")
            validation = (X_val, y_val, w_val)
            batch = self._batch(X.shape[0])
        sample_weight, mean_weight = self._unit_mean(sample_weight, "training set")
        model.regularizer = self._regularizer(batch, mean_weight)
        monitor = _Monitor(self, X.shape[0], validation)
        self._best_state = None
        epochs = 1 if incremental else self.max_iter
        weights = {} if sample_weight is None else {"sample_weight": sample_weight}
        try:
            model.fit(X, y_model, loss=self._loss(sample_weight is not None), optimizer=self._optimizer_, epochs=epochs,
                      batch_size=batch, shuffle=bool(self.shuffle), callbacks=[monitor], **weights)
        except FloatingPointError as exc:
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large "
                             f"values and need to be preprocessed. ({exc})") from exc
        if self.early_stopping and self._best_state is not None:
            model.load_state_dict(self._best_state)
        self._best_state = None
        if not incremental and not monitor.converged and len(model.history) == self.max_iter:
            warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                          "optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)

    def _fit_lbfgs(self, X: Any, y_model: Any, sample_weight: Any) -> None:
        from scipy.optimize import minimize

        model = self.model_
        be, xp = model.backend, model.xp
        loss_fn = model.resolve_loss(self._loss(sample_weight is not None))
        X_d = model.prepare_inputs(X)
        y_d = model.prepare_targets(y_model, loss_fn, X_d.shape[0])
        sample_weight, mean_weight = self._unit_mean(sample_weight, "training set")
        w_d = None if sample_weight is None else be.asarray(sample_weight, dtype=model.dtype,
                                                             argname="sample_weight")
        model.regularizer = self._regularizer(X_d.shape[0], mean_weight)
        params = model.parameters()
        shapes = [p.shape for p in params]
        sizes = [math.prod(s) for s in shapes]

        def set_flat(theta: np.ndarray) -> None:
            start = 0
            for p, shape, size in zip(params, shapes, sizes, strict=True):
                p.value = be.asarray(theta[start:start + size].reshape(shape), dtype=model.dtype)
                start += size

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            set_flat(theta)
            value, _, _ = model.loss_and_grads(X_d, y_d, loss_fn, sample_weight=w_d)
            parts = [xp.reshape(xp.astype(value, X_d.dtype), (1,))] + [xp.reshape(p.grad, (-1,)) for p in params]
            host = np.asarray(be.to_host(xp.concat(parts)), dtype=np.float64)  # one transfer per evaluation
            return float(host[0]), host[1:]

        theta0 = np.concatenate([np.asarray(be.to_host(p.value), dtype=np.float64).ravel() for p in params])
        result = minimize(objective, theta0, method="L-BFGS-B", jac=True,
                          options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        set_flat(result.x)
        for p in params:
            p.grad = None
        if not np.all(np.isfinite(result.x)):
            raise ValueError("Solver produced non-finite parameter weights. The input data may contain large "
                             "values and need to be preprocessed.")
        self.n_iter_ += int(result.nit)
        self.loss_ = float(result.fun)
        model.loss = loss_fn
        if result.status != 0:
            warnings.warn(f"lbfgs failed to converge after {result.nit} iteration(s) (status={result.status}): "
                          f"{result.message}. Increase the number of iterations (max_iter) or scale the data.",
                          ConvergenceWarning, stacklevel=3)

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
    def _forward(self, X: Any) -> np.ndarray:
        """The network's outputs for X as NumPy, in X's float dtype (float32 stays float32, else float64)."""
        check_is_fitted(self, "model_")
        X = self._validate_X(X, reset=False)
        n = X.shape[0]
        # Pad to whole blocks of rows: BLAS picks its kernels by matrix shape, and in float32 a
        # sample's prediction could otherwise change in the last bits with the batch it came in.
        padded = -(-n // _ROW_BLOCK) * _ROW_BLOCK
        if padded != n:
            X = np.concatenate([X, np.zeros((padded - n, X.shape[1]), dtype=X.dtype)])
        model = self.model_
        return np.asarray(model.backend.to_host(model.predict(X)), dtype=X.dtype)[:n]

    @property
    def coefs_(self) -> list[np.ndarray]:
        """The weight matrices, layer by layer, as NumPy arrays (scikit-learn's layout: (in, out))."""
        return [np.array(layer.backend.to_host(layer.weight.value)) for layer in self._dense_layers()]

    @property
    def intercepts_(self) -> list[np.ndarray]:
        """The bias vectors, layer by layer, as NumPy arrays."""
        return [np.array(layer.backend.to_host(layer.bias.value)) for layer in self._dense_layers()]

    def _dense_layers(self) -> list[Any]:
        return [layer for layer in self.model_.layers if isinstance(layer, L.Dense)]

    # -- pickling: backend objects hold modules, so the network travels as plain NumPy ----------
    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state = dict(state)
        model = state.pop("model_", None)
        optimizer = state.pop("_optimizer_", None)
        state.pop("_best_state", None)
        if model is not None:
            be = model.backend
            state["_model_portable"] = {
                "config": model.get_config(),
                "weights": {k: np.array(be.to_host(v)) for k, v in model.state_dict().items()},
                "epochs_trained": model.epochs_trained,
                "shuffle_rng": model.shuffle_rng.bit_generator.state,
                "optimizer": None if optimizer is None else _to_host_tree(optimizer.state_dict(), be),
            }
        return state

    def __setstate__(self, state: dict) -> None:
        portable = state.pop("_model_portable", None)
        super().__setstate__(state)
        if portable is not None:
            model = Sequential.from_config(portable["config"], backend=self.backend)
            model.load_state_dict(portable["weights"])
            model.epochs_trained = portable["epochs_trained"]
            model.shuffle_rng.bit_generator.state = portable["shuffle_rng"]
            self.model_ = model
            self._optimizer_ = None
            if portable["optimizer"] is not None:
                self._optimizer_ = rebuild_optimizer(portable["optimizer"], model.parameters())
                model.optimizer = self._optimizer_

    def _check_solver(self) -> bool:
        """partial_fit exists only for the stochastic solvers, as in scikit-learn."""
        if self.solver not in _STOCHASTIC:
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} is "
                                 "not stochastic.")
        return True

def _to_host_tree(tree: Any, be: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _to_host_tree(v, be) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_host_tree(v, be) for v in tree)
    return np.array(be.to_host(tree)) if be.owns(tree) else tree


def _dense(X: Any) -> Any:
    return X.toarray() if hasattr(X, "toarray") else X


def _reduction(weighted: bool) -> str:
    # With weights, each batch's loss is its weighted mean, as in scikit-learn. Without, the default
    # reduction gives the same value and keeps the losses that backends' fast paths know.
    return "mean_with_sample_weight" if weighted else "sum_over_batch_size"


def _check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray:
    """`sample_weight` as a new float64 array of shape (n_samples,), or ValueError naming what is wrong.

    A number weighs every row alike. Weights must be finite and >= 0, and not all zero (there would be
    nothing to fit): the rules of scikit-learn's estimators.
    """
    if isinstance(sample_weight, numbers.Real) and not isinstance(sample_weight, bool):
        sample_weight = np.full(n_samples, float(sample_weight))
    # a copy, so that nothing here can write into the caller's array
    w = check_array(sample_weight, ensure_2d=False, dtype=np.float64, copy=True, input_name="sample_weight")
    if w.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D with one weight per sample, shape ({n_samples},), "
                         f"got a {w.ndim}-D array of shape {w.shape}")
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight has shape {w.shape}, expected ({n_samples},): one weight per sample")
    if np.any(w < 0):
        raise ValueError("sample_weight must be >= 0, got negative weights")
    if not np.any(w):
        raise ValueError("Sample weights must contain at least one non-zero number; all sample_weight are zero.")
    return w

class MLPClassifier(ClassifierMixin, _BaseMLP):
    """Multi-layer perceptron classifier trained by nnx on any backend, with scikit-learn's interface.

    Binary problems get one sigmoid output, multi-class problems a softmax over the
    classes, multi-label indicator targets one sigmoid per label; the loss is the
    cross-entropy of those. Labels may be of any type (`classes_` holds them sorted).

    Args:
        hidden_layer_sizes: units per hidden layer, e.g. ``(100,)`` or ``(64, 32)``.
        activation: hidden activation: "identity", "logistic", "tanh", "relu" (or "leaky_relu").
        solver: "adam", "sgd", "lbfgs", or another nnx optimizer name ("rmsprop", "adamw", ...).
        alpha: L2 strength, scikit-learn's meaning (see the module docstring).
        batch_size: samples per step; "auto" is min(200, n_samples).
        learning_rate: "constant", "invscaling" or "adaptive" schedule (solver="sgd" only).
        learning_rate_init: the (initial) step size.
        power_t: exponent of the "invscaling" schedule.
        max_iter: epochs (stochastic solvers) or iterations ("lbfgs").
        shuffle: reshuffle the samples every epoch.
        random_state: seeds weights, shuffling, dropout and the early-stopping split.
        tol: improvement below which an epoch counts as "no improvement".
        verbose: print the loss every epoch.
        warm_start: continue from the previous fit's weights.
        momentum, nesterovs_momentum: SGD momentum.
        early_stopping: hold out `validation_fraction` (stratified) and stop when its accuracy
            stalls for `n_iter_no_change` epochs; the best epoch's weights are kept.
        validation_fraction: fraction held out for early stopping.
        beta_1, beta_2, epsilon: Adam's parameters.
        n_iter_no_change: epochs without improvement > `tol` before stopping.
        max_fun: most loss evaluations for "lbfgs".
        backend: the nnx backend to train on ("numpy", "torch", "jax", "cupy", "array_api_strict", ...).
        dtype: "float32" or "float64".
        dropout: inverted-dropout rate after every hidden activation (stochastic solvers).
    """

    _is_classifier = True

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags

    def _encode_targets(self, y: Any, first: bool, incremental: bool) -> Any:
        check_classification_targets(y)
        kind = type_of_target(y)
        if kind == "multilabel-indicator":
            Y = np.asarray(y)
            labels = np.arange(Y.shape[1])
            if first and not incremental:
                self.classes_ = labels
                self._multilabel = True
            elif not getattr(self, "_multilabel", False) or Y.shape[1] != len(self.classes_):
                raise ValueError(f"y has {Y.shape[1]} labels but the estimator was fitted on {self.classes_}")
            self.out_activation_ = "logistic"
            return Y.astype(self.dtype)
        if kind not in ("binary", "multiclass"):
            raise ValueError(f"Unknown label type: {kind!r}")
        y = np.asarray(y)
        found = unique_labels(y)
        if first:
            partial = getattr(self, "_partial_classes", None)
            self.classes_ = partial if incremental and partial is not None else found
        elif getattr(self, "_multilabel", False):
            raise ValueError("the estimator was fitted on multi-label targets, y is a label vector")
        elif self.warm_start and not incremental and set(found) != set(self.classes_):
            raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                             f"previous call to fit. Previously got {self.classes_}, `y` has {found}")
        if np.setdiff1d(found, self.classes_).size:
            raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                             f"'y' has {found}.")
        self._multilabel = False
        if len(self.classes_) < 2:
            raise ValueError("MLPClassifier needs samples of at least 2 classes in the data, but the data "
                             f"contains only one class: {self.classes_[0]!r}")
        self.out_activation_ = "logistic" if len(self.classes_) == 2 else "softmax"
        index = np.searchsorted(self.classes_, y)
        return index.astype(self.dtype) if len(self.classes_) == 2 else index.astype(np.int64)

    def _multiclass(self) -> bool:
        return len(self.classes_) > 2 and not self._multilabel

    def _n_model_outputs(self, y_model: Any) -> int:
        return len(self.classes_) if self._multiclass() else (1 if y_model.ndim == 1 else y_model.shape[1])

    def _loss(self, weighted: bool = False) -> Any:
        if self.out_activation_ == "softmax":
            return CrossEntropy(from_logits=False, reduction=_reduction(weighted))
        return BinaryCrossEntropy(reduction=_reduction(weighted))

    def _loss_scale(self) -> float:
        # scikit-learn sums the binary log-loss over labels; nnx's BCE averages over them
        return 1.0 / self.n_outputs_ if getattr(self, "_multilabel", False) else 1.0

    def _score_model(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        from sklearn.metrics import accuracy_score

        # subset accuracy for multi-label targets, as score() computes it
        return float(accuracy_score(y, self._labels(self._proba_raw(X)), sample_weight=sample_weight))

    def _proba_raw(self, X: Any) -> np.ndarray:
        model = self.model_
        return np.asarray(model.backend.to_host(model.predict(X)))

    def _labels(self, out: np.ndarray) -> np.ndarray:
        if self._multilabel:
            return (out > 0.5).astype(int)
        if out.shape[1] == 1:
            return self.classes_[(out[:, 0] > 0.5).astype(int)]
        return self.classes_[np.argmax(out, axis=1)]

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPClassifier:
        """Train on X (n_samples, n_features) and labels y (n_samples,) or indicators (n_samples, n_labels).

        `sample_weight` (n_samples,) weighs the rows, scikit-learn's way: a weight of 2 is the row repeated.
        """
        self._partial_classes = None
        return self._fit(X, y, sample_weight)

    @available_if(_BaseMLP._check_solver)
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None, classes: Any = None) -> MLPClassifier:
        """One epoch over (X, y), rows weighted by `sample_weight`; the first call needs `classes`, every label."""
        if not hasattr(self, "model_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self._partial_classes = unique_labels(classes)
        elif classes is not None and not np.array_equal(unique_labels(classes), self.classes_):
            raise ValueError(f"`classes={list(classes)}` is not the same as on the first call to partial_fit "
                             f"(classes_ = {list(self.classes_)}).")
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X: Any) -> np.ndarray:
        """Predicted labels (or label indicators for multi-label targets), as NumPy."""
        return self._labels(self._forward(X))

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n_samples, n_classes), columns in `classes_` order."""
        out = self._forward(X)
        if out.shape[1] == 1 and not self._multilabel:
            return np.hstack([1.0 - out, out])
        return out

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """The log of `predict_proba`."""
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by nnx on any backend, with scikit-learn's interface.

    A linear output layer with one unit per target and the mean squared error;
    several targets (y of shape (n_samples, n_targets)) are fitted jointly.
    Parameters as in `MLPClassifier`; with `early_stopping` the held-out score is R^2.
    """

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _encode_targets(self, y: Any, first: bool, incremental: bool) -> Any:
        y = np.asarray(y, dtype=self.dtype)
        if first:
            self._y_ndim = y.ndim
            self.out_activation_ = "identity"
        else:
            width = 1 if y.ndim == 1 else y.shape[1]
            if width != self.n_outputs_:
                raise ValueError(f"y has {width} targets but the estimator was fitted on {self.n_outputs_}")
        return y

    def _loss_scale(self) -> float:
        # scikit-learn's gradient is that of half the squared error summed over targets and averaged
        # over samples; nnx's MSE averages over both, which is 2 / n_targets times that
        return 2.0 / self.n_outputs_

    def _score_model(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        from sklearn.metrics import r2_score

        pred = np.asarray(self.model_.backend.to_host(self.model_.predict(X)))
        return float(r2_score(y, pred.reshape(np.shape(y)), sample_weight=sample_weight))

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """Train on X (n_samples, n_features) and targets y (n_samples,) or (n_samples, n_targets).

        `sample_weight` (n_samples,) weighs the rows, scikit-learn's way: a weight of 2 is the row repeated.
        """
        return self._fit(X, y, sample_weight)

    @available_if(_BaseMLP._check_solver)
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over (X, y), rows weighted by `sample_weight`, continuing from the current weights."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X: Any) -> np.ndarray:
        """Predictions as NumPy: shape (n_samples,) when fitted on a 1-D y, else (n_samples, n_targets)."""
        out = self._forward(X)
        return out[:, 0] if self._y_ndim == 1 else out
