"""An optimizer whose class overrides `step` (here: a max-norm constraint applied after the update) runs its own
step on every backend. The flat update and the compiled step stand in for `Optimizer.step` only: the compiled
step on JAX called the rule and skipped the override, and gave other weights than the plain loop."""

from __future__ import annotations

import numpy as np
import pytest

import nnx


class ShrinkingSGD(nnx.optim.SGD):
    """SGD whose step scales every weight down after the update, as a user's constraint would."""

    def step(self):
        """The update, then every weight times 0.9."""
        super().step()
        for p in self.params:
            p.value = p.value * 0.9


def _fit(backend, X, y):
    model = nnx.Sequential(nnx.Dense(4, 5), nnx.Tanh(), nnx.Dense(5, 1), backend=backend, dtype="float64", seed=2)
    history = model.fit(X, y, loss="mse", optimizer=ShrinkingSGD(model.parameters(), lr=0.1, momentum=0.9),
                        epochs=3, batch_size=8)
    return [np.asarray(backend.to_host(p.value)) for p in model.parameters()], history.execution


def test_an_overridden_step_runs_on_every_backend(backend, rng):
    X, y = rng.standard_normal((24, 4)), rng.standard_normal((24, 1))
    got, execution = _fit(backend, X, y)
    plain, _ = _fit(backend.with_fastpath(False), X, y)
    assert execution == "plain"
    for a, b in zip(got, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


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


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((16, 4)), rng.standard_normal((16, 3))
