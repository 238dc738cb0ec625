"""The backend fast paths (nnx/backends/numpy_fast.py) give the portable path's results.

Each test builds two identical models, one on the backend with its fast paths and
one on the same backend with them switched off (`Backend.with_fastpath(False)`),
and compares gradients, weights and optimizer state. What the fast path was not told
it can handle (an optimizer subclass, a custom loss, a custom layer) must run the
portable code and give exactly its numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import optim
from nnx.backends import numpy_fast


def _fast_backend(backend):
    if backend.fastpath is None:
        pytest.skip(f"{backend.name} has no fast path (portable only)")
    if getattr(backend.fastpath, "compiled_step", None) is not None:
        pytest.skip(f"{backend.name} has no NumPy-style fast path (train_step/fuse/flat buffers): "
                    "JAX compiles the whole step instead; see tests/test_jax_compiled.py")
    return backend


def _tol(dtype):
    return {"rtol": 1e-12, "atol": 1e-14} if dtype == "float64" else {"rtol": 2e-6, "atol": 1e-7}


def _host(model, x):
    return model.backend.to_host(x)


MODELS = {
    "relu_ce": (lambda: [nnx.Dense(6, 9), nnx.ReLU(), nnx.Dense(9, 7), nnx.ReLU(), nnx.Dense(7, 3)],
                "cross_entropy", "classes"),
    "softmax_ce": (lambda: [nnx.Dense(6, 9), nnx.ReLU(), nnx.Dense(9, 3), nnx.Softmax()],
                   "cross_entropy", "classes"),
    "onehot_ce": (lambda: [nnx.Dense(6, 5), nnx.ReLU(), nnx.Dense(5, 3)], "cross_entropy", "onehot"),
    "sigmoid_bce": (lambda: [nnx.Dense(6, 8), nnx.ReLU(), nnx.Dense(8, 4), nnx.Tanh(), nnx.Dense(4, 1),
                             nnx.Sigmoid()], "bce", "binary"),
    "logits_bce": (lambda: [nnx.Dense(6, 8), nnx.ReLU(), nnx.Dense(8, 1)], "bce_with_logits", "binary"),
    "leaky_mse": (lambda: [nnx.Dense(6, 8), nnx.LeakyReLU(0.1), nnx.Dense(8, 2)], "mse", "regression"),
    "relu_out_mse": (lambda: [nnx.Dense(6, 8), nnx.ReLU(), nnx.Dense(8, 2), nnx.ReLU()], "mse", "regression"),
    "identity_mae": (lambda: [nnx.Dense(6, 8), nnx.Identity(), nnx.ReLU(), nnx.Dense(8, 2)], "mae", "regression"),
    "dropout": (lambda: [nnx.Dense(6, 8), nnx.ReLU(), nnx.Dropout(0.3), nnx.Dense(8, 3)], "cross_entropy",
                "classes"),
}


def _data(kind, n=40, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    if kind == "classes":
        y = rng.integers(0, 3, n)
    elif kind == "onehot":
        y = np.eye(3)[rng.integers(0, 3, n)]
    elif kind == "binary":
        y = (rng.random((n, 1)) > 0.5).astype(float)
    else:
        y = rng.standard_normal((n, 2))
    return X, y


def _pair(backend, dtype, name, seed=3):
    make, loss, kind = MODELS[name]
    fast = nnx.Sequential(*make(), backend=backend, dtype=dtype, seed=seed)
    slow = nnx.Sequential(*make(), backend=backend.with_fastpath(False), dtype=dtype, seed=seed)
    return fast, slow, loss, kind


@pytest.mark.parametrize("name", sorted(MODELS))
def test_train_step_matches_portable_step(backend, dtype, name):
    _fast_backend(backend)
    fast, slow, loss_name, kind = _pair(backend, dtype, name)
    X, y = _data(kind)
    loss = fast.resolve_loss(loss_name)
    step = backend.fastpath.train_step(fast, loss)
    assert step is not None
    for lo, hi in ((0, 16), (16, 32), (32, 40)):  # two full batches and a short one, reusing buffers
        Xf, yf = fast.prepare_inputs(X[lo:hi]), fast.prepare_targets(y[lo:hi], loss, hi - lo)
        Xs, ys = slow.prepare_inputs(X[lo:hi]), slow.prepare_targets(y[lo:hi], loss, hi - lo)
        v_fast, Z_fast, _ = step(Xf, yf)
        v_slow, Z_slow, _ = slow.loss_and_grads(Xs, ys, loss)
        np.testing.assert_allclose(float(_host(fast, v_fast)), float(_host(slow, v_slow)), **_tol(dtype))
        np.testing.assert_allclose(_host(fast, Z_fast), _host(slow, Z_slow), **_tol(dtype))
        for pf, ps in zip(fast.parameters(), slow.parameters(), strict=True):
            assert pf.name == ps.name
            np.testing.assert_allclose(_host(fast, pf.grad), _host(slow, ps.grad), **_tol(dtype),
                                       err_msg=pf.name)


def test_outputs_are_fresh_arrays_every_step(backend, dtype):
    _fast_backend(backend)
    fast, _, loss_name, kind = _pair(backend, dtype, "relu_ce")
    X, y = _data(kind)
    loss = fast.resolve_loss(loss_name)
    step = backend.fastpath.train_step(fast, loss)
    first = step(fast.prepare_inputs(X[:16]), fast.prepare_targets(y[:16], loss, 16))[1]
    kept = _host(fast, first).copy()
    step(fast.prepare_inputs(X[16:32]), fast.prepare_targets(y[16:32], loss, 16))
    np.testing.assert_array_equal(_host(fast, first), kept)


OPTIMIZERS = [
    ("sgd", {"lr": 0.05}),
    ("sgd", {"lr": 0.05, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    ("momentum", {"lr": 0.05, "momentum": 0.8}),
    ("adam", {"lr": 0.01}),
    ("adam", {"lr": 0.01, "amsgrad": True}),
    ("adamw", {"lr": 0.01}),
    ("rmsprop", {"lr": 0.01, "momentum": 0.5, "centered": True}),
    ("adagrad", {"lr": 0.05}),
]


@pytest.mark.parametrize("chunk", [None, 7], ids=["one_piece", "pieces_of_7"])
@pytest.mark.parametrize("name", ["relu_ce", "sigmoid_bce", "leaky_mse", "dropout"])
@pytest.mark.parametrize("opt_name,kwargs", OPTIMIZERS)
def test_fit_matches_portable_fit(backend, dtype, name, opt_name, kwargs, chunk, monkeypatch):
    _fast_backend(backend)
    if chunk is not None:  # the fused update works piece by piece; make pieces end mid-parameter
        monkeypatch.setattr("nnx.backends.numpy_fast._CHUNK", chunk)
    fast, slow, loss, kind = _pair(backend, dtype, name)
    X, y = _data(kind)
    runs = []
    for model in (fast, slow):
        opt = optim.get_optimizer(opt_name, model.parameters(), **kwargs)
        history = model.fit(X, y, loss=loss, optimizer=opt, epochs=3, batch_size=16, metrics=["mae"]
                            if kind == "regression" else ["accuracy"])
        runs.append((model, opt, history))
    (mf, of, hf), (ms, os_, hs) = runs
    assert of._fused is not None, "the fast path was not taken"
    assert os_._fused is None
    for pf, ps in zip(mf.parameters(), ms.parameters(), strict=True):
        np.testing.assert_allclose(_host(mf, pf.value), _host(ms, ps.value), **_tol(dtype), err_msg=pf.name)
    np.testing.assert_allclose(hf["loss"], hs["loss"], **_tol(dtype))
    sf, ss = of.state_dict(), os_.state_dict()
    assert sf["step"] == ss["step"] and sf["param_steps"] == ss["param_steps"]
    assert sf["state"].keys() == ss["state"].keys()
    for i, entry in sf["state"].items():
        for key, arr in entry.items():
            np.testing.assert_allclose(_host(mf, arr), _host(ms, ss["state"][i][key]), **_tol(dtype))


def test_parameters_are_flat_views_and_training_continues_after_rebinding(backend, dtype):
    _fast_backend(backend)
    fast, slow, loss, kind = _pair(backend, dtype, "relu_ce")
    X, y = _data(kind)
    before = {k: _host(fast, v).copy() for k, v in fast.state_dict().items()}
    opt_f = optim.SGD(fast.parameters(), lr=0.05, momentum=0.9)
    opt_s = optim.SGD(slow.parameters(), lr=0.05, momentum=0.9)
    fast.fit(X, y, loss=loss, optimizer=opt_f, epochs=0)  # lays the parameters out flat, trains nothing
    for k, v in fast.state_dict().items():
        np.testing.assert_array_equal(_host(fast, v), before[k])
    fast.fit(X, y, loss=loss, optimizer=opt_f, epochs=1, batch_size=16)
    slow.fit(X, y, loss=loss, optimizer=opt_s, epochs=1, batch_size=16)
    roots = {id(backend.fastpath.kernels.root(p.value)) for p in fast.parameters()}
    assert len(roots) == 1, "parameters should share one flat buffer"

    # Rebind everything the fused update relies on: parameters, gradients and optimizer state.
    fast.load_state_dict({k: _host(fast, v) for k, v in fast.state_dict().items()})
    opt_f.load_state_dict(opt_f.state_dict())
    for model, opt in ((fast, opt_f), (slow, opt_s)):
        Xd = model.prepare_inputs(X[:16])
        lossf = model.resolve_loss(loss)
        model.loss_and_grads(Xd, model.prepare_targets(y[:16], lossf, 16), lossf)  # portable grads
        opt.step()  # per-parameter loop: nothing is flat any more
        model.fit(X, y, loss=loss, optimizer=opt, epochs=2, batch_size=16)  # flat again
    for pf, ps in zip(fast.parameters(), slow.parameters(), strict=True):
        np.testing.assert_allclose(_host(fast, pf.value), _host(slow, ps.value), **_tol(dtype))


def test_train_step_is_reused_across_fit_calls(backend, dtype):
    _fast_backend(backend)
    fast, slow, loss, kind = _pair(backend, dtype, "relu_ce")
    X, y = _data(kind)
    opt = optim.SGD(fast.parameters(), lr=0.05, momentum=0.9)
    fast.fit(X, y, loss=loss, optimizer=opt, epochs=1, batch_size=16)
    step, fused = backend.fastpath.train_step(fast, fast.resolve_loss(loss)), opt._fused
    fast.fit(X, y, loss=loss, optimizer=opt, epochs=1, batch_size=16)
    assert backend.fastpath.train_step(fast, fast.resolve_loss(loss)) is step
    assert opt._fused is fused, "the fused update should survive from one fit call to the next"
    fast.layers[0].regularizer = nnx.regularizers.L2(1e-3)  # the model changed: no buffered step
    assert backend.fastpath.train_step(fast, fast.resolve_loss(loss)) is None


def test_optimizer_on_a_subset_of_parameters(backend, dtype):
    _fast_backend(backend)
    fast, slow, loss, kind = _pair(backend, dtype, "relu_ce")
    X, y = _data(kind)
    for model in (fast, slow):
        opt = optim.Adam(model.parameters()[2:4], lr=0.01)  # the middle layer only
        model.fit(X, y, loss=loss, optimizer=opt, epochs=2, batch_size=16)
    for pf, ps in zip(fast.parameters(), slow.parameters(), strict=True):
        np.testing.assert_allclose(_host(fast, pf.value), _host(slow, ps.value), **_tol(dtype))


def test_regularized_models_take_the_portable_step(backend, dtype):
    _fast_backend(backend)
    model = nnx.Sequential(nnx.Dense(6, 4, regularizer="l2"), nnx.ReLU(), nnx.Dense(4, 1),
                           backend=backend, dtype=dtype, seed=0)
    assert backend.fastpath.train_step(model, model.resolve_loss("mse")) is None
    model = nnx.Sequential(nnx.Dense(6, 4), nnx.ReLU(), nnx.Dense(4, 1), backend=backend, dtype=dtype, seed=0,
                           regularizer="l2")
    assert backend.fastpath.train_step(model, model.resolve_loss("mse")) is None


def test_fastpath_switch(backend):
    off = backend.with_fastpath(False)
    assert off.fastpath is None and off == backend
    on = backend.with_fastpath(True)
    if backend.name in ("numpy", "cupy", "torch"):  # (JAX's compiled step is its own engineer's to declare)
        assert on.fastpath is not None
    elif backend.name == "array_api_strict":
        assert on.fastpath is None


def test_portable_only_backends_have_no_fastpath():
    assert nnx.get_backend("numpy").fastpath is not None or __import__("os").environ.get("NNX_FASTPATH") == "0"
    if "torch" in nnx.available_backends():
        assert nnx.get_backend("torch").fastpath is not None or __import__("os").environ.get("NNX_FASTPATH") == "0"
    if "array_api_strict" in nnx.available_backends():
        assert nnx.get_backend("array_api_strict").fastpath is None


class _CountSyncs(nnx.callbacks.Callback):
    """Counts Backend.to_host calls inside each epoch (between its begin and end hooks)."""

    def __init__(self, backend):
        self.backend = backend
        self.calls = 0
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = self.calls

    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch.append(self.calls - self.start)


@pytest.mark.parametrize("check_finite", [False, True], ids=["unchecked", "checked"])
@pytest.mark.parametrize("name", ["relu_ce", "sigmoid_bce", "dropout"])
def test_fit_waits_for_the_device_once_per_epoch(backend, dtype, monkeypatch, name, check_finite):
    make, loss, kind = MODELS[name]
    model = nnx.Sequential(*make(), backend=backend, dtype=dtype, seed=0)
    counter = _CountSyncs(backend)
    original = type(backend).to_host

    def counting(self, x):
        counter.calls += 1
        return original(self, x)

    monkeypatch.setattr(type(backend), "to_host", counting)
    X, y = _data(kind)
    model.fit(X, y, loss=loss, optimizer="sgd", epochs=3, batch_size=8, callbacks=[counter],
              check_finite=check_finite)
    assert counter.per_epoch == [1, 1, 1]


# -- declarations: only what the fast path was told it handles ---------------------------------------

class LarsSGD(optim.SGD):
    """SGD scaled per parameter by ||p|| / ||g||, LARS-style: not elementwise, so it cannot be fused."""

    def _update(self, i, p, g, t):
        xp = self._xp(i)
        ratio = xp.sqrt(xp.sum(p.value * p.value)) / (xp.sqrt(xp.sum(g * g)) + 1e-12)
        p.value -= self.lr * ratio * g


class TripledMSE(nnx.losses.MSE):
    """MSE times three: a subclass of a loss the fast path has a kernel for, with another value."""

    def _compute(self, xp, y_true, y_pred, grad):
        value, g = super()._compute(xp, y_true, y_pred, grad)
        return 3 * value, None if g is None else 3 * g


class FastpathTestSoftsign(nnx.Layer):
    """A user's parameter-free layer: the fast step runs its own forward and backward."""

    def forward(self, X, training=False):
        if training:
            self._X = X
        return X / (1 + self.xp.abs(X))

    def backward(self, dY, need_dX=True):
        d = 1 + self.xp.abs(self._X)
        return dY / (d * d)


class FastpathTestScale(nnx.Layer):
    """A user's layer with a parameter (one scale per feature): the whole step must be portable."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def build(self, input_shape):
        self.scale = self.add_parameter("scale", (self.features,), "ones")

    def forward(self, X, training=False):
        if training:
            self._X = X
        return X * self.scale.value

    def backward(self, dY, need_dX=True):
        self.scale.grad = self.xp.sum(dY * self._X, axis=0)
        return dY * self.scale.value


class FastpathTestDense(nnx.Dense):
    """A Dense subclass that shifts its output: not declared, so not computed by the Dense kernel."""

    def forward(self, X, training=False):
        return super().forward(X, training) + 0.25


def _fit_both(backend, dtype, make, loss, kind, optimizer, epochs=2, **kwargs):
    """(fast model, portable model, fast optimizer) after the same fit."""
    X, y = _data(kind)
    out = []
    for be in (backend, backend.with_fastpath(False)):
        model = nnx.Sequential(*make(), backend=be, dtype=dtype, seed=3)
        opt = optimizer(model.parameters(), **kwargs)
        model.fit(X, y, loss=loss, optimizer=opt, epochs=epochs, batch_size=16)
        out += [model, opt]
    return out[0], out[2], out[1]


def _assert_same_weights(fast, slow, exact=True, **tol):
    for pf, ps in zip(fast.parameters(), slow.parameters(), strict=True):
        a, b = _host(fast, pf.value), _host(slow, ps.value)
        if exact:
            np.testing.assert_array_equal(a, b, err_msg=pf.name)
        else:
            np.testing.assert_allclose(a, b, err_msg=pf.name, **tol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_elementwise_optimizer_subclass_runs_its_own_update(backend, dtype, monkeypatch):
    _fast_backend(backend)
    make = MODELS["dropout"][0]
    fast, slow, opt = _fit_both(backend, dtype, make, "cross_entropy", "classes", LarsSGD, lr=0.05)
    assert opt._fused is None, "an optimizer subclass is not declared elementwise: no fused update"
    _assert_same_weights(fast, slow)
    # the test has teeth: fused over the flat buffer, LARS's norms would be of everything at once
    monkeypatch.setattr(numpy_fast, "elementwise", lambda optimizer: True)
    forced, _, forced_opt = _fit_both(backend, dtype, make, "cross_entropy", "classes", LarsSGD, lr=0.05)
    assert forced_opt._fused is not None
    assert max(float(np.max(np.abs(_host(forced, a.value) - _host(slow, b.value))))
               for a, b in zip(forced.parameters(), slow.parameters(), strict=True)) > 1e-3


def test_an_optimizer_with_an_undeclared_hyperparameter_is_not_fused(backend, dtype):
    _fast_backend(backend)
    model = nnx.Sequential(*MODELS["relu_ce"][0](), backend=backend, dtype=dtype, seed=0)
    opt = optim.SGD(model.parameters(), lr=0.1)
    assert numpy_fast.elementwise(opt)
    opt._hyper_names = (*opt._hyper_names, "trust_coefficient")
    opt.trust_coefficient = 0.01
    assert not numpy_fast.elementwise(opt)


def test_custom_loss_subclass_is_respected(backend, dtype):
    _fast_backend(backend)
    make = MODELS["leaky_mse"][0]
    fast, slow, _ = _fit_both(backend, dtype, make, TripledMSE(), "regression", optim.SGD, lr=0.02, momentum=0.9)
    step = backend.fastpath.train_step(fast, TripledMSE())
    assert step is not None and step.head_kind == numpy_fast._HEAD_GENERIC
    _assert_same_weights(fast, slow, exact=False, **_tol(dtype))
    plain, _, _ = _fit_both(backend, dtype, make, "mse", "regression", optim.SGD, lr=0.02, momentum=0.9)
    assert not np.allclose(_host(fast, fast.parameters()[0].value), _host(plain, plain.parameters()[0].value))


def test_declared_kinds_are_by_exact_class_and_options():
    assert numpy_fast.head_kernel(nnx.losses.MSE()) == numpy_fast._HEAD_MSE
    assert numpy_fast.head_kernel(nnx.losses.CrossEntropy(from_logits=True)) == numpy_fast._HEAD_CE_LOGITS
    assert numpy_fast.head_kernel(nnx.losses.CrossEntropy(from_logits=False)) == numpy_fast._HEAD_GENERIC
    assert numpy_fast.head_kernel(TripledMSE()) == numpy_fast._HEAD_GENERIC
    assert numpy_fast.head_kernel(nnx.losses.MAE()) == numpy_fast._HEAD_GENERIC
    assert numpy_fast.layer_kernel(nnx.Dense(3, 4)) == numpy_fast._DENSE
    assert numpy_fast.layer_kernel(nnx.Dense(3, 4, init="glorot")) == numpy_fast._DENSE
    assert numpy_fast.layer_kernel(nnx.Dense(3, 4, regularizer="l2")) == numpy_fast._OTHER
    assert numpy_fast.layer_kernel(FastpathTestDense(3, 4)) == numpy_fast._OTHER
    assert numpy_fast.layer_kernel(nnx.ReLU()) == numpy_fast._RELU
    assert numpy_fast.layer_kernel(nnx.LeakyReLU(0.1)) == numpy_fast._OTHER


CUSTOM_LAYER_MODELS = {
    "softsign": lambda: [nnx.Dense(6, 8), FastpathTestSoftsign(), nnx.Dense(8, 5), nnx.ReLU(), nnx.Dense(5, 3)],
    "scale": lambda: [nnx.Dense(6, 8), nnx.ReLU(), FastpathTestScale(8), nnx.Dense(8, 3)],
    "dense_subclass": lambda: [nnx.Dense(6, 8), nnx.ReLU(), FastpathTestDense(8, 5), nnx.Dense(5, 3)],
}


@pytest.mark.parametrize("name", sorted(CUSTOM_LAYER_MODELS))
def test_custom_layer_between_dense_layers_gives_the_portable_result(backend, dtype, name):
    _fast_backend(backend)
    make = CUSTOM_LAYER_MODELS[name]
    fast, slow, opt = _fit_both(backend, dtype, make, "cross_entropy", "classes", optim.Adam, lr=0.01, epochs=3)
    step = backend.fastpath.train_step(fast, fast.resolve_loss("cross_entropy"))
    if name == "softsign":  # no parameters: the buffered step runs it through its own forward/backward
        assert step is not None and opt._fused is not None
        _assert_same_weights(fast, slow, exact=False, **_tol(dtype))
    else:  # parameters the step has no kernel for: the portable step and update throughout
        assert step is None and opt._fused is None
        _assert_same_weights(fast, slow)


FLOAT32_CASES = {
    "ce_dropout": (lambda: [nnx.Dense(6, 16), nnx.ReLU(), nnx.Dropout(0.25), nnx.Dense(16, 8), nnx.ReLU(),
                            nnx.Dense(8, 3)], "cross_entropy", "classes"),
    "bce_dropout": (lambda: [nnx.Dense(6, 16), nnx.ReLU(), nnx.Dropout(0.25), nnx.Dense(16, 1), nnx.Sigmoid()],
                    "bce", "binary"),
}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opt_name,kwargs", [("sgd", {"lr": 0.05, "momentum": 0.9}), ("adam", {"lr": 0.01})],
                         ids=["sgd_momentum", "adam"])
@pytest.mark.parametrize("case", sorted(FLOAT32_CASES))
def test_fast_and_portable_agree_over_epochs_in_both_dtypes(backend, case, opt_name, kwargs, dtype):
    _fast_backend(backend)
    make, loss, kind = FLOAT32_CASES[case]
    fast, slow, opt = _fit_both(backend, dtype, make, loss, kind, optim.OPTIMIZERS[opt_name],
                                epochs=6, **kwargs)
    assert opt._fused is not None, "the fast path was not taken"
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-11, "atol": 1e-13}
    _assert_same_weights(fast, slow, exact=False, **tol)
    assert fast.history["loss"][-1] == pytest.approx(slow.history["loss"][-1], rel=tol["rtol"])


@pytest.mark.parametrize("where", ["first", "in_rows", "tail"])
def test_finite_check_sums_big_gradient_buffers_by_rows(backend, dtype, where, monkeypatch):
    """Past _SUM_WIDTH gradients, the check sums rows of the flat buffer plus its tail: each part is seen."""
    _fast_backend(backend)
    monkeypatch.setattr(numpy_fast, "_SUM_WIDTH", 16)  # 166 gradients: 10 rows of 16 and a tail of 6
    fast, _, loss_name, kind = _pair(backend, dtype, "relu_ce")
    X, y = _data(kind)
    loss = fast.resolve_loss(loss_name)
    step = nnx.training.TrainStep(fast, loss, optim.SGD(fast.parameters(), lr=0.1))
    value, _ = step.forward_loss(fast.prepare_inputs(X[:16]), fast.prepare_targets(y[:16], loss, 16))
    grads = backend.fastpath.train_step(fast, loss).flat.grads
    total = float(_host(fast, value)) + float(_host(fast, grads).astype(np.float64).sum())
    np.testing.assert_allclose(float(_host(fast, step._total(value))), total, rtol=1e-5)
    assert step.check(value)
    index = {"first": 0, "in_rows": 40, "tail": grads.shape[0] - 1}[where]
    grads[index] = float("nan")
    assert not step.check(value)
