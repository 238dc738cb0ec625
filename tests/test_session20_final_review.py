"""Final review of session 20's changes: the ways `fit` runs beside steps run back to back, the finite check after
the gradient all-reduce, and torch's `split_rows`, each against the plain loop.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import distributed as dist


class FinalReviewWorld(dist.SingleProcess):
    """A single process that `fit` treats as a real engine, so the data-parallel stages run in this process."""

    engine = "test"


class FinalReviewFloat64Gain(nnx.Layer):
    """A user's layer keeping its gain in float64 whatever the model's dtype, cast where it meets the activations."""

    def build(self, input_shape):
        self.gain = self.add_parameter("gain", tuple(input_shape), "ones")
        self.gain.value = self.xp.astype(self.gain.value, self.xp.float64)

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, X, training=False):
        if training:
            self.X = X
        return X * self.xp.astype(self.gain.value, X.dtype)

    def backward(self, dY, need_dX=True):
        self.gain.grad = self.xp.astype(self.xp.sum(dY * self.X, axis=0), self.xp.float64)
        return dY * self.xp.astype(self.gain.value, dY.dtype) if need_dX else None


@pytest.mark.parametrize("elementwise", [True, False], ids=["elementwise", "not elementwise"])
def test_the_gradient_all_reduce_keeps_each_gradients_dtype(backend, elementwise):
    """A float32 model with a user's float64 parameter trains in one process; with data parallelism the
    all-reduce concatenated the gradients into one float64 buffer and handed float64 gradients back to the
    float32 parameters, which the optimizer then refused, blaming the parameter's gradient."""
    X = np.random.default_rng(0).normal(size=(30, 4))
    y = (X[:, 0] > 0).astype(float)

    def run(be, distributed):
        model = nnx.Sequential(nnx.Dense(4, 5), FinalReviewFloat64Gain(), nnx.ReLU(), nnx.Dense(5, 1), nnx.Sigmoid(),
                               backend=be, dtype="float32", seed=3)
        model(np.zeros((1, 4)))
        opt = nnx.optim.SGD(model.parameters(), lr=0.05, momentum=0.5)
        opt.elementwise = elementwise
        extra = {"distributed": dist.DataParallel(FinalReviewWorld(), shard_update=False)} if distributed else {}
        model.fit(X, y, epochs=2, batch_size=8, optimizer=opt, **extra)
        return model

    plain, parallel = run(backend.with_fastpath(False), False), run(backend, True)
    for p, q in zip(plain.parameters(), parallel.parameters(), strict=True):
        assert str(q.value.dtype) == str(p.value.dtype), p.name
        np.testing.assert_allclose(np.asarray(backend.to_host(q.value)), np.asarray(backend.to_host(p.value)),
                                   rtol=1e-6, atol=1e-7, err_msg=p.name)


class FinalReviewSlopeSGD(nnx.optim.SGD):
    """SGD whose own step also sets a layer's slope once, after its third update (a schedule written into the
    optimizer): code of the user's that runs between two steps of an epoch, after the update."""

    def __init__(self, params, lr, layer):
        """SGD at rate `lr`, setting `layer`'s slope after the third update."""
        super().__init__(params, lr)
        self.layer = layer

    def step(self):
        """The SGD update, then the slope once the third update is done."""
        super().step()
        if self.step_count == 3:
            self.layer.alpha = 0.05


def test_a_setting_an_optimizers_own_step_changes_is_seen_at_the_next_step(backend, rng):
    """On NumPy the passes are replayed, and back to back a replay followed the last without looking at the
    layers' settings: a slope an overridden `step` set (the user's code between two steps) was ignored."""
    X = rng.standard_normal((48, 5))
    y = (X[:, :1] > 0).astype("float64")

    def run(be):
        model = nnx.Sequential(nnx.Dense(5, 6), nnx.LeakyReLU(0.3), nnx.Dense(6, 1), nnx.Sigmoid(), backend=be,
                               dtype="float64", seed=3)
        opt = FinalReviewSlopeSGD(model.parameters(), 0.1, model.layers[1])
        model.fit(X, y, loss="bce", optimizer=opt, epochs=2, batch_size=8)
        return [np.asarray(be.to_host(p.value)) for p in model.parameters()]

    for got, plain in zip(run(backend), run(backend.with_fastpath(False)), strict=True):
        np.testing.assert_allclose(got, plain, rtol=1e-12, atol=1e-14)
