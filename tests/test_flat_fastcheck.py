"""The flat update's per-step checks see every rebinding a user or `load_state_dict` can make between steps.

`FlatUpdate` checks by identity, in a few C-level passes, that the parameters and the optimizer's state
still hold its views. Each test here rebinds one thing between two steps, on a model trained with the
flat update and on the same model with derived executions off, and both must end on the same numbers.
Each rebinding also changes the numbers (a zeroed buffer, a moved value), so a check that missed it
would end elsewhere: the last parameter and the last state key are rebound where a shortcut would look
only at the first.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import optim
from nnx.training.step import TrainStep


def _setup(backend, dtype, fast, opt_name, kwargs):
    model = nnx.Sequential(nnx.Dense(5, 7), nnx.ReLU(), nnx.Dense(7, 3), nnx.ReLU(), nnx.Dense(3, 1),
                           backend=backend.with_fastpath(fast), dtype=dtype, seed=4)
    opt = optim.get_optimizer(opt_name, model.parameters(), **kwargs)
    step = TrainStep(model, model.resolve_loss("mse"), opt)
    return model, opt, step


def _batches(n=6):
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((8, 5)), rng.standard_normal((8, 1))) for _ in range(n)]


def _steps(model, step, batches):
    for X, y in batches:
        X, y = model.backend.asarray(X, dtype=model.dtype), model.backend.asarray(y, dtype=model.dtype)
        value, _ = step.forward_loss(X, y)
        step.backward()
        assert step.check(value)
        if step.transform(X.shape[0]):
            step.update()


def _copy(model, arr):
    """A new array with `arr`'s numbers (not a view of anything)."""
    return model.backend.asarray(np.array(model.backend.to_host(arr)), dtype=model.dtype)


def _last_key(opt):
    return list(opt.state[len(opt.params) - 1])[-1]


def _rebind_last_state_array_to_zeros(model, opt):
    i = len(opt.params) - 1
    k = _last_key(opt)
    opt.state[i][k] = model.xp.zeros_like(opt.state[i][k])


def _rebind_last_state_array_to_a_copy_then_scale_it(model, opt):
    # a copy holds the same numbers: a flat update that kept its own buffer would not see the scaling that follows
    i = len(opt.params) - 1
    k = _last_key(opt)
    opt.state[i][k] = _copy(model, opt.state[i][k]) * 3.0


def _replace_last_state_entry(model, opt):
    i = len(opt.params) - 1
    opt.state[i] = {k: model.xp.ones_like(arr) for k, arr in opt.state[i].items()}


def _add_a_key_to_an_entry(model, opt):
    opt.state[0]["unused"] = model.xp.zeros_like(opt.params[0].value)


def _remove_the_last_key_of_an_entry(model, opt):
    # SGD starts a momentum buffer missing at the gradient (Adam needs both of its own)
    if _last_key(opt) != "momentum_buffer":
        pytest.skip("only SGD's rule takes a state entry without its key")
    del opt.state[len(opt.params) - 1][_last_key(opt)]


def _reorder_the_state_entries(model, opt):
    # the same dicts under the same indices, in another order: the views are still the ones held
    opt.state = dict(reversed(list(opt.state.items())))
    opt.state[1] = {k: arr * 0.5 for k, arr in opt.state[1].items()}


def _rebind_the_last_value(model, opt):
    p = opt.params[-1]
    p.value = _copy(model, p.value) + 0.25


def _load_a_state_dict(model, opt):
    sd = opt.state_dict()
    sd["state"] = {i: {k: model.backend.to_host(arr) * 0.5 for k, arr in entry.items()}
                   for i, entry in sd["state"].items()}
    opt.load_state_dict(sd)


def _load_model_weights(model, opt):
    model.load_state_dict({k: model.backend.to_host(v) * 0.9 for k, v in model.state_dict().items()})


REBINDINGS = [_rebind_last_state_array_to_zeros, _rebind_last_state_array_to_a_copy_then_scale_it,
              _replace_last_state_entry, _add_a_key_to_an_entry, _remove_the_last_key_of_an_entry,
              _reorder_the_state_entries, _rebind_the_last_value, _load_a_state_dict, _load_model_weights]
OPTIMIZERS = [("sgd", {"lr": 0.05, "momentum": 0.9}), ("adam", {"lr": 0.01})]


@pytest.mark.parametrize("opt_name,kwargs", OPTIMIZERS, ids=[o for o, _ in OPTIMIZERS])
@pytest.mark.parametrize("rebind", REBINDINGS, ids=lambda f: f.__name__.strip("_"))
def test_a_rebinding_between_steps_is_what_the_next_flat_step_starts_from(backend, dtype, opt_name, kwargs, rebind):
    runs = []
    for fast in (True, False):
        model, opt, step = _setup(backend, dtype, fast, opt_name, kwargs)
        if fast and step.execution != "flat":
            pytest.skip(f"the step runs {step.execution!r} on {backend.name}")
        batches = _batches()
        _steps(model, step, batches[:3])
        rebind(model, opt)
        _steps(model, step, batches[3:])
        runs.append((model, opt))
    (fm, fo), (pm, po) = runs
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == "float64" else {"rtol": 1e-5, "atol": 1e-6}
    for a, b in zip(fm.parameters(), pm.parameters(), strict=True):
        np.testing.assert_allclose(fm.backend.to_host(a.value), pm.backend.to_host(b.value), **tol, err_msg=a.name)
    assert fo.param_steps == po.param_steps and fo.step_count == po.step_count
    assert fo.state.keys() == po.state.keys()
    for i, entry in po.state.items():
        assert fo.state[i].keys() == entry.keys()
        for k, arr in entry.items():
            np.testing.assert_allclose(fm.backend.to_host(fo.state[i][k]), pm.backend.to_host(arr), **tol,
                                       err_msg=f"state {i} {k}")
