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
    model.evaluate(X, y, batch_size=16)
    model.predict(X, batch_size=16)
    assert host(model, model.layers[1].seen.value)[0] == 160.0


def tied_model(backend: Any) -> Any:
    return nnx.Sequential(nnx.Dense(4, 4), nnx.Tanh(), nnx.Dense(4, 4), nnx.Tanh(), nnx.Dense(4, 1), backend=backend,
                          dtype="float64", seed=1)


@pytest.mark.parametrize("call", ["fit", "predict", "evaluate", "check_gradients"])
def test_torch_style_weight_tying_is_refused_by_name(call: str) -> None:
    # `decoder.weight = encoder.weight` ties two torch parameters (their gradients add up). Here the layer read the
    # other layer's array while its own, unused, was what the optimizer, state_dict and files held, and its backward
    # overwrote the other layer's gradient: fit trained on without a word
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 4)), rng.normal(size=(20, 1))
    model = tied_model("numpy")
    model.layers[0].weight = model.layers[2].weight
    run = {"fit": lambda: model.fit(X, y, loss="mse", optimizer="sgd", epochs=1, batch_size=10, verbose=0),
           "predict": lambda: model.predict(X), "evaluate": lambda: model.evaluate(X, y, loss="mse"),
           "check_gradients": lambda: nnx.check_gradients(model, X, y, "mse")}[call]
    with pytest.raises(ValueError, match=r"layer 0 \(Dense\).*'weight'.*'2\.weight'"):
        run()


def test_a_parameter_made_without_add_parameter_is_refused_by_name() -> None:
    # a Parameter built by hand is neither trained nor saved: the layer computes with an array nothing updates
    class Scale(nnx.Layer):
        def build(self, input_shape: Any) -> None:
            self.scale = nnx.Parameter("scale", self.backend.asarray(np.ones(4), dtype=self.dtype))

        def forward(self, X: Any, training: bool = False) -> Any:
            return X * self.scale.value

        def backward(self, dY: Any, need_dX: bool = True) -> Any:
            return dY * self.scale.value

    model = nnx.Sequential(nnx.Dense(4, 4), Scale(), dtype="float64")
    with pytest.raises(ValueError, match=r"layer 1 \(Scale\).*'scale'.*add_parameter"):
        model.fit(np.ones((8, 4)), np.ones((8, 4)), loss="mse", epochs=1, verbose=0)


def test_a_block_may_keep_its_sub_layers_arrays_as_attributes(backend: Any) -> None:
    class Block(nnx.Layer):
        def __init__(self) -> None:
            super().__init__()
            self.inner = self.add_layer("inner", nnx.Dense(4, 4))

        def build(self, input_shape: Any) -> None:
            self.w = self.inner.weight  # a reference inside the block's own tree: fine

        def forward(self, X: Any, training: bool = False) -> Any:
            return self.inner.forward(X, training)

        def backward(self, dY: Any, need_dX: bool = True) -> Any:
            return self.inner.backward(dY, need_dX)

    model = nnx.Sequential(nnx.Dense(3, 4), Block(), nnx.Dense(4, 1), backend=backend, dtype="float64", seed=0)
    X = np.random.default_rng(0).normal(size=(10, 3))
    model.fit(X, X[:, :1], loss="mse", epochs=1, verbose=0)
    assert np.isfinite(host(model, model.predict(X))).all()
