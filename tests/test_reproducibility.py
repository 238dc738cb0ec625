"""Seeds and random streams as a PyTorch or Keras user relies on them.

One seed gives the same weights and dropout masks, whatever else runs in the process and whatever JAX's
64-bit mode is; the streams are independent of NumPy's generator of the same seed, which a user's data is
often drawn from; inference, other models and the global NumPy and torch generators neither advance nor are
advanced by a model's streams; `shuffle=False` keeps the row order; `validation_split` trains as the same rows
given with `validation_data` would.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx

GEN = np.random.default_rng(3)
X = GEN.standard_normal((24, 3)).astype(np.float32)
Y = (X[:, :1] > 0).astype(np.float32)
FIT = dict(loss="bce", optimizer="adam", batch_size=8)


def _model(backend="numpy", seed=0, rate=0.5):
    return nnx.Sequential(nnx.Dense(3, 6), nnx.ReLU(), nnx.Dropout(rate), nnx.Dense(6, 1), nnx.Sigmoid(),
                          backend=backend, seed=seed)


def _weights(model):
    return {name: model.backend.to_host(v) for name, v in model.state_dict().items()}


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_array_equal(wa[name], wb[name], err_msg=name)


def test_jax_dropout_masks_do_not_depend_on_jaxs_64_bit_mode():
    # A float32 model runs with JAX's 64-bit mode off (op by op). The dropout seed is drawn below 2**63; in 32-bit
    # mode jax.random.PRNGKey keeps only its low 32 bits, so the same model seed gave other masks than in 64-bit mode.
    jax = pytest.importorskip("jax")
    nnx.get_backend("jax")  # turns the mode on
    ones = np.ones((4, 8), np.float32)

    def masks():
        model = nnx.Sequential(nnx.Dropout(0.5), backend="jax", seed=0)
        assert model.dropout_rng.seed >= 2**32  # the case 32-bit mode cut
        return [np.asarray(model.forward(ones, training=True)) for _ in range(2)]

    wide = masks()
    jax.config.update("jax_enable_x64", False)
    try:
        narrow = masks()
    finally:
        jax.config.update("jax_enable_x64", True)
    for a, b in zip(wide, narrow, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(wide[0], wide[1])


def test_same_seed_same_weights_and_masks_whatever_ran_between():
    a = _model()
    _model(seed=1).fit(X, Y, epochs=1, **FIT)  # another model trains in between
    b = _model()
    _assert_same_weights(a, b)
    np.testing.assert_array_equal(a.forward(X, training=True), b.forward(X, training=True))


def test_initial_weights_are_no_copy_of_data_drawn_with_the_same_seed():
    """``default_rng((seed, 0))`` is ``default_rng(seed)`` (NumPy drops trailing zero words of a seed), so weights
    drawn from it were a scaled copy of ``np.random.default_rng(seed).standard_normal(...)``, the data of a user
    (and of the docs' examples) who seeds both with 0: each stream is now spawned from the seed."""
    data = np.random.default_rng(0).standard_normal((3, 6))
    model = nnx.Sequential(nnx.Dense(3, 6, init="he_normal"), backend="numpy", seed=0, dtype="float64")
    w = model.layers[0].weight.value
    correlation = np.corrcoef(np.ravel(w), np.ravel(data))[0, 1]
    assert abs(correlation) < 0.9, correlation  # it was exactly 1
    shuffles = [nnx.Sequential(nnx.Dense(3, 1), backend="numpy", seed=0).shuffle_rng.permutation(50) for _ in "ab"]
    np.testing.assert_array_equal(*shuffles)  # still one seed's streams
    assert not np.array_equal(shuffles[0], np.random.default_rng(0).permutation(50))


def test_inference_and_other_models_leave_training_as_it_was():
    a, b, other = _model(), _model(), _model(seed=1)
    a.fit(X, Y, epochs=1, **FIT)
    b.fit(X, Y, epochs=1, **FIT)
    a.predict(X)
    a.evaluate(X, Y)
    a(X)
    other.fit(X, Y, epochs=1, **FIT)
    a.fit(X, Y, epochs=1)
    b.fit(X, Y, epochs=1)
    _assert_same_weights(a, b)


def test_global_numpy_and_torch_generators_are_neither_read_nor_advanced():
    torch = pytest.importorskip("torch")
    np.random.seed(5)
    torch.manual_seed(5)
    expected = np.random.random(), torch.rand(1).item()
    np.random.seed(5)
    torch.manual_seed(5)
    trained = {}
    for name in ("numpy", "torch"):
        model = _model(name)
        model.fit(X, Y, epochs=1, **FIT)
        model.predict(X)
        trained[name] = model
    assert (np.random.random(), torch.rand(1).item()) == expected
    np.random.seed(123)  # a global seed does not make a seeded model's numbers other
    torch.manual_seed(123)
    for name, model in trained.items():
        again = _model(name)
        again.fit(X, Y, epochs=1, **FIT)
        _assert_same_weights(model, again)


def test_shuffle_false_trains_on_rows_in_order_whatever_the_seed():
    a, b = _model(seed=0, rate=0.0), _model(seed=1, rate=0.0)
    b.load_state_dict(a.state_dict())
    for model in (a, b):
        model.fit(X, Y, epochs=2, shuffle=False, **FIT)
    _assert_same_weights(a, b)
    assert a.shuffle_rng.bit_generator.state == _model(seed=0).shuffle_rng.bit_generator.state


class _SeenRows(nnx.Layer):
    """Keeps the first column of each training batch it sees (a row's index), and passes X on."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, X, training=False):
        if training:
            self.seen.append(np.asarray(self.backend.to_host(X))[:, 0].copy())
        return X

    def backward(self, dY, need_dX=True):
        return dY


class _SeenTargets(nnx.losses.Loss):
    """Half squared error, keeping each batch's targets."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def rows(self, xp, y_true, y_pred):
        self.seen.append(np.asarray(y_true)[:, 0].copy())
        diff = y_pred - y_true
        return 0.5 * xp.sum(diff * diff, axis=1), diff / y_pred.shape[0]


@pytest.mark.parametrize("shuffle", [True, False])
def test_a_shuffled_batch_keeps_each_rows_target(shuffle):
    """Found by mutation testing: a shuffle that permuted X but not y was caught only by a clip_norm test. Each
    batch's rows here carry their index in X and y alike."""
    n = 23
    index = np.arange(n, dtype=float)[:, None]
    seen, loss = _SeenRows(), _SeenTargets()
    model = nnx.Sequential(seen, nnx.Dense(1, 1), backend=nnx.get_backend("numpy").with_fastpath(False),
                           dtype="float64", seed=0)
    model.fit(index, index, loss=loss, epochs=2, batch_size=5, shuffle=shuffle, optimizer="sgd", lr=1e-4)
    assert len(seen.seen) == len(loss.seen) == 2 * 5
    for rows, targets in zip(seen.seen, loss.seen, strict=True):
        np.testing.assert_array_equal(rows, targets)
    epoch = np.concatenate(seen.seen[:5])
    assert sorted(epoch) == list(range(n)) and (epoch.tolist() != list(range(n))) == shuffle


def test_validation_split_trains_as_the_head_rows_with_the_tail_as_validation_data():
    a, b = _model(), _model()
    ha = a.fit(X, Y, epochs=2, validation_split=0.25, **FIT)
    hb = b.fit(X[:18], Y[:18], epochs=2, validation_data=(X[18:], Y[18:]), **FIT)
    _assert_same_weights(a, b)
    assert ha.history["val_loss"] == hb.history["val_loss"]
