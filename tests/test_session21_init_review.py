"""Session 21 review: initializers against their formulas and torch.nn.init, activations at extreme inputs
against torch, and GradientAnalyzer's rows against each batch's own gradients."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import nnx
from nnx import activations as act
from nnx import init

# -- initializers ------------------------------------------------------------------------------------------

# name -> (normal or uniform, std or limit as a function of (fan_in, fan_out))
FORMULAS = {
    "he_normal": ("normal", lambda i, o: math.sqrt(2.0 / i)),
    "he_uniform": ("uniform", lambda i, o: math.sqrt(6.0 / i)),
    "glorot_uniform": ("uniform", lambda i, o: math.sqrt(6.0 / (i + o))),
    "glorot_normal": ("normal", lambda i, o: math.sqrt(2.0 / (i + o))),
    "lecun": ("normal", lambda i, o: math.sqrt(1.0 / i)),
    "normal": ("normal", lambda i, o: 0.01),
    "standard_normal": ("normal", lambda i, o: 1.0),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_each_initializer_draws_its_documented_distribution(name):
    kind, scale = FORMULAS[name]
    fan_in, fan_out = 300, 700
    w = init.get_initializer(name)(np.random.default_rng(0), fan_in, fan_out)
    assert w.shape == (fan_in, fan_out) and w.dtype == np.float64
    expected = scale(fan_in, fan_out)
    assert abs(w.mean()) < 0.01 * expected
    if kind == "normal":
        assert w.std() == pytest.approx(expected, rel=0.01)
        assert np.abs(w).max() > 3.5 * expected  # not truncated: torch's kaiming_normal_ / xavier_normal_
    else:
        assert np.abs(w).max() <= expected and np.abs(w).max() > 0.999 * expected
        assert w.std() == pytest.approx(expected / math.sqrt(3.0), rel=0.01)


@pytest.mark.parametrize(("in_features", "out_features"), [(1000, 10), (10, 1000)])
def test_dense_counts_fan_in_as_its_input_features_as_torch_does(in_features, out_features):
    """torch.nn.init.kaiming_uniform_ on a Linear weight (out, in) takes fan_in = in: nnx's (in, out) must too."""
    model = nnx.Sequential(nnx.Dense(in_features, out_features, init="he_uniform"), seed=0, dtype="float64")
    w = np.asarray(model.state_dict()["0.weight"])
    limit = math.sqrt(6.0 / in_features)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert not np.any(model.state_dict()["0.bias"])
    he = np.asarray(nnx.Sequential(nnx.Dense(in_features, out_features), seed=0,
                                   dtype="float64").state_dict()["0.weight"])
    assert he.std() == pytest.approx(math.sqrt(2.0 / in_features), rel=0.05)  # the default is He normal


def test_fans_count_as_torch_and_keras_do():
    assert init.fans((3, 5)) == (3, 5)
    assert init.fans((3, 3, 16, 32)) == (3 * 3 * 16, 3 * 3 * 32)  # (kh, kw, in, out)
    assert init.fans((7,)) == (7, 7)
    assert init.fans(()) == (1, 1)


def test_same_seed_same_weights_on_every_backend_and_dtype():
    pytest.importorskip("torch")

    def arrays(**kwargs):
        model = nnx.Sequential(nnx.Dense(3, 4), nnx.ReLU(), nnx.Dense(4, 2, init="glorot"), seed=5, **kwargs)
        return {k: np.asarray(model.backend.to_host(v)) for k, v in model.state_dict().items()}

    base, wide, other = arrays(), arrays(dtype="float64"), arrays(backend="torch")
    for key, value in base.items():
        assert np.array_equal(value, other[key])
        assert np.array_equal(value, wide[key].astype(np.float32))  # float32 is the float64 draw, rounded


# -- activations at extreme inputs, against torch ------------------------------------------------------------

EXTREMES = [-np.inf, -1e30, -1e4, -100.0, -20.0, -1e-30, -0.0, 0.0, 1e-30, 20.0, 100.0, 1e4, 1e30, np.inf, np.nan]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "leaky_relu", "softplus"])
def test_activation_layers_agree_with_torch_at_extreme_inputs(name, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    reference = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
                 "leaky_relu": lambda t: F.leaky_relu(t, 0.01), "softplus": F.softplus}[name]
    x = np.array(EXTREMES, dtype=dtype)[None, :]
    model = nnx.Sequential(nnx.layers.ACTIVATIONS[name](), dtype=dtype, input_shape=(x.shape[1],))
    layer = model.layers[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow or invalid-value warnings either
        Y = layer.forward(x, training=True)
        dX = layer.backward(np.ones_like(x))
        f, d = layer.function(x), layer.derivative(x)
    t = torch.tensor(x, requires_grad=True)
    ty = reference(t)
    ty.backward(torch.ones_like(ty))
    ry, rg = ty.detach().numpy(), t.grad.numpy()
    tiny = float(np.finfo(dtype).tiny)  # nnx keeps subnormal tails torch rounds to 0, and accurate sech^2 tails
    for ours in (Y, f):
        np.testing.assert_allclose(ours, ry, rtol=1e-6, atol=tiny)
        assert np.array_equal(np.isnan(ours), np.isnan(ry))
    for ours in (dX, d):
        np.testing.assert_allclose(ours, rg, rtol=1e-6, atol=1e-8)
        assert np.array_equal(np.isnan(ours), np.isnan(rg))


def test_softmax_rows_with_infinities_are_nan_where_torch_is():
    torch = pytest.importorskip("torch")
    x = np.array([[0.0, 1.0], [-np.inf, 0.0], [np.inf, 0.0], [np.nan, 0.0], [-np.inf, -np.inf], [1e30, -1e30]])
    with np.errstate(invalid="ignore"):
        ours = act.softmax(x)
    ref = torch.softmax(torch.tensor(x), -1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)
    assert np.array_equal(np.isnan(ours), np.isnan(ref))


# -- GradientAnalyzer: each row is that batch's gradient, before clipping -----------------------------------

@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_gradient_analyzer_rows_are_each_batchs_unclipped_gradients(backend):
    if backend == "jax":
        pytest.importorskip("jax")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 1))

    def make():
        return nnx.Sequential(nnx.Dense(3, 5), nnx.Tanh(), nnx.Dense(5, 1), seed=3, backend=backend, dtype="float64")

    model, analyzer = make(), nnx.GradientAnalyzer(warn=False)
    lr, clip = 0.1, 1e-3
    model.fit(X, y, loss="mse", optimizer="sgd", lr=lr, epochs=2, batch_size=4, shuffle=False,
              callbacks=[analyzer], clip_norm=clip)
    got = np.stack([analyzer.history()[k] for k in nnx.callbacks.GRADIENT_STATS], axis=-1)

    # the same run by hand: each batch's gradient from loss_and_grads, then the clipped SGD step
    ref_model = make()
    loss = ref_model.resolve_loss("mse")
    host = ref_model.backend.to_host
    expected = []
    for _ in range(2):
        for start in range(0, 12, 4):
            xb = ref_model.prepare_inputs(X[start:start + 4])
            yb = ref_model.prepare_targets(y[start:start + 4], loss, 4)
            ref_model.loss_and_grads(xb, yb, loss)
            row = []
            for index in (0, 2):
                for p in (ref_model.layers[index].weight, ref_model.layers[index].bias):
                    g = np.asarray(host(p.grad))
                    row.append([np.abs(g).mean(), np.abs(g).max(), np.linalg.norm(g)])
            expected.append([row[0] + row[1], row[2] + row[3]])
            params = list(ref_model.parameters())
            total = math.sqrt(sum(float((np.asarray(host(p.grad)) ** 2).sum()) for p in params))
            scale = min(1.0, clip / total)
            for p in params:
                p.value = p.value - lr * scale * p.grad
    np.testing.assert_allclose(got, np.array(expected), rtol=1e-7, atol=1e-12)
    assert analyzer.step_epochs == [0, 0, 0, 1, 1, 1]
    assert analyzer.layer_names == ["0:Dense(3, 5)", "2:Dense(5, 1)"]


def test_gradient_analyzer_norm_survives_float32_overflow_and_keeps_inf():
    xp = nnx.get_backend("numpy").xp
    from nnx.training.callbacks.gradients import _grad_stats

    big = np.full((4, 4), 1e30, dtype=np.float32)  # the squares overflow float32
    mean, peak, norm = (float(v) for v in _grad_stats(xp, big, big))
    assert (mean, peak) == (pytest.approx(1e30, rel=1e-6), pytest.approx(1e30, rel=1e-6))
    assert norm == pytest.approx(4e30, rel=1e-6)
    with_inf = big.copy()
    with_inf[0, 0] = np.inf
    with np.errstate(over="ignore"):  # unscaled, the other squares overflow too: the norm is inf either way
        assert float(_grad_stats(xp, with_inf, with_inf)[2]) == math.inf
    zero = np.zeros((3,), dtype=np.float32)
    assert [float(v) for v in _grad_stats(xp, zero, zero)] == [0.0, 0.0, 0.0]
