"""Gradients from nnx's own layers (`TrainStep.own_passes`) are shaped as their parameters by construction: the flat
update gathers them without `Optimizer.check_grads` at every step, and runs it only where the gathered buffer's
length or dtype is not the parameters', so that a wrong gradient is still refused with its parameter's name.
A user's layer's gradients are checked at every step, as before."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from user_code import UserDense, counted_calls

import nnx
from nnx.training import GradientTransform
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


# A user's gradient transform or on_backward may rebind a gradient after nnx's own passes: such a gradient is checked,
# while nnx's own transforms and callbacks leave the gradients unchecked (each case also on the plain loop).
def _transposed(params):
    for p in params:
        if p.grad is not None and p.grad.ndim == 2:
            xp = array_api_compat.array_namespace(p.grad)
            p.grad = xp.permute_dims(p.grad, (1, 0))  # the same size, the wrong shape


class TransposeGradients(GradientTransform):
    """A user's transform with a bug: each weight's gradient transposed."""

    def apply(self, params, rows):
        _transposed(params)
        return True


class TransposeOnBackward(nnx.callbacks.Callback):
    """A user's callback with the same bug, in on_backward (which the plain loop's update then reads)."""

    def on_backward(self):
        _transposed(self.model.parameters())


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((16, 4)), rng.standard_normal((16, 3))


@pytest.mark.parametrize("how", ["gradient_transforms", "on_backward", "on_backward with clip_norm"])
@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_a_gradient_a_users_code_rebinds_after_nnx_own_passes_is_still_checked(backend, how, fast):
    """nnx's layers make gradients shaped as their parameters, but a user's transform or on_backward may rebind one
    after the passes: a transposed gradient of the same size was concatenated into the flat update unchecked."""
    be = backend.with_fastpath(fast)
    X, y = _data()
    model = nnx.Sequential(nnx.Dense(4, 3), backend=be, dtype="float64", seed=0)
    kwargs: dict = {"gradient_transforms": [TransposeGradients()]} if how == "gradient_transforms" else \
        {"callbacks": [TransposeOnBackward()], **({"clip_norm": 1e9} if "clip" in how else {})}
    with pytest.raises((ValueError, RuntimeError), match="0.weight"):
        model.fit(X, y, loss="mse", optimizer="sgd", epochs=1, batch_size=8, **kwargs)


def test_nnx_own_transforms_and_callbacks_keep_the_gradients_unchecked(monkeypatch, backend):
    """ClipByNorm, accumulation and GradientAnalyzer's on_backward leave each gradient shaped as its parameter."""
    calls = counted_calls(monkeypatch, nnx.optim.Optimizer, "check_grads")
    X, y = _data()
    model = nnx.Sequential(nnx.Dense(4, 3), backend=backend, dtype="float64", seed=0)
    history = model.fit(X, y, loss="mse", optimizer="sgd", epochs=2, batch_size=4, clip_norm=1.0, accumulate=2,
                        callbacks=[nnx.callbacks.GradientAnalyzer()])
    if history.execution != "flat":
        pytest.skip(f"the step runs {history.execution!r} on {backend.name}, not with the flat update")
    assert calls[0] == 0
