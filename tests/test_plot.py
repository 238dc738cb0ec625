"""nnx.plot: every function returns a Figure, draws what it says, and works without a display."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import nnx  # noqa: E402
from nnx import plot  # noqa: E402
from nnx.callbacks import GradientAnalyzer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


def _xor(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 2))
    return X, (X[:, 0] * X[:, 1] > 0).astype(float)


def test_headless_import_uses_agg_and_saves_png(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    script = (
        "import matplotlib, sys; from nnx import plot\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'imported eagerly'\n"
        f"fig = plot.plot_activations(); fig.savefig({str(tmp_path / 'a.png')!r})\n"
        "print(matplotlib.get_backend())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == "agg"
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def _curves(ax):
    """The labelled data lines of an Axes (not the zero and threshold guides)."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_plot_activations_draws_functions_and_derivatives():
    from matplotlib.figure import Figure

    fig = plot.plot_activations(x_range=(-3, 3))
    assert isinstance(fig, Figure)
    ax_f, ax_d = fig.axes
    assert [line.get_label() for line in _curves(ax_f)] == ["sigmoid", "tanh", "relu", "leaky_relu"]
    x, s = _curves(ax_f)[0].get_data()
    assert x[0] == -3 and x[-1] == 3
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-x)), rtol=1e-12)
    _, ds = _curves(ax_d)[0].get_data()
    np.testing.assert_allclose(ds, s * (1 - s), rtol=1e-9, atol=1e-15)
    _, drelu = _curves(ax_d)[2].get_data()
    assert set(np.unique(drelu)) == {0.0, 1.0}
    assert len(_curves(plot.plot_activations(names=["softplus"]).axes[0])) == 1
    with pytest.raises(ValueError, match="unknown activation.*'swish'.*valid names"):
        plot.plot_activations(names=["swish"])
    with pytest.raises(ValueError, match="low < high"):
        plot.plot_activations(x_range=(1, -1))


def test_plot_history_train_against_validation():
    X, y = _xor()
    model = nnx.Sequential(nnx.Dense(2, 4), nnx.Tanh(), nnx.Dense(4, 1), nnx.Sigmoid(), seed=0)
    history = model.fit(X, y, epochs=3, metrics=["accuracy"], validation_split=0.25,
                        callbacks=[nnx.callbacks.StepDecay(1, 0.5)])
    fig = plot.plot_history(history)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "accuracy", "lr"]
    loss_ax = fig.axes[0]
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train", "validation"]
    np.testing.assert_allclose(loss_ax.get_lines()[1].get_ydata(), history["val_loss"])
    np.testing.assert_array_equal(loss_ax.get_lines()[0].get_xdata(), [1, 2, 3])
    assert fig.axes[2].get_yscale() == "log"
    # a plain dict works, and metrics picks panels
    fig = plot.plot_history(history.history, metrics=["accuracy"])
    assert [ax.get_title() for ax in fig.axes] == ["accuracy"]
    with pytest.raises(ValueError, match=r"history has no \['f1'\]"):
        plot.plot_history(history, metrics=["f1"])
    with pytest.raises(ValueError, match="non-empty"):
        plot.plot_history({})


def test_plot_gradients_from_analyzer_and_from_arrays():
    X, y = _xor()
    model = nnx.Sequential(nnx.Dense(2, 4), nnx.ReLU(), nnx.Dense(4, 4), nnx.Tanh(), nnx.Dense(4, 1),
                           nnx.Sigmoid(), seed=0)
    analyzer = GradientAnalyzer()
    with pytest.raises(ValueError, match="no gradient history"):
        analyzer.plot()
    model.fit(X, y, epochs=2, batch_size=16, callbacks=[analyzer])
    fig = analyzer.plot()
    assert [ax.get_title() for ax in fig.axes] == ["mean |gradient|", "max |gradient|", "gradient L2 norm"]
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    data_lines = _curves(ax)
    assert len(data_lines) == 6  # 3 layers x (weight, bias)
    assert data_lines[0].get_label() == "0:Dense(2, 4) weight"
    np.testing.assert_allclose(data_lines[0].get_ydata(), analyzer.history()["weight_mean"][:, 0])

    fig = plot.plot_gradients(analyzer.history(), stats="norm")
    assert len(fig.axes) == 1
    assert _curves(fig.axes[0])[0].get_label() == "layer 0 weight"
    with pytest.raises(ValueError, match="unknown gradient statistic"):
        plot.plot_gradients(analyzer, stats=["median"])
    with pytest.raises(TypeError, match="GradientAnalyzer"):
        plot.plot_gradients([1, 2, 3])



def test_plot_gradients_refuses_a_name_per_layer_of_another_count():
    # found in review: one name for two layers drew the first and left the second out without a word; three
    # failed with numpy's IndexError
    X, y = _xor()
    model = nnx.Sequential(nnx.Dense(2, 4), nnx.Tanh(), nnx.Dense(4, 1), nnx.Sigmoid(), seed=0)
    analyzer = GradientAnalyzer()
    model.fit(X, y, epochs=1, callbacks=[analyzer])
    for names in (["first"], ["a", "b", "c"]):
        with pytest.raises(ValueError, match=rf"layer_names has {len(names)} names for 2 layers with parameters"):
            plot.plot_gradients(analyzer, layer_names=names)
    assert _curves(plot.plot_gradients(analyzer, layer_names=["in", "out"]).axes[0])[2].get_label() == "out weight"

def test_plot_decision_boundary_xor(backend, dtype):
    X, y = _xor(n=32, seed=1)  # the shapes test_callbacks uses, so JAX reuses its compiled operations
    model = nnx.Sequential(nnx.Dense(2, 4), nnx.Tanh(), nnx.Dense(4, 1), nnx.Sigmoid(),
                           backend=backend, dtype=dtype, seed=0)
    model.fit(X, y, optimizer="adam", lr=0.05, epochs=5, batch_size=8)
    fig = plot.plot_decision_boundary(model, X, y, resolution=40)
    ax = fig.axes[0]
    assert ax.get_title() == "decision boundary"
    assert len(ax.collections) >= 2  # the shaded regions and the points
    assert len(fig.axes) == 2  # with a colour bar for P(class 1)


def test_plot_decision_boundary_multiclass_and_sklearn_style_models():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = np.argmax(np.column_stack([X[:, 0], X[:, 1], -X[:, 0] - X[:, 1]]), axis=1)
    model = nnx.Sequential(nnx.Dense(2, 3), nnx.Softmax(), seed=0)
    model.fit(X, y, epochs=2)
    fig = plot.plot_decision_boundary(model, X, y, resolution=30)
    assert len(fig.axes) == 1

    class Proba:  # anything with predict_proba and classes_, such as nnx.sklearn.MLPClassifier
        classes_ = np.array(["no", "yes"])

        def predict_proba(self, Z):
            p = 1 / (1 + np.exp(-Z[:, 0]))
            return np.column_stack([1 - p, p])

    labels = np.where(X[:, 0] > 0, "yes", "no")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    assert plot.plot_decision_boundary(Proba(), X, labels, resolution=20, ax=ax) is fig
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        plot.plot_decision_boundary(model, np.zeros((5, 3)), np.zeros(5))


def test_plot_decision_boundary_takes_one_hot_labels_as_their_classes():
    # one-hot y (as "ce" takes it) failed in matplotlib: "'c' argument has 90 elements ... size 30"
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 2))
    labels = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    model = nnx.Sequential(nnx.Dense(2, 3), nnx.Softmax(), seed=0)
    by_index = plot.plot_decision_boundary(model, X, labels, resolution=10)
    one_hot = plot.plot_decision_boundary(model, X, np.eye(3)[labels], resolution=10)
    np.testing.assert_array_equal(one_hot.axes[0].collections[-1].get_array(),
                                  by_index.axes[0].collections[-1].get_array())
    with pytest.raises(ValueError, match=r"one label per sample.*\(30, 1, 2\)"):
        plot.plot_decision_boundary(model, X, np.zeros((30, 1, 2)))


def test_plot_history_takes_a_val_name_as_its_metric():
    # "val_accuracy" was refused with "history has no ['val_accuracy']; recorded: [..., 'val_accuracy', ...]"
    history = {"loss": [1.0, 0.5], "accuracy": [0.5, 0.7], "val_loss": [1.1, 0.6], "val_accuracy": [0.4, 0.6]}
    fig = plot.plot_history(history, ["val_accuracy", "accuracy"])
    assert [ax.get_title() for ax in fig.axes] == ["accuracy"]
    assert [line.get_label() for line in _curves(fig.axes[0])] == ["train", "validation"]


def test_plot_decision_boundary_reads_a_logit_output_as_logits_whatever_its_range():
    # logits that all fell in [0, 1] were drawn as probabilities: a boundary at logit 0.5, where P is 0.62
    model = nnx.Sequential(nnx.Dense(2, 1), seed=0)
    model.load_state_dict({"0.weight": np.array([[0.05], [0.0]]), "0.bias": np.array([0.5])})
    X = np.random.default_rng(0).uniform(-3, 3, (20, 2))
    model.fit(X, np.ones(20), loss=nnx.losses.BinaryCrossEntropy(from_logits=True), optimizer="sgd", lr=1e-9)
    fig = plot.plot_decision_boundary(model, X, np.ones(20), resolution=20)
    boundary = fig.axes[0].collections[1]  # the P = 0.5 contour: nowhere in view, P > 0.57 everywhere
    assert [float(v) for v in boundary.levels] == [0.5] and all(len(p.vertices) == 0 for p in boundary.get_paths())


class _Offset(nnx.Layer):
    """A learned per-feature offset: a layer whose one parameter is named ``bias``."""

    def build(self, input_shape):
        self.bias = self.add_parameter("bias", input_shape, init="zeros")

    def forward(self, X, training=False):
        return X + self.bias.value

    def backward(self, dY, need_dX=True):
        self.bias.grad = self.xp.sum(dY, axis=0)
        return dY


def test_plot_gradients_labels_a_bias_only_layer_by_what_its_curve_shows():
    # found in review: a layer whose only parameter is a bias has its statistics in the analyzer's weight columns
    # (its bias columns are zeros), yet the figure labelled that curve "weight" and drew an empty "bias" line
    X, y = _xor()
    model = nnx.Sequential(nnx.Dense(2, 4), nnx.Tanh(), _Offset(), nnx.Dense(4, 1), nnx.Sigmoid(), seed=0)
    analyzer = GradientAnalyzer(warn=False)
    model.fit(X, y, epochs=1, batch_size=16, callbacks=[analyzer])
    assert analyzer.parameter_names[1] == ["2.bias"]
    labels = [line.get_label() for line in _curves(analyzer.plot(stats="mean").axes[0])]
    assert labels == ["0:Dense(2, 4) weight", "0:Dense(2, 4) bias", "2:_Offset(4) bias",
                      "3:Dense(4, 1) weight", "3:Dense(4, 1) bias"]
