"""Gradients from nnx's own layers (`TrainStep.own_passes`) are shaped as their parameters by construction: the flat
update gathers them without `Optimizer.check_grads` at every step, and runs it only where the gathered buffer's
length or dtype is not the parameters', so that a wrong gradient is still refused with its parameter's name.
A user's layer's gradients are checked at every step, as before."""

from __future__ import annotations

import pytest
from user_code import UserDense, counted_calls

import nnx
from nnx.training.flat import FlatUpdate


@pytest.mark.parametrize("first", [nnx.Dense, UserDense], ids=["built-in layers", "a user's layer"])
def test_gradients_are_checked_at_every_step_where_a_users_layer_makes_them(monkeypatch, backend, rng, first):
    calls = counted_calls(monkeypatch, nnx.optim.Optimizer, "check_grads")
    model = nnx.Sequential(first(4, 5), nnx.ReLU(), nnx.Dense(5, 1), backend=backend, dtype="float64", seed=1)
    X, y = rng.standard_normal((32, 4)), rng.standard_normal((32, 1))
    history = model.fit(X, y, loss="mse", optimizer=nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                        epochs=2, batch_size=8)
    if history.execution != "flat":
        pytest.skip(f"the step runs {history.execution!r} on {backend.name}, not with the flat update")
    assert calls[0] == (0 if first is nnx.Dense else 8)


@pytest.mark.parametrize("wrong", ["dtype", "size"])
def test_a_wrong_gradient_of_nnx_own_layers_is_still_refused_by_name(backend, wrong):
    model = nnx.Sequential(nnx.Dense(3, 2), nnx.Dense(2, 1), backend=backend, dtype="float32", seed=0)
    opt = nnx.optim.SGD(model.parameters(), lr=0.1)
    flat = FlatUpdate(opt, backend, own_gradients=True)
    flat.lay_out()
    xp = model.xp
    for p in model.parameters():
        p.grad = xp.zeros_like(p.value)
    bias = model.layers[0].bias
    if wrong == "dtype":
        bias.grad = xp.zeros(bias.value.shape, dtype=xp.float64, device=backend.device)
    else:
        bias.grad = xp.zeros((3,), dtype=xp.float32, device=backend.device)
    with pytest.raises(ValueError, match=bias.name):
        flat.gather_grads()
