"""Optimizer and regularizer settings changed after construction, as a PyTorch / Keras user changes them."""

from __future__ import annotations

import math

import numpy as np
import pytest

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
