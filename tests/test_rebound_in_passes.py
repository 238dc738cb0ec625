"""A layer that rebinds its own parameter's value in its forward (a weight constraint) trains as in the plain loop.

The plain step updates from the value the layer left: the flat update sees the rebinding and gathers the new
value. The recorded passes on NumPy and the compiled step on JAX lost it (each restored the value it bound
for the passes, and updated from the old one); they now refuse such passes, which then run plainly. Steps run
back to back (`TrainStep.back_to_back`) still look for it, since the layer's code runs inside the step.
"""

from __future__ import annotations

import numpy as np

import nnx


def _data(rng, n=48, features=5):
    X = rng.standard_normal((n, features))
    y = (rng.random((n, 1)) < 0.5).astype("float64")
    return X, y


class MaxNormDense(nnx.Layer):
    """A user's Dense that keeps each column of its weight within a norm of 0.5 by rebinding the weight to a new
    array in its training forward: the user's code runs inside the step, whatever runs between steps."""

    def __init__(self, in_features, out_features):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.X = None

    def build(self, input_shape):
        self.weight = self.add_parameter("weight", (self.in_features, self.out_features), "glorot")
        self.bias = self.add_parameter("bias", (self.out_features,), "zeros")

    def output_shape(self, input_shape):
        return (self.out_features,)

    def forward(self, X, training=False):
        if training:
            xp, W = self.xp, self.weight.value
            norms = xp.sqrt(xp.sum(W * W, axis=0))
            self.weight.value = W * xp.minimum(1.0, 0.5 / norms)
            self.X = X
        return X @ self.weight.value + self.bias.value

    def backward(self, dY, need_dX=True):
        self.weight.grad = self.X.T @ dY
        self.bias.grad = self.xp.sum(dY, axis=0)
        return dY @ self.weight.value.T if need_dX else None


def test_a_layer_that_rebinds_its_weight_in_its_forward_is_updated_from_the_new_weight(backend, rng):
    X, y = _data(rng)

    def fit(be):
        model = nnx.Sequential(MaxNormDense(5, 6), nnx.Tanh(), nnx.Dense(6, 1), nnx.Sigmoid(), backend=be,
                               dtype="float64", seed=3)
        model.fit(X, y, loss="bce", optimizer=nnx.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), epochs=3,
                  batch_size=16, shuffle=False)
        return [np.asarray(be.to_host(p.value)) for p in model.parameters()]
    for a, b in zip(fit(backend), fit(backend.with_fastpath(False)), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
