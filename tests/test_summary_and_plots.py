"""What nnx shows the user: summary counts and plot_history's epoch axis."""

from __future__ import annotations

import numpy as np
import pytest

import nnx


@pytest.fixture
def plot():
    pytest.importorskip("matplotlib")
    from nnx import plot

    yield plot
    import matplotlib.pyplot as plt

    plt.close("all")


class _SummaryAndPlotsEvenEpochs(nnx.callbacks.Callback):
    """Logs a value on odd-indexed epochs only, as a user's every-other-epoch probe does."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch % 2 == 1:
            logs["probe"] = float(epoch)


def test_plot_history_draws_a_key_logged_on_some_epochs_at_those_epochs(plot):
    # found in review: a key a callback logs on epochs 2 and 4 was drawn at epochs 1 and 2 without a word
    X, y = np.random.default_rng(0).random((8, 2)), np.zeros((8, 1))
    model = nnx.Sequential(nnx.Dense(2, 1), seed=0)
    history = model.fit(X, y, epochs=4, callbacks=[_SummaryAndPlotsEvenEpochs()], verbose=0)
    assert history.epochs_of("probe") == [1, 3] and history.epochs_of("loss") == [0, 1, 2, 3]
    with pytest.raises(KeyError, match="recorded"):
        history.epochs_of("f1")
    probe = plot.plot_history(history, "probe").axes[0].get_lines()[0]
    np.testing.assert_array_equal(probe.get_xdata(), [2, 4])
    np.testing.assert_array_equal(probe.get_ydata(), [1.0, 3.0])
    # a resumed run goes on from the epochs already trained
    again = model.fit(X, y, epochs=2, verbose=0)
    np.testing.assert_array_equal(plot.plot_history(again, "loss").axes[0].get_lines()[0].get_xdata(), [5, 6])
    # a plain dict cannot say which epochs a shorter list belongs to: said, not drawn silently misaligned
    with pytest.warns(UserWarning, match=r"'probe' has 2 values where other keys have 4"):
        plot.plot_history(history.history, "probe")


def test_plot_history_draws_a_learning_rate_of_zero(plot):
    """A warm-up from lr 0 vanished from the lr panel (a log axis cannot show 0); the axis is then symmetric-log,
    linear below the smallest positive rate, so every epoch is drawn."""
    history = {"loss": [1.0, 0.8, 0.7, 0.6], "lr": [0.0, 0.01, 0.001, 1e-4]}
    ax = plot.plot_history(history, "lr").axes[0]
    assert ax.get_yscale() == "symlog" and ax.get_ylim()[0] <= 0.0
    assert plot.plot_history({"loss": [1.0], "lr": [0.01]}, "lr").axes[0].get_yscale() == "log"


class SummaryAndPlotsScale(nnx.Layer):
    """A user's layer with one parameter and one buffer."""

    def build(self, input_shape):
        self.s = self.add_parameter("s", input_shape, init="ones")
        self.r = self.add_buffer("r", input_shape, init="zeros")

    def forward(self, X, training=False):
        return X * self.s.value


def test_summary_counts_nested_residual_batchnorm_and_a_users_buffer():
    inner = nnx.Sequential(nnx.Dense(3, 4), nnx.BatchNorm(4), nnx.ReLU(), seed=0)
    model = nnx.Sequential(inner, nnx.Residual(nnx.Dense(4, 4), nnx.Tanh()), SummaryAndPlotsScale(),
                           nnx.Dense(4, 2), seed=0)
    for shown in (model, model.to(dtype="float64")):
        lines: list[str] = []
        shown.summary(print_fn=lines.append)
        text = lines[0].splitlines()
        assert text[1].split()[-1] == "24" and text[5].split()[-1] == "20"  # the containers sum their layers
        assert text[-1].startswith("trainable parameters: 58; buffers: 12;")
