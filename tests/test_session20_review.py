"""Review of session 20's fast paths (own gradients, rebound values, overridden step, the finite check read apart),
the way a user hits them: each case against the plain loop (`Backend.with_fastpath(False)`)."""

from __future__ import annotations

import array_api_compat
import numpy as np
import pytest
from user_code import counted_calls

import nnx
from nnx.training import GradientTransform


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


class ShrinkAfterStep(nnx.optim.SGD):
    """A user's SGD with a constraint after the update: every weight times 0.9."""

    def step(self):
        """The update, then every weight times 0.9."""
        super().step()
        for p in self.params:
            p.value = p.value * 0.9


@pytest.mark.parametrize("replaced", ["class", "object"])
def test_the_sharded_update_refuses_an_optimizer_whose_step_is_not_optimizer_step(replaced):
    """The sharded update (ZeRO-1) stands in for `Optimizer.step` as the flat update and JAX's compiled step do: it
    ran the rule on its slice and skipped the user's step, training other weights than the plain loop without a
    word. It now refuses, as it refuses a rule that is not elementwise."""
    from nnx import distributed as dist

    class WorldOfOne(dist.SingleProcess):
        engine = "test"  # `fit` runs the data-parallel stages in this process

    X, y = _data()
    model = nnx.Sequential(nnx.Dense(4, 3), backend="numpy", dtype="float64", seed=0)
    if replaced == "class":
        opt = ShrinkAfterStep(model.parameters(), lr=0.1)
    else:
        opt = nnx.optim.SGD(model.parameters(), lr=0.1)
        plain_step = opt.step

        def step():  # a hook replacing the step on the object
            plain_step()
            for p in opt.params:
                p.value = p.value * 0.9
        opt.step = step
    with pytest.raises(ValueError, match="step"):
        model.fit(X, y, loss="mse", optimizer=opt, epochs=1, batch_size=8,
                  distributed=dist.DataParallel(WorldOfOne(), shard_update=True))
