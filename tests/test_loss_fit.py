"""A loss that does not fit the model's outputs is refused before the first step, saying what to use instead."""

from __future__ import annotations

import numpy as np
import pytest

import nnx


class Scale(nnx.Layer):
    """A user's layer: its type says nothing about the range of its outputs."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, X, training=False):
        return X * self.factor

    def backward(self, dY, need_dX=True):
        return dY * self.factor


# One data shape for the module (32 rows of 4 features, the default batch of 32: one batch an epoch, whose shape is
# the evaluated data's): on JAX each operation compiles once per shape, and each epoch program once per batch shape
def _data(rng, n=32):
    X = rng.standard_normal((n, 4))
    return X, (X[:, 0] > 0).astype(np.int64)


def _model(backend, dtype, *layers):
    return nnx.Sequential(nnx.Dense(4, 8), nnx.ReLU(), *layers, backend=backend, dtype=dtype, seed=0)


def _weights(model):
    return [model.backend.to_host(p.value).copy() for p in model.parameters()]


def _unchanged(model, before):
    return all(np.array_equal(a, b) for a, b in zip(before, _weights(model), strict=True))


def test_cross_entropy_on_one_sigmoid_unit_is_refused_before_the_first_step(backend, dtype, rng):
    X, y = _data(rng)
    model = _model(backend, dtype, nnx.Dense(8, 1), nnx.Sigmoid())
    before = _weights(model)
    with pytest.raises(ValueError, match=r'one output is always 0 .* use loss="bce"'):
        model.fit(X, y, loss="cross_entropy", epochs=1)
    assert _unchanged(model, before) and model.epochs_trained == 0
    with pytest.raises(ValueError, match='use loss="bce"'):
        model.evaluate(X, y, loss="cross_entropy")
    history = model.fit(X, y, loss="bce", epochs=2)  # what the message says works, and trains
    assert not _unchanged(model, before) and history.history["loss"][-1] > 0


@pytest.mark.parametrize("last", [nnx.Identity, nnx.ReLU, nnx.Tanh, None], ids=["Identity", "ReLU", "Tanh", "Dense"])
def test_bce_on_an_unbounded_output_is_refused_from_the_layer_type(backend, dtype, rng, last):
    X, y = _data(rng)
    model = _model(backend, dtype, nnx.Dense(8, 1), *([] if last is None else [last()]), nnx.Dropout(0.1))
    before = _weights(model)
    name = "Dense" if last in (None, nnx.Identity) else last.__name__  # Identity passes on the Dense's range
    with pytest.raises(ValueError, match=rf"ends in {name}, whose outputs are not bounded .*nnx.Sigmoid\(\).*"
                                         r"from_logits=True"):
        model.fit(X, y, loss="bce", epochs=1)
    assert _unchanged(model, before)
    with pytest.raises(ValueError, match="not bounded"):
        model.evaluate(X, y, loss="bce")
    model.fit(X, y, loss=nnx.losses.BinaryCrossEntropy(from_logits=True), epochs=1)  # logits: fine
    assert not _unchanged(model, before)


def test_probability_cross_entropy_on_logits_is_refused(backend, dtype, rng):
    X, y = rng.standard_normal((32, 4)), rng.integers(0, 3, 32)
    model = _model(backend, dtype, nnx.Dense(8, 3))
    with pytest.raises(ValueError, match=r"ends in Dense.*nnx.Softmax\(\).*from_logits=True"):
        model.fit(X, y, loss=nnx.losses.CrossEntropy(from_logits=False))
    model.fit(X, y, loss="cross_entropy")  # logits by default


def test_a_users_output_layer_is_judged_by_its_first_batch(backend, dtype, rng):
    X, y = _data(rng)
    model = _model(backend, dtype, nnx.Dense(8, 1), Scale(5.0))
    before = _weights(model)
    with pytest.raises(ValueError, match=r"outputs of the first batch range over \[.*\] \(the model ends in Scale\)"):
        model.fit(X, y, loss="bce", batch_size=16)
    assert _unchanged(model, before)
    with pytest.raises(ValueError, match="outputs of the first batch range over"):  # batches read one by one
        model.fit([(X[:16], y[:16]), (X[16:], y[16:])], loss="bce")
    assert _unchanged(model, before)
    with pytest.raises(ValueError, match="outputs of the data range over"):
        model.evaluate(X, y, loss="bce")
    squashed = _model(backend, dtype, nnx.Dense(8, 1), nnx.Sigmoid(), Scale(0.5))  # in [0, 0.5]: a probability
    squashed.fit(X, y, loss="bce", epochs=1)
    squashed.evaluate(X, y, loss="bce")


def test_fitting_losses_pass_untouched(backend, dtype, rng):
    X, y = _data(rng)
    # three classes (two of them in y), as the tests below: the logits' layout trains as theirs does, JAX's
    # programs for it compiled once
    for layers, loss in (([nnx.Dense(8, 1), nnx.Sigmoid()], "bce"), ([nnx.Dense(8, 1)], "mse"),
                         ([nnx.Dense(8, 3), nnx.Softmax()], None), ([nnx.Dense(8, 3)], "cross_entropy")):
        model = _model(backend, dtype, *layers)
        model.fit(X, y if loss != "mse" else y.astype(float), loss=loss, epochs=1)


# the layers after Dense(8, 3): a Softmax followed by layers that keep its range
TAILS = {"Dropout": lambda: [nnx.Softmax(), nnx.Dropout(0.5)], "Identity": lambda: [nnx.Softmax(), nnx.Identity()],
         "Flatten": lambda: [nnx.Softmax(), nnx.Flatten()],
         "nested": lambda: [nnx.Sequential(nnx.Softmax()), nnx.Identity(), nnx.Sequential(nnx.Dropout(0.5))]}


@pytest.mark.parametrize("tail", sorted(TAILS))
def test_a_softmax_before_range_keeping_layers_gives_probabilities(backend, dtype, rng, tail):
    """Softmax then Dropout/Identity/Flatten (also inside a nested model): loss="ce" and loss=None both read
    the outputs as probabilities, as without the tail, and the loss reads the model's actual outputs (in
    training Dropout's scaled ones), never a softmax of probabilities."""
    X, y = rng.standard_normal((32, 4)), rng.integers(0, 3, 32)
    model = _model(backend, dtype, nnx.Dense(8, 3), *TAILS[tail]())
    probabilities = nnx.losses.CrossEntropy(from_logits=False).get_config()
    assert type(model.output_layer()) is nnx.Softmax
    assert model.resolve_loss(None).get_config() == probabilities
    assert model.resolve_loss("ce").get_config() == probabilities
    with pytest.warns(UserWarning, match="treats the outputs as logits, but the model ends in Softmax"):
        model.resolve_loss(nnx.losses.CrossEntropy(from_logits=True))
    history = model.fit(X, y, loss="ce", epochs=2)
    assert model.loss.get_config() == probabilities and np.isfinite(history.history["loss"]).all()
    tol = 1e-5 if dtype == "float32" else 1e-12
    true_ce = model.backend.to_float(nnx.losses.CrossEntropy(from_logits=False)(y, model.predict(X)))
    assert model.evaluate(X, y)["loss"] == pytest.approx(true_ce, rel=tol)
    # training: the loss of the outputs the model gave (Dropout's zeros and 1/(1-rate) scaling included)
    X_d, loss = model.prepare_inputs(X), model.loss
    value, Z, _ = model.loss_and_grads(X_d, model.prepare_targets(y, loss, 32), loss)
    assert tuple(Z.shape) == (32, 3)
    assert model.backend.to_float(value) == pytest.approx(model.backend.to_float(loss(y, Z)), rel=tol)
    if tail in ("Dropout", "nested"):
        assert np.any(model.backend.to_host(Z) == 0)
