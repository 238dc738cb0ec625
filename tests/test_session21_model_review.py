"""Session 21 review of the model's public API outside `fit` (predict, evaluate, state, copies, summary, gradient
checks), as a PyTorch / Keras user meets it."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

import nnx


def _host(model: nnx.Sequential, a: Any) -> np.ndarray:
    return np.asarray(model.backend.to_host(a), dtype=np.float64)


class Session21MSEOfSoftplusInput(nnx.losses.MSE):
    """MSE of softplus(z), given z: what a loss folding a final Softplus computes from that layer's inputs."""

    def rows(self, xp: Any, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        softplus = xp.log1p(xp.exp(y_pred))
        rows, grad = super().rows(xp, y_true, softplus)
        return rows, grad / (1 + xp.exp(-y_pred))


class Session21FoldsSoftplusMSE(nnx.losses.MSE):
    """MSE that folds a final Softplus into itself (`fold_output_layer`, the loss's hook for its output layer)."""

    def fold_output_layer(self, layer: Any) -> Any:
        return Session21MSEOfSoftplusInput() if type(layer) is nnx.Softplus else None


def test_metrics_of_a_loss_that_folds_the_output_layer_score_the_outputs(backend: Any) -> None:
    # A loss may fold the model's last layer (`fold_output_layer`): the loss then reads that layer's inputs, but the
    # metrics must still score the outputs `predict` gives, as they do for a Sigmoid folded into BCE. They scored the
    # inputs of the Softplus instead: mse 1.0 where the outputs' is 0.46, in evaluate and in fit's history alike
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 4))
    y = np.abs(X[:, :1])
    model = nnx.Sequential(nnx.Dense(4, 1), nnx.Softplus(), backend=backend, dtype="float64", seed=0)
    P = _host(model, model.predict(X))
    mse, mae = float(np.mean((P - y) ** 2)), float(np.mean(np.abs(P - y)))
    for batch_size in (None, 8):
        logs = model.evaluate(X, y, loss=Session21FoldsSoftplusMSE(), metrics=["mse", "mae"], batch_size=batch_size)
        assert logs["loss"] == pytest.approx(mse, rel=1e-9)
        assert logs["mse"] == pytest.approx(mse, rel=1e-9)
        assert logs["mae"] == pytest.approx(mae, rel=1e-9)
    batches = [(X[:8], y[:8]), (X[8:], y[8:])]
    logs = model.evaluate(batches, loss=Session21FoldsSoftplusMSE(), metrics=["mse", "mae"])
    assert logs["mse"] == pytest.approx(mse, rel=1e-9)
    assert logs["mae"] == pytest.approx(mae, rel=1e-9)
    # fit: the metrics of the epoch (weights before and after differ by a step of 1e-300) and of validation
    history = model.fit(X, y, loss=Session21FoldsSoftplusMSE(), optimizer=nnx.optim.SGD(model.parameters(), 1e-300),
                        epochs=1, batch_size=8, metrics=["mae"], validation_data=(X, y), verbose=0)
    assert history.history["mae"][0] == pytest.approx(mae, rel=1e-9)
    assert history.history["val_mae"][0] == pytest.approx(mae, rel=1e-9)


def test_a_parameter_rebound_to_another_dtype_is_named_by_predict(backend: Any) -> None:
    # Weights copied in as torch users do (`layer.weight.data = w`; here `p.value = np.load(...)`, float64 by
    # NumPy's default) into a float32 model: NumPy and JAX then predicted float64 outputs without a word (torch
    # fails in its own matmul). predict now names the parameter, its dtype and the model's, and says how to assign
    dtype, other = "float32", "float64"
    X = np.random.default_rng(0).normal(size=(6, 4))
    model = nnx.Sequential(nnx.Dense(4, 3), nnx.BatchNorm(3), nnx.Dense(3, 1), backend=backend, dtype=dtype, seed=0)
    for array in (model.layers[0].weight, model.layers[1].running_mean):
        kept = array.value
        array.value = model.backend.asarray(np.ones(kept.shape), dtype=other)
        kind = "parameter" if isinstance(array, nnx.Parameter) else "buffer"
        for batch_size in (None, 4):
            for data in (X, [X[:3], X[3:]]):
                try:
                    out = model.predict(data, batch_size=None if isinstance(data, list) else batch_size)
                except RuntimeError:
                    assert model.backend.spec.startswith("torch")  # torch's matmul refuses mixed dtypes itself
                    continue
                except TypeError as exc:
                    assert f"in {other}, but the model's dtype is {dtype}: {kind} '{array.name}' holds {other}" \
                        in str(exc)
                    continue
                pytest.fail(f"predict gave {out.dtype} outputs from a {dtype} model")
        array.value = kept
    # the way the message gives is right: the predictions of the weights loaded through load_state_dict
    model.layers[0].weight.value = model.backend.asarray(np.ones((4, 3)), dtype=model.dtype)
    expected = _host(model, model.predict(X))
    state = {k: _host(model, v) for k, v in model.state_dict().items()}
    fresh = nnx.Sequential(nnx.Dense(4, 3), nnx.BatchNorm(3), nnx.Dense(3, 1), backend=backend, dtype=dtype, seed=1)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(_host(fresh, fresh.predict(X)), expected)


class Session21DoubledModel(nnx.Sequential):
    """A model subclass overriding forward, as torch users write `nn.Module.forward`."""

    def forward(self, X: Any, training: bool = False) -> Any:
        return 2.0 * super().forward(X, training)


class Session21HalvedHeadModel(nnx.Sequential):
    """A model subclass changing its outputs where predict and fit run them: forward_to_head."""

    def forward_to_head(self, X: Any, n_layers: int, training: bool, runners: Any = None) -> Any:
        return 0.5 * super().forward_to_head(X, n_layers, training, runners)


def test_a_model_whose_forward_is_overridden_is_refused_where_forward_is_not_run(backend: Any) -> None:
    # model(X) ran the subclass's forward (twice the outputs) while predict, evaluate and check_gradients ran the
    # layers through forward_to_head and gave the plain model's numbers without a word. They now refuse it, naming
    # forward_to_head, which they do run (and which a subclass may override: the second model)
    X = np.random.default_rng(0).normal(size=(5, 4))
    y = X[:, :1]
    model = Session21DoubledModel(nnx.Dense(4, 1), backend=backend, dtype="float64", seed=0)
    for call in (lambda: model.predict(X), lambda: model.evaluate(X, y), lambda: nnx.check_gradients(model, X, y)):
        with pytest.raises(TypeError, match="Session21DoubledModel overrides forward.*forward_to_head"):
            call()
    plain = nnx.Sequential(nnx.Dense(4, 1), backend=backend, dtype="float64", seed=0)
    plain.layers[0].forward = lambda X, training=False: 3.0 * nnx.Dense.forward(plain.layers[0], X, training)
    np.testing.assert_allclose(_host(plain, plain.predict(X)), _host(plain, plain(X)))  # a layer's own: run
    plain.forward = lambda X, training=False: X  # on the model object itself
    with pytest.raises(TypeError, match="forward was replaced on the object"):
        plain.predict(X)
    halved = Session21HalvedHeadModel(nnx.Dense(4, 1), backend=backend, dtype="float64", seed=0)
    np.testing.assert_allclose(_host(halved, halved.predict(X)), _host(halved, halved(X)))
    assert np.isfinite(halved.evaluate(X, y)["loss"])
    # run as written: its backward is the plain model's, which the check finds (half the outputs, whole gradients)
    assert float(nnx.check_gradients(halved, X, y)) > 0.1


def test_inference_is_in_eval_mode_and_copies_are_independent(backend: Any, dtype: str) -> None:
    # guards (passed as found): predict, model(X) and evaluate, whole or in batches (a partial last one), give the
    # eval-mode numbers computed by hand (BatchNorm's running statistics, dropout off) and leave the running
    # statistics alone; a deep copy trains on its own arrays and optimizer state, and goes on as the original does
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 4))
    y = (X[:, :1] > 0) * 1.0
    model = nnx.Sequential(nnx.Dense(4, 8), nnx.BatchNorm(8), nnx.ReLU(), nnx.Dropout(0.5), nnx.Dense(8, 1),
                           nnx.Sigmoid(), backend=backend, dtype=dtype, seed=0)
    model.fit(X, y, optimizer="adam", epochs=2, batch_size=6, verbose=0)
    h = lambda a: _host(model, a)  # noqa: E731
    bn = model.layers[1]
    mean, var = h(bn.running_mean.value), h(bn.running_var.value)
    H = X @ h(model.layers[0].weight.value) + h(model.layers[0].bias.value)
    H = np.maximum((H - mean) / np.sqrt(var + bn.eps) * h(bn.weight.value) + h(bn.bias.value), 0)
    P = 1 / (1 + np.exp(-(H @ h(model.layers[4].weight.value) + h(model.layers[4].bias.value))))
    tol = 1e-5 if dtype == "float32" else 1e-12
    for out in (model.predict(X), model.predict(X, batch_size=3), model(X), model.predict([X[:7], X[7:]])):
        np.testing.assert_allclose(h(out), P, rtol=tol, atol=tol)
    bce = float(np.mean(-(y * np.log(P) + (1 - y) * np.log(1 - P))))
    batches = [(X[:7], y[:7]), (X[7:], y[7:])]
    for logs in (model.evaluate(X, y), model.evaluate(X, y, batch_size=5), model.evaluate(batches)):
        assert logs["loss"] == pytest.approx(bce, rel=10 * tol)
    np.testing.assert_array_equal(h(bn.running_mean.value), mean)
    np.testing.assert_array_equal(h(bn.running_var.value), var)
    twin = copy.deepcopy(model)
    weight = h(model.layers[0].weight.value)
    twin.fit(X, y, epochs=2, batch_size=6, verbose=0)
    np.testing.assert_array_equal(h(model.layers[0].weight.value), weight)  # the original did not move
    assert not np.array_equal(_host(twin, twin.layers[0].weight.value), weight)
    model.fit(X, y, epochs=2, batch_size=6, verbose=0)
    np.testing.assert_array_equal(h(model.predict(X)), _host(twin, twin.predict(X)))


def test_summary_of_a_nested_model_does_not_call_frozen_parameters_trainable() -> None:
    # A model nested in another is trained by its holder's optimizer: with that optimizer built on other layers
    # only, inner.summary() still said "trainable parameters: 16" where none of them is trained
    X = np.random.default_rng(0).normal(size=(8, 4))
    inner = nnx.Sequential(nnx.Dense(3, 3), nnx.Dense(3, 1))
    model = nnx.Sequential(nnx.Dense(4, 3), inner, seed=0)
    model.fit(X, X[:, :1], optimizer=nnx.optim.Adam(model.layers[0].parameters()), epochs=1, verbose=0)
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    assert "trainable parameters: 15; not trained (outside the optimizer): 16;" in lines[-1]
    model.layers[1].summary(print_fn=lines.append)
    last = lines[-1].splitlines()[-1]
    assert "trainable parameters: 16" not in last
    assert last.startswith("parameters: 16 (trained as the model holding this one decides: see its summary)")
