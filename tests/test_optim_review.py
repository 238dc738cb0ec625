"""Optimizer and regularizer settings changed after construction, as a PyTorch / Keras user changes them."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nnx
from nnx.layers import Parameter
from nnx.optim import SGD, Adagrad, Adam, AdamW, Lion, Momentum, RMSprop
from nnx.regularizers import L1, L2, ElasticNet


@pytest.mark.parametrize("make, name", [(lambda: L1(0.1), "l"), (lambda: L2(0.1), "l"),
                                        (lambda: ElasticNet(0.1, 0.2), "l1"), (lambda: ElasticNet(0.1, 0.2), "l2")])
@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf])
def test_a_regularizer_strength_set_after_construction_is_checked(make, name, bad):
    """The constructor refuses a negative or non-finite strength; `reg.l = ...` (documented: a callback's way to
    change it between epochs) refused nothing, and a negative one trained towards ever larger weights with a
    loss falling below 0, a NaN one ended the fit as 'lower the learning rate'."""
    reg = make()
    with pytest.raises(ValueError, match=rf"{name}.*finite number >= 0"):
        setattr(reg, name, bad)
    assert getattr(reg, name) in (0.1, 0.2)  # unchanged
    setattr(reg, name, np.float32(0.5))  # a valid one is taken, as a Python float
    assert getattr(reg, name) == 0.5 and type(getattr(reg, name)) is float
    setattr(reg, name, 0)
    assert float(reg.penalty(np.zeros(3))) == 0.0


OPTIMIZER_CASES = [
    (SGD, {"momentum": 0.9}, "momentum", 1.5),
    (SGD, {"momentum": 0.9}, "weight_decay", -0.1),
    (SGD, {}, "nesterov", True),  # nesterov without momentum, which the constructor refuses
    (Momentum, {}, "momentum", -0.1),
    (Adam, {}, "betas", (0.9, 1.0)),
    (Adam, {}, "eps", 0.0),
    (AdamW, {}, "weight_decay", math.nan),
    (RMSprop, {}, "alpha", 1.5),
    (Adagrad, {}, "lr_decay", -1.0),
    (Lion, {}, "beta1", math.nan),
]


@pytest.mark.parametrize("cls, kwargs, name, bad", OPTIMIZER_CASES)
def test_an_optimizer_setting_changed_after_construction_is_checked_before_fit_or_snapshot(cls, kwargs, name, bad):
    """``opt.momentum = 1.5`` trained on without a word, and `state_dict` (so `nnx.save`) wrote a checkpoint that
    `load_state_dict` (so `nnx.load`) then refused: fit and `state_dict` now check the settings as the constructor
    does, naming the one out of range."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 1))
    model = nnx.Sequential(nnx.Dense(3, 1), dtype="float64", seed=0)
    opt = cls(model.parameters(), lr=0.01, **kwargs)
    setattr(opt, name, bad)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=name):
        model.fit(X, y, loss="mse", optimizer=opt, epochs=1, batch_size=8, verbose=0)
    for k, v in model.state_dict().items():  # refused before the first step
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ValueError, match=name):
        opt.state_dict()


def test_a_valid_setting_changed_after_construction_is_saved_and_loaded():
    params = [Parameter("w", np.ones(3))]
    opt = SGD(params, lr=0.1, momentum=0.9)
    params[0].grad = np.ones(3)
    opt.step()
    opt.momentum, opt.nesterov = 0.5, True
    other = SGD([Parameter("w", np.ones(3))], lr=0.1, momentum=0.9)
    other.load_state_dict(opt.state_dict())
    assert other.momentum == 0.5 and other.nesterov is True
