"""`nnx.check_gradients` is not fooled by a wrong backward: a missing, accumulated, NaN or misshapen gradient,
or a missing input gradient, each shows as an error (or raises) naming the array, on every backend."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import nnx
from nnx.backends import backend_status
from nnx.gradcheck import numerical_gradient, relative_error


class GradcheckScaleShift(nnx.Layer):
    """X * scale + shift with a correct backward; the subclasses below each break it one way."""

    def build(self, input_shape):
        self.scale = self.add_parameter("scale", input_shape, init=1.5)
        self.shift = self.add_parameter("shift", input_shape, init=0.3)

    def forward(self, X, training=False):
        if training:
            self._X = X
        return X * self.scale.value + self.shift.value

    def backward(self, dY, need_dX=True):
        self.scale.grad = self.xp.sum(dY * self._X, axis=0)
        self.shift.grad = self.xp.sum(dY, axis=0)
        return dY * self.scale.value


class GradcheckForgetsShift(GradcheckScaleShift):
    def backward(self, dY, need_dX=True):
        self.scale.grad = self.xp.sum(dY * self._X, axis=0)
        return dY * self.scale.value


class GradcheckAccumulates(GradcheckScaleShift):
    def backward(self, dY, need_dX=True):
        step = self.xp.sum(dY * self._X, axis=0)
        self.scale.grad = step if self.scale.grad is None else self.scale.grad + step
        self.shift.grad = self.xp.sum(dY, axis=0)
        return dY * self.scale.value


class GradcheckNaNGrad(GradcheckScaleShift):
    def backward(self, dY, need_dX=True):
        dX = super().backward(dY, need_dX)
        self.shift.grad = self.shift.grad * self.xp.nan
        return dX


class GradcheckKeepdims(GradcheckScaleShift):
    def backward(self, dY, need_dX=True):
        dX = super().backward(dY, need_dX)
        self.shift.grad = self.xp.sum(dY, axis=0, keepdims=True)
        return dX


class GradcheckNoDX(GradcheckScaleShift):
    def backward(self, dY, need_dX=True):
        super().backward(dY, need_dX)
        return None


def _check(backend, layer, **kwargs):
    rng = np.random.default_rng(0)
    model = nnx.Sequential(layer, nnx.Dense(2, 2), backend=backend, dtype="float64", seed=0, input_shape=(2,))
    return nnx.check_gradients(model, rng.standard_normal((4, 2)), rng.standard_normal((4, 2)), **kwargs)


def test_a_right_backward_passes_and_each_array_has_its_error(backend):
    result = _check(backend, GradcheckScaleShift())
    assert result < 1e-6
    assert set(result.errors) == {"0.scale", "0.shift", "1.weight", "1.bias", "input"}
    assert max(result.errors.values()) == float(result)


class GradcheckCountsPasses(GradcheckScaleShift):
    """Counts its training forwards and its backwards (the check works on a copy: the counts are the class's)."""

    passes = {"forward": 0, "backward": 0}

    def forward(self, X, training=False):
        if training:
            type(self).passes["forward"] += 1
        return super().forward(X, training)

    def backward(self, dY, need_dX=True):
        type(self).passes["backward"] += 1
        return super().backward(dY, need_dX)


def test_the_finite_differences_run_forwards_only():
    # the analytic gradients are two backward passes' (the second is checked); the two shifted losses of each
    # checked entry (2 + 2 + 4 + 2 parameter entries, 8 input entries) are forwards alone: a backward there is
    # thrown away
    GradcheckCountsPasses.passes = {"forward": 0, "backward": 0}
    assert _check("numpy", GradcheckCountsPasses()) < 1e-6
    assert GradcheckCountsPasses.passes["backward"] == 2
    assert GradcheckCountsPasses.passes["forward"] >= 2 + 2 * (2 + 2 + 4 + 2 + 8)


def test_a_parameter_left_without_gradient_is_caught_and_named(backend):
    result = _check(backend, GradcheckForgetsShift())
    assert result > 0.5  # None counts as a zero gradient, against a non-zero numeric one
    assert "'0.shift'" in result.worst and "GradcheckForgetsShift" in result.worst


def test_a_backward_that_accumulates_into_grad_is_caught(backend):
    result = _check(backend, GradcheckAccumulates())
    assert result > 0.1
    assert "'0.scale'" in result.worst


def test_a_nan_gradient_is_the_worst_error_not_skipped(backend):
    result = _check(backend, GradcheckNaNGrad())
    assert result == float("inf")
    assert "'0.shift'" in result.worst


def test_a_gradient_of_the_wrong_shape_is_refused_naming_it(backend):
    with pytest.raises(ValueError, match=r"'0\.shift'.*shape \(1, 2\), expected \(2,\)"):
        _check(backend, GradcheckKeepdims())


def test_a_first_layer_that_returns_no_input_gradient_is_refused(backend):
    with pytest.raises(ValueError, match="GradcheckNoDX.*inputs=False"):
        _check(backend, GradcheckNoDX())
    assert _check(backend, GradcheckNoDX(), inputs=False) < 1e-6


def test_sample_weight_is_checked_as_fit_weights_the_loss(backend):
    weights = np.array([0.0, 2.0, 0.5, 1.0])
    assert _check(backend, GradcheckScaleShift(), sample_weight=weights) < 1e-6
    with pytest.raises(ValueError, match="sample_weight"):
        _check(backend, GradcheckScaleShift(), sample_weight=weights[:3])


def test_the_result_copies_and_pickles_with_its_details():
    result = _check("numpy", GradcheckForgetsShift())
    for again in (copy.deepcopy(result), pickle.loads(pickle.dumps(result))):
        assert (float(again), again.errors, again.worst) == (float(result), result.errors, result.worst)


class GradcheckNoDXInside(GradcheckScaleShift):
    def backward(self, dY, need_dX=True):
        super().backward(dY, need_dX)
        return None


@pytest.mark.parametrize("nested", [False, True])
def test_a_layer_returning_no_dX_to_the_layer_before_it_is_named(backend, nested):
    """Not a shape error from inside the layer before it (matmul of None)."""
    inner = [nnx.Dense(2, 2), GradcheckNoDXInside()]
    model = nnx.Sequential(*([nnx.Sequential(*inner)] if nested else inner), backend=backend, seed=0)
    X = np.ones((3, 2))
    with pytest.raises(TypeError, match=r"GradcheckNoDXInside\.backward returned None.*\(Dense\) needs dL/dX"):
        model.fit(X, X, epochs=1, verbose=0)


def test_a_device_without_float64_is_refused_saying_what_to_do_instead():
    # it failed deep in the copy with "layer 0: Device ... does not support dtype=float64"
    spec = "array_api_strict:no_float64"
    if not backend_status(spec)[0]:
        pytest.skip(f"{spec} does not run here")
    model = nnx.Sequential(nnx.Dense(2, 2), backend=spec, seed=0)
    with pytest.raises(ValueError, match=r"computes in float64.*model\.to\('numpy'\)"):
        nnx.check_gradients(model, np.ones((3, 2)), np.ones((3, 2)))
    assert nnx.check_gradients(model.to("numpy"), np.ones((3, 2)), np.ones((3, 2))) < 1e-6


def test_relative_error_scores_a_nan_or_inf_as_inf():
    # it returned NaN, and `relative_error(a, n) > 1e-3` is False for NaN: a NaN gradient passed that check
    numeric = np.array([1.0, 2.0])
    for bad in (np.nan, np.inf):
        assert relative_error(np.array([1.0, bad]), numeric) == np.inf
        assert relative_error(numeric, np.array([bad, 2.0])) == np.inf
    assert relative_error(numeric, numeric) == 0.0


class GradcheckHalvedMSE(nnx.losses.MSE):
    """A user's loss whose gradient is half the true one: check_gradients must see it."""

    def rows(self, xp, y_true, y_pred):
        value, grad = super().rows(xp, y_true, y_pred)
        return value, 0.5 * grad


def test_without_a_loss_the_loss_fit_used_is_checked(backend):
    # the default was "mse" whatever the model trained with: a wrong gradient of the user's own loss passed
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 2)), rng.standard_normal((6, 2))
    model = nnx.Sequential(nnx.Dense(2, 2), backend=backend, dtype="float64", seed=0)
    model.fit(X, y, loss=GradcheckHalvedMSE(), optimizer="sgd", epochs=1, verbose=0)
    assert nnx.check_gradients(model, X, y) > 0.1
    assert nnx.check_gradients(model, X, y, "mse") < 1e-6
    # never trained: what fit would pick, bce after a Sigmoid (0/1 targets)
    binary = nnx.Sequential(nnx.Dense(2, 1), nnx.Sigmoid(), backend=backend, dtype="float64", seed=0)
    labels = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    assert nnx.check_gradients(binary, X, labels).errors == nnx.check_gradients(binary, X, labels, "bce").errors


@pytest.mark.parametrize("where", ["X", "y"])
def test_nan_in_the_data_is_refused_naming_it(backend, where):
    # it returned inf, the score of a broken backward, for a NaN in the data
    X, y = np.ones((3, 2)), np.ones((3, 2))
    (X if where == "X" else y)[1, 0] = np.nan
    model = nnx.Sequential(nnx.Dense(2, 2), backend=backend, seed=0)
    with pytest.raises(ValueError, match=rf"^{where} contains NaN"):
        nnx.check_gradients(model, X, y, "mse")


class GradcheckUnbounded(GradcheckScaleShift):
    """A user's last layer whose outputs are not probabilities."""


def test_a_loss_that_does_not_fit_the_outputs_is_refused_as_fit_refuses_it(backend):
    # BCE on a Dense output scored 1.0 and blamed the Dense bias, whose backward is right
    X, y = np.array([[2.0, -3.0], [1.0, 4.0]]), np.array([[1.0], [0.0]])
    model = nnx.Sequential(nnx.Dense(2, 1), backend=backend, dtype="float64", seed=0)
    with pytest.raises(ValueError, match="ends in Dense.*bce_with_logits"):
        nnx.check_gradients(model, X, y, "bce")
    assert nnx.check_gradients(model, X, y, "bce_with_logits") < 1e-6
    custom = nnx.Sequential(nnx.Dense(2, 1), GradcheckUnbounded(), backend=backend, dtype="float64", seed=0)
    with pytest.raises(ValueError, match=r"outputs of the data range over"):
        nnx.check_gradients(custom, X, y, "bce")


def test_a_kink_at_the_checked_point_is_not_a_wrong_gradient(backend):
    # an all-zero row meets a zero bias: ReLU's input is exactly 0, where central differences give half its
    # slope; a right backward scored ~2e-2 ("a bug", blaming the Dense bias). Any subgradient passes now
    # (not the input's: X[0, k] moves every unit's input off 0 at once, where backprop's 0 is no subgradient)...
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 1))
    X[0] = 0.0
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.ReLU(), nnx.Dense(4, 1), backend=backend, dtype="float64", seed=0)
    assert nnx.check_gradients(model, X, y, "mse", inputs=False) < 1e-6
    # ...and a gradient outside the one-sided slopes there is still caught
    broken = nnx.Sequential(nnx.Dense(3, 4), GradcheckAccumulates(), nnx.ReLU(), nnx.Dense(4, 1),
                            backend=backend, dtype="float64", seed=0)
    assert nnx.check_gradients(broken, X, y, "mse").errors["1.scale"] > 1e-3


def test_relative_error_and_numerical_gradient_take_arrays_of_every_backend(backend, dtype):
    # found in review: a researcher checking a hand-written gradient compares it, as the backward returned it,
    # with `numerical_gradient`: relative_error read its arguments with NumPy's asarray, which refuses an array
    # on another device (array_api_strict's device1 here, torch:cuda or CuPy on a GPU)
    W = np.linspace(-1.0, 2.0, 6).reshape(2, 3)
    on_device = backend.asarray(W, dtype=dtype)
    numeric = numerical_gradient(lambda w: float(np.sum(w**3)), on_device)
    assert isinstance(numeric, np.ndarray) and numeric.dtype == np.float64
    np.testing.assert_allclose(numeric, 3 * backend.to_host(on_device).astype(np.float64) ** 2, rtol=1e-6)
    analytic = backend.asarray(3 * W**2, dtype=dtype)
    assert relative_error(analytic, numeric) == relative_error(backend.to_host(analytic), numeric)
    assert relative_error(numeric, analytic) < (1e-6 if dtype == "float32" else 1e-9)
