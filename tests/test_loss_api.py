"""A user's loss written only with the public API (`rows`, and `prepare` where targets need encoding)
gets everything a built-in has: value and gradient, per_sample, sample weights under both reductions,
a finite-difference-checked gradient on every backend, and training in `fit`."""

from __future__ import annotations

import math

import array_api_compat
import numpy as np
import pytest

import nnx
from nnx import losses as L
from nnx.gradcheck import numerical_gradient, relative_error


class PseudoHuber(L.Loss):
    """delta**2 * (sqrt(1 + (d / delta)**2) - 1) per element, d = y_pred - y_true: a user's loss, `rows` only."""

    name = "test_pseudo_huber"

    def __init__(self, delta: float = 1.0, reduction: str = "sum_over_batch_size") -> None:
        super().__init__(reduction)
        self.delta = float(delta)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}

    def rows(self, xp, y_true, y_pred):
        d = (y_pred - y_true) / self.delta
        root = xp.sqrt(1 + d * d)
        per_row = L.row_mean(xp, self.delta**2 * (root - 1))
        return per_row, self.delta * d / root / math.prod(y_pred.shape)


class SignLogistic(L.Loss):
    """log(1 + exp(-s z)) with labels 0/1 encoded once as signs s = -1/+1: BCE from logits, written by a user."""

    name = "test_sign_logistic"

    def prepare(self, xp, y_true, y_pred, check):
        y_true = super().prepare(xp, y_true, y_pred, check)
        if check and not bool(xp.all((y_true == 0) | (y_true == 1))):
            raise ValueError("y_true for test_sign_logistic must hold the labels 0 and 1")
        return 2 * y_true - 1

    def rows(self, xp, y_true, y_pred):
        margin = -y_true * y_pred
        per_row = L.row_mean(xp, xp.logaddexp(xp.zeros_like(margin), margin))
        return per_row, -y_true * nnx.activations.sigmoid(margin) / math.prod(y_pred.shape)


class SparseLogits(L.Loss):
    """Cross-entropy from logits with class-index targets, one-hot encoded in `prepare`: a user's sparse loss."""

    name = "test_sparse_logits"

    def prepare(self, xp, y_true, y_pred, check):
        n, k = y_pred.shape
        if tuple(y_true.shape) not in ((n,), (n, 1)):
            raise ValueError(f"y_true for test_sparse_logits must be class indices of shape ({n},), "
                             f"got {tuple(y_true.shape)}")
        y_true = xp.reshape(y_true, (n,))
        if check and not bool(xp.all((y_true >= 0) & (y_true < k))):
            raise ValueError("class index out of range")
        classes = xp.arange(k, dtype=xp.int64, device=array_api_compat.device(y_pred))
        return xp.astype(xp.astype(y_true, xp.int64)[:, None] == classes, y_pred.dtype)

    def rows(self, xp, y_true, y_pred):
        z = y_pred - xp.max(y_pred, axis=1, keepdims=True)
        e = xp.exp(z)
        s = xp.sum(e, axis=1, keepdims=True)
        return -xp.sum(y_true * (z - xp.log(s)), axis=1), (e / s - y_true) / y_pred.shape[0]


def _pseudo_huber_rows(t, p, delta):
    d = (p - t) / delta
    return (delta**2 * (np.sqrt(1 + d * d) - 1)).reshape(p.shape[0], -1).mean(axis=1)


def _data(rng, n=5, k=3):  # the finite-difference test's (5, 3): on JAX each operation compiles once per shape
    return rng.normal(size=(n, k)), rng.normal(size=(n, k)), rng.uniform(0.0, 2.0, size=n)


@pytest.mark.parametrize("reduction", L.REDUCTIONS)
def test_rows_alone_gives_value_gradient_per_sample_and_weights(backend, dtype, rng, reduction):
    y, p, w = _data(rng)
    w[2] = 0.0
    loss = PseudoHuber(delta=0.7, reduction=reduction)
    yb, pb = backend.asarray(y, dtype=dtype), backend.asarray(p, dtype=dtype)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    rows = _pseudo_huber_rows(y, p, 0.7)
    d = (p - y) / 0.7
    elementwise_grad = 0.7 * d / np.sqrt(1 + d * d) / p.size  # gradient of the plain mean

    np.testing.assert_allclose(backend.to_host(loss.per_sample(yb, pb)), rows, rtol=rtol)
    value, grad = loss.value_and_grad(yb, pb)
    assert value.dtype == pb.dtype and grad.dtype == pb.dtype and tuple(grad.shape) == p.shape
    np.testing.assert_allclose(backend.to_float(value), rows.mean(), rtol=rtol)
    np.testing.assert_allclose(backend.to_host(grad), elementwise_grad, rtol=rtol)
    assert backend.to_float(loss(yb, pb)) == backend.to_float(value)
    np.testing.assert_array_equal(backend.to_host(loss.gradient(yb, pb)), backend.to_host(grad))

    denominator = y.shape[0] if reduction == "sum_over_batch_size" else w.sum()
    value, grad = loss.value_and_grad(yb, pb, sample_weight=w)
    np.testing.assert_allclose(backend.to_float(value), (w * rows).sum() / denominator, rtol=rtol)
    np.testing.assert_allclose(backend.to_host(grad), elementwise_grad * w[:, None] * y.shape[0] / denominator,
                               rtol=rtol, atol=1e-30)
    assert np.all(backend.to_host(grad)[2] == 0)
    assert backend.to_float(loss(yb, pb, w)) == backend.to_float(value)


@pytest.mark.parametrize("weighted", [None, "sum_over_batch_size", "mean_with_sample_weight"])
@pytest.mark.parametrize("shape", [(5,), (5, 1), (5, 3), (5, 2, 2)])
def test_rows_alone_passes_the_finite_difference_check(backend, rng, shape, weighted):
    loss = PseudoHuber(delta=0.5, reduction=weighted or "sum_over_batch_size")
    y, p = rng.normal(size=shape), rng.normal(size=shape)
    w = None if weighted is None else backend.asarray(rng.uniform(0.1, 2.0, size=shape[0]), dtype="float64")
    yb = backend.asarray(y, dtype="float64")

    def scalar(pred_host):
        return backend.to_float(loss(yb, backend.asarray(pred_host, dtype="float64"), w, check=False))

    analytic = backend.to_host(loss.gradient(yb, backend.asarray(p, dtype="float64"), w))
    assert relative_error(analytic, numerical_gradient(scalar, p)) < 1e-6


def test_prepare_encodes_targets_and_the_result_equals_the_built_in(backend, dtype, rng):
    labels = (rng.uniform(size=(8, 1)) < 0.5).astype(np.float64)
    z = backend.asarray(rng.normal(scale=2.0, size=(8, 1)), dtype=dtype)
    w = rng.uniform(0.0, 2.0, size=8)
    rtol = 1e-12 if dtype == "float64" else 1e-5
    for reduction in L.REDUCTIONS:
        mine, builtin = SignLogistic(reduction), L.BinaryCrossEntropy(from_logits=True, reduction=reduction)
        for y in (labels, labels[:, 0]):  # (n, 1) and (n,) targets: prepare's default shape rule first
            yb = backend.asarray(y, dtype=dtype)
            for sw in (None, w):
                v, g = mine.value_and_grad(yb, z, sw)
                bv, bg = builtin.value_and_grad(yb, z, sw)
                np.testing.assert_allclose(backend.to_float(v), backend.to_float(bv), rtol=rtol)
                np.testing.assert_allclose(backend.to_host(g), backend.to_host(bg), rtol=rtol, atol=1e-7)
            np.testing.assert_allclose(backend.to_host(mine.per_sample(yb, z)),
                                       backend.to_host(builtin.per_sample(yb, z)), rtol=rtol)
    bad = backend.asarray(np.array([[0.0], [2.0], [1.0], [1.0], [0.0], [1.0], [0.0], [1.0]]), dtype=dtype)
    with pytest.raises(ValueError, match="must hold the labels 0 and 1"):
        SignLogistic()(bad, z)
    SignLogistic()(bad, z, check=False)  # value checks are prepare's to skip when check=False
    with pytest.raises(ValueError, match=r"y_true and y_pred must have the same shape.*\(8, 2\).*\(8, 1\)"):
        SignLogistic()(backend.asarray(np.zeros((8, 2)), dtype=dtype), z, check=False)


def test_a_user_loss_whose_prepare_encodes_class_indices_trains_as_the_built_in(backend, dtype, rng):
    """The docs put target encoding in `prepare`: fit hands such a loss y as given (here class indices, not
    the outputs' shape), and it trains and evaluates as the built-in cross-entropy does."""
    # 32 rows: validation_split=0.25 leaves 24 to train on, three full batches of 8 (one step shape for JAX)
    X, y = rng.normal(size=(32, 4)), rng.integers(0, 3, 32)
    tol = 1e-5 if dtype == "float32" else 1e-12
    results = []
    for loss, target in ((L.CrossEntropy(), y), (SparseLogits(), y), (SparseLogits(), y[:, None].astype(float))):
        model = nnx.Sequential(nnx.Dense(4, 3), backend=backend, dtype=dtype, seed=0)
        history = model.fit(X, target, loss=loss, optimizer="sgd", epochs=2, batch_size=8, validation_split=0.25,
                            metrics=["accuracy"])
        results.append((history.history, model.evaluate(X, target, loss=loss)["loss"]))
    for history, value in results[1:]:
        for key, want in results[0][0].items():
            np.testing.assert_allclose(history[key], want, rtol=tol, err_msg=key)
        assert value == pytest.approx(results[0][1], rel=tol)
    model = nnx.Sequential(nnx.Dense(4, 3), backend=backend, dtype=dtype, seed=0)
    with pytest.raises(ValueError, match=r"y_true for test_sparse_logits must be class indices of shape \(32,\)"):
        model.fit(X, np.eye(3)[y], loss=SparseLogits(), batch_size=8)  # the loss's own check, before training
    with pytest.raises(ValueError, match=r"X has 32 samples but y has 31"):
        model.fit(X, y[:31], loss=SparseLogits())
    # fit checks the targets' values once with the loss's own prepare(check=True), as it does a built-in's
    with pytest.raises(ValueError, match="class index out of range"):
        model.fit(X, np.where(y == 2, 5, y), loss=SparseLogits(), batch_size=8)
    with pytest.raises(ValueError, match="class index out of range"):
        model.evaluate(X, np.where(y == 2, -1, y), loss=SparseLogits())


@pytest.mark.slow
def test_a_user_loss_trains_in_fit_with_and_without_weights(backend, dtype, rng):
    X = rng.normal(size=(64, 3))
    y = np.tanh(X @ np.array([[1.0], [-2.0], [0.5]]))
    w = rng.uniform(0.5, 1.5, size=64)
    for loss in (PseudoHuber(0.5), "test_pseudo_huber", PseudoHuber(0.5, reduction="mean_with_sample_weight")):
        model = nnx.Sequential(nnx.Dense(3, 8), nnx.Tanh(), nnx.Dense(8, 1), backend=backend, dtype=dtype, seed=0)
        before = model.evaluate(X, y, loss=loss)["loss"]
        history = model.fit(X, y, loss=loss, optimizer="sgd", lr=0.5, epochs=10, batch_size=32, verbose=0,
                            sample_weight=None if isinstance(loss, str) else w)
        assert np.all(np.isfinite(history.history["loss"]))
        assert model.evaluate(X, y, loss=loss)["loss"] < 0.5 * before
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 1), backend=backend, seed=0)
    assert nnx.check_gradients(model, X[:8], y[:8], PseudoHuber(0.5)) < 1e-6
    assert nnx.check_gradients(model, X[:8], (y[:8] > 0).astype(np.float64), SignLogistic()) < 1e-6


def test_a_saved_user_loss_comes_back_with_its_settings(tmp_path, rng):
    model = nnx.Sequential(nnx.Dense(3, 1), dtype="float64", seed=0)
    model.fit(rng.normal(size=(16, 3)), rng.normal(size=(16, 1)), loss=PseudoHuber(0.25), epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz").loss
    assert isinstance(loaded, PseudoHuber) and loaded.delta == 0.25


class Huber(L.Loss, name="test_huber"):
    """Huber's loss with its `delta`, written without get_config: the argument is recorded and saved by itself."""

    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        self.delta = delta

    def rows(self, xp, y_true, y_pred):
        d = y_pred - y_true
        a = xp.abs(d)
        quad = xp.clip(a, 0.0, self.delta)
        per_row = L.row_mean(xp, 0.5 * quad * quad + self.delta * (a - quad))
        return per_row, xp.clip(d, -self.delta, self.delta) / math.prod(y_pred.shape)


class ScaledMSE(L.Loss, name="test_scaled_mse"):
    """MSE times what `scale` returns: a constructor argument that is not a JSON value."""

    def __init__(self, scale) -> None:
        super().__init__()
        self.scale = scale

    def rows(self, xp, y_true, y_pred):
        diff = y_pred - y_true
        return L.row_mean(xp, self.scale() * diff * diff), diff * (2 * self.scale() / math.prod(y_pred.shape))


def test_a_loss_with_constructor_arguments_is_saved_and_rebuilt_with_them(backend, tmp_path, rng):
    assert Huber(delta=0.1).get_config() == {"type": "test_huber", "delta": 0.1}
    assert L.get_loss(Huber(delta=0.1).get_config()).delta == 0.1
    X = rng.normal(size=(32, 3))
    y = X[:, :1] ** 2
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 1), backend=backend, dtype="float64", seed=0)
    model.fit(X, y, loss=Huber(delta=0.1), optimizer="sgd", epochs=2, batch_size=8)
    model.save(tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz")
    assert type(loaded.loss) is Huber and loaded.loss.delta == 0.1
    model.fit(X, y, epochs=2, batch_size=8)
    loaded.fit(X, y, epochs=2, batch_size=8)  # the loaded loss trains as the one it was saved from
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(backend.to_host(loaded.state_dict()[name]), backend.to_host(value), rtol=0,
                                   atol=1e-12, err_msg=name)
    # the built-ins write what they wrote before recording, so files written before load alike
    assert L.MSE().get_config() == {"type": "MSE"}
    assert L.MAE(reduction="mean_with_sample_weight").get_config() == {"type": "MAE",
                                                                       "reduction": "mean_with_sample_weight"}
    assert L.BinaryCrossEntropy().get_config() == {"type": "BinaryCrossEntropy", "from_logits": False}
    assert L.get_loss("bce_with_logits").get_config() == {"type": "BinaryCrossEntropy", "from_logits": True}
    assert L.CrossEntropy(from_logits=False).get_config() == {"type": "CrossEntropy", "from_logits": False}


def test_a_loss_with_an_argument_that_is_not_json_trains_but_is_not_saved(backend, tmp_path, rng):
    X = rng.normal(size=(16, 3))
    model = nnx.Sequential(nnx.Dense(3, 1), backend=backend, dtype="float64", seed=0)
    model.fit(X, X[:, :1], loss=ScaledMSE(lambda: 0.5), optimizer="sgd", epochs=2, batch_size=8)
    assert "ScaledMSE(...)" == repr(model.loss)
    with pytest.raises(TypeError, match=r"ScaledMSE: constructor argument scale=.* is not a JSON value.*get_config"):
        model.save(tmp_path / "m.npz")


def test_a_loss_without_rows_says_what_to_implement(backend):
    class Unfinished(L.Loss):
        pass

    y = backend.asarray(np.ones((3, 1)), dtype="float64")
    for call in (Unfinished(), Unfinished().gradient, Unfinished().per_sample):
        with pytest.raises(NotImplementedError, match=r"Unfinished must implement rows\(xp, y_true, y_pred\)"):
            call(y, y)


def test_rows_of_the_wrong_shape_or_dtype_are_named(backend):
    class Summed(L.Loss):
        def rows(self, xp, y_true, y_pred):  # the mean already taken: a 0-d value, not rows
            d = y_pred - y_true
            return xp.mean(d * d), 2 * d / math.prod(y_pred.shape)

    class Promoting(L.Loss):
        def rows(self, xp, y_true, y_pred):
            d = y_pred - y_true
            return L.row_mean(xp, d * d), xp.astype(d, xp.float64)

    y32 = backend.asarray(np.ones((3, 2)), dtype="float32")
    with pytest.raises(ValueError, match=r"Summed.rows must return row losses of shape \(3,\).*got \(\) and"):
        Summed()(y32, y32)
    if backend.xp.float32 == y32.dtype:  # a float32 model on this backend
        with pytest.raises(TypeError, match="Promoting.rows must return arrays of y_pred's dtype"):
            Promoting().value_and_grad(y32, y32)
    with pytest.raises(ValueError, match="0-d y_pred"):
        PseudoHuber()(backend.asarray(np.array(1.0), dtype="float64"), backend.asarray(np.array(1.0), dtype="float64"))


def test_row_mean(backend):
    xp = backend.xp
    for shape in ((5,), (5, 1), (5, 3), (5, 2, 3), (5, 1, 1)):  # 5 rows, as the tests above
        x = np.arange(math.prod(shape), dtype=np.float64).reshape(shape)
        got = backend.to_host(L.row_mean(xp, backend.asarray(x, dtype="float64")))
        np.testing.assert_allclose(got, x.reshape(5, -1).mean(axis=1), rtol=1e-15)


def test_a_loss_setting_changed_between_fits_is_what_the_next_fit_uses(backend, rng):
    # found in review: a loss's config held the arguments it was constructed with, and JAX's compiled step is
    # keyed by that config, so after `loss.delta = 0.1` the next fit on JAX kept training (and reporting) the
    # old delta; a saved model wrote it too
    X = rng.normal(size=(16, 3))
    y = 3 * X[:, :1]
    loss = Huber(delta=1.0)
    model = nnx.Sequential(nnx.Dense(3, 1), backend=backend, dtype="float64", seed=0)
    model.fit(X, y, loss=loss, optimizer="sgd", lr=1e-3, epochs=1, batch_size=None)
    loss.delta = 0.1
    assert loss.get_config() == {"type": "test_huber", "delta": 0.1}
    before = backend.to_host(model.predict(X))
    got = model.fit(X, y, loss=loss, optimizer="sgd", lr=1e-3, epochs=1, batch_size=None)["loss"][0]
    d = np.abs(before - y)
    assert got == pytest.approx(np.mean(np.where(d < 0.1, 0.5 * d * d, 0.1 * (d - 0.05))), rel=1e-12)
    bce = L.BinaryCrossEntropy()
    bce.from_logits = True
    assert bce.get_config() == {"type": "BinaryCrossEntropy", "from_logits": True}
    # an attribute kept in another form than its argument (an array made from a list) leaves the argument as given

    class Weighted(L.Loss, name="test_weighted_columns"):
        def __init__(self, weights=(1.0, 2.0)) -> None:
            super().__init__()
            self.weights = np.asarray(weights, dtype=np.float64)

    try:
        assert Weighted([3.0, 4.0]).get_config() == {"type": "test_weighted_columns", "weights": [3.0, 4.0]}
    finally:
        L.LOSSES.remove("test_weighted_columns")
