"""Each declared layer kernel gives its layer's own numbers, NaN and inf included, and runs only where declared."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.kernels import layer_runners

torch = pytest.importorskip("torch")

SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-300, -1e-300, 2.5, -2.5]


@pytest.fixture
def torch_backend(backend_case):
    """Each torch device the suite runs on (``NNX_TEST_BACKEND=torch:cuda`` for a GPU); the kernels here are torch's."""
    be, _ = backend_case
    if be.name != "torch":
        pytest.skip("the kernels tested here are declared for torch")
    return be


def _layer(cls, backend):
    layer = cls()
    nnx.Sequential(nnx.Dense(3, 3), layer, backend=backend, dtype="float64")  # builds and binds it
    return layer


def _same(got, want):
    got, want = np.asarray(got.cpu()), np.asarray(want.cpu())
    np.testing.assert_array_equal(got, want)  # NaN where NaN, inf where inf
    numbers = ~np.isnan(want)  # a NaN's sign bit means nothing
    np.testing.assert_array_equal(np.signbit(got[numbers]), np.signbit(want[numbers]))  # each zero's sign


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_relu_kernel_gives_the_layers_numbers_bit_for_bit(torch_backend, dtype):
    layer = _layer(nnx.ReLU, torch_backend)
    (kernel,) = layer_runners([layer], torch_backend)
    assert kernel is not layer
    gen = np.random.default_rng(0)
    n = len(SPECIAL)
    X, dY = gen.normal(size=(n * n, 3)) * 3, gen.normal(size=(n * n, 3))
    X[:, 0], dY[:, 0] = np.repeat(SPECIAL, n), np.tile(SPECIAL, n)  # every special input meets every gradient
    X_t, dY_t = (torch.tensor(a, dtype=getattr(torch, dtype), device=torch_backend.device) for a in (X, dY))
    _same(kernel.forward(X_t, training=True), layer.forward(X_t, training=True))
    _same(kernel.backward(dY_t), layer.backward(dY_t))
    _same(kernel.forward(X_t), layer.forward(X_t))  # inference keeps nothing


def test_a_kernels_backward_needs_a_training_forward():
    (kernel,) = layer_runners([_layer(nnx.ReLU, "torch")], nnx.get_backend("torch"))
    kernel.forward(torch.ones(2, 3))  # inference: nothing kept
    with pytest.raises(RuntimeError, match="needs a forward"):
        kernel.backward(torch.ones(2, 3))


class MyReLU(nnx.ReLU):
    """A subclass may change the math: it is not covered until declared itself."""


def test_kernels_run_only_where_declared():
    torch_be = nnx.get_backend("torch")
    plain = [_layer(nnx.ReLU, "numpy"), _layer(MyReLU, "torch"), _layer(nnx.Tanh, "torch")]
    replaced = _layer(nnx.ReLU, "torch")
    replaced.forward = lambda X, training=False: X  # a user's hook on this object runs as written
    for layer in plain + [replaced]:
        assert layer_runners([layer], torch_be if layer.backend.name == "torch" else layer.backend) == [layer]


def test_a_torch_fit_runs_the_kernel_and_gives_the_plain_loops_numbers(torch_backend):
    gen = np.random.default_rng(1)
    X, y = gen.normal(size=(64, 5)), gen.integers(0, 3, 64)
    X[:8] *= 1e3  # large activations, many exact zeros after the ReLU

    def fit(backend):
        model = nnx.Sequential(nnx.Dense(5, 16), nnx.ReLU(), nnx.Dense(16, 3), backend=backend, dtype="float64",
                               seed=3)
        history = model.fit(X, y, loss="cross_entropy", optimizer=nnx.optim.SGD(model.parameters(), lr=1e-4,
                                                                                 momentum=0.9),
                            epochs=3, batch_size=16, verbose=0)
        return model, history

    be = torch_backend
    derived, history = fit(be)
    plain, _ = fit(be.with_fastpath(False))
    assert history.execution == "flat"
    for a, b in zip(derived.parameters(), plain.parameters(), strict=True):
        np.testing.assert_allclose(be.to_host(a.value), be.to_host(b.value), rtol=1e-12, atol=1e-14)
