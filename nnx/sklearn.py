"""scikit-learn estimators backed by nnx: `MLPClassifier` and `MLPRegressor`.

They take the parameters of scikit-learn's own `sklearn.neural_network` estimators,
plus `backend`, `dtype` and `dropout`, and reproduce its numbers: the same initial
weights and intercepts drawn from `random_state`, the same shuffles and batches,
scikit-learn's loss scale (half squared error; log-loss summed over labels), its L2
term ``alpha / 2 * ||W||^2`` divided by each batch's size (or sum of weights), its
own SGD and Adam (`SklearnSGD`, `SklearnAdam`) with its learning-rate schedules, and
its bookkeeping of `loss_curve_`, `n_iter_`, `t_` and convergence. In float64 (the
default for float64 data, as in scikit-learn) `coefs_`, `intercepts_` and
`loss_curve_` equal scikit-learn's to rounding; docs/sklearn.md says where and why
they can still differ.

Input and output are NumPy arrays by default, whatever the backend, so
``MLPClassifier(backend="cupy")`` drops into a `Pipeline` unchanged. With
scikit-learn's array-API dispatch on (``SCIPY_ARRAY_API=1`` and
``sklearn.config_context(array_api_dispatch=True)``), data stays in its namespace
and on its device: the network runs on the nnx backend of `X` (unless `backend`
names another) and `predict`/`predict_proba` return arrays of `X`'s kind. The
trained network is the `model_` attribute, an `nnx.Sequential`.

Beyond scikit-learn: `solver` also accepts the other nnx optimizers (``"rmsprop"``,
``"adamw"``, ``"adagrad"``, ``"momentum"``), driven by `learning_rate_init`, and
`dropout` adds inverted dropout after every hidden activation.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

import array_api_compat
import numpy as np
from sklearn import get_config
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_array, check_random_state, gen_batches
from sklearn.utils import shuffle as sk_shuffle
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels
from sklearn.utils.validation import check_consistent_length, check_is_fitted, column_or_1d, validate_data

from . import layers as L
from .backends import get_backend
from .losses import MSE, BinaryCrossEntropy, CrossEntropy
from .model import Sequential
from .optim import Optimizer, get_optimizer, rebuild_optimizer
from .training import GradientTransform, TrainStep

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["MLPClassifier", "MLPRegressor", "SklearnAdam", "SklearnSGD"]

_ACTIVATIONS = {"identity": L.Identity, "logistic": L.Sigmoid, "tanh": L.Tanh, "relu": L.ReLU,
                "leaky_relu": L.LeakyReLU}
_STOCHASTIC = ("sgd", "adam", "rmsprop", "adamw", "adagrad", "momentum")
_SOLVERS = (*_STOCHASTIC, "lbfgs")
_ROW_BLOCK = 32


# -- scikit-learn's optimizers, as nnx optimizers ------------------------------------------------------------

class SklearnSGD(Optimizer):
    """scikit-learn's `SGDOptimizer` update: ``v = momentum*v - lr*g``; ``p += v`` (Nesterov: ``momentum*v - lr*g``).

    Args:
        params: the parameters to update.
        lr: learning rate (> 0); scikit-learn's schedules set `lr` between epochs.
        momentum: momentum in [0, 1].
        nesterov: use Nesterov's momentum.
    """

    # hyper-parameters, set by Optimizer.__init__ (declared here for type checkers)
    momentum: float
    nesterov: bool

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9, nesterov: bool = True) -> None:
        super().__init__(params, lr, momentum=momentum, nesterov=nesterov)

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        return {**Optimizer._check(hp), "momentum": float(hp["momentum"]), "nesterov": bool(hp["nesterov"])}

    elementwise = True

    def init_state(self, xp: Any, value: Any) -> dict[str, Any]:
        return {"velocity": xp.zeros_like(value)}

    def update(self, xp: Any, value: Any, grad: Any, state: dict[str, Any], step: Any,
               lr: Any) -> tuple[Any, dict[str, Any]]:
        # the operations, in their order, of scikit-learn's SGDOptimizer._get_updates
        velocity = self.momentum * state["velocity"] - lr * grad
        update = self.momentum * velocity - lr * grad if self.nesterov else velocity
        return value + update, {"velocity": velocity}


class SklearnAdam(Optimizer):
    """scikit-learn's `AdamOptimizer` update, which differs from torch's Adam in where eps enters.

    ``lr_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)``; ``p -= lr_t * m / (sqrt(v) + eps)``
    (torch adds eps to ``sqrt(v / (1 - beta2**t))`` instead).

    Args:
        params: the parameters to update.
        lr: learning rate (> 0).
        betas: decay rates of the first and second moments, each in [0, 1).
        eps: added to ``sqrt(v)`` (> 0).
    """

    # hyper-parameters, set by Optimizer.__init__ (declared here for type checkers)
    betas: tuple[float, float]
    eps: float

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(params, lr, betas=betas, eps=eps)

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        b1, b2 = (float(b) for b in hp["betas"])
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"betas must lie in [0, 1), got {hp['betas']!r}")
        eps = float(hp["eps"])
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {hp['eps']!r}")
        return {**Optimizer._check(hp), "betas": (b1, b2), "eps": eps}

    elementwise = True

    def init_state(self, xp: Any, value: Any) -> dict[str, Any]:
        return {"m": xp.zeros_like(value), "v": xp.zeros_like(value)}

    def update(self, xp: Any, value: Any, grad: Any, state: dict[str, Any], step: Any,
               lr: Any) -> tuple[Any, dict[str, Any]]:
        beta_1, beta_2 = self.betas
        # the operations, in their order, of scikit-learn's AdamOptimizer._get_updates
        m = beta_1 * state["m"] + (1 - beta_1) * grad
        v = beta_2 * state["v"] + (1 - beta_2) * (grad * grad)
        lr_t = lr * (1 - beta_2**step) ** 0.5 / (1 - beta_1**step)
        return value + -lr_t * m / (xp.sqrt(v) + self.eps), {"m": m, "v": v}


class _SklearnObjective(GradientTransform):
    """Turns nnx's gradient of its mean loss into scikit-learn's: a scale, and the L2 term of this batch.

    scikit-learn's weight gradient is ``(A.T @ delta + alpha * W) / s`` with ``s`` the batch's
    row count (or sum of weights): the loss's own gradient times `scale`, plus ``alpha / s * W``.
    `divisor` is set to ``s`` before each step.
    """

    def __init__(self, scale: float, alpha: float) -> None:
        self.scale = float(scale)
        self.alpha = float(alpha)
        self.divisor = 1.0

    def apply(self, params: list[Any], rows: int) -> bool:
        decay = self.alpha / self.divisor
        for p in params:
            if p.grad is None:
                continue
            g = p.grad * self.scale if self.scale != 1.0 else p.grad
            if decay and p.regularized:
                g = g + decay * p.value
            p.grad = g
        return True


class _BaseMLP(BaseEstimator):
    """Shared parameters, validation, network construction and training of the two estimators."""

    _is_classifier = False
    out_activation_: str  # set by the subclasses' target encoding in fit (declared here for type checkers)

    def __init__(self, hidden_layer_sizes: Any = (100,), activation: str = "relu", *, solver: str = "adam",
                 alpha: float = 0.0001, batch_size: Any = "auto", learning_rate: str = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5, max_iter: int = 200,
                 shuffle: bool = True, random_state: Any = None, tol: float = 1e-4, verbose: bool = False,
                 warm_start: bool = False, momentum: float = 0.9, nesterovs_momentum: bool = True,
                 early_stopping: bool = False, validation_fraction: float = 0.1, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000,
                 backend: Any = None, dtype: str | None = None, dropout: float = 0.0) -> None:
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
        def number(name: str, low: float, high: float = math.inf, low_open: bool = False,
                   high_open: bool = False) -> None:
            value = getattr(self, name)
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
            value = cast(float, value)  # a real number wherever `ok` still holds (numbers.Real declares no `>`)
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
                                              and not isinstance(self.batch_size, bool)
                                              and cast(int, self.batch_size) >= 1)):
            raise ValueError(f"batch_size must be 'auto' or an int >= 1, got {self.batch_size!r}")
        if self.dtype not in (None, "float32", "float64"):
            raise ValueError(f"dtype must be None (the data's), 'float32' or 'float64', got {self.dtype!r}")
        if self.solver == "lbfgs" and self.dropout > 0:
            raise ValueError("dropout needs a stochastic solver; 'lbfgs' needs a deterministic objective")
        if self.backend is not None:
            get_backend(self.backend)  # unknown or unavailable backends fail here, naming themselves

    # -- data -----------------------------------------------------------------------------
    def _validate_X(self, X: Any, reset: bool, y: Any = "no_validation") -> Any:
        """X validated (kept in its namespace under array-API dispatch, else NumPy), and y as NumPy."""
        io = _io_of(X)
        dtype = (np.float64, np.float32) if io is None else (io[0].float64, io[0].float32)
        kwargs: dict[str, Any] = dict(accept_sparse=True, dtype=dtype, reset=reset)
        if isinstance(y, str) and y == "no_validation":
            return _dense(validate_data(self, X, **kwargs))
        y = _host(y)  # labels and targets are small: read on the host once (label encoding needs them there)
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
        return _dense(X), y

    def _batch(self, n: int) -> int:
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped",
                          stacklevel=4)
        return int(np.clip(self.batch_size, 1, n))

    # -- network ------------------------------------------------------------------------------
    def _build(self, X: Any, n_outputs: int, rs: np.random.RandomState, io: Any) -> Sequential:
        """The network, with scikit-learn's initial weights and intercepts drawn from `rs`, in its order."""
        dtype = self.dtype or ("float32" if str(X.dtype).endswith("float32") else "float64")
        backend = self.backend if self.backend is not None else (get_backend(X) if io is not None else "numpy")
        act = _ACTIVATIONS[self.activation]
        units = [X.shape[1], *self._hidden_sizes(), n_outputs]
        layers: list[L.Layer] = []
        dense: list[int] = []
        for i, (fan_in, fan_out) in enumerate(zip(units[:-1], units[1:], strict=True)):
            dense.append(len(layers))
            layers.append(L.Dense(fan_in, fan_out, init="glorot_uniform"))
            if i < len(units) - 2:
                layers.append(act())
                if self.dropout > 0:
                    layers.append(L.Dropout(self.dropout))
        head = {"logistic": L.Sigmoid, "softmax": L.Softmax}.get(self.out_activation_)
        if head is not None:
            layers.append(head())
        # scikit-learn's _init_coef: Glorot-uniform bounds (sqrt(2/...) for logistic units), weights
        # then intercepts, layer by layer, drawn in float64 and cast to the data's dtype
        factor = 2.0 if self.activation == "logistic" else 6.0
        state = {}
        for index, fan_in, fan_out in zip(dense, units[:-1], units[1:], strict=True):
            bound = np.sqrt(factor / (fan_in + fan_out))
            state[f"{index}.weight"] = rs.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype)
            state[f"{index}.bias"] = rs.uniform(-bound, bound, fan_out).astype(dtype)
        # dropout's own stream (scikit-learn has none), drawn after everything scikit-learn draws at init
        seed = int(rs.randint(np.iinfo(np.int32).max)) if self.dropout > 0 else 0
        model = Sequential(*layers, backend=backend, dtype=dtype, seed=seed)
        model.load_state_dict(state)
        return model

    def _on_model(self, a: Any) -> Any:
        """`a` as a batch on the model's backend, in its dtype (moved through the host from another library)."""
        model = self.model_
        if not isinstance(a, np.ndarray) and not model.backend.owns(a):
            a = _host(a)
        return model.prepare_inputs(a)

    def _loss(self, weighted: bool = False) -> Any:
        return MSE(reduction=_reduction(weighted))

    def _scales(self) -> tuple[float, float]:
        """(scikit-learn's loss / nnx's loss, scikit-learn's gradient / nnx's gradient) for this output."""
        return 1.0, 1.0

    def _optimizer(self, model: Sequential) -> Any:
        params = model.parameters()
        if self.solver == "adam":
            return SklearnAdam(params, lr=self.learning_rate_init, betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        if self.solver == "sgd":
            return SklearnSGD(params, lr=self.learning_rate_init, momentum=self.momentum,
                              nesterov=bool(self.nesterovs_momentum))
        return get_optimizer(self.solver, params, lr=self.learning_rate_init)

    # -- training ---------------------------------------------------------------------------------
    def _fit(self, X: Any, y: Any, sample_weight: Any = None, incremental: bool = False) -> Self:
        self._check_params()
        first = not hasattr(self, "model_") or not (self.warm_start or incremental)
        io = _io_of(X)
        X, y = self._validate_X(X, reset=first, y=y)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(_host(sample_weight), X.shape[0])
        y_model = self._encode_targets(y, first=first, incremental=incremental)
        if X.shape[0] < 1:
            raise ValueError("fit needs at least one sample")
        rs = check_random_state(self.random_state)  # afresh on every call, as scikit-learn does
        if first:
            self.n_outputs_ = self._n_model_outputs(y_model)
            self.n_layers_ = len(self._hidden_sizes()) + 2
            self._fit_io = io
            self.model_ = self._build(X, self.n_outputs_, rs, io)
            self.n_iter_ = 0
            self.t_ = 0
            self._optimizer_ = None
            self._no_improvement_count = 0
            for name in ("loss_curve_", "validation_scores_", "best_validation_score_", "best_loss_"):
                self.__dict__.pop(name, None)  # a refit with another solver must not keep stale curves
            # like scikit-learn, only the stochastic solvers keep curves
            if self.solver != "lbfgs" and self.early_stopping:
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
        X_d = self._on_model(X)
        if self.solver == "lbfgs":
            self._fit_lbfgs(X_d, y_model, sample_weight)
        else:
            self._fit_stochastic(X_d, y, y_model, sample_weight, rs, incremental)
        return self

    def _fit_stochastic(self, X_d: Any, y: Any, y_model: Any, sample_weight: np.ndarray | None,
                        rs: np.random.RandomState, incremental: bool) -> None:
        """scikit-learn's `_fit_stochastic`, step for step, on the model's backend."""
        model = self.model_
        be, xp = model.backend, model.xp
        if self._optimizer_ is None or not incremental:  # a fit (warm or not) starts a new optimizer
            self._optimizer_ = self._optimizer(model)
        opt = self._optimizer_
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        loss_fn = model.resolve_loss(self._loss(sample_weight is not None))
        y_d = model.prepare_targets(y_model, loss_fn, X_d.shape[0])
        w = sample_weight
        validation = None
        if self.early_stopping:
            # scikit-learn stratifies on its binarized targets when they have one column
            stratify = np.reshape(y_model, (-1, 1)) if self._is_classifier and self.n_outputs_ == 1 else None
            train, val = train_test_split(np.arange(X_d.shape[0]), random_state=rs,
                                          test_size=self.validation_fraction, stratify=stratify)
            # scikit-learn types train_test_split's result as a list; with one array in, its items are arrays
            if val.shape[0] < 2:  # pyright: ignore[reportAttributeAccessIssue]
                raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size "
                                 "of your dataset.")
            train_d, val_d = be.asarray(train), be.asarray(val)
            validation = (xp.take(X_d, val_d, axis=0), np.asarray(y)[val], None if w is None else w[val])
            X_d, y_d = xp.take(X_d, train_d, axis=0), xp.take(y_d, train_d, axis=0)
            w = None if w is None else w[train]
            if w is not None and not np.any(w):
                raise ValueError("The sample weights of the training set are all zero; there is nothing to fit. "
                                 "Give some of them a non-zero weight or use a different random_state / "
                                 "validation_fraction.")
        n = X_d.shape[0]
        batch = self._batch(n)
        w_d = None if w is None else be.asarray(w, dtype=model.dtype, argname="sample_weight")
        value_scale, grad_scale = self._scales()
        objective = _SklearnObjective(grad_scale, self.alpha)
        step = TrainStep(model, loss_fn, opt, transforms=[objective], check_finite=False)
        model.optimizer, model.loss = opt, loss_fn
        weights = [p for p in model.parameters() if p.regularized]
        half_alpha = 0.5 * self.alpha
        self._best_state = None
        sample_idx = np.arange(n)
        self.n_iter_ = 0  # scikit-learn counts the epochs of this call only (t_ keeps counting samples)
        for _ in range(self.max_iter):
            X_e, y_e, w_e, w_host = X_d, y_d, w_d, w
            if self.shuffle:
                sample_idx = sk_shuffle(sample_idx, random_state=rs)
                perm = be.asarray(sample_idx)
                X_e, y_e = xp.take(X_d, perm, axis=0), xp.take(y_d, perm, axis=0)
                if w is not None:
                    w_e, w_host = xp.take(w_d, perm, axis=0), w[sample_idx]
            total = None
            for part in gen_batches(n, batch):
                lo, hi = part.start, part.stop
                divisor = float(hi - lo) if w_host is None else float(w_host[lo:hi].sum())
                value, _ = step.forward_loss(X_e[lo:hi, ...], y_e[lo:hi, ...],
                                             None if w_e is None else w_e[lo:hi])
                if value_scale != 1.0:
                    value = value * value_scale
                if half_alpha:
                    squares: Any = None
                    for p in weights:  # from the weights before this step, as scikit-learn's loss is
                        s = xp.sum(p.value * p.value)
                        squares = s if squares is None else squares + s
                    value = value + half_alpha * squares / divisor
                step.backward()
                objective.divisor = divisor
                step.transform(hi - lo)
                step.update()
                term = value * (hi - lo)
                total = term if total is None else total + term
            loss = be.to_float(total) / n  # the one read per epoch
            if not math.isfinite(loss):
                raise ValueError("Solver produced non-finite parameter weights. The input data may contain large "
                                 "values and need to be preprocessed.")
            self.n_iter_ += 1
            self.loss_ = loss
            self.t_ += n
            self.loss_curve_.append(loss)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
            self._update_no_improvement_count(validation)
            if self.solver == "sgd" and self.learning_rate == "invscaling":
                opt.lr = float(self.learning_rate_init) / (self.t_ + 1) ** self.power_t
            if self._no_improvement_count > self.n_iter_no_change:
                what = "Validation score" if validation is not None else "Training loss"
                msg = (f"{what} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} "
                       "consecutive epochs.")
                if self.solver == "sgd" and self.learning_rate == "adaptive":
                    if opt.lr <= 1e-6:
                        if self.verbose:
                            print(f"{msg} Learning rate too small. Stopping.")
                        break
                    opt.lr = opt.lr / 5.0
                    self._no_improvement_count = 0
                    if self.verbose:
                        print(f"{msg} Setting learning rate to {opt.lr:f}")
                else:
                    if self.verbose:
                        print(f"{msg} Stopping.")
                    break
            if incremental:
                break
            if self.n_iter_ == self.max_iter:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                              "optimization hasn't converged yet.", ConvergenceWarning, stacklevel=4)
        if self.early_stopping and self._best_state is not None:
            model.load_state_dict(self._best_state)
        self._best_state = None

    def _update_no_improvement_count(self, validation: tuple | None) -> None:
        if validation is not None:
            score = self._score_model(*validation)  # (X_val, y_val, sample_weight_val)
            cast(list, self.validation_scores_).append(score)  # early stopping: fit made it a list
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < cast(float, self.best_validation_score_) + self.tol:  # early stopping: fit set it
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > cast(float, self.best_validation_score_):
                self.best_validation_score_ = score
                xp = self.model_.xp
                self._best_state = {k: xp.asarray(v, copy=True) for k, v in self.model_.state_dict().items()}
        else:
            loss = self.loss_curve_[-1]
            if loss > cast(float, self.best_loss_) - self.tol:  # without early stopping: fit set it
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if loss < self.best_loss_:
                self.best_loss_ = loss

    def _fit_lbfgs(self, X_d: Any, y_model: Any, sample_weight: np.ndarray | None) -> None:
        """SciPy's L-BFGS-B on scikit-learn's objective and its packing (all weights, then all intercepts)."""
        from scipy.optimize import minimize

        model = self.model_
        be, xp = model.backend, model.xp
        loss_fn = model.resolve_loss(self._loss(sample_weight is not None))
        y_d = model.prepare_targets(y_model, loss_fn, X_d.shape[0])
        w_d = None if sample_weight is None else be.asarray(sample_weight, dtype=model.dtype,
                                                             argname="sample_weight")
        divisor = float(X_d.shape[0]) if sample_weight is None else float(sample_weight.sum())
        value_scale, grad_scale = self._scales()
        objective_transform = _SklearnObjective(grad_scale, self.alpha)
        objective_transform.divisor = divisor
        layers = self._dense_layers()
        params = [layer.weight for layer in layers] + [layer.bias for layer in layers]
        shapes = [tuple(p.value.shape) for p in params]
        sizes = [math.prod(s) for s in shapes]

        def set_flat(theta: np.ndarray) -> None:
            start = 0
            for p, shape, size in zip(params, shapes, sizes, strict=True):
                p.value = be.asarray(theta[start:start + size].reshape(shape), dtype=model.dtype, copy=True)
                start += size

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            set_flat(theta)
            value, _, _ = model.loss_and_grads(X_d, y_d, loss_fn, sample_weight=w_d)
            value = xp.astype(value, X_d.dtype) * value_scale
            if self.alpha:
                for layer in layers:
                    value = value + 0.5 * self.alpha * xp.sum(layer.weight.value * layer.weight.value) / divisor
            objective_transform.apply(params, X_d.shape[0])
            parts = [xp.reshape(value, (1,))] + [xp.reshape(p.grad, (-1,)) for p in params]
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
        self.n_iter_ = min(int(result.nit), self.max_iter)
        self.loss_ = float(result.fun)
        model.loss = loss_fn
        if result.status != 0:
            warnings.warn(f"lbfgs failed to converge after {result.nit} iteration(s) (status={result.status}): "
                          f"{result.message}. Increase the number of iterations (max_iter) or scale the data.",
                          ConvergenceWarning, stacklevel=4)

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
                         f"same device as those passed to fit(). fit() got {_describe(fitted)}, {method}() got "
                         f"{_describe(io)}.")

    def _forward(self, X: Any, method: str) -> Any:
        """The network's outputs for X, in X's float dtype: NumPy, or X's namespace and device under dispatch."""
        check_is_fitted(self, "model_")
        io = _io_of(X)
        self._check_namespace(X, io, method)
        X = self._validate_X(X, reset=False)
        model = self.model_
        if io is not None:
            return _to_namespace(model.predict(self._on_model(X)), io, X.dtype)
        n = X.shape[0]
        # Pad to whole blocks of rows: BLAS picks its kernels by matrix shape, and in float32 a
        # sample's prediction could otherwise change in the last bits with the batch it came in.
        padded = -(-n // _ROW_BLOCK) * _ROW_BLOCK
        if padded != n:
            X = np.concatenate([X, np.zeros((padded - n, X.shape[1]), dtype=X.dtype)])
        return np.asarray(model.backend.to_host(model.predict(X)), dtype=X.dtype)[:n]

    @property
    def coefs_(self) -> list[Any]:
        """The weight matrices, layer by layer (scikit-learn's layout: (in, out)); NumPy, or the fit's namespace."""
        return [self._fitted_array(layer.weight.value) for layer in self._dense_layers()]

    @property
    def intercepts_(self) -> list[Any]:
        """The bias vectors, layer by layer; NumPy, or the namespace the estimator was fitted in."""
        return [self._fitted_array(layer.bias.value) for layer in self._dense_layers()]

    def _fitted_array(self, value: Any) -> Any:
        io = getattr(self, "_fit_io", None)
        if isinstance(io, tuple):
            return _to_namespace(value, io, None)
        return np.array(self.model_.backend.to_host(value))

    def _dense_layers(self) -> list[Any]:
        return [layer for layer in self.model_.layers if isinstance(layer, L.Dense)]

    # -- pickling: backend objects hold modules, so the network travels as plain NumPy ----------
    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        model = state.pop("model_", None)
        optimizer = state.pop("_optimizer_", None)
        state.pop("_best_state", None)
        if isinstance(state.get("_fit_io"), tuple):
            state["_fit_io"] = "unknown"  # a namespace module does not pickle
        if model is not None:
            be = model.backend
            state["_model_portable"] = {
                "config": model.get_config(),
                "backend": be.spec,
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
            backend = portable.get("backend", self.backend if self.backend is not None else "numpy")
            model = Sequential.from_config(portable["config"], backend=backend)
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


def _io_of(X: Any) -> tuple[Any, Any] | None:
    """(namespace, device) of X when array-API dispatch is on and X is a non-NumPy array, else None."""
    if not get_config()["array_api_dispatch"] or isinstance(X, np.ndarray):
        return None
    if not array_api_compat.is_array_api_obj(X) or array_api_compat.is_numpy_array(X):
        return None
    return array_api_compat.array_namespace(X), array_api_compat.device(X)


def _describe(io: Any) -> str:
    return "NumPy or array-like input" if io is None else f"{io[0].__name__} arrays on device {io[1]}"


def _host(a: Any) -> Any:
    """A non-NumPy array as NumPy (through its nnx backend); anything else unchanged."""
    if a is None or isinstance(a, np.ndarray) or not array_api_compat.is_array_api_obj(a) \
            or array_api_compat.is_numpy_array(a):
        return a
    return np.asarray(get_backend(a).to_host(a))


def _to_namespace(a: Any, io: tuple[Any, Any], dtype: Any) -> Any:
    """`a` (a backend array) as a new array of namespace `io[0]` on device `io[1]`, cast to `dtype` when given."""
    xp, device = io
    if array_api_compat.array_namespace(a) is xp and str(array_api_compat.device(a)) == str(device):
        out = xp.asarray(a, copy=True)
    else:
        out = xp.asarray(_host(a), device=device)
    return out if dtype is None or out.dtype == dtype else xp.astype(out, dtype)


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
    # scikit-learn leaves dtype unannotated: pyright infers `str` from its default "numeric"
    w = check_array(sample_weight, ensure_2d=False, dtype=np.float64, copy=True,  # pyright: ignore[reportArgumentType]
                    input_name="sample_weight")
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
    """Multi-layer perceptron classifier trained by nnx on any backend, with scikit-learn's interface and numbers.

    Binary problems get one sigmoid output, multi-class problems a softmax over the
    classes, multi-label indicator targets one sigmoid per label; the loss is the
    log-loss of those. Labels may be of any type (`classes_` holds them sorted, as NumPy).

    Args:
        hidden_layer_sizes: units per hidden layer, e.g. ``(100,)`` or ``(64, 32)``.
        activation: hidden activation: "identity", "logistic", "tanh", "relu" (or "leaky_relu").
        solver: "adam", "sgd", "lbfgs", or another nnx optimizer name ("rmsprop", "adamw", ...).
        alpha: L2 strength: ``alpha / 2 * ||W||^2`` divided by each batch's size (or sum of weights).
        batch_size: samples per step; "auto" is min(200, n_samples).
        learning_rate: "constant", "invscaling" or "adaptive" schedule (solver="sgd" only).
        learning_rate_init: the (initial) step size.
        power_t: exponent of the "invscaling" schedule.
        max_iter: epochs (stochastic solvers) or iterations ("lbfgs").
        shuffle: reshuffle the samples every epoch.
        random_state: draws the initial weights, the early-stopping split and the shuffles, in scikit-learn's
            order (and then dropout's seed).
        tol: improvement below which an epoch counts as "no improvement".
        verbose: print the loss every epoch.
        warm_start: continue from the previous fit's weights.
        momentum, nesterovs_momentum: SGD momentum.
        early_stopping: hold out `validation_fraction` (stratified for one output) and stop when its accuracy
            stalls for `n_iter_no_change` epochs; the best epoch's weights are kept.
        validation_fraction: fraction held out for early stopping.
        beta_1, beta_2, epsilon: Adam's parameters.
        n_iter_no_change: epochs without improvement > `tol` before stopping.
        max_fun: most loss evaluations for "lbfgs".
        backend: the nnx backend to train on ("numpy", "torch", "jax", "cupy", "array_api_strict", ...); None:
            X's own under array-API dispatch, else "numpy".
        dtype: "float32" or "float64"; None (default): X's float dtype, as scikit-learn computes.
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
            return Y.astype(np.float64)
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
        return index.astype(np.float64) if len(self.classes_) == 2 else index.astype(np.int64)

    def _multiclass(self) -> bool:
        return len(self.classes_) > 2 and not self._multilabel

    def _n_model_outputs(self, y_model: Any) -> int:
        return len(self.classes_) if self._multiclass() else (1 if y_model.ndim == 1 else y_model.shape[1])

    def _loss(self, weighted: bool = False) -> Any:
        if self.out_activation_ == "softmax":
            return CrossEntropy(from_logits=False, reduction=_reduction(weighted))
        return BinaryCrossEntropy(reduction=_reduction(weighted))

    def _scales(self) -> tuple[float, float]:
        # scikit-learn sums the binary log-loss over labels; nnx's BCE averages over them
        k = float(self.n_outputs_) if getattr(self, "_multilabel", False) else 1.0
        return k, k

    def _score_model(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        from sklearn.metrics import accuracy_score

        # subset accuracy for multi-label targets, as score() computes it
        return float(accuracy_score(y, self._labels(self._proba_raw(X)), sample_weight=sample_weight))

    def _proba_raw(self, X: Any) -> np.ndarray:
        model = self.model_
        return np.asarray(model.backend.to_host(model.predict(X)))

    def _labels(self, out: Any) -> Any:
        if isinstance(out, np.ndarray):
            if self._multilabel:
                return (out > 0.5).astype(int)
            if out.shape[1] == 1:
                return self.classes_[(out[:, 0] > 0.5).astype(int)]
            return self.classes_[np.argmax(out, axis=1)]
        xp = array_api_compat.array_namespace(out)
        if self._multilabel:
            return xp.astype(out > 0.5, xp.int64)
        index = xp.astype(out[:, 0] > 0.5, xp.int64) if out.shape[1] == 1 else xp.argmax(out, axis=1)
        if self.classes_.dtype.kind not in "biuf":  # labels such as strings exist only in NumPy
            return self.classes_[_host(index)]
        return xp.take(xp.asarray(self.classes_, device=array_api_compat.device(out)), index, axis=0)

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
            self._partial_classes = unique_labels(_host(classes))
        elif classes is not None and not np.array_equal(unique_labels(_host(classes)), self.classes_):
            raise ValueError(f"`classes={list(classes)}` is not the same as on the first call to partial_fit "
                             f"(classes_ = {list(self.classes_)}).")
        return self._fit(X, y, sample_weight, incremental=True)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy (subset accuracy for multi-label targets) of `predict(X)` against `y`, as a float.

        Counted on the host in float64: under dispatch, scikit-learn's `accuracy_score` on torch integer
        labels averages in torch's default float32 (0.9 reads 0.8999999762).
        """
        from sklearn.metrics import accuracy_score

        return float(accuracy_score(_host(y), _host(self.predict(X)), sample_weight=_host(sample_weight)))

    def predict(self, X: Any) -> Any:
        """Predicted labels (or label indicators for multi-label targets): NumPy, or X's kind under dispatch."""
        return self._labels(self._forward(X, "predict"))

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities, shape (n_samples, n_classes), columns in `classes_` order."""
        return self._proba(self._forward(X, "predict_proba"))

    def _proba(self, out: Any) -> Any:
        if out.shape[1] == 1 and not self._multilabel:
            if isinstance(out, np.ndarray):
                return np.hstack([1.0 - out, out])
            xp = array_api_compat.array_namespace(out)
            return xp.concat([1.0 - out, out], axis=1)
        return out

    def predict_log_proba(self, X: Any) -> Any:
        """The log of `predict_proba`."""
        proba = self._proba(self._forward(X, "predict_log_proba"))
        if isinstance(proba, np.ndarray):
            with np.errstate(divide="ignore"):
                return np.log(proba)
        return array_api_compat.array_namespace(proba).log(proba)


class MLPRegressor(RegressorMixin, _BaseMLP):
    """Multi-layer perceptron regressor trained by nnx on any backend, with scikit-learn's interface and numbers.

    A linear output layer with one unit per target and scikit-learn's half squared
    error; several targets (y of shape (n_samples, n_targets)) are fitted jointly.
    Parameters as in `MLPClassifier`; with `early_stopping` the held-out score is R^2.
    """

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _encode_targets(self, y: Any, first: bool, incremental: bool) -> Any:
        y = np.asarray(y, dtype=np.float64)
        if first:
            self._y_ndim = y.ndim
            self.out_activation_ = "identity"
        else:
            width = 1 if y.ndim == 1 else y.shape[1]
            if width != self.n_outputs_:
                raise ValueError(f"y has {width} targets but the estimator was fitted on {self.n_outputs_}")
        return y

    def _scales(self) -> tuple[float, float]:
        # scikit-learn reports half the mean squared error, and steps along the gradient of half the
        # squared error summed over targets (averaged over samples): n_targets / 2 times nnx MSE's
        return 0.5, self.n_outputs_ / 2.0

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

    def predict(self, X: Any) -> Any:
        """Predictions: shape (n_samples,) when fitted on a 1-D y, else (n_samples, n_targets)."""
        out = self._forward(X, "predict")
        return out[:, 0] if self._y_ndim == 1 else out
