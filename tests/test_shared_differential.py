"""Programs shared by equally defined models (or taken again from the table by one model) against JAX's plain loop
(``with_fastpath(False)``): float64, to 1e-12."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.backends import backend_status

ok, why = backend_status("jax")
pytestmark = pytest.mark.skipif(not ok, reason=f"jax not available: {why}")

TOL = 1e-12


class DictScale(nnx.Layer):
    """Multiplies by a setting kept in a plain dict (``self.cfg["k"]``), which a callback changes per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = {"k": 1.0}

    def forward(self, X, training=False):
        return X * self.cfg["k"]

    def backward(self, dY, need_dX=True):
        return dY * self.cfg["k"]


class SetScale(nnx.callbacks.Callback):
    def __init__(self, layer: DictScale, values: list[float]) -> None:
        self.layer, self.values = layer, values

    def on_batch_end(self, batch, logs=None):
        self.layer.cfg["k"] = self.values[batch]


def _weights(fast: bool, other_first: bool) -> np.ndarray:
    be = nnx.get_backend("jax").with_fastpath(fast)
    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((16, 3)), rng.standard_normal((16, 1))

    def fit(model, values):
        model.fit(X, Y, loss="mse", optimizer="sgd", lr=0.1, epochs=1, batch_size=4, shuffle=False,
                  callbacks=[SetScale(model.layers[1], values)])

    def make():
        return nnx.Sequential(nnx.Dense(3, 1), DictScale(), backend=be, dtype="float64", seed=0)

    model = make()
    if other_first:  # an equally defined model traces the step for k = 1; `model` takes it without tracing
        other = make()
        fit(other, [1.0] * 4)
        fit(model, [2.0, 3.0, 4.0, 5.0])
    else:  # k goes back to 1: the program traced for it is taken again from the table
        fit(model, [2.0, 1.0, 5.0, 6.0])
    return np.asarray(model.parameters()[0].value)


@pytest.mark.parametrize("other_first", [False, True], ids=["taken_again", "taken_from_other"])
def test_dict_setting_changed_after_a_program_is_taken_from_the_table(other_first):
    """A program taken from the shared table (not traced) left the items of a layer's dict unwatched: a callback's
    later change (``cfg["k"] = 5.0``) ran the program compiled for the old value, where the plain loop reads it."""
    np.testing.assert_allclose(_weights(True, other_first), _weights(False, other_first), rtol=TOL, atol=TOL)
