"""BatchNorm, LayerNorm and Dropout against torch.nn and Keras's documented conventions: the running-statistics
rule over partial batches, weighted rows, accumulation and the compiled epoch, gradients through the batch
statistics, float32 cancellation at a large mean, and dropout's scaling and fresh masks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import nnx

# the arithmetic below is the same array-API code on every backend: the cheap ones check it; JAX (whose eager
# ops compile one by one) runs only where its own machinery matters, the compiled epoch and its RNG threading
_CHEAP = [b for b in ("numpy", "array_api_strict", "torch") if b in nnx.available_backends()]
_FIT = _CHEAP + [b for b in ("jax",) if b in nnx.available_backends()]


def _host(model: Any, value: Any) -> np.ndarray:
    return np.array(model.backend.to_host(value))


def _ema(batches: list[np.ndarray], m: float, ddof: int) -> tuple[np.ndarray, np.ndarray]:
    mean, var = np.zeros(batches[0].shape[1]), np.ones(batches[0].shape[1])
    for b in batches:
        mean = (1 - m) * mean + m * b.mean(axis=0)
        var = (1 - m) * var + m * b.var(axis=0, ddof=ddof)
    return mean, var


@pytest.mark.parametrize(("backend", "accumulate"), [(b, 1) for b in _FIT] + [("numpy", 2)])
def test_running_stats_over_partial_weighted_accumulated_batches(backend, accumulate):
    """torch's rule (momentum 0.25, unbiased variance) per forward over two epochs: the last batch of 2 rows
    included, sample weights ignored (as torch and Keras do), validation passes leaving the buffers alone;
    with accumulation each micro-batch's forward counts, as in a torch loop calling the model k times per step.
    On JAX this is the compiled epoch, whose buffers must thread from batch to batch and epoch to epoch."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 3)) * 2 + 1
    model = nnx.Sequential(nnx.BatchNorm(3, momentum=0.25), backend=backend, dtype="float64", seed=0)
    model.fit(X, np.zeros((10, 3)), optimizer=nnx.optim.SGD(model.parameters(), lr=1e-300), epochs=2,
              batch_size=4, shuffle=False, verbose=0, accumulate=accumulate, sample_weight=np.arange(1.0, 11.0),
              validation_data=(X[:5] + 7, np.zeros((5, 3))))
    mean, var = _ema([X[0:4], X[4:8], X[8:10]] * 2, 0.25, ddof=1)
    state = {k: _host(model, v) for k, v in model.state_dict().items()}
    np.testing.assert_allclose(state["0.running_mean"], mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(state["0.running_var"], var, rtol=1e-12, atol=1e-15)


def test_momentum_is_torchs_and_the_variance_estimate_is_unbiased_unlike_keras():
    """Keras's BatchNormalization(momentum=0.99) moves its mean as momentum=0.01 here does, but keeps the
    biased batch variance; nnx (as torch) keeps the unbiased one: the documented difference, by the numbers."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((5, 2)) * (i + 1) + i for i in range(4)]
    model = nnx.Sequential(nnx.BatchNorm(2, momentum=0.01), backend="numpy", dtype="float64")
    ref = torch.nn.BatchNorm1d(2, momentum=0.01, dtype=torch.float64)
    for b in batches:
        model.forward(b, training=True)
        ref(torch.from_numpy(b))
    layer = model.layers[0]
    torch_mean, torch_var = _ema(batches, 0.01, ddof=1)
    keras_mean, keras_var = _ema(batches, 1 - 0.99, ddof=0)  # moving = 0.99 * moving + 0.01 * batch (biased)
    np.testing.assert_allclose(_host(model, layer.running_mean.value), ref.running_mean.numpy(), rtol=1e-13)
    np.testing.assert_allclose(_host(model, layer.running_var.value), ref.running_var.numpy(), rtol=1e-13)
    np.testing.assert_allclose(_host(model, layer.running_var.value), torch_var, rtol=1e-13)
    np.testing.assert_allclose(_host(model, layer.running_mean.value), keras_mean, rtol=1e-13)
    assert not np.allclose(_host(model, layer.running_var.value), keras_var, rtol=1e-6)


@pytest.mark.parametrize("backend", _CHEAP)
def test_batchnorm_gradient_through_batch_statistics_matches_finite_differences(backend):
    """dX, d weight and d bias of a training-mode BatchNorm (the batch mean and variance depend on X) against
    float64 central differences of the same scalar, on each backend."""
    rng = np.random.default_rng(2)
    X, C = rng.standard_normal((5, 3)) * 3 + 2, rng.standard_normal((5, 3))
    model = nnx.Sequential(nnx.BatchNorm(3, eps=1e-3), backend=backend, dtype="float64", seed=0)
    layer = model.layers[0]
    w, b = rng.standard_normal(3) + 1, rng.standard_normal(3)
    layer.weight.value = model.backend.asarray(w, dtype=model.dtype)
    layer.bias.value = model.backend.asarray(b, dtype=model.dtype)

    def f(Xv, wv=w, bv=b):  # sum(C * BN(X)), written out in NumPy
        xh = (Xv - Xv.mean(0)) / np.sqrt(Xv.var(0) + 1e-3)
        return float(np.sum(C * (xh * wv + bv)))

    model.forward(X, training=True)
    dX = _host(model, model.backward(model.backend.asarray(C, dtype=model.dtype)))
    h = 1e-6
    for got, arg, at in ((dX, 0, X), (_host(model, layer.weight.grad), 1, w), (_host(model, layer.bias.grad), 2, b)):
        num = np.zeros_like(at)
        for i in np.ndindex(at.shape):
            up, down = [X, w, b], [X, w, b]
            up[arg], down[arg] = at.copy(), at.copy()
            up[arg][i] += h
            down[arg][i] -= h
            num[i] = (f(*up) - f(*down)) / (2 * h)
        np.testing.assert_allclose(got, num, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", _CHEAP)
def test_float32_large_mean_does_not_cancel(backend):
    """At mean 1000 and spread 1, E[x^2] - E[x]^2 in float32 loses all the variance's digits (1e6's ulp is
    0.06); the two-pass form keeps the outputs to float32 rounding of the input, as torch's are."""
    rng = np.random.default_rng(3)
    X = (rng.standard_normal((64, 3)) + 1000).astype(np.float32)
    Xd = X.astype(np.float64)
    bn = nnx.Sequential(nnx.BatchNorm(3), backend=backend, dtype="float32")
    want = (Xd - Xd.mean(0)) / np.sqrt(Xd.var(0) + 1e-5)
    np.testing.assert_allclose(_host(bn, bn.forward(X, training=True)), want, atol=2e-4)
    np.testing.assert_allclose(_host(bn, bn.layers[0].running_var.value), 0.9 + 0.1 * Xd.var(0, ddof=1), rtol=1e-4)
    ln = nnx.Sequential(nnx.LayerNorm(64), backend=backend, dtype="float32")
    want = (Xd.T - Xd.T.mean(1, keepdims=True)) / np.sqrt(Xd.T.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(_host(ln, ln.forward(np.ascontiguousarray(X.T), training=True)), want, atol=2e-4)


def test_batch_of_one_in_training_raises_and_inference_uses_running_stats():
    """torch raises for one row in training (no variance to normalise by); nnx too. At inference one row is
    normalised by the running estimates, as torch's eval mode does."""
    torch = pytest.importorskip("torch")
    model = nnx.Sequential(nnx.BatchNorm(2, momentum=0.5), backend="numpy", dtype="float64")
    with pytest.raises(ValueError, match="more than one sample"):
        model.forward(np.ones((1, 2)), training=True)
    ref = torch.nn.BatchNorm1d(2, momentum=0.5, dtype=torch.float64)
    rng = np.random.default_rng(4)
    for _ in range(3):
        b = rng.standard_normal((6, 2)) * 4 + 3
        model.forward(b, training=True)
        ref(torch.from_numpy(b))
    ref.eval()
    row = rng.standard_normal((1, 2))
    np.testing.assert_allclose(_host(model, model.predict(row)), ref(torch.from_numpy(row)).detach().numpy(),
                               rtol=1e-12)


# -- Dropout -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", _CHEAP)
def test_dropout_scaling_identity_and_rate_edges(backend):
    model = nnx.Sequential(nnx.Dropout(0.3), nnx.Dropout(0.3), backend=backend, dtype="float32", seed=0)
    X = model.backend.asarray(np.ones((100, 40), np.float32))
    first, second = model.layers
    a = _host(model, first.forward(X, training=True))
    b = _host(model, second.forward(X, training=True))
    again = _host(model, first.forward(X, training=True))
    assert set(np.unique(a).tolist()) == {0.0, np.float32(1 / 0.7)}
    assert 0.25 < (a == 0).mean() < 0.35 and abs(a.mean() - 1) < 0.05  # inverted: the expectation is kept
    assert not np.array_equal(a, b) and not np.array_equal(a, again)  # per layer and per call
    np.testing.assert_array_equal(_host(model, model.forward(X)), np.ones((100, 40)))  # identity at inference
    # backward uses the forward's own mask
    Y = model.forward(X, training=True)
    np.testing.assert_array_equal(_host(model, model.backward(X)), _host(model, Y))
    # rate 0 trains as the identity; 1 drops everything, which torch gives as zeros and nnx (as Keras) refuses
    zero = nnx.Sequential(nnx.Dropout(0.0), backend=backend, dtype="float32")
    np.testing.assert_array_equal(_host(zero, zero.forward(X, training=True)), np.ones((100, 40)))
    np.testing.assert_array_equal(_host(zero, zero.backward(X)), np.ones((100, 40)))
    with pytest.raises(ValueError, match="Dropout rate"):
        nnx.Dropout(1.0)
    first.p = 1.0  # torch's name, set after construction: refused when it runs, not a division by zero
    with pytest.raises(ValueError, match="Dropout rate"):
        model.forward(X, training=True)


@pytest.mark.parametrize("backend", _CHEAP)  # JAX's compiled stream: test_compiled_epoch
def test_dropout_masks_are_fresh_every_step_in_fit(backend):
    """Each unit's SGD update is lr * mask_t summed over steps: masks drawn once and reused (a key baked into a
    compiled step) would leave only the sums 0 and 2 for two steps, never 1."""
    d = 40
    X, y = np.ones((2, d)), np.full((2, 1), -1000.0)
    model = nnx.Sequential(nnx.Dropout(0.5), nnx.Dense(d, 1), backend=backend, dtype="float64", seed=0)
    w0 = _host(model, model.layers[1].weight.value)
    model.fit(X, y, loss="mse", optimizer=nnx.optim.SGD(model.parameters(), lr=1e-9), epochs=1, batch_size=1,
              shuffle=False, verbose=0)
    kept = np.round((w0 - _host(model, model.layers[1].weight.value)).ravel() / (1e-9 * 2 * 1000 * 2))
    assert set(kept.tolist()) == {0.0, 1.0, 2.0}
