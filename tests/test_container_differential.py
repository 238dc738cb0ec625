"""Fast paths against the plain loop (``with_fastpath(False)``) for layers inside containers and for what a user
does between fits: float64, to 1e-12."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.backends import backend_status

ok, why = backend_status("jax")
jax_only = pytest.mark.skipif(not ok, reason=f"jax not available: {why}")

TOL = 1e-12


class ContLazyTable(nnx.Layer):
    """Multiplies by a table it makes on its first call (``if self.table is None``) and reads afterwards."""

    def __init__(self) -> None:
        super().__init__()
        self.table = None

    def forward(self, X, training=False):
        if self.table is None:
            self.table = self.xp.ones(X.shape[1:], dtype=X.dtype)
        return X * self.table

    def backward(self, dY, need_dX=True):
        return dY * self.table


class ContBlock(nnx.Layer):
    """A user's container: tanh of the layer it holds."""

    def __init__(self, inner) -> None:
        super().__init__()
        self.inner = self.add_layer("inner", inner)

    def forward(self, X, training=False):
        Y = self.xp.tanh(self.inner.forward(X, training))
        if training:
            self._Y = Y
        return Y

    def backward(self, dY, need_dX=True):
        Y, self._Y = self._Y, None
        return self.inner.backward(dY * (1.0 - Y * Y), need_dX)


class _SetTable(nnx.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        layer = dict(self.model.named_layers())["1.inner"]
        layer.table = layer.backend.asarray(np.full(3, 2.0 + epoch))


def _data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((12, 3))
    return X, X @ rng.standard_normal((3, 2))


def _model(fast: bool):
    be = nnx.get_backend("jax").with_fastpath(fast)
    return nnx.Sequential(nnx.Dense(3, 3), ContBlock(ContLazyTable()), nnx.Dense(3, 2), backend=be,
                          dtype="float64", seed=1)


@jax_only
def test_a_table_a_layer_made_when_none_and_a_callback_sets_is_read_by_the_compiled_step():
    # the trace took the branch for None and was put back to None; the callback's table was never read. Two models:
    # the second takes the first one's program without tracing it
    X, y = _data()
    for _ in range(2):
        fits = []
        for fast in (True, False):
            model = _model(fast)
            history = model.fit(X, y, loss="mse", optimizer="sgd", epochs=2, batch_size=4, verbose=0,
                                callbacks=[_SetTable()])
            fits.append((history.history["loss"], [np.asarray(p.value) for p in model.parameters()]))
        assert fits[0][0] == pytest.approx(fits[1][0], rel=TOL, abs=TOL)
        for p, q in zip(fits[0][1], fits[1][1], strict=True):
            np.testing.assert_allclose(p, q, rtol=TOL, atol=TOL)


@jax_only
def test_predict_reads_a_table_set_after_a_predict_made_it():
    X, _ = _data()
    for _ in range(2):
        preds = []
        for fast in (True, False):
            model = _model(fast)
            model.predict(X)
            dict(model.named_layers())["1.inner"].table = model.backend.asarray(np.full(3, 0.5))
            preds.append(np.asarray(model.predict(X)))
        np.testing.assert_allclose(preds[0], preds[1], rtol=TOL, atol=TOL)


class ContCallCount(nnx.Layer):
    """Scales by 1 + 0.01 * the number of forward calls, counted in an array it keeps (not a Buffer)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = None

    def forward(self, X, training=False):
        if self.calls is None:
            self.calls = self.xp.zeros((), dtype=X.dtype)
        self.calls = self.calls + 1.0
        return X * (1.0 + 0.01 * self.calls)

    def backward(self, dY, need_dX=True):
        return dY * (1.0 + 0.01 * self.calls)


@jax_only
def test_a_count_a_layer_carries_at_inference_goes_on_as_in_the_plain_pass():
    X, _ = _data()
    preds = []
    for fast in (True, False):
        be = nnx.get_backend("jax").with_fastpath(fast)
        model = nnx.Sequential(nnx.Dense(3, 3), ContBlock(ContCallCount()), backend=be, dtype="float64", seed=1)
        preds.append(np.stack([np.asarray(model.predict(X)) for _ in range(3)]))
    np.testing.assert_allclose(preds[0], preds[1], rtol=TOL, atol=TOL)
