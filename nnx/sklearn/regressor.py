"""`MLPRegressor`: scikit-learn's half squared error, or its half Poisson deviance with a log link."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.utils.metaestimators import available_if

from .. import _validate as check
from ..losses import MSE
from .arrays import dense, reduction
from .poisson import HalfPoissonDeviance, TrainingHalfPoissonDeviance
from .training import MLPTraining

_LOSSES = ("squared_error", "poisson")
_OUTPUT = {"squared_error": "identity", "poisson": "exp"}


class MLPRegressor(RegressorMixin, MLPTraining):
    """Multi-layer perceptron regressor trained by nnx on any backend, with scikit-learn's interface and numbers.

    One output unit per target; several targets (y of shape (n_samples, n_targets)) are fitted jointly.
    With `early_stopping` the held-out score is R^2.

    Args:
        loss: "squared_error" (a linear output and half the squared error) or "poisson" (an exp output,
            the log link, and half the Poisson deviance; targets must be >= 0).
        hidden_layer_sizes, activation, ...: as for `MLPClassifier`, in scikit-learn's order.
    """

    def __init__(self, loss: str = "squared_error", hidden_layer_sizes: Any = (100,), activation: str = "relu", *,
                 solver: str = "adam", alpha: float = 0.0001, batch_size: Any = "auto",
                 learning_rate: str = "constant", learning_rate_init: float = 0.001, power_t: float = 0.5,
                 max_iter: int = 200, shuffle: bool = True, random_state: Any = None, tol: float = 1e-4,
                 verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False, validation_fraction: float = 0.1,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: Any = 10,
                 max_fun: int = 15000, backend: Any = None, dtype: Any = None, dropout: float = 0.0) -> None:
        super().__init__(
            hidden_layer_sizes, activation, solver=solver, alpha=alpha, batch_size=batch_size,
            learning_rate=learning_rate, learning_rate_init=learning_rate_init, power_t=power_t, max_iter=max_iter,
            shuffle=shuffle, random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
            momentum=momentum, nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
            validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            n_iter_no_change=n_iter_no_change, max_fun=max_fun, backend=backend, dtype=dtype, dropout=dropout)
        self.loss = loss

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _check_params(self) -> None:
        super()._check_params()
        check.one_of("loss", self.loss, _LOSSES)

    def _encode_targets(self, y: Any, first: bool, incremental: bool) -> Any:
        y = np.asarray(dense(y), dtype=np.float64)
        if self.loss == "poisson" and y.size and not np.min(y) >= 0:
            raise ValueError(f"loss='poisson' needs targets y >= 0, got a minimum of {np.min(y)}")
        output = _OUTPUT[self.loss]
        if first:
            self._y_ndim = y.ndim
            self.out_activation_ = output
        elif "model_" in self.__dict__:
            width = 1 if y.ndim == 1 else y.shape[1]
            if width != self.n_outputs_:
                raise ValueError(f"y has {width} targets but the estimator was fitted on {self.n_outputs_}")
            if output != self.out_activation_:
                raise ValueError(f"loss={self.loss!r} needs a {output!r} output, but the network was fitted with "
                                 f"{self.out_activation_!r}; fit again without warm_start to change the loss")
        else:  # continuing from assigned coefs_/intercepts_
            self._y_ndim = y.ndim
            self.out_activation_ = output
        return y

    def _loss(self, weighted: bool = False) -> Any:
        if self.loss == "poisson":
            return HalfPoissonDeviance(reduction=reduction(weighted))
        return MSE(reduction=reduction(weighted))

    def _training_loss(self, weighted: bool = False) -> Any:
        # folded into the exp output: scikit-learn's gradient (mu - y) / n w.r.t. the log of the mean
        if self.loss == "poisson":
            return TrainingHalfPoissonDeviance(reduction=reduction(weighted))
        return super()._training_loss(weighted)

    def _scales(self) -> tuple[float, float]:
        if self.loss == "poisson":
            return 1.0, 1.0  # HalfPoissonDeviance is scikit-learn's loss itself
        # scikit-learn reports half the mean squared error, and steps along the gradient of half the
        # squared error summed over targets (averaged over samples): n_targets / 2 times nnx MSE's
        return 0.5, self.n_outputs_ / 2.0

    def _score_model(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        from sklearn.metrics import r2_score

        pred = np.asarray(self.model_.backend.to_host(self.model_.predict(X)))
        if not np.all(np.isfinite(pred)):
            return float("nan")  # a diverged network scores nan, as in scikit-learn; early stopping keeps going
        return float(r2_score(y, pred.reshape(np.shape(y)), sample_weight=sample_weight))

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """Train on X (n_samples, n_features) and targets y (n_samples,) or (n_samples, n_targets).

        `sample_weight` (n_samples,) weighs the rows, scikit-learn's way: a weight of 2 is the row repeated.
        """
        return self._fit(X, y, sample_weight)

    @available_if(MLPTraining._check_solver)
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPRegressor:
        """One epoch over (X, y), rows weighted by `sample_weight`, continuing from the current weights."""
        return self._fit(X, y, sample_weight, incremental=True)

    def predict(self, X: Any) -> Any:
        """Predictions: shape (n_samples,) when fitted on a 1-D y, else (n_samples, n_targets)."""
        out = self._forward(X, "predict")
        return out[:, 0] if self._y_ndim == 1 else out
