"""`MLPRegressor(loss="poisson")`: an exp output (the log link) and scikit-learn's half Poisson deviance."""

from __future__ import annotations

from typing import Any

from .. import layers as L
from ..backends import get_backend
from ..losses import Loss


class Exp(L.Layer, name="nnx.sklearn.Exp"):
    """Elementwise exp: the inverse of the log link, so the network predicts a positive mean."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: Any = None

    def forward(self, X: Any, training: bool = False) -> Any:
        Y = self.xp.exp(X)
        if training:
            self._cache = Y
        return Y

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        Y, self._cache = self._cache, None
        return dY * Y

    def to_onnx(self, graph: Any, X: str) -> str:
        return graph.add_node("Exp", [X])


class HalfPoissonDeviance(Loss):
    """scikit-learn's "poisson" loss of predicted means ``mu > 0``: ``sum_k mean_i (y log(y / mu) - y + mu)``.

    Summed over outputs and averaged over rows (weighted: ``sum_i w_i l_i / sum_i w_i`` with
    ``reduction="mean_with_sample_weight"``), as `sklearn.neural_network`'s ``poisson_loss``.

    Args:
        reduction: ``"sum_over_batch_size"`` or ``"mean_with_sample_weight"``, as for every nnx loss.
    """

    name = "nnx.sklearn.half_poisson_deviance"

    def rows(self, xp: Any, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        """``(l, g)``: the ``(n,)`` row losses (summed over outputs) and their mean's gradient w.r.t. ``y_pred``."""
        y = _targets(xp, y_true, y_pred)
        return _deviance_rows(xp, y, y_pred), (1.0 - y / y_pred) / y_pred.shape[0]


class TrainingHalfPoissonDeviance(HalfPoissonDeviance, name="nnx.sklearn.training_half_poisson_deviance"):
    """`HalfPoissonDeviance` as the estimator's training step takes it: folded into the `Exp` output layer.

    Folded, the step computes the gradient w.r.t. the log of the mean, ``z``, as scikit-learn
    does: ``(mu - y) / n``. Through the `Exp` layer it would be ``(1 - y / mu) / n * mu``: the
    same number, except where ``mu = exp(z)`` underflows to 0 (``z`` below about -88 in
    float32), where that is ``-inf * 0 = NaN`` and the fit diverges. Only training folds:
    the fitted network's own loss stays `HalfPoissonDeviance`, so that metrics see means.
    """

    def fold_output_layer(self, layer: L.Layer) -> Loss | None:
        """The loss of the inputs of `layer` (the network's last) where it is the `Exp` output, else None."""
        return HalfPoissonDevianceOfLog(reduction=self.reduction) if type(layer) is Exp else None


class HalfPoissonDevianceOfLog(HalfPoissonDeviance, name="nnx.sklearn.half_poisson_deviance_of_log"):
    """`HalfPoissonDeviance` of ``mu = exp(z)`` given ``z``, the input of the `Exp` output layer.

    The value is that of ``mu``, as scikit-learn computes it; the gradient w.r.t. ``z`` is
    scikit-learn's ``(mu - y) / n``, finite where ``mu`` underflows to 0.
    """

    def rows(self, xp: Any, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        """``(l, g)``: the ``(n,)`` row losses of ``exp(y_pred)`` and their mean's gradient w.r.t. ``y_pred``."""
        y = _targets(xp, y_true, y_pred)
        mu = xp.exp(y_pred)
        return _deviance_rows(xp, y, mu), (mu - y) / y_pred.shape[0]


def _targets(xp: Any, y_true: Any, y_pred: Any) -> Any:
    """``y_true`` shaped like the 2-D ``y_pred`` and in its dtype, or ValueError."""
    if y_pred.ndim != 2:
        raise ValueError(f"y_pred must have shape (n_samples, n_outputs), got {tuple(y_pred.shape)}")
    y = get_backend(y_pred).asarray(y_true, dtype=y_pred.dtype, argname="y_true")
    if y.ndim == 1:
        y = xp.reshape(y, (-1, 1))
    if tuple(y.shape) != tuple(y_pred.shape):
        raise ValueError(f"y_true and y_pred must have the same shape, got y_true {tuple(y.shape)} and "
                         f"y_pred {tuple(y_pred.shape)}")
    return y


def _deviance_rows(xp: Any, y: Any, mu: Any) -> Any:
    """Row sums of ``y log(y / mu) - y + mu``, with scipy's ``xlogy``: 0 where ``y == 0``."""
    positive = y > 0
    ratio = xp.where(positive, y, xp.ones_like(y)) / mu
    elements = xp.where(positive, y * xp.log(ratio), xp.zeros_like(y)) - y + mu
    return xp.sum(elements, axis=1)
