"""JAX's compiled programs against JAX's plain loop (``with_fastpath(False)``) where a user's code or a callback
changes what the programs hold as constants in ways the other tests do not: float64, to 1e-12."""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest

import nnx
from nnx.backends import backend_status

ok, why = backend_status("jax")
pytestmark = pytest.mark.skipif(not ok, reason=f"jax not available: {why}")

TOL = 1e-12


class DiffScaleByArray(nnx.Layer):
    """Multiplies by a NumPy array it holds (not a parameter or buffer), which a callback writes into in place."""

    def __init__(self) -> None:
        super().__init__()
        self.factor = np.ones(3)

    def forward(self, X, training=False):
        return X * self.xp.asarray(self.factor)

    def backward(self, dY, need_dX=True):
        return dY * self.xp.asarray(self.factor)


class DiffWeightedMSE(nnx.losses.Loss):
    """MSE times a NumPy array the loss holds."""

    def __init__(self) -> None:
        super().__init__()
        self.factor = np.ones(1)

    def rows(self, xp, y_true, y_pred):
        w, d = xp.asarray(self.factor), y_pred - y_true
        return xp.mean(w * d * d, axis=1), 2.0 * w * d / (d.shape[0] * d.shape[1])


class DiffScaledSGD(nnx.optim.Optimizer):
    """SGD whose step is scaled by a NumPy array the optimizer holds."""

    elementwise = True

    def __init__(self, params, lr=0.05):
        super().__init__(params, lr)
        self.factor = np.ones(1)

    def init_state(self, xp, value):
        return {}

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * xp.asarray(self.factor) * grad, {}


class _EachEpoch(nnx.callbacks.Callback):
    def __init__(self, change) -> None:
        super().__init__()
        self.change = change

    def on_epoch_end(self, epoch, logs=None):
        self.change(epoch)


def _data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 3))
    return X, X @ rng.standard_normal((3, 1)) + 0.1


def _fit_both(fit):
    """`fit(model)` on a compiled and on a plain JAX model of one definition; both models and histories."""
    out = []
    for fast in (True, False):
        be = nnx.get_backend("jax").with_fastpath(fast)
        model = nnx.Sequential(nnx.Dense(3, 3), DiffScaleByArray(), nnx.Dense(3, 1), backend=be, dtype="float64",
                               seed=1)
        out.append((model, fit(model)))
    return out


def _assert_same(a, b) -> None:
    assert a[1].history["loss"] == pytest.approx(b[1].history["loss"], rel=TOL, abs=TOL)
    for p, q in zip(a[0].parameters(), b[0].parameters(), strict=True):
        np.testing.assert_allclose(np.asarray(p.value), np.asarray(q.value), rtol=TOL, atol=TOL, err_msg=p.name)


@pytest.mark.parametrize("holder", ["layer", "loss", "optimizer"])
def test_a_numpy_array_written_in_place_by_a_callback_is_read_anew(holder):
    """A program held the array's values when traced; the plain loop reads what a callback wrote into it."""
    X, y = _data()

    def fit(model):
        loss, opt = DiffWeightedMSE(), DiffScaledSGD(model.parameters())  # one first program for all three holders
        held = {"layer": model.layers[1], "loss": loss, "optimizer": opt}[holder]

        def change(epoch):
            held.factor[...] = 0.5 + epoch

        history = model.fit(X, y, loss=loss, optimizer=opt, epochs=2, batch_size=8, verbose=0,
                            callbacks=[_EachEpoch(change)])
        if holder == "layer":
            history.predicted = np.asarray(model.predict(X[:8]))
            held.factor[...] = 0.25
            history.predicted_after = np.asarray(model.predict(X[:8]))
        return history

    compiled, plain = _fit_both(fit)
    assert compiled[1].execution_mode == "epoch"
    _assert_same(compiled, plain)
    if holder == "layer":
        for what in ("predicted", "predicted_after"):
            np.testing.assert_allclose(getattr(compiled[1], what), getattr(plain[1], what), rtol=TOL, atol=TOL)


# a module of settings a user's layer reads an attribute of (``_SETTINGS.SCALE``, as after ``import settings``)
_SETTINGS = types.ModuleType("diff_settings")
_SETTINGS.SCALE = 1.0


class DiffScaleByModule(nnx.Layer):
    """Multiplies by an attribute of a module it names."""

    def forward(self, X, training=False):
        return X * _SETTINGS.SCALE

    def backward(self, dY, need_dX=True):
        return dY * _SETTINGS.SCALE


def _scale_by_closure():
    """A layer class defined in a function, reading that function's variable, and the function that sets it."""
    scale = 1.0

    class DiffScaleByClosure(nnx.Layer):
        def forward(self, X, training=False):
            return X * scale

        def backward(self, dY, need_dX=True):
            return dY * scale

    def set_scale(value):
        nonlocal scale
        scale = value

    return DiffScaleByClosure, set_scale


@pytest.mark.parametrize("where", ["module attribute", "closure"])
def test_a_setting_read_from_a_module_attribute_or_a_closure_changed_by_a_callback_is_read_anew(where):
    """A program held the value read when traced; the plain loop reads it at every step."""
    X, y = _data()
    if where == "closure":
        layer, set_scale = _scale_by_closure()
    else:
        layer = DiffScaleByModule

        def set_scale(value):
            _SETTINGS.SCALE = value

    out = []
    for fast in (True, False):
        set_scale(1.0)
        be = nnx.get_backend("jax").with_fastpath(fast)
        model = nnx.Sequential(nnx.Dense(3, 3), layer(), nnx.Dense(3, 1), backend=be, dtype="float64", seed=1)
        history = model.fit(X, y, loss="mse", optimizer="sgd", epochs=2, batch_size=8, verbose=0,
                            callbacks=[_EachEpoch(lambda epoch: set_scale(0.5 + epoch))])
        history.predicted = np.asarray(model.predict(X[:8]))
        out.append((model, history))
    set_scale(1.0)
    assert out[0][1].execution_mode == "epoch"
    _assert_same(*out)
    np.testing.assert_allclose(out[0][1].predicted, out[1][1].predicted, rtol=TOL, atol=TOL)


class _Slotted:
    __slots__ = ("k",)

    def __init__(self, k: float) -> None:
        self.k = k


@dataclasses.dataclass
class _Config:
    k: float = 1.0


class DiffScaleByConfig(nnx.Layer):
    """Multiplies by ``self.cfg.k``, a setting of a config object it keeps (here one with slots)."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = _Slotted(1.0)

    def forward(self, X, training=False):
        return X * self.cfg.k

    def backward(self, dY, need_dX=True):
        return dY * self.cfg.k


class DiffConfigMSE(nnx.losses.Loss):
    """MSE times ``self.cfg.k``, a setting of a config object the loss keeps."""

    def __init__(self) -> None:
        super().__init__()
        self.cfg = _Config()

    def rows(self, xp, y_true, y_pred):
        d = y_pred - y_true
        return xp.mean(self.cfg.k * d * d, axis=1), 2.0 * self.cfg.k * d / (d.shape[0] * d.shape[1])


class DiffConfigSGD(nnx.optim.Optimizer):
    """SGD scaled by ``self.cfg.k``, a setting of a namespace the optimizer keeps."""

    elementwise = True

    def __init__(self, params, lr=0.05):
        super().__init__(params, lr)
        self.cfg = types.SimpleNamespace(k=1.0)

    def init_state(self, xp, value):
        return {}

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * self.cfg.k * grad, {}


@pytest.mark.parametrize("holder", ["layer", "loss", "optimizer"])
def test_a_setting_of_a_config_object_changed_in_place_by_a_callback_is_read_anew(holder):
    """``obj.cfg.k = ...``: the config is the same object after the change (a dataclass, a namespace, an object with
    slots), where the plain loop reads the new value."""
    X, y = _data()
    out = []
    for fast in (True, False):
        be = nnx.get_backend("jax").with_fastpath(fast)
        model = nnx.Sequential(nnx.Dense(3, 3), DiffScaleByConfig(), nnx.Dense(3, 1), backend=be, dtype="float64",
                               seed=1)
        loss, opt = DiffConfigMSE(), DiffConfigSGD(model.parameters())
        held = {"layer": model.layers[1], "loss": loss, "optimizer": opt}[holder]

        def change(epoch, held=held):
            held.cfg.k = 0.5 + epoch

        history = model.fit(X, y, loss=loss, optimizer=opt, epochs=2, batch_size=8, verbose=0,
                            callbacks=[_EachEpoch(change)])
        out.append((model, history))
    assert out[0][1].execution_mode == "epoch"
    _assert_same(*out)


class _ColumnL2(nnx.regularizers.Regularizer):
    """A user's per-layer L2 scaled by a NumPy array it keeps (nnx cannot describe it: the layer holds it as is)."""

    def __init__(self) -> None:
        self.l, self.columns = 0.05, np.ones(1)

    def penalty(self, W):
        xp = nnx.get_backend(W).xp
        return 0.5 * self.l * xp.sum(W * W * self.columns)

    def gradient(self, W):
        return W * (self.columns * self.l)


class DiffScaleByDictTable(nnx.Layer):
    """Multiplies by ``1 + tables["s"]``, a NumPy array kept in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = {"s": np.ones(3)}

    def forward(self, X, training=False):
        return X * (self.tables["s"] + 1.0)

    def backward(self, dY, need_dX=True):
        return dY * (self.tables["s"] + 1.0)


_TABLE = np.ones(3)  # a module global a layer reads


class DiffScaleByGlobalTable(nnx.Layer):
    """Multiplies by ``1 + _TABLE``, a NumPy array in its module."""

    def forward(self, X, training=False):
        return X * (_TABLE + 1.0)

    def backward(self, dY, need_dX=True):
        return dY * (_TABLE + 1.0)


@pytest.mark.parametrize("where", ["dict", "regularizer", "global", "regularizer strength"])
def test_a_numpy_array_a_layer_reads_one_level_down_written_in_place_by_a_callback_is_read_anew(where):
    """An array in a layer's dict or on the regularizer object a layer holds was not watched, nor one in a module:
    the programs kept what they computed from it (``1 + table``) when traced. Nor was a float on that regularizer
    (``regularizer.l *= 4``): the layer holds an object nnx cannot describe, whose attributes went unseen."""
    X, y = _data()
    out = []
    for fast in (True, False):
        _TABLE[...] = 1.0
        be = nnx.get_backend("jax").with_fastpath(fast)
        middle = DiffScaleByGlobalTable() if where == "global" else DiffScaleByDictTable()
        regularizer = _ColumnL2()
        model = nnx.Sequential(nnx.Dense(3, 3, regularizer=regularizer), middle, nnx.Dense(3, 1), backend=be,
                               dtype="float64", seed=1)
        table = {"dict": middle.tables["s"] if where == "dict" else None, "global": _TABLE}.get(
            where, regularizer.columns)

        def change(epoch, table=table, regularizer=regularizer):
            if where == "regularizer strength":
                regularizer.l *= 4.0
            else:
                table[...] = 0.5 + epoch

        history = model.fit(X, y, loss="mse", optimizer="sgd", epochs=2, batch_size=8, verbose=0,
                            callbacks=[_EachEpoch(change)])
        out.append((model, history))
    _TABLE[...] = 1.0
    assert out[0][1].execution_mode == "epoch"
    _assert_same(*out)
