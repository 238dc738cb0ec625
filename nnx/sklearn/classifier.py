"""`MLPClassifier`: binary, multi-class and multi-label targets, scikit-learn's label handling."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np
from scipy.sparse import csr_matrix
from sklearn.base import ClassifierMixin
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets, type_of_target, unique_labels

from ..losses import BinaryCrossEntropy, CrossEntropy
from .arrays import dense, host, reduction
from .training import MLPTraining


class MLPClassifier(ClassifierMixin, MLPTraining):
    """Multi-layer perceptron classifier trained by nnx on any backend, with scikit-learn's interface and numbers.

    Binary problems get one sigmoid output, multi-class problems a softmax over the
    classes, multi-label indicator targets one sigmoid per label; the loss is the
    log-loss of those. Labels may be of any type (`classes_` holds them sorted, as NumPy).
    A single class is fitted as scikit-learn fits it: one sigmoid unit, `predict` always
    returns that class and `predict_proba` has two columns.

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
        momentum, nesterovs_momentum: SGD momentum (`momentum` also drives solver "momentum").
        early_stopping: hold out `validation_fraction` (stratified for one output) and stop when its accuracy
            stalls for `n_iter_no_change` epochs; the best epoch's weights are kept.
        validation_fraction: fraction held out for early stopping.
        beta_1, beta_2, epsilon: Adam's parameters, and AdamW's (`epsilon` also RMSprop's and Adagrad's).
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
        if kind not in ("binary", "multiclass", "multilabel-indicator"):
            raise ValueError(f"Unknown label type: {kind!r}")
        # scikit-learn's rule: classes_ are (re)defined unless they exist and this call continues a fit
        define = not hasattr(self, "classes_") or not (self.warm_start or incremental)
        multilabel = kind == "multilabel-indicator"
        sparse = hasattr(y, "toarray")  # a sparse indicator matrix, which scikit-learn's LabelBinarizer takes
        y = np.asarray(dense(y))
        found = np.arange(y.shape[1]) if multilabel else unique_labels(y)  # a label per indicator column
        if define:
            self.classes_ = found
            self._multilabel = multilabel
            self._sparse_labels = sparse and multilabel  # predicted back as a sparse matrix, as scikit-learn does
        elif multilabel and not getattr(self, "_multilabel", False):
            raise ValueError(f"y is a multi-label indicator matrix but the estimator was fitted on the labels "
                             f"{self.classes_}")
        elif not multilabel and getattr(self, "_multilabel", False):
            raise ValueError("y is a label vector but the estimator was fitted on multi-label indicator targets")
        elif multilabel and "model_" in self.__dict__ and y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} labels but the estimator was fitted on {self.n_outputs_}")
        elif self.warm_start and set(found) != set(self.classes_):
            raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                             f"previous call to fit. Previously got {self.classes_}, `y` has {found}")
        elif np.setdiff1d(found, self.classes_).size:
            # also for indicator columns: partial_fit(classes=[0, 1]) on three labels is refused, as scikit-learn
            # refuses it, rather than leaving classes_ shorter than predict_proba's columns
            raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                             f"'y' has {found}.")
        if multilabel:
            self.out_activation_ = "logistic"
            return y.astype(np.float64)
        # one class (scikit-learn fits it: every target is its binarizer's 0) or two: one logistic unit
        self.out_activation_ = "logistic" if len(self.classes_) <= 2 else "softmax"
        index = np.searchsorted(self.classes_, y)
        return index.astype(np.float64) if len(self.classes_) <= 2 else index.astype(np.int64)

    def _multiclass(self) -> bool:
        return len(self.classes_) > 2 and not self._multilabel

    def _n_model_outputs(self, y_model: Any) -> int:
        return len(self.classes_) if self._multiclass() else (1 if y_model.ndim == 1 else y_model.shape[1])

    def _loss(self, weighted: bool = False) -> Any:
        if self.out_activation_ == "softmax":
            return CrossEntropy(from_logits=False, reduction=reduction(weighted))
        return BinaryCrossEntropy(reduction=reduction(weighted))

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
            if out.shape[1] > 1:
                return self.classes_[np.argmax(out, axis=1)]
            # one class: its binarizer maps every output back to that class, as scikit-learn's does
            one = len(self.classes_) == 1
            return self.classes_[np.zeros(out.shape[0], dtype=int) if one else (out[:, 0] > 0.5).astype(int)]
        xp = array_api_compat.array_namespace(out)
        if self._multilabel:
            return xp.astype(out > 0.5, xp.int64)
        index = xp.astype(out[:, 0] > 0.5, xp.int64) if out.shape[1] == 1 else xp.argmax(out, axis=1)
        if len(self.classes_) == 1:
            index = xp.zeros_like(index)
        if self.classes_.dtype.kind not in "biuf":  # labels such as strings exist only in NumPy
            return self.classes_[host(index)]
        return xp.take(xp.asarray(self.classes_, device=array_api_compat.device(out)), index, axis=0)

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> MLPClassifier:
        """Train on X (n_samples, n_features) and labels y (n_samples,) or indicators (n_samples, n_labels).

        `sample_weight` (n_samples,) weighs the rows, scikit-learn's way: a weight of 2 is the row repeated.
        """
        return self._fit(X, y, sample_weight)

    @available_if(MLPTraining._check_solver)
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None, classes: Any = None) -> MLPClassifier:
        """One epoch over (X, y), rows weighted by `sample_weight`; the first call needs `classes`, every label."""
        if not hasattr(self, "classes_"):  # the first call, by scikit-learn's rule
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self.classes_ = unique_labels(host(classes))
            self._multilabel = type_of_target(host(y)) == "multilabel-indicator"
            self._sparse_labels = self._multilabel and hasattr(y, "toarray")  # as scikit-learn's binarizer keeps it
        elif classes is not None and not np.array_equal(unique_labels(host(classes)), self.classes_):
            raise ValueError(f"`classes={np.asarray(host(classes)).tolist()}` is not the same as on last call to "
                             f"partial_fit, was: {self.classes_.tolist()}")
        return self._fit(X, y, sample_weight, incremental=True)

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy (subset accuracy for multi-label targets) of `predict(X)` against `y`, as a float.

        Counted on the host in float64: under dispatch, scikit-learn's `accuracy_score` on torch integer
        labels averages in torch's default float32 (0.9 reads 0.8999999762).
        """
        from sklearn.metrics import accuracy_score

        return float(accuracy_score(host(y), host(self.predict(X)), sample_weight=host(sample_weight)))

    def predict(self, X: Any) -> Any:
        """Predicted labels (or label indicators for multi-label targets): NumPy, or X's kind under dispatch.

        Fitted on a sparse indicator matrix, the indicators come back as a SciPy CSR matrix, as in scikit-learn.
        """
        labels = self._labels(self._forward(X, "predict"))
        if getattr(self, "_sparse_labels", False) and isinstance(labels, np.ndarray):
            return csr_matrix(labels)
        return labels

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
