"""Regularizers and Dropout as Keras and PyTorch users count on them inside `fit`: the penalty in the losses
`fit` reports (training and validation, as Keras's `val_loss` has it), unweighted by `sample_weight`, once per
update under `accumulate`, a strength changed between or during fits, a frozen layer's penalty moving nothing,
files and copies keeping the strengths, and Dropout's settings given as NumPy numbers."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import nnx
from nnx import regularizers as R

RNG = np.random.default_rng(0)
X, Y = RNG.normal(size=(16, 3)), RNG.normal(size=(16, 1))
XV, YV = RNG.normal(size=(8, 3)), RNG.normal(size=(8, 1))
SW = RNG.uniform(0.5, 2.0, size=16)


def _model(layer_reg=None, model_reg=None, backend="numpy"):
    return nnx.Sequential(nnx.Dense(3, 4, regularizer=layer_reg), nnx.Tanh(), nnx.Dense(4, 1),
                          backend=backend, dtype="float64", seed=0, regularizer=model_reg)


def _weights(model):
    return {k: np.asarray(model.backend.to_host(v)) for k, v in model.state_dict().items()}


def _data_loss(model, X, y, **kw):
    """The loss without any penalty: the same weights in a model without regularizers."""
    plain = _model()
    plain.load_state_dict(_weights(model))
    return plain.evaluate(X, y, loss="mse", **kw)["loss"]


def test_train_and_val_loss_include_the_penalty_unweighted_by_sample_weight():
    """docs/training.md: the loss `fit` reports includes the penalty; `evaluate` (and so `val_loss`, as in Keras,
    whose compute_loss adds the layers' losses in every mode) too. `sample_weight` weighs the data term only."""
    model = _model(R.ElasticNet(0.05, 0.5), R.L2(0.3))
    penalty = float(model.penalty())
    expected_train = _data_loss(model, X, Y, sample_weight=SW) + penalty
    history = model.fit(X, Y, loss="mse", optimizer="sgd", lr=0.05, epochs=1, batch_size=None, sample_weight=SW,
                        validation_data=(XV, YV), verbose=0)
    # one full batch: the reported training loss is the one before its update
    assert history["loss"][0] == pytest.approx(expected_train, rel=1e-12)
    after = float(model.penalty())
    assert after != pytest.approx(penalty)
    assert history["val_loss"][0] == pytest.approx(_data_loss(model, XV, YV) + after, rel=1e-12)
    assert model.evaluate(XV, YV, loss="mse")["loss"] == pytest.approx(history["val_loss"][0], rel=1e-12)


@pytest.mark.parametrize("weights", [None, SW], ids=["unweighted", "sample_weight"])
def test_accumulate_adds_each_penalty_gradient_once_per_update(weights):
    """`accumulate=4` of batches of 4 is one batch of 16: the regularizers' gradient is not counted four times."""
    runs = []
    for batch_size, accumulate in ((16, 1), (4, 4)):
        model = _model(R.ElasticNet(0.05, 0.5), R.L2(0.3))
        history = model.fit(X, Y, loss="mse", optimizer="sgd", lr=0.1, epochs=2, batch_size=batch_size,
                            accumulate=accumulate, shuffle=False, sample_weight=weights, verbose=0)
        runs.append((_weights(model), history["loss"]))
    for k in runs[0][0]:
        np.testing.assert_allclose(runs[1][0][k], runs[0][0][k], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-12)


class _SetAtEpoch(nnx.callbacks.Callback):
    def __init__(self, change):
        self.change = change

    def on_epoch_begin(self, epoch, logs=None):
        self.change(self.model, epoch)


CHANGES = {
    "layer strength": lambda m, e: setattr(m.layers[0].regularizer, "l", 0.0 if e == 0 else 2.0),
    "layer regularizer added": lambda m, e: setattr(m.layers[2], "regularizer", None if e == 0 else R.L1(0.5)),
    "model strength": lambda m, e: setattr(m.regularizer, "l2", 0.0 if e == 0 else 2.0),
    "model regularizer added": lambda m, e: setattr(m, "regularizer", None if e == 0 else R.L1(0.5)),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_strength_changed_during_fit_acts_as_between_fits(change):
    """A regularizer warm-up from a callback (a strength raised, one added) gives the numbers of separate fits
    with the new setting, on NumPy's recorded and replayed steps (JAX's compiled epochs agree too, checked in
    review; they cost a second a case to compile)."""
    fn, backend = CHANGES[change], "numpy"

    def make():
        return _model(R.L2(0.0), R.ElasticNet(0.0, 0.0), backend=backend)

    during = make()
    losses = during.fit(X, Y, loss="mse", optimizer="adam", lr=0.1, epochs=2, batch_size=8,
                        callbacks=[_SetAtEpoch(fn)], verbose=0)["loss"]
    between, expected = make(), []
    for epoch in range(2):
        fn(between, epoch)
        expected += between.fit(X, Y, loss="mse", optimizer="adam", lr=0.1, epochs=1, batch_size=8,
                                verbose=0)["loss"]
    np.testing.assert_allclose(losses, expected, rtol=1e-12)
    for k, v in _weights(between).items():
        np.testing.assert_allclose(_weights(during)[k], v, rtol=1e-12, atol=1e-15)
    unchanged = make()
    unchanged.fit(X, Y, loss="mse", optimizer="adam", lr=0.1, epochs=2, batch_size=8, verbose=0)
    assert not np.allclose(_weights(unchanged)["0.weight"], _weights(during)["0.weight"])  # the change acted


@pytest.mark.parametrize("transform", [{"clip_value": 0.01}, {}], ids=str)
def test_a_frozen_layers_penalty_moves_nothing(transform):
    """docs/training.md: a frozen layer's penalty is a constant in the loss that moves nothing: the trained layer
    takes the step of its own gradient. (``clip_norm`` is the exception the docs name: its norm is over every
    gradient backward computed, the frozen layer's and its penalty's included, as torch's
    ``clip_grad_norm_(model.parameters())``; tests/test_gradient_transforms_vs_torch.py holds it.)"""
    runs = []
    for frozen_reg in (None, R.L2(100.0)):
        model = _model(frozen_reg)
        head = model.layers[2]
        model.fit(X, Y, loss="mse", optimizer=nnx.optim.SGD(head.parameters(), lr=0.1), epochs=1, batch_size=None,
                  verbose=0, **transform)
        runs.append(_weights(model))
    for k in runs[0]:
        np.testing.assert_array_equal(runs[1][k], runs[0][k])
    # the clipped step of the trained layer, computed by hand from its own gradient
    model = _model()
    start = _weights(model)
    out = model.forward(X, training=True)
    model.backward(nnx.losses.MSE().gradient(Y, out))
    grads = {p.name: np.asarray(p.grad) for p in model.layers[2].parameters()}
    if "clip_value" in transform:
        grads = {k: np.clip(g, -0.01, 0.01) for k, g in grads.items()}
    for name, g in grads.items():
        np.testing.assert_allclose(runs[0][name], start[name] - 0.1 * g, rtol=1e-12)
    np.testing.assert_array_equal(runs[0]["0.weight"], start["0.weight"])


def test_strengths_set_after_construction_survive_save_load_to_and_deepcopy(tmp_path):
    """The strengths a model trains with (set after construction too) are the ones a file, `to()` and a copy
    keep: the loss they evaluate is the same."""
    model = _model(R.ElasticNet(0.1, 0.2), R.L1(0.3))
    model.layers[0].regularizer.l1 = 0.7
    model.layers[2].regularizer = R.L2(0.4)
    model.regularizer.l = 0.05
    loss = model.evaluate(X, Y, loss="mse")["loss"]
    assert loss == pytest.approx(_data_loss(model, X, Y) + float(model.penalty()), rel=1e-12)
    model.save(tmp_path / "m.npz")
    copies = [nnx.load(tmp_path / "m.npz"), model.to("array_api_strict"), copy.deepcopy(model)]
    for other in copies:
        assert other.layers[0].regularizer.get_config() == {"type": "ElasticNet", "l1": 0.7, "l2": 0.2}
        assert other.layers[2].regularizer.get_config() == {"type": "L2", "l": 0.4}
        assert other.regularizer.get_config() == {"type": "L1", "l": 0.05}
        assert other.evaluate(X, Y, loss="mse")["loss"] == pytest.approx(loss, rel=1e-12)


def test_dropout_rate_as_numpy_numbers_and_strings():
    """A NumPy rate (a config read with NumPy, a sweep over np.linspace) is a Python float on the layer and in
    its config; a string or a bool is refused, not read as a number."""
    for rate in (np.float32(0.25), np.float64(0.25), np.int64(0)):
        layer = nnx.Dropout(rate)
        assert type(layer.rate) is float and layer.rate == float(rate)
        assert type(layer.get_config()["rate"]) is float
    with pytest.raises(TypeError, match="Dropout rate"):
        nnx.Dropout("0.5")
    with pytest.raises(TypeError, match="Dropout rate"):
        nnx.Dropout(True)
    with pytest.raises(ValueError, match="Dropout rate"):
        nnx.Dropout(1.0)


def test_dropout_after_batchnorm_is_identity_at_inference_and_inverted_in_training():
    """BatchNorm then Dropout: evaluate/predict are deterministic and equal a model without the Dropout; a training
    forward zeroes units and scales the kept ones by exactly 1/(1-rate)."""
    def make(rate):
        layers = [nnx.Dense(3, 64), nnx.BatchNorm(64)] + ([nnx.Dropout(rate)] if rate is not None else [])
        return nnx.Sequential(*layers, dtype="float64", seed=0)

    with_dropout, without = make(0.75), make(None)
    with_dropout.fit(X, RNG.normal(size=(16, 64)), loss="mse", optimizer="sgd", lr=0.01, epochs=1, batch_size=8,
                     verbose=0)
    without.load_state_dict(with_dropout.state_dict())
    reference = np.asarray(without.predict(X))
    np.testing.assert_array_equal(np.asarray(with_dropout.predict(X)), reference)
    np.testing.assert_array_equal(np.asarray(with_dropout.predict(X)), reference)
    trained = np.asarray(with_dropout.forward(X, training=True))
    kept = trained != 0
    assert 0.1 < kept.mean() < 0.4
    # the BatchNorm's training forward normalises by the batch: compare with that, unit by unit
    batch = np.asarray(without.forward(X, training=True))
    np.testing.assert_allclose(trained[kept], batch[kept] * 4.0, rtol=1e-12)


@pytest.mark.parametrize("where", ["layer", "model"])
@pytest.mark.parametrize("value", ["l2", 0.01])
def test_a_regularizer_set_as_a_name_or_number_after_construction_is_refused_by_name(where, value):
    """The constructors take a name (``regularizer="l2"``); the attribute set later did not say what was wrong
    (an AttributeError "'str' object has no attribute 'penalty'" from inside evaluate and fit)."""
    model = _model()
    target = model.layers[0] if where == "layer" else model
    target.regularizer = value
    message = rf"regularizer must be a Regularizer .*got {value!r} of type .*: the constructors take a name"
    with pytest.raises(TypeError, match=message):
        model.evaluate(X, Y, loss="mse")
    with pytest.raises(TypeError, match=r"regularizer must be a Regularizer"):
        model.fit(X, Y, loss="mse", epochs=1, verbose=0)
