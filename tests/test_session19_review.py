"""Review of session 19's changes: what they must keep as it was.

NumPy's finite probe (the flat gradients' dot product with itself) overflows for large finite gradients, which
the step then confirms element by element and applies. NumPy's ``dot`` reports that overflow as a floating-point
error, so a fit whose gradients were merely large warned every step, and under ``np.errstate(over="raise")`` or
warnings raised as errors it stopped with a bare FloatingPointError that names no epoch or batch, on a step the
library would apply; the sum it replaced overflowed only past the dtype's largest value.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import nnx


def _huge_gradient_fit() -> list[float]:
    """A float32 NumPy fit whose gradients are about 1e20: finite, though their squares overflow."""
    model = nnx.Sequential(nnx.Dense(3, 1), backend="numpy", dtype="float32", seed=0)
    X, y = np.full((8, 3), 1e10), np.zeros(8)
    history = model.fit(X, y, loss="mse", optimizer=nnx.optim.SGD(model.parameters(), lr=1e-30), epochs=2,
                        batch_size=4, shuffle=False, verbose=0)
    return history["loss"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_session19_numpy_probe_reports_no_floating_point_error_for_finite_values(dtype):
    be = nnx.get_backend("numpy")
    big = 1e30 if dtype == "float32" else 1e160
    x = np.array([big, 2.0, -big], dtype=dtype)
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        probe = be.finite_probe(x)
        assert not math.isfinite(float(probe))  # overflowed: the step confirms it element by element
        x[1] = np.nan
        assert math.isnan(float(be.finite_probe(x)))
        assert math.isfinite(float(be.finite_probe(np.ones(5, dtype=dtype))))


def test_session19_a_fit_with_huge_finite_gradients_runs_under_numpy_overflow_errors():
    with np.errstate(over="raise"):
        losses = _huge_gradient_fit()
    assert all(math.isfinite(v) for v in losses)


def test_session19_a_fit_with_huge_finite_gradients_warns_of_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses = _huge_gradient_fit()
    assert all(math.isfinite(v) for v in losses)
