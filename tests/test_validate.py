"""nnx._validate: one wording for each argument mistake, shared by every building block."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nnx
from nnx import _validate as check


def test_numbers_come_back_as_python_floats_and_ints():
    assert check.positive("lr", np.float32(0.5)) == 0.5 and type(check.positive("lr", 1)) is float
    assert check.non_negative("l", 0) == 0.0 and check.probability("rate", 0.0) == 0.0
    assert check.positive_int("n", np.int64(3)) == 3 and type(check.positive_int("n", np.int64(3))) is int
    assert check.flag("f", 1) is True and check.flag("f", False) is False
    assert check.one_of("mode", "a", ("a", "b")) == "a"


@pytest.mark.parametrize("call, message", [
    (lambda: check.positive("lr", 0), r"^lr must be a finite number > 0, got 0$"),
    (lambda: check.non_negative("l", -1.0), r"^l must be a finite number >= 0, got -1.0$"),
    (lambda: check.probability("Dropout rate", 1.0), r"^Dropout rate must be a finite number in \[0, 1\), got 1.0$"),
    (lambda: check.real("momentum", math.nan, 0.0, 1.0), r"^momentum must be a finite number in \[0, 1\], got nan$"),
    (lambda: check.positive("eps", math.inf), r"^eps must be a finite number > 0, got inf$"),
    (lambda: check.positive_int("n", 0), r"^n must be > 0, got 0$"),
    (lambda: check.integer("k", -1, low=0), r"^k must be >= 0, got -1$"),
    (lambda: check.one_of("mode", "c", ("a", "b")), r"^mode must be one of \['a', 'b'\], got 'c'$"),
    (lambda: check.one_of("mode", ["a"], ("a", "b")), r"^mode must be one of \['a', 'b'\], got \['a'\]$"),
])
def test_a_value_out_of_range_is_a_value_error_naming_argument_range_and_value(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert not isinstance(info.value, TypeError)


@pytest.mark.parametrize("call, message", [
    (lambda: check.positive("lr", "0.1"), r"^lr must be a finite number > 0, got '0.1' of type str$"),
    (lambda: check.probability("rate", True), r"^rate must be a finite number in \[0, 1\), got True of type bool$"),
    (lambda: check.positive_int("in_features", 2.0), r"^in_features must be an int, got float 2.0$"),
    (lambda: check.flag("nesterov", "yes"), r"^nesterov must be True or False, got 'yes'$"),
])
def test_a_value_of_the_wrong_type_is_both_a_type_and_a_value_error(call, message):
    with pytest.raises(check.ArgumentTypeError, match=message) as info:
        call()
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_the_building_blocks_share_the_wording():
    for make, message in [(lambda: nnx.Dropout(1.5), "Dropout rate must be a finite number in"),
                          (lambda: nnx.LeakyReLU(-1), "LeakyReLU alpha must be a finite number >= 0"),
                          (lambda: nnx.regularizers.L2(-1), "l must be a finite number >= 0"),
                          (lambda: nnx.training.ClipByNorm(0), "ClipByNorm: max_norm must be a finite number > 0"),
                          (lambda: nnx.BatchNorm(3, eps=0), "BatchNorm eps must be a finite number > 0"),
                          (lambda: nnx.losses.MSE(reduction="sum"), "reduction must be one of")]:
        with pytest.raises(ValueError, match=message):
            make()
