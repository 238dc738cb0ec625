"""Layers with modes and state, used as a PyTorch user would: running statistics, dropout, buffers a layer
updates itself, containers, freezing, state dicts and copies, compared with torch on CPU in float64."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import nnx


def host(model: Any, value: Any) -> np.ndarray:
    return np.asarray(model.backend.to_host(value))


class RowsSeen(nnx.Layer):
    """Identity that counts, in a buffer, the rows it sees at inference (as a torch module may in eval mode)."""

    def build(self, input_shape: Any) -> None:
        self.seen = self.add_buffer("seen", (1,), "zeros")

    def forward(self, X: Any, training: bool = False) -> Any:
        if not training:
            self.seen.value = self.seen.value + float(X.shape[0])
        return X

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        return dY


def test_a_buffer_a_layer_updates_at_inference_counts_every_batch(backend: Any) -> None:
    # JAX compiles inference and falls back to the op-by-op pass for a layer that rebinds a buffer there; the
    # fallback held for the first batch only, and the second batch of the same pass retraced and raised
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 5)), rng.normal(size=(40, 1))
    model = nnx.Sequential(nnx.Dense(5, 4), RowsSeen(), nnx.Dense(4, 1), backend=backend, dtype="float64", seed=1)
    model.fit(X, y, loss="mse", optimizer="sgd", epochs=2, batch_size=10, validation_data=(X, y), verbose=0)
    assert host(model, model.layers[1].seen.value)[0] == 80.0
    model.evaluate(X, y, batch_size=20)  # two whole batches: the second is the one that retraced
    model.predict(X, batch_size=20)
    assert host(model, model.layers[1].seen.value)[0] == 160.0


def tied_model(backend: Any) -> Any:
    return nnx.Sequential(nnx.Dense(4, 4), nnx.Tanh(), nnx.Dense(4, 4), nnx.Tanh(), nnx.Dense(4, 1), backend=backend,
                          dtype="float64", seed=1)


@pytest.mark.parametrize("call", ["fit", "check_gradients", "save", "to_onnx"])
def test_torch_style_weight_tying_is_refused_by_name(call: str, tmp_path: Any) -> None:
    # `decoder.weight = encoder.weight` ties two torch parameters (their gradients add up). Here the layer read the
    # other layer's array while its own, unused, was what the optimizer, state_dict and files held, and its backward
    # overwrote the other layer's gradient: fit trained on without a word
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 1))
    model = tied_model("numpy")
    model.layers[0].weight = model.layers[2].weight
    run = {"fit": lambda: model.fit(X, y, loss="mse", optimizer="sgd", epochs=1, batch_size=10, verbose=0),
           "check_gradients": lambda: nnx.check_gradients(model, X, y, "mse"),
           "save": lambda: model.save(tmp_path / "tied.npz"),
           # the file named the tied array after one of its layers ("0.weight_1"), not as state_dict names it
           "to_onnx": lambda: model.to_onnx(tmp_path / "tied.onnx")}[call]
    with pytest.raises(ValueError, match=r"layer 0 \(Dense\).*'weight'.*'2\.weight'"):
        run()


def test_a_parameter_made_without_add_parameter_is_refused_by_name() -> None:
    # a Parameter built by hand is neither trained nor saved: the layer computes with an array nothing updates
    class HandMadeScale(nnx.Layer):
        def build(self, input_shape: Any) -> None:
            self.scale = nnx.Parameter("scale", self.backend.asarray(np.ones(4), dtype=self.dtype))

        def forward(self, X: Any, training: bool = False) -> Any:
            return X * self.scale.value

        def backward(self, dY: Any, need_dX: bool = True) -> Any:
            return dY * self.scale.value

    model = nnx.Sequential(nnx.Dense(4, 4), HandMadeScale(), dtype="float64")
    with pytest.raises(ValueError, match=r"layer 1 \(HandMadeScale\).*'scale'.*add_parameter"):
        model.fit(np.ones((8, 4)), np.ones((8, 4)), loss="mse", epochs=1, verbose=0)


def test_a_block_may_keep_its_sub_layers_arrays_as_attributes(backend: Any) -> None:
    class AttributeReferenceBlock(nnx.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.inner = self.add_layer("inner", nnx.Dense(4, 4))

        def build(self, input_shape: Any) -> None:
            self.w = self.inner.weight  # a reference inside the block's own tree: fine

        def forward(self, X: Any, training: bool = False) -> Any:
            return self.inner.forward(X, training)

        def backward(self, dY: Any, need_dX: bool = True) -> Any:
            return self.inner.backward(dY, need_dX)

    model = nnx.Sequential(nnx.Dense(3, 4), AttributeReferenceBlock(), nnx.Dense(4, 1), backend=backend,
                           dtype="float64", seed=0)
    X = np.random.default_rng(0).normal(size=(10, 3))
    model.fit(X, X[:, :1], loss="mse", epochs=1, verbose=0)
    assert np.isfinite(host(model, model.predict(X))).all()


def data(n: int = 40, features: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, features)) * 3 + 1, rng.normal(size=(n, 1))


def arrays(model: Any) -> dict[str, np.ndarray]:
    return {name: host(model, value).copy() for name, value in model.state_dict().items()}


def test_batchnorm_fit_with_validation_matches_torch_and_inference_leaves_the_statistics(backend: Any) -> None:
    torch = pytest.importorskip("torch")
    X, y = data()
    Xv, yv = data(10, seed=1)  # one validation batch of the training batch's 10 rows: no partial batch to compile
    model = nnx.Sequential(nnx.Dense(5, 8), nnx.BatchNorm(8, momentum=0.2), nnx.ReLU(), nnx.Dense(8, 1),
                           backend=backend, dtype="float64", seed=1)
    start = arrays(model)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.BatchNorm1d(8, momentum=0.2), torch.nn.ReLU(),
                              torch.nn.Linear(8, 1)).double()
    with torch.no_grad():
        for i in (0, 3):
            net[i].weight.copy_(torch.from_numpy(start[f"{i}.weight"].T))
            net[i].bias.copy_(torch.from_numpy(start[f"{i}.bias"]))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    model.fit(X, y, loss="mse", optimizer=nnx.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), epochs=2,
              batch_size=10, shuffle=False, validation_data=(Xv, yv), verbose=0)
    for _ in range(2):
        net.train()
        for i in range(0, 40, 10):
            opt.zero_grad()
            loss = ((net(torch.from_numpy(X[i:i + 10])) - torch.from_numpy(y[i:i + 10])) ** 2).mean()
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            net(torch.from_numpy(Xv))  # torch's validation pass in eval mode: the statistics stay
    trained = arrays(model)
    np.testing.assert_allclose(trained["1.running_mean"], net[1].running_mean.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(trained["1.running_var"], net[1].running_var.numpy(), rtol=1e-10, atol=1e-12)
    model.evaluate(Xv, yv)
    Y = host(model, model.predict(Xv))
    model(Xv)
    after = arrays(model)
    assert all(np.array_equal(after[k], trained[k]) for k in trained)
    with torch.no_grad():
        np.testing.assert_allclose(Y, net(torch.from_numpy(Xv)).numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "adam"])
def test_parameters_left_out_of_the_optimizer_stay_put_and_stay_out_after_copies(backend: Any, optimizer: str,
                                                                                 tmp_path: Any) -> None:
    import copy

    X, y = data()
    model = nnx.Sequential(nnx.Dense(5, 8), nnx.BatchNorm(8), nnx.ReLU(),
                           nnx.Sequential(nnx.Dense(8, 4), nnx.Tanh()), nnx.Dense(4, 1),
                           backend=backend, dtype="float64", seed=1, regularizer=nnx.regularizers.L2(0.1))
    frozen = [*model.layers[0].parameters(), *model.layers[3].parameters()]
    kept = [p for p in model.parameters() if all(p is not q for q in frozen)]
    make = {"sgd": lambda ps: nnx.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.1),
            "adamw": lambda ps: nnx.optim.AdamW(ps, lr=0.05, weight_decay=0.1),
            "adam": lambda ps: nnx.optim.Adam(ps, lr=0.05, weight_decay=0.1)}[optimizer]
    names = {"0.weight", "0.bias", "3.0.weight", "3.0.bias"}
    before = arrays(model)
    model.fit(X, y, loss="mse", optimizer=make(kept), epochs=1, batch_size=10, verbose=0)
    model.save(tmp_path / "m.npz")
    for other in (model, copy.deepcopy(model), model.to(backend), nnx.load(tmp_path / "m.npz", backend=backend)):
        other.fit(X, y, epochs=1, batch_size=10, verbose=0)
        after = arrays(other)
        assert {k for k in before if np.array_equal(before[k], after[k])} == names


def test_nested_state_dict_round_trips_and_load_errors_name_the_keys(backend: Any) -> None:
    model = nnx.Sequential(nnx.Dense(5, 8), nnx.Dropout(0.5), nnx.Residual(nnx.Dense(8, 8), nnx.BatchNorm(8)),
                           nnx.Sequential(nnx.Dense(8, 4), nnx.Tanh()), nnx.Dense(4, 1),
                           backend=backend, dtype="float64", seed=1)
    X, y = data()
    model.fit(X, y, loss="mse", epochs=1, batch_size=10, verbose=0)
    state = arrays(model)
    assert set(state) == {"0.weight", "0.bias", "2.0.weight", "2.0.bias", "2.1.weight", "2.1.bias",
                          "2.1.running_mean", "2.1.running_var", "3.0.weight", "3.0.bias", "4.weight", "4.bias"}
    assert set(arrays(model.layers[3])) == {"0.weight", "0.bias"}
    other = nnx.Sequential(nnx.Dense(5, 8), nnx.Dropout(0.5), nnx.Residual(nnx.Dense(8, 8), nnx.BatchNorm(8)),
                           nnx.Sequential(nnx.Dense(8, 4), nnx.Tanh()), nnx.Dense(4, 1),
                           backend=backend, dtype="float64", seed=2)
    other.load_state_dict(state)
    np.testing.assert_array_equal(host(other, other.predict(X)), host(model, model.predict(X)))
    with pytest.raises(ValueError, match=r"2\.0\.weight.*\(8, 9\).*\(8, 8\)"):
        other.load_state_dict({**state, "2.0.weight": np.zeros((8, 9))})
    renamed = {("2.1.running_varx" if k == "2.1.running_var" else k): v for k, v in state.items()}
    with pytest.raises(ValueError, match=r"missing \['2\.1\.running_var'\], unexpected \['2\.1\.running_varx'\]"):
        other.load_state_dict(renamed)
    np.testing.assert_array_equal(host(other, other.predict(X)), host(model, model.predict(X)))  # nothing half-loaded


def test_dropout_trains_in_fit_and_is_off_in_validation_evaluate_and_predict(backend: Any) -> None:
    X, y = data()

    def model(rate: float) -> Any:
        return nnx.Sequential(nnx.Dense(5, 8), nnx.Dropout(rate), nnx.Tanh(), nnx.Dense(8, 1), backend=backend,
                              dtype="float64", seed=1)

    dropped, plain = model(0.5), model(0.0)
    history = dropped.fit(X, y, loss="mse", epochs=2, batch_size=10, validation_data=(X, y), verbose=0)
    plain.fit(X, y, loss="mse", epochs=2, batch_size=10, verbose=0)
    assert not np.allclose(arrays(dropped)["0.weight"], arrays(plain)["0.weight"])
    Y = host(dropped, dropped.predict(X))
    np.testing.assert_array_equal(Y, host(dropped, dropped.predict(X)))
    assert history.history["val_loss"][-1] == pytest.approx(float(np.mean((Y - y) ** 2)), rel=1e-12)
    assert float(dropped.evaluate(X, y)["loss"]) == pytest.approx(float(np.mean((Y - y) ** 2)), rel=1e-12)


def test_a_copy_or_move_on_the_same_backend_trains_on_as_the_original(backend: Any) -> None:
    import copy

    X, y = data()
    model = nnx.Sequential(nnx.Dense(5, 8), nnx.BatchNorm(8), nnx.Dropout(0.3), nnx.Tanh(), nnx.Dense(8, 1),
                           backend=backend, dtype="float64", seed=1)
    model.fit(X, y, loss="mse", optimizer="adam", epochs=1, batch_size=10, verbose=0)
    moved, copied = model.to(backend), copy.deepcopy(model)
    for other in (model, moved, copied):
        other.fit(X, y, epochs=1, batch_size=10, verbose=0)
    for other in (moved, copied):
        assert all(np.array_equal(v, arrays(model)[k]) for k, v in arrays(other).items())


def test_a_sub_layer_kept_as_a_plain_attribute_is_named_with_add_layer_as_the_fix() -> None:
    # torch registers a module assigned to an attribute; here it is never built, and the error said to put the
    # layer in a Sequential, which a block's author had done with the block
    class PlainAttributeBlock(nnx.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.inner = nnx.Dense(4, 4)

        def forward(self, X: Any, training: bool = False) -> Any:
            return self.inner.forward(X, training)

        def backward(self, dY: Any, need_dX: bool = True) -> Any:
            return self.inner.backward(dY, need_dX)

    model = nnx.Sequential(nnx.Dense(5, 4), PlainAttributeBlock(), nnx.Dense(4, 1), dtype="float64")
    with pytest.raises(RuntimeError, match=r"Dense is not part of a model.*self\.add_layer\(name, layer\)"):
        model.predict(np.ones((2, 5)))
