"""Settings a callback changes where only a thorough watch sees them: each fit must match the plain loop's.

NumPy's recorded passes and JAX's compiled programs hold what a layer, a loss, a regularizer or an
optimizer's rule reads as constants, and must record or compile again when any of it changes. Each
test trains a model with the fast paths on and one with them off (`Backend.with_fastpath(False)`)
while a callback changes such a setting, and compares the weights. Each case here once trained
silently on the first value.
"""

from __future__ import annotations

import functools
import math
import sys
import types

import numpy as np
import pytest

import nnx
from nnx.callbacks import Callback

X = np.random.default_rng(0).standard_normal((48, 5))
Y = (X[:, 0] + X[:, 1] > 0).astype(np.float64)


def _assert_fast_is_plain(backend, make_model, fit_kwargs, epochs=3):
    """Fit `make_model(backend)` `epochs` epochs with ``fit_kwargs()``, fast and plain; the weights must agree."""
    weights = []
    for be in (backend, backend.with_fastpath(False)):
        model = make_model(be)
        model.fit(X, Y, epochs=epochs, batch_size=16, verbose=0, **fit_kwargs(model))
        weights.append([np.asarray(be.to_host(p.value)) for p in model.parameters()])
    for fast, plain in zip(*weights, strict=True):
        np.testing.assert_allclose(fast, plain, rtol=1e-12, atol=1e-12)


class WatchedScaled(nnx.Layer):
    """``X * s``, where `s` is read from an attribute by `scale` (a subclass says where)."""

    def __init__(self, held):
        super().__init__()
        self.held = held

    def scale(self):
        return self.held

    def forward(self, X, training=False):
        return X * self.scale()

    def backward(self, dY, need_dX=True):
        return dY * self.scale()


class WatchedScalarScaled(WatchedScaled):
    def scale(self):
        return float(self.held)  # (array_api_strict multiplies no NumPy scalar)


class WatchedNestedScaled(WatchedScaled):
    def scale(self):
        return self.held["inner"]["s"]


class WatchedCalledScaled(WatchedScaled):
    def scale(self):
        return self.held()


class WatchedTupleScaled(WatchedScaled):
    def scale(self):
        return float(self.held[1][0])


def _model(middle=tuple, regularizer=None, first_regularizer=None):
    """A maker of models with the layers ``middle()`` makes after the first Dense (new ones for each model)."""
    def make(be):
        return nnx.Sequential(nnx.Dense(5, 8, regularizer=first_regularizer), *middle(), nnx.Tanh(), nnx.Dense(8, 1),
                              nnx.Sigmoid(), backend=be, dtype="float64", seed=7, regularizer=regularizer)
    return make


class Every(Callback):
    """Calls `change(model, i)` before every epoch, or every batch, with a count of the calls."""

    def __init__(self, change, per_batch=False):
        super().__init__()
        self.change, self.per_batch, self.calls = change, per_batch, 0

    def _call(self):
        self.change(self.model, self.calls)
        self.calls += 1

    def on_epoch_begin(self, epoch, logs=None):
        if not self.per_batch:
            self._call()

    def on_batch_begin(self, batch, logs=None):
        if self.per_batch:
            self._call()


@pytest.mark.parametrize("kind", [np.float64, np.float32], ids=["float64", "float32"])
def test_a_numpy_scalar_setting_that_comes_back_to_an_earlier_value(backend, kind):
    # JAX took a program traced for an earlier value from its table, and saw no later change
    def change(model, i):
        model.layers[1].held = kind((0.5, 1.5)[i % 2])

    _assert_fast_is_plain(backend, _model(lambda: [WatchedScalarScaled(kind(0.5))]),
                          lambda m: {"loss": "bce", "optimizer": "sgd", "lr": 0.1, "callbacks": [Every(change, True)]})


def test_a_setting_two_levels_down_in_a_dict_changed_in_place(backend):
    def change(model, epoch):
        model.layers[1].held["inner"]["s"] = 0.5 + epoch

    _assert_fast_is_plain(backend, _model(lambda: [WatchedNestedScaled({"inner": {"s": 0.5}})]),
                          lambda m: {"loss": "bce", "optimizer": "adam", "lr": 0.01, "callbacks": [Every(change)]})


def _half(x, by):
    return x * by


def test_a_partial_rebound_and_an_array_in_a_tuple_written_in_place(backend):
    def change(model, epoch):
        model.layers[1].held = functools.partial(_half, 0.5 + epoch, 1.0)
        model.layers[2].held[1][0] = 0.25 + epoch

    def middle():
        return WatchedCalledScaled(functools.partial(_half, 0.5, 1.0)), WatchedTupleScaled(("s", np.array([0.25])))

    _assert_fast_is_plain(backend, _model(middle),
                          lambda m: {"loss": "bce", "optimizer": "sgd", "lr": 0.1, "callbacks": [Every(change)]})


class WatchedListWeightedMSE(nnx.losses.Loss):
    """A squared error weighted by an array the loss keeps in a list."""

    def __init__(self, weights=None):
        super().__init__()
        self.weights = weights

    def rows(self, xp, y_true, y_pred):
        w = float(self.weights[0][0])
        d = y_pred - y_true
        return nnx.losses.row_mean(xp, w * d * d), w * d * (2 / math.prod(y_pred.shape))


def test_a_loss_array_kept_in_a_list_written_in_place(backend):
    def change(model, epoch):
        loss.weights[0][0] = 1.0 + epoch

    loss = WatchedListWeightedMSE([np.array([1.0])])
    _assert_fast_is_plain(backend, _model(), lambda m: {"loss": loss, "optimizer": "sgd", "lr": 0.1,
                                                        "callbacks": [Every(change)]})
    loss.weights[0][0] = 1.0


class WatchedListL2(nnx.regularizers.Regularizer):
    """L2 whose strength is an array kept in a list."""

    def __init__(self, strength=None):
        self.strength = strength

    def penalty(self, W):
        return float(self.strength[0]) * nnx.backends.get_backend(W).xp.sum(W * W)

    def gradient(self, W):
        return 2 * float(self.strength[0]) * W


@pytest.mark.parametrize("where", ["layer", "model"])
def test_a_regularizer_strength_in_a_list_written_in_place(backend, where):
    def change(model, epoch):
        reg = model.regularizer if where == "model" else model.layers[0].regularizer
        reg.strength[0][()] = (0.01, 0.2, 0.5)[epoch]

    def make(be):
        reg = WatchedListL2([np.array(0.01)])
        return _model(**({"regularizer": reg} if where == "model" else {"first_regularizer": reg}))(be)

    _assert_fast_is_plain(backend, make,
                          lambda m: {"loss": "bce", "optimizer": "sgd", "lr": 0.05, "callbacks": [Every(change)]})


SCALE = 0.5  # read by `_global_scale`, a function a layer, a loss and an optimizer keep as an attribute


def _global_scale():
    return SCALE


class WatchedCalledSGD(nnx.optim.Optimizer):
    """Plain gradient descent scaled by what a function it keeps returns."""

    elementwise = True

    def __init__(self, params, lr=0.05, fn=None):
        super().__init__(params, lr)
        self.fn = fn

    def init_state(self, xp, value):
        return {}

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * self.fn() * grad, state


class WatchedCalledMSE(WatchedListWeightedMSE):
    def rows(self, xp, y_true, y_pred):
        d = y_pred - y_true
        w = self.weights()
        return nnx.losses.row_mean(xp, w * d * d), w * d * (2 / math.prod(y_pred.shape))


@pytest.mark.parametrize("reader", ["layer", "loss", "optimizer"])
def test_a_global_read_by_a_function_kept_as_an_attribute(backend, reader, monkeypatch):
    def change(model, epoch):
        monkeypatch.setattr(sys.modules[__name__], "SCALE", 0.5 + epoch)

    def fit_kwargs(model):
        monkeypatch.setattr(sys.modules[__name__], "SCALE", 0.5)
        return {"loss": WatchedCalledMSE(_global_scale) if reader == "loss" else "bce", "lr": 0.05,
                "optimizer": WatchedCalledSGD(model.parameters(), fn=_global_scale) if reader == "optimizer" else "sgd",
                "callbacks": [Every(change)]}

    _assert_fast_is_plain(backend, _model(lambda: [WatchedCalledScaled(_global_scale)] if reader == "layer" else []),
                          fit_kwargs)


# -- what the watches must not see as a change: each would record or trace again at every step --------------

FORWARDS: list[int] = []  # one entry per run of `WatchedLogging.forward`'s Python (a recording or a trace)


class WatchedLogging(nnx.Layer):
    """Reads an array it keeps in a dict, beside a log a callback appends to at every batch (never read here)."""

    def __init__(self):
        super().__init__()
        self.tables = {"w": np.full(8, 1.5), "log": []}  # (an array of the model's backend: NumPy and JAX take it)

    def forward(self, X, training=False):
        FORWARDS.append(1)
        return X * self.tables["w"]

    def backward(self, dY, need_dX=True):
        return dY * self.tables["w"]


class LogEachBatch(Callback):
    def on_train_batch_end(self, batch, logs=None):
        tables = getattr(self.model.layers[1], "tables", None)
        if tables is not None:
            tables["log"].append(batch)


@pytest.mark.parametrize("name", ["numpy", "jax"])
def test_a_log_beside_an_array_in_a_dict_is_no_change_and_plain_layers_are_not_read_in_full(name, monkeypatch):
    # the log made every step record (NumPy) or trace (JAX) again; and the constructor's arguments every layer
    # keeps counted as a setting read in full at every step (a step with a per-batch callback took twice as long)
    from nnx.backends import backend_status
    from nnx.training import shared_programs

    if not backend_status(name)[0]:
        pytest.skip(f"{name} is not available")
    refreshes = []
    refresh = shared_programs.SettingsWatch._refresh

    def counted(watch, model):
        refreshes.append(1)
        return refresh(watch, model)

    monkeypatch.setattr(shared_programs.SettingsWatch, "_refresh", counted)
    FORWARDS.clear()
    model = _model(lambda: [WatchedLogging()])(nnx.get_backend(name))
    model.fit(X, Y, loss="bce", optimizer="sgd", epochs=3, batch_size=16, verbose=0, callbacks=[LogEachBatch()])
    assert len(FORWARDS) <= 2, len(FORWARDS)  # (NumPy: the first batch plainly, the second recorded)
    refreshes.clear()
    plain = _model()(nnx.get_backend(name))
    plain.fit(X, Y, loss="bce", optimizer="sgd", epochs=3, batch_size=16, verbose=0, callbacks=[LogEachBatch()])
    assert len(refreshes) <= 2, len(refreshes)


class WatchedMixedMSE(WatchedListWeightedMSE):
    """A squared error scaled by a plain value the loss keeps beside an array in one dict."""

    def rows(self, xp, y_true, y_pred):
        d = y_pred - y_true
        w = self.weights["s"] * float(self.weights["w"][0])
        return nnx.losses.row_mean(xp, w * d * d), w * d * (2 / math.prod(y_pred.shape))


class WatchedMixedScaled(WatchedScaled):
    def scale(self):
        inner = self.held["inner"]
        return inner["s"] * float(inner["w"][0])  # (array_api_strict multiplies no NumPy array)


def test_a_plain_value_beside_an_array_in_a_container_changed_in_place(backend):
    # told by the container's identity and the array's bytes, the value beside the array went unseen
    def change(model, epoch):
        loss.weights["s"] = 1.0 + epoch
        model.layers[1].held["inner"]["s"] = 0.5 + epoch

    loss = WatchedMixedMSE({"s": 1.0, "w": np.array([1.0])})
    make = _model(lambda: [WatchedMixedScaled({"inner": {"s": 0.5, "w": np.ones(1)}})])
    _assert_fast_is_plain(backend, make, lambda m: {"loss": loss, "optimizer": "sgd", "lr": 0.1,
                                                    "callbacks": [Every(change)]})
    loss.weights["s"] = 1.0


# -- found by mutation testing: each of these trained on the first value with one watch taken away ------------------

MUT4_TABLE = np.ones(8)  # a module-level table `Mut4GlobalTableScaled` reads; `Every` callbacks write it in place


class Mut4GlobalTableScaled(nnx.Layer):
    """Scales each feature by a module-level NumPy table (a setting outside the instance)."""

    def forward(self, X, training=False):
        self._t = self.backend.asarray(MUT4_TABLE, dtype=X.dtype)
        return X * self._t

    def backward(self, dY, need_dX=True):
        return dY * self._t


def test_a_module_level_table_written_in_place(backend):
    """Found by mutation testing: a module global holding a NumPy array was told by its identity only, so a callback
    writing into it between epochs (``TABLE[...] = 1.0 + epoch``) left JAX's programs training on the first values."""
    def change(model, epoch):
        MUT4_TABLE[...] = 1.0 + epoch

    def fit_kwargs(model):
        MUT4_TABLE[...] = 1.0
        return {"loss": "bce", "optimizer": "sgd", "lr": 0.1, "callbacks": [Every(change)]}

    try:
        _assert_fast_is_plain(backend, _model(lambda: [Mut4GlobalTableScaled()]), fit_kwargs)
    finally:
        MUT4_TABLE[...] = 1.0


class Mut4PlainListL2(nnx.regularizers.Regularizer):
    """L2 whose strength is a plain float it keeps in a list it makes (``[0.01]``: not a constructor argument, which
    the regularizer's config would hold too)."""

    def __init__(self, strength=0.01):
        self.strength = [strength]

    def _s(self):
        return self.strength[0]

    def penalty(self, W):
        return self._s() * nnx.backends.get_backend(W).xp.sum(W * W)

    def gradient(self, W):
        return 2 * self._s() * W


class Mut4NestedDictL2(Mut4PlainListL2):
    """The same L2 with its strength two dicts down (``{"s": {"v": 0.01}}``)."""

    def __init__(self, strength=0.01):
        self.strength = {"s": {"v": strength}}

    def _s(self):
        return self.strength["s"]["v"]


class Mut4OnEpochBegin(Callback):
    """Calls `change(model, epoch)` before every epoch, with no per-batch hook: JAX runs whole epochs as programs."""

    def __init__(self, change):
        super().__init__()
        self.change = change

    def on_epoch_begin(self, epoch, logs=None):
        self.change(self.model, epoch)


@pytest.mark.parametrize("held", ["list", "dict of a dict"])
def test_a_regularizer_plain_strength_in_a_container_changed_in_place(backend, held):
    """Found by mutation testing: a plain float in a list, or two dicts down, that a user's regularizer reads was
    compared by the container's identity only (the list), or the nested dict was taken as told by identity: a
    callback raising the strength before each epoch left NumPy's recording and JAX's epoch programs training on the
    first strength."""
    def change(model, epoch):
        strength = (0.01, 0.2, 0.5)[epoch]
        if held == "list":
            model.regularizer.strength[0] = strength
        else:
            model.regularizer.strength["s"]["v"] = strength

    def make(be):
        return _model(regularizer=Mut4PlainListL2() if held == "list" else Mut4NestedDictL2())(be)

    _assert_fast_is_plain(backend, make, lambda m: {"loss": "bce", "optimizer": "sgd", "lr": 0.05,
                                                    "callbacks": [Mut4OnEpochBegin(change)]})


def test_a_regularizer_swapped_for_another_class_with_the_same_settings(backend):
    """Found by mutation testing: ``L2(0.05)`` and ``L1(0.05)`` hold the same attributes; told apart by them alone,
    a callback swapping one for the other after the first epoch went unseen, and NumPy's recording and JAX's epoch
    programs kept the L2 penalty."""
    def change(model, epoch):
        if epoch == 1:
            model.regularizer = nnx.regularizers.L1(0.05)

    _assert_fast_is_plain(backend, _model(regularizer=nnx.regularizers.L2(0.05)),
                          lambda m: {"loss": "bce", "optimizer": "sgd", "lr": 0.05,
                                     "callbacks": [Mut4OnEpochBegin(change)]})


# -- names rebound to other code: what the new code reads is watched from then on ----------------------------

OTHER_SCALE = 1.0


def _first_helper(X):
    return X * 1.5


def _other_helper(X):
    return X * OTHER_SCALE


WATCHED_HELPER = _first_helper
SETTINGS_A, SETTINGS_B = types.ModuleType("nnx_test_settings_a"), types.ModuleType("nnx_test_settings_b")
SETTINGS_A.SCALE, SETTINGS_B.SCALE = 1.0, 3.0
WATCHED_SETTINGS = SETTINGS_A


class HelperScaled(nnx.Layer):
    """Scales by a helper of its module that it calls by a global name, which a callback rebinds."""

    def forward(self, X, training=False):
        return WATCHED_HELPER(X)

    def backward(self, dY, need_dX=True):
        return WATCHED_HELPER(dY)


class ModuleScaled(nnx.Layer):
    """Scales by ``WATCHED_SETTINGS.SCALE``, an attribute of the module its global name holds."""

    def forward(self, X, training=False):
        return X * WATCHED_SETTINGS.SCALE

    def backward(self, dY, need_dX=True):
        return dY * WATCHED_SETTINGS.SCALE


def test_a_global_read_by_a_helper_the_layer_was_rebound_to(backend, monkeypatch):
    """Found by review: what a helper reads was learnt once per class, from the helper its name held then; rebound
    to another helper (seen), a change of a global only the new helper reads was not, and NumPy's recording and
    JAX's programs trained on with the first value."""
    module = sys.modules[__name__]

    def change(model, epoch):
        if epoch == 1:
            monkeypatch.setattr(module, "WATCHED_HELPER", _other_helper)
        elif epoch >= 2:
            monkeypatch.setattr(module, "OTHER_SCALE", 1.0 + epoch)

    def fit_kwargs(model):
        monkeypatch.setattr(module, "WATCHED_HELPER", _first_helper)
        monkeypatch.setattr(module, "OTHER_SCALE", 1.0)
        return {"loss": "bce", "optimizer": "sgd", "lr": 0.1, "callbacks": [Every(change)]}

    _assert_fast_is_plain(backend, _model(lambda: [HelperScaled()]), fit_kwargs, epochs=4)


def test_a_module_name_rebound_to_another_module(backend, monkeypatch):
    """Found by review: ``cfg.SCALE`` was watched in the module ``cfg`` named first; ``cfg = other`` was no change."""
    module = sys.modules[__name__]

    def change(model, epoch):
        monkeypatch.setattr(module, "WATCHED_SETTINGS", SETTINGS_B if epoch else SETTINGS_A)

    def fit_kwargs(model):
        monkeypatch.setattr(module, "WATCHED_SETTINGS", SETTINGS_A)
        return {"loss": "bce", "optimizer": "sgd", "lr": 0.1, "callbacks": [Every(change)]}

    _assert_fast_is_plain(backend, _model(lambda: [ModuleScaled()]), fit_kwargs)


class WatchedConfig:
    """Settings a layer reads from a class of the user's, by its global name (``WatchedConfig.SCALE``)."""

    SCALE = 1.0


class ConfigScaled(nnx.Layer):
    def forward(self, X, training=False):
        return X * WatchedConfig.SCALE

    def backward(self, dY, need_dX=True):
        return dY * WatchedConfig.SCALE


def test_a_class_attribute_read_through_the_classs_global_name(backend, monkeypatch):
    """Found by review: ``Config.SCALE`` (a class global, where ``cfg.SCALE`` of a module was watched) changed by a
    callback was not seen, and NumPy's recording and JAX's programs trained on the first value."""
    def change(model, epoch):
        monkeypatch.setattr(WatchedConfig, "SCALE", 1.0 + epoch)

    def fit_kwargs(model):
        monkeypatch.setattr(WatchedConfig, "SCALE", 1.0)
        return {"loss": "bce", "optimizer": "sgd", "lr": 0.1, "callbacks": [Every(change)]}

    _assert_fast_is_plain(backend, _model(lambda: [ConfigScaled()]), fit_kwargs)
