"""Arrays a researcher has at hand, given to nnx as they are: big-endian data read from a file, unusual dtypes, views
and odd shapes, at the entry points called directly (losses, metrics) and through the model. The same numbers as a
plain native float array, or an error naming the problem."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import losses


@pytest.mark.parametrize("loss", [losses.MSE(), losses.MAE(), losses.BinaryCrossEntropy(), losses.CrossEntropy()],
                         ids=repr)
@pytest.mark.parametrize("order", [">f8", ">f4"])
def test_a_loss_reads_big_endian_predictions_as_native_ones(loss: losses.Loss, order: str) -> None:
    """A prediction read from a big-endian file was refused with an error blaming the loss's own `rows` ("must
    return arrays of y_pred's dtype >f8, got float64")."""
    y_pred = np.random.default_rng(0).uniform(0.1, 0.9, size=(5, 3))
    y_true = np.array([0, 2, 1, 1, 0]) if isinstance(loss, losses.CrossEntropy) else np.round(y_pred)
    native = y_pred.astype(order[1:])
    big = y_pred.astype(order)
    value, grad = loss.value_and_grad(y_true, big)
    want_value, want_grad = loss.value_and_grad(y_true, native)
    assert value.dtype == want_value.dtype and grad.dtype == want_grad.dtype
    np.testing.assert_array_equal(value, want_value)
    np.testing.assert_array_equal(grad, want_grad)
    np.testing.assert_array_equal(loss(y_true, big, sample_weight=np.ones(5, ">f8")), want_value)


def _rows(n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    X = np.random.default_rng(1).normal(size=(n, 3))
    return X, (X @ np.array([1.0, -2.0, 0.5]))[:, None]


@pytest.mark.filterwarnings("error")
def test_weights_of_which_only_ratios_count_are_read_as_data_as_other_weights_are() -> None:
    """With ``reduction="mean_with_sample_weight"`` the weights were read before the backend's checks: a torch
    tensor that requires grad made torch warn ("Converting a tensor with requires_grad=True to a scalar"), and one on
    the 'meta' device failed inside torch ("item() cannot be called on meta tensors") instead of being named."""
    torch = pytest.importorskip("torch")
    X, y = _rows()
    w = np.random.default_rng(2).uniform(0.5, 2.0, size=12)
    loss = losses.MSE(reduction="mean_with_sample_weight")
    model = nnx.Sequential(nnx.Dense(3, 1), backend="torch", dtype="float64", seed=0)
    want = model.evaluate(X, y, sample_weight=w, loss=loss)
    assert model.evaluate(X, y, sample_weight=torch.tensor(w, requires_grad=True), loss=loss) == want
    with pytest.raises(ValueError, match="sample_weight is a torch tensor on the 'meta' device"):
        model.evaluate(X, y, sample_weight=torch.empty(12, device="meta"), loss=loss)
    with pytest.raises(ValueError, match="beyond the range of the model's dtype float32"):
        nnx.Sequential(nnx.Dense(3, 1), backend="torch", seed=0).evaluate(
            X, y, sample_weight=torch.tensor(w * 1e300, requires_grad=True), loss="mse")


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
@pytest.mark.parametrize("name", ["sigmoid_derivative", "tanh_derivative", "sigmoid", "relu"])
def test_activation_functions_refuse_numpy_subclasses_whose_operators_are_not_an_arrays(name: str) -> None:
    """``tanh_derivative(np.matrix(x))`` multiplied matrices where it meant elements and returned other numbers
    than for the same plain array; a masked array's values under the mask were read as data."""
    x = np.random.default_rng(3).normal(size=(3, 3))
    fn = getattr(nnx.activations, name)
    for given in (np.matrix(x), np.ma.masked_array(x, mask=x > 1)):
        with pytest.raises(TypeError, match=f"plain arrays, got a numpy.*{type(given).__name__}.*np.asarray"):
            fn(given)
    np.testing.assert_array_equal(fn(x), fn(x.copy()))


def test_activation_functions_take_a_memory_map_as_the_array_it_is(tmp_path) -> None:
    x = np.random.default_rng(3).normal(size=(3, 3))
    mapped = np.memmap(tmp_path / "x.dat", dtype=x.dtype, mode="w+", shape=x.shape)
    mapped[:] = x
    np.testing.assert_array_equal(nnx.activations.tanh_derivative(mapped), nnx.activations.tanh_derivative(x))
