"""The gradient tools as a researcher uses them on a layer of their own: `nnx.check_gradients` catches a
backward that is a little wrong, leaves the model as it found it, and says when it cannot tell; and
`GradientAnalyzer` records the gradients the optimizer applied, under every execution path."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nnx


class TanhProjection(nnx.Layer):
    """tanh(X @ w) into 2 outputs, with a backward that can be scaled by `factor` (1 is right)."""

    def __init__(self, factor=1.0, width=2):
        super().__init__()
        self.factor = factor
        self.width = width

    def output_shape(self, input_shape):
        return (self.width,)

    def build(self, input_shape):
        self.w = self.add_parameter("w", (input_shape[0], self.width), init="glorot", regularized=True)

    def forward(self, X, training=False):
        Y = self.xp.tanh(X @ self.w.value)
        if training:
            self._cache = (X, Y)
        return Y

    def backward(self, dY, need_dX=True):
        X, Y = self._cache
        dZ = dY * (1.0 - Y * Y)
        self.w.grad = self.factor * (self.xp.matrix_transpose(X) @ dZ)
        return dZ @ self.xp.matrix_transpose(self.w.value)


def _data(n=8, d=3, k=2):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)), rng.standard_normal((n, k))


def test_a_backward_off_by_one_percent_scores_well_above_a_right_one(backend):
    X, y = _data()
    right = nnx.Sequential(TanhProjection(), backend=backend, dtype="float64", seed=0, input_shape=(3,))
    wrong = nnx.Sequential(TanhProjection(1.01), backend=backend, dtype="float64", seed=0, input_shape=(3,))
    assert nnx.check_gradients(right, X, y, loss="mse") < 1e-8
    err = nnx.check_gradients(wrong, X, y, loss="mse")
    assert err > 1e-3 and err.errors["0.w"] == err


def test_batchnorm_dropout_penalty_and_weights_in_float32_leave_the_model_as_found(backend):
    X, y = _data()
    model = nnx.Sequential(nnx.Dense(3, 5), nnx.BatchNorm(5), nnx.Tanh(), nnx.Dropout(0.3),
                           nnx.Dense(5, 2, regularizer=nnx.regularizers.L2(0.1)),
                           backend=backend, dtype="float32", seed=0)
    model.predict(X)
    before = {k: np.array(model.backend.to_host(v), copy=True) for k, v in model.state_dict().items()}
    dropout, shuffle = repr(model.dropout_rng.get_state()), model.shuffle_rng.bit_generator.state
    err = nnx.check_gradients(model, X, y, loss="mse", sample_weight=np.arange(8.0))
    assert err < 1e-6, err.worst
    after = {k: np.asarray(model.backend.to_host(v)) for k, v in model.state_dict().items()}
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert repr(model.dropout_rng.get_state()) == dropout and model.shuffle_rng.bit_generator.state == shuffle
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("factor", [1.0, 2.0, -1.0])
def test_a_vanished_gradient_the_check_cannot_resolve_is_named_not_passed(factor):
    """A deep sigmoid stack at N(0, 0.01^2) weights (example 12): the first layer's gradient is ~1e-14, far
    below the central differences' rounding floor at a loss of 0.69, so a backward twice or minus the right
    one scored 0.0 exactly like a right one."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 4)), (rng.random((8, 1)) > 0.5) * 1.0
    layers = [TanhProjection(factor, width=8)]
    for _ in range(4):  # 4 sigmoid layers put '0.w' far below the floor (2 would not: a factor 2 scores 0.3 there)
        layers += [nnx.Dense(8, 8, init="normal"), nnx.Sigmoid()]
    layers += [nnx.Dense(8, 1, init="normal"), nnx.Sigmoid()]
    model = nnx.Sequential(*layers, backend="numpy", dtype="float64", seed=0, input_shape=(4,))
    with pytest.warns(RuntimeWarning, match=r"'0\.w' of layer 0 .*below what central differences resolve"):
        err = nnx.check_gradients(model, X, y, loss="bce")
    assert "0.w" in err.unresolved and err < 1e-6


def test_a_resolved_check_warns_of_nothing(backend):
    X, y = _data()
    model = nnx.Sequential(TanhProjection(), nnx.Dense(2, 2), backend=backend, dtype="float64", seed=0,
                           input_shape=(3,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        err = nnx.check_gradients(model, X, y, loss="mse")
    assert err.unresolved == []


class _Weights(nnx.callbacks.Callback):
    """The parameters before and after each step (a per-batch hook: the per-step loop on every backend)."""

    def __init__(self):
        self.before, self.after = [], []

    def _values(self):
        return [np.array(self.model.backend.to_host(p.value), dtype=np.float64) for p in self.model.parameters()]

    def on_batch_begin(self, batch, logs=None):
        self.before.append(self._values())

    def on_batch_end(self, batch, logs=None):
        self.after.append(self._values())


def _nested(backend):
    return nnx.Sequential(nnx.Dense(4, 6), nnx.Sequential(nnx.Dense(6, 5), nnx.Tanh(), nnx.Dropout(0.2)),
                          nnx.BatchNorm(5), nnx.Dense(5, 1), backend=backend, dtype="float64", seed=0)


def test_gradient_analyzer_records_the_gradient_sgd_applied_at_every_step(backend):
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((48, 4)), rng.standard_normal((48, 1))  # batches of one shape: JAX compiles one step
    model, lr = _nested(backend), 0.1
    analyzer, weights = nnx.callbacks.GradientAnalyzer(warn=False), _Weights()
    model.fit(X, y, loss="mse", optimizer=nnx.optim.SGD(model.parameters(), lr=lr), epochs=2, batch_size=16,
              callbacks=[analyzer, weights], verbose=0)
    assert analyzer.layer_names == ["0:Dense(4, 6)", "1.0:Dense(6, 5)", "2:BatchNorm(5)", "3:Dense(5, 1)"]
    history, names = analyzer.history(), [p.name for p in model.parameters()]
    assert history["weight_mean"].shape == (6, 4) and analyzer.step_epochs == [0] * 3 + [1] * 3
    for step, (before, after) in enumerate(zip(weights.before, weights.after, strict=True)):
        applied = {n: (b - a) / lr for n, b, a in zip(names, before, after, strict=True)}
        for j, (weight, bias) in enumerate(zip(["0.weight", "1.0.weight", "2.weight", "3.weight"],
                                               ["0.bias", "1.0.bias", "2.bias", "3.bias"], strict=True)):
            np.testing.assert_allclose(history["weight_max"][step, j], np.abs(applied[weight]).max(), rtol=1e-9)
            np.testing.assert_allclose(history["bias_mean"][step, j], np.abs(applied[bias]).mean(), rtol=1e-9)


@pytest.mark.parametrize("how", [{}, {"accumulate": 2}, {"clip_norm": 0.5}])
def test_gradient_analyzer_alone_records_what_the_per_step_loop_records_and_trains_the_same(backend, how):
    """Alone, the analyzer may let the fit run another way (a flat update, a compiled step) than beside a
    per-batch hook: its rows, and the trained weights, are the same."""
    rng = np.random.default_rng(2)
    # 3 batches of 16, one shape for JAX to compile; accumulate=2 still ends each epoch on a partial group
    X, y = rng.standard_normal((48, 4)), rng.standard_normal((48, 1))
    runs = []
    for extra in ([], [_Weights()]):
        model, analyzer = _nested(backend), nnx.callbacks.GradientAnalyzer(warn=False)
        model.fit(X, y, loss="mse", optimizer="adam", epochs=2, batch_size=16, callbacks=[analyzer, *extra],
                  verbose=0, **how)
        runs.append((analyzer.history(), {k: np.asarray(model.backend.to_host(v))
                                          for k, v in model.state_dict().items()}))
    (alone, w_alone), (looped, w_looped) = runs
    for name in alone:
        np.testing.assert_allclose(alone[name], looped[name], rtol=1e-12, atol=0)
    for name in w_alone:
        np.testing.assert_allclose(w_alone[name], w_looped[name], rtol=1e-12, atol=1e-15)


def test_an_exploding_bias_gradient_is_reported():
    """Found by mutation testing: the explosion check read the bias gradients' mean for their peak (no test had
    a bias gradient beyond the threshold with a weight gradient under it), so such an explosion went unreported."""
    rng = np.random.default_rng(0)
    X = 1e-4 * rng.normal(size=(16, 4))
    y = np.zeros((16, 4))
    y[:4, 0] = 1e4  # the bias gradients: 1250 for output 0 (their mean 312); the weights, about 0.1
    analyzer = nnx.GradientAnalyzer(explode_threshold=1e3, warn=False)
    model = nnx.Sequential(nnx.Dense(4, 4), dtype="float64", seed=0)
    model.fit(X, y, loss="mse", optimizer="sgd", lr=1e-9, epochs=1, batch_size=16, callbacks=[analyzer])
    assert [e["kind"] for e in analyzer.events] == ["exploding"]

