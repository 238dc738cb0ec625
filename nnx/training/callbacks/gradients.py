"""`GradientAnalyzer`: per-layer gradient statistics each step, with warnings and the glue to plot them."""

from __future__ import annotations

import math
import warnings
from typing import Any

import array_api_compat

from ... import _validate as check
from ...protocols import Model
from .base import Callback

GRADIENT_STATS = ("weight_mean", "weight_max", "weight_norm", "bias_mean", "bias_max", "bias_norm")


class GradientAnalyzer(Callback):
    """Per layer with parameters and per step: mean |g|, max |g| and L2 norm of its weight and bias gradients.

    Each step's statistics are of the gradients backward computed for that batch (the loss's and
    the regularizers' penalty's; an optimizer's ``weight_decay`` is the update's, not counted), before
    the gradient transforms: not clipped (``clip_norm``/``clip_value`` would hide the
    explosions it is there to show), one row per batch under ``accumulate`` (not the mean the
    update applies), and under data-parallel training the rank's own slice of the batch.

    Every layer that has trained parameters of its own gets a column, built-in or a user's,
    at any depth inside containers (named by path, ``"2.0:Dense(8, 8)"``). Its
    "weight" statistics cover all of its parameters except the one named ``bias``
    (for `Dense` that is its weight matrix; for a layer with several such parameters,
    the statistics of all their entries together), and its "bias" statistics cover the
    parameter named ``bias`` (zeros when the layer has none). `layer_names` labels the
    columns ``"<index>:<Class>(<shape of its first parameter>)"``, e.g. ``"0:Dense(2, 4)"``,
    and `parameter_names` lists which parameters feed each column.

    Args:
        vanish_threshold: warn when a layer's mean |weight gradient| over an epoch falls below it.
        explode_threshold: warn when a layer's max |gradient| in an epoch exceeds it (or is not finite).
        warn: emit `warnings.warn` for those; events are recorded in `events` either way.

    The statistics are computed on the device right after each step and kept there;
    once per epoch they are stacked into one array and moved to the host in a single
    transfer, so the analyzer adds no per-step device sync. A layer warns when it
    enters the vanishing or exploding state (again only after it has left it).

    `history()` returns the statistics as ``(steps, layers)`` NumPy arrays,
    `layer_names` names the columns, `step_epochs` gives each step's epoch, and
    `plot()` draws them (`nnx.plot.plot_gradients`). Statistics accumulate over
    several `fit` calls on the same model; `reset()` clears them.
    """

    def __init__(self, vanish_threshold: float = 1e-7, explode_threshold: float = 1e3, warn: bool = True) -> None:
        self.vanish_threshold = check.positive("GradientAnalyzer vanish_threshold", vanish_threshold)
        self.explode_threshold = check.positive("GradientAnalyzer explode_threshold", explode_threshold)
        if self.vanish_threshold >= self.explode_threshold:
            raise ValueError(f"GradientAnalyzer vanish_threshold ({vanish_threshold}) must be below "
                             f"explode_threshold ({explode_threshold})")
        self.warn = warn
        self._model_id: int | None = None
        self.reset()

    def reset(self) -> None:
        """Forget all recorded statistics and events."""
        self.layer_names: list[str] = []
        self.step_epochs: list[int] = []
        self.events: list[dict[str, Any]] = []
        self._chunks: list[Any] = []  # host arrays (steps, layers, 6), one per epoch
        self._pending: list[Any] = []  # device arrays (layers * 6,), one per step of the current epoch
        self._pending_epochs: list[int] = []
        self._batch: Any = None  # this batch's statistics, taken by on_backward before the gradient transforms
        self._state: dict[tuple[str, str], bool] = {}
        self._layers: list[Any] = []  # (weight-like parameters, bias or None) per column
        self.parameter_names: list[list[str]] = []

    def set_model(self, model: Model) -> None:
        super().set_model(model)
        if self._model_id is not None and self._model_id != id(model):
            self.reset()
        self._model_id = id(model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        layers = [(path, layer) for path, layer in self.model.named_layers() if layer.parameters(recurse=False)]
        if not layers:
            raise ValueError("GradientAnalyzer needs a model with at least one layer that has parameters")
        names = [_column_name(path, layer) for path, layer in layers]
        if self.layer_names and names != self.layer_names:
            self.reset()
        self.layer_names = names
        self._layers = [_split_bias(layer) for _, layer in layers]
        self.parameter_names = [[p.name for p in weights] + ([] if bias is None else [bias.name])
                                for weights, bias in self._layers]
        self._pending, self._pending_epochs, self._batch = [], [], None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = epoch

    def on_backward(self) -> None:
        self._batch = self._stats()

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        # a step refused as not finite (TerminateOnNaN) skips the transforms: p.grad is still the batch's own
        stats, self._batch = (self._stats() if self._batch is None else self._batch), None
        self._pending.append(stats)
        self._pending_epochs.append(self._epoch)

    def _stats(self) -> Any:
        """The statistics of the gradients ``p.grad`` holds now, one device array (layers * 6,)."""
        xp = self.model.xp
        values = []
        for weights, bias in self._layers:
            values.extend(_group_stats(xp, weights))
            values.extend(_group_stats(xp, [] if bias is None else [bias], like=weights[0]))
        return xp.stack(values)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self._flush(epoch)

    def on_train_end(self, logs: dict | None = None) -> None:
        if self._batch is not None and (logs or {}).get("failed"):
            # the step fit refused (not finite) ran its backward, and fit raised before its on_batch_end: its row
            # is kept (the one that explodes), as a callback stopping on it (TerminateOnNaN) keeps it
            self._pending.append(self._batch)
            self._pending_epochs.append(self._epoch)
        self._batch = None
        self._flush(getattr(self, "_epoch", 0))  # steps of an epoch cut short by Ctrl-C or an error

    def _flush(self, epoch: int) -> None:
        if not self._pending:
            return
        xp = self.model.xp
        host = self.model.backend.to_host(xp.stack(self._pending))  # the epoch's one transfer
        self._pending = []
        self.step_epochs.extend(self._pending_epochs)
        self._pending_epochs = []
        hxp = _host_xp()
        chunk = hxp.reshape(hxp.asarray(host, dtype=hxp.float64), (host.shape[0], len(self._layers), 6))
        self._chunks.append(chunk)
        self._check(epoch, chunk)

    def _check(self, epoch: int, chunk: Any) -> None:
        hxp = _host_xp()
        mean_w = hxp.mean(chunk[:, :, 0], axis=0)
        peak = hxp.max(hxp.stack([chunk[:, :, 1], chunk[:, :, 4]], axis=0), axis=(0, 1))
        finite = hxp.all(hxp.isfinite(chunk), axis=(0, 2))
        for j, name in enumerate(self.layer_names):
            exploding = (not bool(finite[j])) or float(peak[j]) > self.explode_threshold
            vanishing = (not exploding) and float(mean_w[j]) < self.vanish_threshold
            for kind, active, value, limit in (
                ("exploding", exploding, float(peak[j]), self.explode_threshold),
                ("vanishing", vanishing, float(mean_w[j]), self.vanish_threshold),
            ):
                was = self._state.get((name, kind), False)
                self._state[(name, kind)] = active
                if not active:
                    continue
                self.events.append({"epoch": epoch, "layer": name, "kind": kind, "value": value})
                if self.warn and not was:
                    what = "max |gradient|" if kind == "exploding" else "mean |weight gradient|"
                    side = "above" if kind == "exploding" else "below"
                    warnings.warn(f"GradientAnalyzer: gradients of layer {name} are {kind} at epoch {epoch + 1}: "
                                  f"{what} = {value:.3g}, {side} the threshold {limit:g}",
                                  RuntimeWarning, stacklevel=2)

    def history(self) -> dict[str, Any]:
        """Name (`GRADIENT_STATS`) -> NumPy array of shape (steps, layers), for the epochs finished so far."""
        hxp = _host_xp()
        n_layers = len(self.layer_names)
        data = hxp.concat(self._chunks, axis=0) if self._chunks else hxp.zeros((0, n_layers, 6))
        return {name: data[:, :, k] for k, name in enumerate(GRADIENT_STATS)}

    @property
    def steps(self) -> int:
        """Steps recorded and brought to the host so far."""
        return sum(chunk.shape[0] for chunk in self._chunks)

    def plot(self, **kwargs: Any) -> Any:
        """A matplotlib Figure of the gradient history (see `nnx.plot.plot_gradients`)."""
        from ...plot import plot_gradients

        return plot_gradients(self, **kwargs)


def _column_name(path: str, layer: Any) -> str:
    """``"0:Dense(2, 4)"``: the layer's path in the model, class and the shape of its first parameter."""
    shape = layer.parameters(recurse=False)[0].shape
    return f"{path}:{type(layer).__name__}({', '.join(map(str, shape))})"


def _split_bias(layer: Any) -> tuple[list[Any], Any]:
    """A layer's own parameters as (the weight-like ones, the one named ``bias`` or None)."""
    weights, bias = [], None
    for p in layer.parameters(recurse=False):
        if bias is None and p.name.rsplit(".", 1)[-1] == "bias":
            bias = p
        else:
            weights.append(p)
    if not weights:  # a layer whose only parameter is a bias: its statistics go in the weight columns
        weights, bias = [bias], None
    return weights, bias


def _group_stats(xp: Any, params: list[Any], like: Any = None) -> list[Any]:
    """`_grad_stats` over all entries of several parameters' gradients together (zeros for none)."""
    if not params:
        return _grad_stats(xp, None, like.value)
    if len(params) == 1:
        return _grad_stats(xp, params[0].grad, params[0].value)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return _grad_stats(xp, None, params[0].value)
    return _grad_stats(xp, xp.concat([xp.reshape(g, (-1,)) for g in grads]), params[0].value)


def _grad_stats(xp: Any, grad: Any, value: Any) -> list[Any]:
    """mean |g|, max |g| and ||g||_2 as 0-d device arrays (zeros when the step left no gradient)."""
    if grad is None:
        zero = xp.zeros((), dtype=value.dtype, device=array_api_compat.device(value))
        return [zero, zero, zero]
    a = xp.abs(grad)
    peak = xp.max(a)
    # scaled by the max so the squares cannot overflow when gradients explode; an infinite max is not a
    # scale (inf / inf is NaN): unscaled, the norm of a gradient with an inf entry is inf, as it is
    scale = xp.where((peak > 0) & (peak < math.inf), peak, xp.ones_like(peak))
    norm = peak * xp.sqrt(xp.sum((a / scale) ** 2))
    return [xp.mean(a), peak, norm]


def _host_xp() -> Any:
    from ...backends import get_backend

    return get_backend("numpy").xp
