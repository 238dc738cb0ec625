"""`Backend.finite_probe`: the one number a step's finite check reads over the flat gradients.

It is finite when every element is, and NaN or infinite when one is not. It may also overflow
for large finite elements (on NumPy it is the buffer's dot product with itself, whose squares
overflow from about 1.8e19 in float32), so the step confirms a non-finite probe element by
element before it refuses anything: a step with huge but finite gradients is applied.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import nnx

# the huge-gradient run overflows on purpose
pytestmark = pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")


@pytest.mark.parametrize("size", [1, 7, 641, 5000])
@pytest.mark.parametrize("float_dtype", ["float32", "float64"])
def test_the_probe_is_finite_exactly_when_every_element_is(backend, size, float_dtype):
    values = np.random.default_rng(size).normal(size=size).astype(float_dtype)
    x = backend.asarray(values, dtype=float_dtype)
    assert math.isfinite(backend.to_float(backend.finite_probe(x)))
    for bad in (math.nan, math.inf, -math.inf):
        for where in {0, size // 2, size - 1}:
            poisoned = values.copy()
            poisoned[where] = bad
            probe = backend.finite_probe(backend.asarray(poisoned, dtype=float_dtype))
            assert not math.isfinite(backend.to_float(probe)), (bad, where)


def _huge_gradient_fit(backend, fast: bool) -> tuple[list[np.ndarray], list[float], str]:
    """One float32 fit whose gradients are about 1e20: finite, though their squares overflow."""
    be = backend.with_fastpath(fast) if fast != backend.fastpath_enabled else backend
    model = nnx.Sequential(nnx.Dense(3, 1), backend=be, dtype="float32", seed=0)
    X = np.full((8, 3), 1e10)
    y = np.zeros(8)
    history = model.fit(X, y, loss="mse", optimizer=nnx.optim.SGD(model.parameters(), lr=1e-30), epochs=2,
                        batch_size=4, shuffle=False, verbose=0)
    grads = [np.asarray(be.to_host(p.grad)) for p in model.parameters()]
    assert any(np.abs(g).max() > 1.9e19 for g in grads)  # large enough that their squares overflow float32
    assert all(np.isfinite(g).all() for g in grads)
    return [np.array(be.to_host(p.value), copy=True) for p in model.parameters()], history["loss"], history.execution


def test_a_step_with_huge_finite_gradients_is_applied(backend):
    initial = nnx.Sequential(nnx.Dense(3, 1), backend=backend, dtype="float32", seed=0)
    before = [np.array(backend.to_host(p.value), copy=True) for p in initial.parameters()]
    weights, losses, execution = _huge_gradient_fit(backend, backend.fastpath_enabled)
    assert all(math.isfinite(v) for v in losses)
    assert any(not np.array_equal(w, b) for w, b in zip(weights, before, strict=True))  # the steps were applied
    if execution == "flat":  # the flat update's probe and the per-parameter sums give the same steps
        plain_weights, plain_losses, _ = _huge_gradient_fit(backend, False)
        assert plain_losses == losses
        for w, p in zip(weights, plain_weights, strict=True):
            np.testing.assert_array_equal(w, p)


def test_a_finite_loss_and_probe_are_read_apart_and_never_overflow_into_a_warning():
    """A loss of 2e38 and a probe of about 2e38 in float32 are both finite; added, they overflowed, which NumPy
    reports (a warning, or under ``np.errstate(over="raise")`` a bare FloatingPointError on a step to apply)."""
    model = nnx.Sequential(nnx.Dense(1, 1), backend="numpy", dtype="float32", seed=0)
    step = nnx.training.TrainStep(model, model.resolve_loss("mse"), nnx.optim.SGD(model.parameters(), lr=0.1))
    weight, bias = model.layers[0].weight, model.layers[0].bias
    weight.grad = np.full((1, 1), 1.4e19, dtype=np.float32)  # its square: 1.96e38, finite
    bias.grad = np.zeros((1,), dtype=np.float32)
    with np.errstate(over="raise"):
        assert step.check(np.asarray(2e38, dtype=np.float32))


@pytest.mark.parametrize("case", ["numpy, plain stages", "numpy, a rule not elementwise", "array_api_strict, flat"])
def test_gradients_near_the_float32_maximum_pass_the_check_without_a_floating_point_error(case):
    """Each gradient is finite (3e38 in float32); their sum is not. The check of the flat update on NumPy and torch
    probes with a product that reports nothing; elsewhere a sum overflowed, which NumPy reported as a warning, and
    under ``np.errstate(over="raise")`` as a bare FloatingPointError on a step to apply."""
    backend = nnx.get_backend(case.partition(",")[0])
    if case.endswith("plain stages"):
        backend = backend.with_fastpath(False)
    model = nnx.Sequential(nnx.Dense(2, 1), backend=backend, dtype="float32", seed=0)
    opt = nnx.optim.SGD(model.parameters(), lr=0.1)
    if case.endswith("not elementwise"):
        opt.elementwise = False
    step = nnx.training.TrainStep(model, model.resolve_loss("mse"), opt)
    for p in model.parameters():
        p.grad = backend.asarray(np.full(tuple(p.value.shape), 3e38, dtype=np.float32), dtype="float32")
    with np.errstate(over="raise"):
        assert step.check(backend.asarray(1.0, dtype="float32"))


# NumPy's probe is the buffer's dot product with itself, and ``dot`` reports its overflow as a floating-point error:
# a fit whose finite gradients merely overflow the probe must neither warn nor stop under np.errstate(over="raise").
def _huge_float32_numpy_fit() -> list[float]:
    """A float32 NumPy fit whose gradients are about 1e20: finite, though their squares overflow."""
    model = nnx.Sequential(nnx.Dense(3, 1), backend="numpy", dtype="float32", seed=0)
    X, y = np.full((8, 3), 1e10), np.zeros(8)
    history = model.fit(X, y, loss="mse", optimizer=nnx.optim.SGD(model.parameters(), lr=1e-30), epochs=2,
                        batch_size=4, shuffle=False, verbose=0)
    return history["loss"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_numpy_probe_reports_no_floating_point_error_for_finite_values(dtype):
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


def test_a_fit_with_huge_finite_gradients_runs_under_numpy_overflow_errors():
    with np.errstate(over="raise"):
        losses = _huge_float32_numpy_fit()
    assert all(math.isfinite(v) for v in losses)


def test_a_fit_with_huge_finite_gradients_warns_of_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses = _huge_float32_numpy_fit()
    assert all(math.isfinite(v) for v in losses)
