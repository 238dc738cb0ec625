"""How the estimators train: scikit-learn's `_fit`, `_fit_stochastic` and `_fit_lbfgs`, step for step, on nnx."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state, gen_batches
from sklearn.utils import shuffle as sk_shuffle

from ..training import GradientTransform, InterruptGuard, TrainStep
from ..training import data as batch_data
from .arrays import check_sample_weight, dense, host, io_of
from .base import MLPBase

if TYPE_CHECKING:
    from typing_extensions import Self

_NON_FINITE = ("Solver produced non-finite parameter weights. The input data may contain large values and need "
               "to be preprocessed.")


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


class MLPTraining(MLPBase):
    """`fit` and `partial_fit` of the two estimators: scikit-learn's bookkeeping around nnx's training step."""

    def _fit(self, X: Any, y: Any, sample_weight: Any = None, incremental: bool = False) -> Self:
        self._check_params()
        has_weights = "model_" in self.__dict__ or any(f"_assigned_{n}" in self.__dict__
                                                       for n in ("coefs_", "intercepts_"))
        first = not has_weights or not (self.warm_start or incremental)
        if not first and "model_" in self.__dict__:
            self._check_continuation()
        io = io_of(X)
        X, y = self._validate_X(X, reset=first, y=y)
        if sample_weight is not None:
            sample_weight = check_sample_weight(host(sample_weight), X.shape[0])
        y_model = self._encode_targets(y, first=first, incremental=incremental)
        y = dense(y)  # a sparse indicator matrix (multi-label y): early stopping scores its rows
        if X.shape[0] < 1:
            raise ValueError("fit needs at least one sample")
        rs = check_random_state(self.random_state)  # afresh on every call, as scikit-learn does
        if first or "model_" not in self.__dict__:
            # a new network: drawn, or (continuing without one) from the coefs_/intercepts_ the user assigned
            self.n_outputs_ = self._n_model_outputs(y_model)
            self.n_layers_ = len(self._hidden_sizes()) + 2
            self._fit_io = io
            self.model_ = self._build(X, self.n_outputs_, rs, io, assigned=not first)
            for name in ("coefs_", "intercepts_"):
                self.__dict__.pop(f"_assigned_{name}", None)
            self._optimizer_ = None
            # scikit-learn's _best_coefs start as the initial weights: what early stopping restores
            # when no epoch ever scores (a run that diverges from the start)
            self._best_state = self._copy_state() if self.early_stopping else None
        if first:
            self.n_iter_ = 0
            self.t_ = 0
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
        else:  # warm start, partial_fit, or assigned weights: keep what is there, fill in what this run needs
            for name, default in (("n_iter_", 0), ("t_", 0), ("_no_improvement_count", 0)):
                if not hasattr(self, name):
                    setattr(self, name, default)
            if self.solver != "lbfgs":
                if not hasattr(self, "loss_curve_"):
                    self.loss_curve_, self.validation_scores_, self.best_validation_score_, self.best_loss_ = \
                        [], None, None, np.inf
                if self.early_stopping and not incremental:
                    if getattr(self, "validation_scores_", None) is None:
                        self.validation_scores_ = []
                    if getattr(self, "best_validation_score_", None) is None:
                        self.best_validation_score_ = -np.inf
                elif getattr(self, "best_loss_", None) is None:
                    self.best_loss_ = np.inf
        X_d = self._on_model(X)
        if self.solver == "lbfgs":
            self._fit_lbfgs(X_d, y_model, sample_weight)
        else:
            self._fit_stochastic(X_d, y, y_model, sample_weight, rs, incremental)
        if not self._weights_finite():  # the final weights, as scikit-learn checks them
            raise ValueError(_NON_FINITE)
        return self

    def _copy_state(self) -> dict[str, Any]:
        return self.model_.state_dict(copy=True)  # copies already: a second copy would hold the weights twice

    def _weights_finite(self) -> bool:
        model = self.model_
        xp = model.xp
        flags = [xp.all(xp.isfinite(p.value)) for p in model.parameters()]
        return bool(model.backend.to_host(xp.all(xp.stack(flags))))  # one read from the device

    def _fit_stochastic(self, X_d: Any, y: Any, y_model: Any, sample_weight: np.ndarray | None,
                        rs: np.random.RandomState, incremental: bool) -> None:
        """scikit-learn's `_fit_stochastic`, step for step, on the model's backend."""
        model = self.model_
        be, xp = model.backend, model.xp
        if getattr(self, "_optimizer_", None) is None or not incremental:  # a fit (warm or not) starts a new one
            self._optimizer_ = self._new_optimizer(model)
        opt: Any = self._optimizer_
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        loss_fn = model.resolve_loss(self._training_loss(sample_weight is not None))
        y_d = model.prepare_targets(y_model, loss_fn, X_d.shape[0])
        w = sample_weight
        validation = None
        if self.early_stopping:
            # scikit-learn stratifies on its binarized targets (a boolean column, shown as True/False in its
            # messages) when there is one output column
            stratify = np.reshape(np.asarray(y_model) == 1, (-1, 1)) \
                if self._is_classifier and self.n_outputs_ == 1 else None
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
            if w is not None and not np.any(validation[2]):
                raise ValueError("The sample weights of the validation set are all zero; early stopping has no "
                                 "score to follow. Give some of them a non-zero weight or use a different "
                                 "random_state / validation_fraction.")
        n = X_d.shape[0]
        batch = self._batch(n)
        w_d = None if w is None else be.asarray(w, dtype=model.dtype, argname="sample_weight")
        value_scale, grad_scale = self._scales()
        objective = _SklearnObjective(grad_scale, self.alpha)
        step = TrainStep(model, loss_fn, opt, transforms=[objective], check_finite=False, compile_passes=True)
        model.optimizer, model.loss = opt, model.resolve_loss(self._loss(sample_weight is not None))
        weights = [p for p in model.parameters() if p.regularized]
        half_alpha = 0.5 * self.alpha
        sample_idx = np.arange(n)
        # a shuffled copy of a big X would hold it twice: gather each batch's rows instead, as scikit-learn
        # (X[sample_idx[batch_slice]]) and `fit` (`ArrayBatches`) do; a small X is copied once an epoch
        gather = self.shuffle and not batch_data.copy_fits(xp, X_d)
        self.n_iter_ = 0  # scikit-learn counts the epochs of this call only (t_ keeps counting samples)
        # scikit-learn catches Ctrl-C between epochs' steps, warns and keeps the model so far (the best
        # validation epoch's weights with early stopping); the guard defers one that lands inside an update
        guard = InterruptGuard().install()
        try:
            for _ in range(self.max_iter):
                X_e, y_e, w_e, w_host = X_d, y_d, w_d, w
                if self.shuffle:
                    sample_idx = sk_shuffle(sample_idx, random_state=rs)
                    perm = be.asarray(sample_idx)
                    X_e = perm if gather else xp.take(X_d, perm, axis=0)
                    y_e = xp.take(y_d, perm, axis=0)
                    if w is not None:
                        w_e, w_host = xp.take(w_d, perm, axis=0), w[sample_idx]
                total = None
                for part in gen_batches(n, batch):
                    lo, hi = part.start, part.stop
                    divisor = float(hi - lo) if w_host is None else float(w_host[lo:hi].sum())
                    if divisor == 0.0:  # scikit-learn divides by it too, and fails there with ZeroDivisionError
                        raise ValueError(
                            f"The sample weights of a mini-batch sum to zero (batch_size={batch}, epoch "
                            f"{self.n_iter_ + 1}): its loss is the weighted mean over the batch, which has none. "
                            "Use a larger batch_size, or leave the zero-weight rows out of the data.")
                    X_b = xp.take(X_d, X_e[lo:hi], axis=0) if gather else X_e[lo:hi, ...]
                    value, _ = step.forward_loss(X_b, y_e[lo:hi, ...],
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
                    guard.in_step = True  # Ctrl-C inside the update waits until every parameter has it
                    step.update()
                    guard.end_step()
                    term = value * (hi - lo)
                    total = term if total is None else total + term
                loss = be.to_float(total) / n  # the one read per epoch
                if not math.isfinite(loss) and validation is None and not self._weights_finite():
                    # Without a validation set nothing can restore finite weights: scikit-learn would run on
                    # to max_iter and raise this same error on the final weights; it is raised now instead.
                    # (A loss can be inf with finite weights and gradients: Poisson's where exp underflows.)
                    raise ValueError(_NON_FINITE)
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
        except KeyboardInterrupt:
            step.reset()
            warnings.warn("Training interrupted by user.", UserWarning, stacklevel=4)
        finally:
            guard.uninstall()
        best = getattr(self, "_best_state", None)
        if self.early_stopping and best is not None:
            model.load_state_dict(best)  # copied in: the kept best must not follow later training

    def _update_no_improvement_count(self, validation: tuple | None) -> None:
        if validation is not None:
            score = self._score_model(*validation)  # (X_val, y_val, sample_weight_val); nan once diverged
            cast(list, self.validation_scores_).append(score)  # early stopping: fit made it a list
            if self.verbose:
                print(f"Validation score: {score:f}")
            if score < cast(float, self.best_validation_score_) + self.tol:  # early stopping: fit set it
                self._no_improvement_count += 1
            else:
                self._no_improvement_count = 0
            if score > cast(float, self.best_validation_score_):
                self.best_validation_score_ = score
                self._best_state = self._copy_state()
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
        loss_fn = model.resolve_loss(self._training_loss(sample_weight is not None))
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
            host_values = np.asarray(be.to_host(xp.concat(parts)), dtype=np.float64)  # one transfer per evaluation
            return float(host_values[0]), host_values[1:]

        theta0 = np.concatenate([np.asarray(be.to_host(p.value), dtype=np.float64).ravel() for p in params])
        result = minimize(objective, theta0, method="L-BFGS-B", jac=True,
                          options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})
        set_flat(result.x)
        for p in params:
            p.grad = None
        if not np.all(np.isfinite(result.x)):
            raise ValueError(_NON_FINITE)
        self.n_iter_ = min(int(result.nit), self.max_iter)
        self.loss_ = float(result.fun)
        model.loss = model.resolve_loss(self._loss(sample_weight is not None))
        if result.status != 0:
            # scikit-learn's text; the advice names the limit that stopped the run, if one did
            message = f"lbfgs failed to converge after {self.n_iter_} iteration(s) (status={result.status}):\n" \
                      f"{result.message}\n"
            if self.n_iter_ == self.max_iter:
                message += f"\nIncrease the number of iterations to improve the convergence (max_iter={self.max_iter})."
            elif int(result.nfev) >= self.max_fun:
                message += ("\nIncrease the number of loss evaluations allowed to improve the convergence "
                            f"(max_fun={self.max_fun}).")
            message += ("\nYou might also want to scale the data as shown in:\n"
                        "    https://scikit-learn.org/stable/modules/preprocessing.html")
            warnings.warn(message, ConvergenceWarning, stacklevel=4)
