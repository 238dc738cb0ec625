"""Figures for training: activations, loss and metric history, gradient history, decision boundaries.

matplotlib is imported only when a function here runs (install the ``plot`` extra).
Without a display (no ``DISPLAY``/``WAYLAND_DISPLAY`` on Linux, or ``MPLBACKEND``
unset in CI), the non-interactive Agg backend is selected before pyplot loads,
so every function works headless; a backend the user chose (``matplotlib.use``,
a matplotlibrc) is kept. Each returns the matplotlib ``Figure``; save it
with ``fig.savefig("out.png")`` and release it with ``matplotlib.pyplot.close(fig)``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np

from .backends import backend_name_of, get_backend
from .layers import ACTIVATIONS, Sigmoid, Softmax

__all__ = ["plot_activations", "plot_decision_boundary", "plot_gradients", "plot_history"]


def _pyplot() -> Any:
    """pyplot, with the Agg backend chosen first when no display is available."""
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("nnx.plot needs matplotlib: pip install 'nnx-mlp[plot]'") from exc
    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND") and _headless() \
            and not _backend_chosen(matplotlib):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _backend_chosen(matplotlib: Any) -> bool:
    """Whether a backend was chosen (``matplotlib.use``, a matplotlibrc), rather than left for matplotlib to pick:
    a chosen one ("pgf", "svg", a user's own) decides how the user's figures are written and is left alone."""
    try:
        return matplotlib.get_backend(auto_select=False) is not None  # matplotlib >= 3.10
    except TypeError:  # older: the unresolved setting is a sentinel object
        return matplotlib.rcParams._get("backend") is not matplotlib.rcsetup._auto_backend_sentinel


def _headless() -> bool:
    if sys.platform.startswith("linux") or "bsd" in sys.platform:
        return not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return False  # macOS and Windows always have a window system


def _figure(n_panels: int, width: float = 4.2, height: float = 3.4, sharex: bool = False) -> tuple[Any, list]:
    plt = _pyplot()
    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, height), squeeze=False, sharex=sharex)
    return fig, list(axes[0])


@contextlib.contextmanager
def _closed_on_error(fig: Any, owned: bool = True) -> Iterator[None]:
    """Close `fig` (when this call made it) if drawing it fails: pyplot keeps every figure it made until
    ``plt.close``, and one never handed back to the caller could not be closed but by ``plt.close("all")``."""
    try:
        yield
    except BaseException:
        if owned:
            _pyplot().close(fig)
        raise


# -- activations ----------------------------------------------------------------------------

def plot_activations(names: Sequence[str] = ("sigmoid", "tanh", "relu", "leaky_relu"),
                     x_range: tuple[float, float] = (-5.0, 5.0), num: int = 401) -> Any:
    """Activation functions (left) and their derivatives (right) over `x_range`.

    Args:
        names: elementwise activations in `nnx.layers.ACTIVATIONS` (sigmoid, tanh, relu, leaky_relu,
            softplus, identity, and the aliases logistic and linear).
        x_range: the (low, high) interval of inputs.
        num: points per curve.
    """
    elementwise = {name: cls for name, cls in ACTIVATIONS.items() if cls.derivative is not None}
    if isinstance(names, str):
        names = (names,)
    unknown = [n for n in names if n not in elementwise]
    if unknown or not names:
        raise ValueError(f"unknown activation(s) {unknown}; valid names: {sorted(elementwise)}")
    low, high = (float(v) for v in x_range)
    if not low < high:
        raise ValueError(f"x_range must be (low, high) with low < high, got {x_range!r}")
    x = np.linspace(low, high, num)
    fig, (ax_f, ax_d) = _figure(2)
    with _closed_on_error(fig):
        for name in names:
            cls = elementwise[name]
            fn, deriv = cast(Callable[..., Any], cls.function), cast(Callable[..., Any], cls.derivative)
            line, = ax_f.plot(x, np.asarray(fn(x)), label=name)
            ax_d.plot(x, np.asarray(deriv(x)), color=line.get_color(), label=f"{name}'")
        ax_f.set(title="activation", xlabel="x", ylabel="f(x)")
        ax_d.set(title="derivative", xlabel="x", ylabel="f'(x)")
        for ax in (ax_f, ax_d):
            ax.axhline(0.0, color="0.8", linewidth=0.8, zorder=0)
            ax.axvline(0.0, color="0.8", linewidth=0.8, zorder=0)
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
    return fig


# -- history --------------------------------------------------------------------------------------

def plot_history(history: Any, metrics: Sequence[str] | None = None) -> Any:
    """Loss and metrics per epoch, training (solid) against validation (dashed), one panel each.

    Args:
        history: the `History` that `fit` returns, or a dict name -> list of values
            (``history.history``, Keras style).
        metrics: names to draw (the ``val_`` partner is added when recorded; a ``val_`` name
            draws its metric so); None draws the loss and every recorded training metric.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict) or not logs:
        raise ValueError("history must be a History or a non-empty dict of name -> per-epoch values")
    longest = max((len(v) for v in logs.values() if hasattr(v, "__len__")), default=0)
    available = [k for k in logs if not k.startswith("val_")]
    available += [k[4:] for k in logs if k.startswith("val_") and k[4:] not in available]
    if metrics is None:
        names = sorted(available, key=lambda k: (k != "loss", k == "lr"))
    else:
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        # "val_accuracy" (a key of history.history) draws that metric: its validation curve with its training one
        names = [m[4:] if isinstance(m, str) and m.startswith("val_") and m[4:] in available else m for m in names]
        names = list(dict.fromkeys(names))
        missing = [m for m in names if m not in available]
        if missing or not names:
            raise ValueError(f"history has no {missing}; recorded: {sorted(logs)}")
    fig, axes = _figure(len(names), sharex=True)
    with _closed_on_error(fig):
        for ax, name in zip(axes, names, strict=True):
            for key, style, label in ((name, "-", "train"), (f"val_{name}", "--", "validation")):
                if key not in logs:
                    continue
                values = np.asarray(logs[key], dtype=float)
                x = _epoch_axis(history, key, values.size, longest)
                ax.plot(x, values, style, marker="." if values.size < 30 else None, label=label)
            ax.set(title=name, xlabel="epoch")
            if name == "lr":
                _rate_scale(ax, np.asarray(logs[name], dtype=float))
            ax.grid(alpha=0.3)
            ax.legend()
        fig.tight_layout()
    return fig


def _rate_scale(ax: Any, rates: Any) -> None:
    """A log axis for learning rates; symmetric-log, linear below the smallest positive rate, where one is 0 (a
    warm-up from 0), which a log axis would not draw."""
    positive = rates[rates > 0]
    if positive.size == rates.size:
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)


def _epoch_axis(history: Any, key: str, size: int, longest: int) -> np.ndarray:
    """The 1-based epochs of `key`'s values: those it was logged in (a `History` knows them: a key a callback
    adds on some epochs only, a run resumed at a later epoch), else 1..size."""
    epochs_of = getattr(history, "epochs_of", None)
    if callable(epochs_of):
        logged = np.asarray(epochs_of(key))
        if logged.size == size:
            return logged + 1
    elif size != longest:  # a plain dict says nothing of which epochs a shorter list belongs to
        warnings.warn(f"plot_history: {key!r} has {size} values where other keys have {longest}; they are drawn "
                      f"at epochs 1..{size}, which may not be the epochs they were logged in (pass the History "
                      "that fit returned: it knows them)", stacklevel=3)
    return np.arange(1, size + 1)


# -- gradients ---------------------------------------------------------------------------------------

_STAT_TITLES = {"mean": "mean |gradient|", "max": "max |gradient|", "norm": "gradient L2 norm"}


def plot_gradients(analyzer_or_history: Any, stats: Sequence[str] = ("mean", "max", "norm"),
                   layer_names: Sequence[str] | None = None) -> Any:
    """Per-layer gradient magnitude over training steps, on a log scale.

    Args:
        analyzer_or_history: a `nnx.callbacks.GradientAnalyzer` after training, or the dict its
            `history()` returns (name -> array of shape (steps, layers)).
        stats: which of "mean", "max", "norm" to draw, one panel each; weights (every parameter
            but the bias) are solid lines, biases dashed, one colour per layer with parameters (a layer
            whose only parameter is a bias: one dashed line).
        layer_names: legend labels, one per layer with parameters (default: the analyzer's `layer_names`,
            else "layer i").

    With an analyzer, its vanish/explode thresholds are drawn as grey lines and epoch
    boundaries as faint vertical lines.
    """
    analyzer = analyzer_or_history if hasattr(analyzer_or_history, "history") and \
        callable(analyzer_or_history.history) else None
    hist = analyzer.history() if analyzer is not None else analyzer_or_history
    if not isinstance(hist, dict) or "weight_mean" not in hist:
        raise TypeError("plot_gradients needs a GradientAnalyzer or the dict from its history(), "
                        f"got {type(analyzer_or_history).__name__}")
    if isinstance(stats, str):
        stats = (stats,)
    bad = [s for s in stats if s not in _STAT_TITLES]
    if bad or not stats:
        raise ValueError(f"unknown gradient statistic(s) {bad}; valid: {list(_STAT_TITLES)}")
    steps, n_layers = np.shape(hist["weight_mean"])
    if steps == 0:
        raise ValueError("no gradient history yet: train with the GradientAnalyzer among the callbacks first")
    if layer_names is None:
        layer_names = cast(list[str], getattr(analyzer, "layer_names", None) or [f"layer {j}" for j in range(n_layers)])
    elif len(layer_names) != n_layers:  # fewer would leave layers out of the figure, and the legend beside them
        raise ValueError(f"layer_names has {len(layer_names)} names for {n_layers} layers with parameters")
    plt = _pyplot()
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    x = np.arange(1, steps + 1)
    # what each layer's columns hold (known from the analyzer): a layer without a bias gets no dashed line and no
    # legend entry for one; a layer whose only parameter is a bias has it in the weight columns, drawn dashed as "bias"
    owned = getattr(analyzer, "parameter_names", None) or []
    is_bias = [[n.rsplit(".", 1)[-1] == "bias" for n in names] for names in owned]
    has_bias = [j >= len(owned) or any(is_bias[j]) for j in range(len(layer_names))]
    bias_only = [j < len(owned) and bool(is_bias[j]) and all(is_bias[j]) for j in range(len(layer_names))]
    fig, axes = _figure(len(stats), width=4.6, sharex=True)
    with _closed_on_error(fig):
        for ax, stat in zip(axes, stats, strict=True):
            for j, name in enumerate(layer_names):
                color = colors[j % len(colors)]
                for kind, style in (("weight", "-"), ("bias", "--")):
                    if kind == "bias" and (bias_only[j] or not has_bias[j]):
                        continue
                    values = np.asarray(hist[f"{kind}_{stat}"], dtype=float)[:, j]
                    # zeros (a dead layer) cannot be drawn on a log axis; leave gaps instead
                    shown = np.where(values > 0, values, np.nan)
                    shown_as = "bias" if bias_only[j] else kind
                    ax.plot(x, shown, "--" if bias_only[j] else style, color=color, linewidth=1.2,
                            label=f"{name} {shown_as}")
            if analyzer is not None:
                ax.axhline(analyzer.explode_threshold, color="0.5", linestyle=":", linewidth=1)
                if stat == "mean":
                    ax.axhline(analyzer.vanish_threshold, color="0.5", linestyle=":", linewidth=1)
                _epoch_lines(ax, getattr(analyzer, "step_epochs", []))
            ax.set_yscale("log")
            ax.set(title=_STAT_TITLES[stat], xlabel="step")
            ax.grid(alpha=0.3, which="both")
        axes[0].legend(fontsize="small")
        fig.tight_layout()
    return fig


def _epoch_lines(ax: Any, step_epochs: Sequence[int]) -> None:
    epochs = np.asarray(step_epochs)
    if epochs.size < 2:
        return
    starts = np.flatnonzero(np.diff(epochs)) + 1.5  # between the last step of one epoch and the next
    if starts.size <= 50:  # more would only paint the panel grey
        for s in starts:
            ax.axvline(s, color="0.9", linewidth=0.8, zorder=0)


# -- decision boundary ---------------------------------------------------------------------------------

def plot_decision_boundary(model: Any, X: Any, y: Any, resolution: int = 200, margin: float = 0.5,
                           ax: Any = None) -> Any:
    """The regions a classifier with 2 input features assigns to each class, with the data on top.

    Args:
        model: an `nnx.Sequential` (one sigmoid output or several class scores), or any object
            with `predict_proba` / `predict` taking a NumPy (n, 2) array, e.g. `nnx.sklearn.MLPClassifier`.
        X: the (n, 2) points to draw.
        y: their labels (0/1, class indices, one-hot rows, or the classifier's labels).
        resolution: grid points per axis.
        margin: padding around the data, in data units.
        ax: draw into this Axes instead of a new figure.

    Binary models are shaded by the probability of class 1 with the 0.5 contour drawn (one output
    is a probability after a final Sigmoid, logits where the model's loss reads logits, else judged
    by its range); multi-class models by the predicted class.
    """
    X = np.asarray(_on_host(X), dtype=float)
    y = np.asarray(_on_host(y))
    if X.ndim != 2 or X.shape[1] != 2:
        raise ValueError(f"plot_decision_boundary needs X of shape (n, 2), got {X.shape}")
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot rows (as categorical cross-entropy takes them): their classes
        y = np.argmax(y, axis=1)
    elif y.ndim > 1 and y.size != y.shape[0]:
        raise ValueError(f"y must hold one label per sample (n,), (n, 1) or one-hot (n, k), got shape {y.shape}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} samples but y has {y.shape[0]}")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an int >= 2, got {resolution!r}")
    (x0, y0), (x1, y1) = X.min(axis=0) - margin, X.max(axis=0) + margin
    gx, gy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    scores, classes = _scores(model, grid)

    owned = ax is None  # a figure the caller gave stays open whatever happens: it is theirs
    if owned:
        fig, (ax,) = _figure(1, width=5.0, height=4.4)
    else:
        fig = ax.figure
    with _closed_on_error(fig, owned):
        if scores.shape[1] == 1:
            prob = scores[:, 0].reshape(gx.shape)
            filled = ax.contourf(gx, gy, prob, levels=np.linspace(0.0, 1.0, 11), cmap="RdBu_r", alpha=0.6)
            ax.contour(gx, gy, prob, levels=[0.5], colors="k", linewidths=1.2)
            fig.colorbar(filled, ax=ax, label="P(class 1)")
            color_index = _label_index(y, classes)
            ax.scatter(X[:, 0], X[:, 1], c=color_index, cmap="RdBu_r", vmin=0, vmax=1, edgecolors="k", s=22)
        else:
            k = scores.shape[1]
            region = scores.argmax(axis=1).reshape(gx.shape)
            ax.contourf(gx, gy, region, levels=np.arange(k + 1) - 0.5, cmap="tab10", vmin=0, vmax=9, alpha=0.35)
            ax.scatter(X[:, 0], X[:, 1], c=_label_index(y, classes), cmap="tab10", vmin=0, vmax=9,
                       edgecolors="k", s=22)
        ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="x1", ylabel="x2", title="decision boundary")
    return fig


def _on_host(a: Any) -> Any:
    """A library's array as NumPy, through its backend: NumPy refuses to read device memory itself (a CUDA tensor's
    ``np.asarray`` raises "can't convert cuda:0 device type tensor to numpy", a CuPy array's "Implicit conversion to
    a NumPy array is not allowed"), and a model trained on a GPU is plotted with the data it was trained on."""
    if backend_name_of(a) in (None, "numpy"):
        return a
    return get_backend(a).to_host(a)


def _scores(model: Any, grid: np.ndarray) -> tuple[np.ndarray, Any]:
    """(n, 1) probability of class 1, or (n, k) class scores, as NumPy; and the label values if known."""
    classes = getattr(model, "classes_", None)
    if hasattr(model, "predict_proba"):
        proba = np.asarray(model.predict_proba(grid), dtype=float)
        return (proba[:, 1:2] if proba.shape[1] == 2 else proba), classes
    out = model.predict(grid)
    backend = getattr(model, "backend", None)
    out = backend.to_host(out) if backend is not None else np.asarray(out)
    out = np.asarray(out, dtype=float)
    if out.ndim == 1:
        out = out[:, None]
    if out.shape[1] == 1 and _reads_logits(model, out):
        out = 1.0 / (1.0 + np.exp(-out))
    return out, classes


def _reads_logits(model: Any, out: np.ndarray) -> bool:
    """Whether one output column holds logits: as the model's layers and loss say, else by its range."""
    last = model.output_layer() if callable(getattr(model, "output_layer", None)) else None
    if isinstance(last, (Sigmoid, Softmax)):
        return False
    from_logits = getattr(getattr(model, "loss", None), "from_logits", None)
    if isinstance(from_logits, bool):  # how fit read the outputs (a layer of one's own may give probabilities)
        return from_logits
    return bool(out.min() < 0.0 or out.max() > 1.0)  # unknown: only values outside [0, 1] are surely logits


def _label_index(y: np.ndarray, classes: Any) -> np.ndarray:
    """Labels as 0..k-1 for colouring: via the classifier's classes_ when it has them."""
    y = np.ravel(y)
    if classes is not None:
        return np.searchsorted(np.asarray(classes), y)
    if y.dtype.kind in "biuf":
        return y.astype(float)
    return np.unique(y, return_inverse=True)[1]
