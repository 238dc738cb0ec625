"""Layers with modes and state, used as a PyTorch user would: running statistics, dropout, buffers a layer
updates itself, containers, freezing, state dicts and copies, compared with torch on CPU in float64."""

from __future__ import annotations

from typing import Any

import numpy as np

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
