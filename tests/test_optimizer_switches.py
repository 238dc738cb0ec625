"""A setting switched on mid-training that needs state the optimizer has not kept so far (Adam's amsgrad, RMSprop's
momentum or centered) starts that state, as SGD starts its momentum buffer, where torch raises a KeyError; every
execution (the flat update, the replayed rule, JAX's compiled step) gives the plain loop's numbers. Float64."""

from __future__ import annotations

import numpy as np
import pytest

import nnx

TOL = 1e-12


class SwitchOn(nnx.callbacks.Callback):
    """Sets the optimizer's hyper-parameters after the first epoch."""

    def __init__(self, optimizer, **settings) -> None:
        self.optimizer, self.settings = optimizer, settings

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            for name, value in self.settings.items():
                setattr(self.optimizer, name, value)


class TwinMomentum(nnx.optim.Optimizer):
    """A user's rule whose second state array starts as the first one itself when `twin` is switched on."""

    elementwise = True
    kept_state = started_state = ("twin",)

    def __init__(self, params, lr=0.01, twin=False):
        super().__init__(params, lr, twin=twin)

    def init_state(self, xp, value):
        return {"buf": xp.zeros_like(value)}

    def update(self, xp, value, grad, state, step, lr):
        buf = 0.9 * state["buf"] + grad
        if not self.twin:
            return value - lr * buf, {"buf": buf}
        twin = state.get("twin")
        twin = buf if twin is None else 0.5 * (twin + buf)  # the same array as `buf` on the first step
        return value - lr * (buf + twin), {"buf": buf, "twin": twin}


def _train(backend, make_optimizer, settings):
    rng = np.random.default_rng(0)
    # two steps an epoch: the first after the switch starts the state, the second reads it; one layer shape for
    # both Dense layers, so the plain loop's ops (JAX compiles each per shape) serve all parameters
    X, y = rng.standard_normal((16, 2)), rng.standard_normal((16, 2))
    model = nnx.Sequential(nnx.Dense(2, 2), nnx.Tanh(), nnx.Dense(2, 2), backend=backend, dtype="float64", seed=1)
    optimizer = make_optimizer(model.parameters())
    history = model.fit(X, y, loss="mse", optimizer=optimizer, epochs=2, batch_size=8, shuffle=False,
                        callbacks=[SwitchOn(optimizer, **settings)])
    return model, optimizer, history


# (the optimizer, the settings switched on, the state array they start)
SWITCHES = {
    "adam-amsgrad": (lambda p: nnx.optim.Adam(p, lr=0.01), {"amsgrad": True}, "max_exp_avg_sq"),
    "rmsprop-momentum": (lambda p: nnx.optim.RMSprop(p, lr=0.01), {"momentum": 0.9}, "momentum_buffer"),
    "rmsprop-centered": (lambda p: nnx.optim.RMSprop(p, lr=0.01), {"centered": True}, "grad_avg"),
    "user-twin": (lambda p: TwinMomentum(p), {"twin": True}, "twin"),
}


@pytest.mark.parametrize("switch", SWITCHES)
def test_state_a_switched_on_setting_needs_is_started_in_every_execution(backend, switch):
    make_optimizer, settings, started = SWITCHES[switch]
    fast, fast_opt, fast_history = _train(backend, make_optimizer, settings)
    plain, plain_opt, plain_history = _train(backend.with_fastpath(False), make_optimizer, settings)
    for p, q in zip(fast.parameters(), plain.parameters(), strict=True):
        np.testing.assert_allclose(backend.to_host(p.value), backend.to_host(q.value), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(fast_history.history["loss"], plain_history.history["loss"], rtol=TOL, atol=TOL)
    for i, entry in plain_opt.state_dict()["state"].items():
        mine = fast_opt.state_dict()["state"][i]
        assert started in entry and started in mine
        for key in entry:
            np.testing.assert_allclose(backend.to_host(mine[key]), backend.to_host(entry[key]), rtol=TOL, atol=TOL)


def test_adams_running_maximum_starts_at_the_second_moment_of_the_step_it_is_switched_on():
    """As if it had been kept from zeros: the second moment is never negative, so the maximum is that step's own."""
    model = nnx.Sequential(nnx.Dense(2, 1), backend="numpy", dtype="float64", seed=0)
    optimizer = nnx.optim.Adam(model.parameters(), lr=0.1)
    weight = model.parameters()[0]
    for amsgrad in (False, True):
        optimizer.amsgrad = amsgrad
        weight.grad = np.array([[0.5], [-2.0]])
        model.parameters()[1].grad = np.array([1.0])
        optimizer.step()
    state = optimizer.state[0]
    np.testing.assert_array_equal(state["max_exp_avg_sq"], state["exp_avg_sq"])
    assert state["max_exp_avg_sq"] is not state["exp_avg_sq"]
