"""A model changed after a fit (a class's method patched, a setting, a copy) computes as a model built that way does.

nnx keeps per model (and, on JAX, per definition across models) what a training step or a predict derived
from the model's code: recorded passes, kernels, compiled programs. Each is compared here with the same
model on the backend with those derivations off (``with_fastpath(False)``), which runs the layers' code as
it stands at every call: on NumPy, whose op-by-op passes are the definition the others are tested against
(JAX's op by op would compile each operation once more, for seconds).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import nnx

X = np.random.default_rng(0).normal(size=(16, 3))
Y = np.random.default_rng(1).normal(size=(16, 1))


class SurgScaled(nnx.Layer):
    """``X * factor``: a user's elementwise layer, whose methods a test replaces on the class."""

    def __init__(self, factor: float = 1.5) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, X, training=False):
        return X * self.factor

    def backward(self, dY, need_dX=True):
        return dY * self.factor


class SurgMSE(nnx.losses.MSE):
    """Mean squared error under a name of its own, whose `rows` a test replaces on the class."""


def _model(backend="numpy", fast: bool = True, seed: int = 0) -> nnx.Sequential:
    be = nnx.get_backend(backend).with_fastpath(fast)
    return nnx.Sequential(nnx.Dense(3, 2), SurgScaled(), nnx.Dense(2, 1), backend=be, dtype="float64", seed=seed)


def _fit(model, loss="mse") -> None:
    model.fit(X, Y, loss=loss, optimizer="sgd", lr=0.1, epochs=1, batch_size=8, shuffle=False, verbose=0)


def _host(model, array) -> np.ndarray:
    return np.asarray(model.backend.to_host(array))


def _assert_same(model, plain) -> None:
    np.testing.assert_allclose(_host(model, model.predict(X)), _host(plain, plain.predict(X)), rtol=0, atol=1e-12)
    for (name, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items(), strict=True):
        np.testing.assert_allclose(_host(model, a), _host(plain, b), rtol=0, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("backend", ["numpy", "torch", "jax"])
def test_a_layer_class_patched_after_a_fit_runs_its_new_code_in_that_model_and_in_a_new_one(backend, monkeypatch):
    pytest.importorskip(backend)
    model, plain = _model(backend), _model(fast=False)
    _fit(model), _fit(plain)
    model.predict(X)  # the compiled inference program too, on JAX

    def forward(self, X, training=False):
        return X * self.factor * self.factor

    def backward(self, dY, need_dX=True):
        return dY * self.factor * self.factor

    monkeypatch.setattr(SurgScaled, "forward", forward)
    monkeypatch.setattr(SurgScaled, "backward", backward)
    _assert_same(model, plain)  # the predict of the patched code, not the program traced before
    _fit(model), _fit(plain)
    _assert_same(model, plain)
    # a new model of the same definition must not take the programs the first one compiled from the old code
    fresh, fresh_plain = _model(backend), _model(fast=False)
    _fit(fresh), _fit(fresh_plain)
    _assert_same(fresh, fresh_plain)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_a_loss_class_patched_after_a_fit_trains_with_its_new_code(backend, monkeypatch):
    pytest.importorskip(backend)
    model, plain = _model(backend), _model(fast=False)
    _fit(model, SurgMSE()), _fit(plain, SurgMSE())
    model.evaluate(X, Y, loss=SurgMSE())
    rows = SurgMSE.rows

    def doubled(self, xp, y_true, y_pred):
        value, grad = rows(self, xp, y_true, y_pred)
        return 2.0 * value, 2.0 * grad

    monkeypatch.setattr(SurgMSE, "rows", doubled)
    # evaluate's program (JAX) computes the loss too: the patched one, as the op-by-op evaluate does
    assert model.evaluate(X, Y, loss=SurgMSE()) == pytest.approx(plain.evaluate(X, Y, loss=SurgMSE()), rel=1e-12)
    _fit(model, SurgMSE()), _fit(plain, SurgMSE())
    _assert_same(model, plain)


@pytest.mark.parametrize("by", ["optimizer.step", "fit on a backend with its fast paths off"])
def test_a_model_whose_optimizer_stepped_plainly_deep_copies_and_both_train_on(by):
    # the plain `Optimizer.step` (a PyTorch-style loop, or any fit without the flat update) keeps the array
    # namespaces it looked up, modules, which copy.deepcopy cannot copy: it raised "cannot pickle 'module' object"
    model, twin = _model(fast=by == "optimizer.step"), _model(fast=False)
    _fit(model), _fit(twin)
    if by == "optimizer.step":
        for m in (model, twin):
            Z = m.forward(m.backend.asarray(X, dtype=m.dtype), training=True)
            m.backward((Z - m.backend.asarray(Y, dtype=m.dtype)) / len(X))
            m.optimizer.step()
    copied, copied_twin = copy.deepcopy(model), copy.deepcopy(twin)
    for m in (model, twin, copied, copied_twin):
        _fit(m)
    _fit(copied), _fit(copied_twin)
    _assert_same(model, twin)
    _assert_same(copied, copied_twin)
    assert not np.array_equal(_host(model, model.predict(X)), _host(copied, copied.predict(X)))


class SurgSGD(nnx.optim.SGD):
    """SGD under a name of its own, whose `update` a test replaces on the class."""


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_an_optimizer_class_patched_after_a_fit_updates_with_its_new_rule(backend, monkeypatch):
    pytest.importorskip(backend)
    model, plain = _model(backend), _model(fast=False)
    for m in (model, plain):
        m.optimizer = SurgSGD(m.parameters(), lr=0.1)
        m.fit(X, Y, loss="mse", epochs=1, batch_size=8, shuffle=False, verbose=0)
    update = SurgSGD.update

    def doubled(self, xp, value, grad, state, step, lr):
        return update(self, xp, value, 2.0 * grad, state, step, lr)

    monkeypatch.setattr(SurgSGD, "update", doubled)
    for m in (model, plain):
        m.fit(X, Y, loss="mse", epochs=1, batch_size=8, shuffle=False, verbose=0)
    _assert_same(model, plain)


class SurgL2(nnx.regularizers.L2):
    """L2 under a name of its own, whose penalty and gradient a test replaces on the class."""


@pytest.mark.parametrize("backend, where", [("numpy", "model"), ("numpy", "layer"), ("jax", "layer")])
def test_a_regularizer_class_patched_after_a_fit_trains_with_its_new_penalty(backend, where, monkeypatch):
    pytest.importorskip(backend)
    model, plain = _model(backend), _model(fast=False)
    for m in (model, plain):
        if where == "model":
            m.regularizer = SurgL2(0.1)
        else:
            m.layers[0].regularizer = SurgL2(0.1)
        _fit(m)
    penalty, gradient = SurgL2.penalty, SurgL2.gradient
    monkeypatch.setattr(SurgL2, "penalty", lambda self, W: 3.0 * penalty(self, W))
    monkeypatch.setattr(SurgL2, "gradient", lambda self, W: 3.0 * gradient(self, W))
    _fit(model), _fit(plain)
    _assert_same(model, plain)


def test_a_parameter_given_a_value_of_another_shape_is_refused_by_fit_save_and_export(tmp_path):
    """``model.layers[2].weight.value = w`` of shape (4, 2) for a Dense(4, 1) made predict return two columns
    without a word and save write a file nnx.load refused: fit, save, the gradient check and export name it."""
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 1), dtype="float64", seed=0)
    model.fit(X, Y, loss="mse", epochs=1, batch_size=8)
    last = model.layers[2]
    last.weight.value, last.bias.value = np.ones((4, 2)), np.zeros(2)
    match = r"parameter '2.weight' holds an array of shape \(4, 2\), but its layer made it with shape \(4, 1\)"
    with pytest.raises(ValueError, match="fit: " + match):
        model.fit(X, Y, epochs=1)
    with pytest.raises(ValueError, match="save: " + match):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
    with pytest.raises(ValueError, match="check_gradients: " + match):
        nnx.check_gradients(model, X[:2], Y[:2], "mse")
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="ONNX export: " + match):
        model.to_onnx(tmp_path / "m.onnx")
    last.weight.value, last.bias.value = np.full((4, 1), 0.5), np.zeros(1)  # the built shapes again: all is well
    model.fit(X, Y, epochs=1)
    model.save(tmp_path / "m.npz")
    assert np.array_equal(nnx.load(tmp_path / "m.npz").predict(X), model.predict(X))
