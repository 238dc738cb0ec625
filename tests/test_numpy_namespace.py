"""The NumPy adapter's namespace gives NumPy's own results where it replaces a function.

`where` selects between a float array and zero bitwise from `BITWISE_SELECT_MIN` elements on
(ReLU's backward); `sum` is the ufunc reduction. Every result must be NumPy's: the same dtype,
shape and bits (NaN payloads and signed zeros too), whatever the operands.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.backends.numpy import BITWISE_SELECT_MIN

SPECIAL = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 5e-324, -1e-300, 2.5, -3.0]


def _xp():
    return nnx.get_backend("numpy").xp


def _same(got, want):
    assert type(got) is type(want) and got.dtype == want.dtype and got.shape == want.shape
    if got.dtype.kind == "f":  # bits, so that NaN payloads and the sign of zero count
        ints = {4: np.int32, 8: np.int64, 2: np.int16}[got.dtype.itemsize]
        np.testing.assert_array_equal(got.view(ints), want.view(ints))
    else:
        np.testing.assert_array_equal(got, want)


def _operands(n, dtype, seed=0):
    gen = np.random.default_rng(seed)
    x = gen.normal(size=n).astype(dtype) * 3
    x[:len(SPECIAL)] = SPECIAL
    x[len(SPECIAL)] = np.array(0x7FC01234, np.uint32).view(np.float32) if dtype == "float32" else np.nan
    condition = gen.random(n) > 0.5
    condition[:len(SPECIAL)] = True
    condition[len(SPECIAL):2 * len(SPECIAL)] = False
    return condition, x


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("n", [10 * len(SPECIAL), BITWISE_SELECT_MIN, 3 * BITWISE_SELECT_MIN + 1])
@pytest.mark.parametrize("zero", [0, 0.0, -0.0, 1.0, False])
def test_where_gives_numpys_bits(dtype, n, zero):
    condition, x = _operands(n, dtype)
    xp = _xp()
    _same(xp.where(condition, x, zero), np.where(condition, x, zero))
    _same(xp.where(condition, zero, x), np.where(condition, zero, x))


def test_where_on_arrays_it_does_not_select_bitwise_gives_numpys_results():
    xp = _xp()
    condition, x = _operands(2 * BITWISE_SELECT_MIN, "float32")
    strided = np.repeat(x, 2)[::2]  # a non-contiguous view of the same values
    cases = [
        (condition, strided, 0.0),
        (condition.reshape(-1, 2), x.reshape(-1, 2)[:, :1], 0.0),  # broadcast
        (condition, np.nan_to_num(x, nan=0, posinf=9, neginf=-9).astype(np.int32), 0),  # not floating
        (condition, x, np.zeros_like(x)),  # two arrays
        (condition.astype(np.int8), x, 0.0),  # a condition that is not boolean
        (np.ma.masked_array(condition), x, 0.0),  # an ndarray subclass
    ]
    for c, a, b in cases:
        _same(np.asarray(xp.where(c, a, b)), np.asarray(np.where(c, a, b)))


def test_where_reads_any_nonzero_byte_of_a_boolean_as_true():
    raw = np.arange(4 * BITWISE_SELECT_MIN, dtype=np.uint8) % 4  # bytes 0, 1, 2, 3 seen as booleans
    condition = raw.view(np.bool_)
    x = np.ones(raw.size, np.float32)
    _same(_xp().where(condition, x, 0.0), np.where(condition, x, 0.0))


def test_sum_gives_numpys_sum():
    x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    xp = _xp()
    for axis in (None, 0, 1):
        _same(np.asarray(xp.sum(x, axis=axis)), np.asarray(np.sum(x, axis=axis)))
