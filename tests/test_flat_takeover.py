"""A later fit's flat update takes over the buffers the optimizer's last one laid out, where nothing was rebound.

Each `fit` builds its own `FlatUpdate`. Where every ``p.value`` and every array of the optimizer's
state is still a view of the buffers the last update of that optimizer laid out, the new one takes
them over: nothing is copied and no ``p.value`` is rebound, so an array a user holds from the last
fit is the parameter still. Anything rebound between the fits (a value, a state array,
``load_state_dict``) is gathered anew, as it always was. Each fit sequence is compared, number for
number, with the same fits with derived executions off (the per-parameter plain loop).
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import nnx
from nnx import optim
from nnx.training import flat


def _model(backend, fast: bool, dtype: str) -> nnx.Sequential:
    return nnx.Sequential(nnx.Dense(5, 7), nnx.ReLU(), nnx.Dense(7, 1), backend=backend.with_fastpath(fast),
                          dtype=dtype, seed=4)


def _data():
    rng = np.random.default_rng(1)
    return rng.standard_normal((24, 5)), rng.standard_normal((24, 1))


def _fit(model, opt):
    return model.fit(*_data(), loss="mse", optimizer=opt, epochs=1, batch_size=8, shuffle=False, verbose=0)


def _numbers(model, opt) -> list[np.ndarray]:
    be = model.backend
    return [np.array(be.to_host(p.value)) for p in model.parameters()] + \
        [np.array(be.to_host(a)) for i in sorted(opt.state) for _, a in sorted(opt.state[i].items())]


SETTINGS = {"sgd": {"lr": 0.05, "momentum": 0.9}, "adam": {"lr": 0.05}}


def _between_fits(backend, dtype, opt_name, change):
    """Two fits on the flat update and on the plain loop, `change(model, opt)` between them; both end alike."""
    ends = []
    for fast in (True, False):
        model = _model(backend, fast, dtype)
        opt = optim.get_optimizer(opt_name, model.parameters(), **SETTINGS[opt_name])
        _fit(model, opt)
        change(model, opt)
        history = _fit(model, opt)
        ends.append((history.execution, _numbers(model, opt)))
    (execution, got), (_, want) = ends
    if execution != "flat":
        pytest.skip(f"{backend.spec} runs the step {execution}")
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


def _nothing(model, opt):
    pass


def _rebind_a_value(model, opt):
    p = model.parameters()[-2]
    p.value = model.backend.asarray(np.array(model.backend.to_host(p.value)) * 0.5, dtype=model.dtype)


def _rebind_a_state_array(model, opt):
    i = len(opt.params) - 1
    key = sorted(opt.state[i])[-1]
    opt.state[i][key] = model.xp.zeros_like(opt.state[i][key])


def _load_state(model, opt):
    saved = opt.state_dict()
    name = type(opt).__name__.lower()
    fresh = optim.get_optimizer(name, model.parameters(), **SETTINGS[name])
    fresh.load_state_dict(saved)
    opt.load_state_dict(fresh.state_dict())


def _write_into_a_value(model, opt):
    # a write into the view itself: the buffer the next fit takes over holds it
    p = model.parameters()[0]
    p.value[...] = p.value * 2


@pytest.mark.parametrize("change", [_nothing, _rebind_a_value, _rebind_a_state_array, _load_state,
                                    _write_into_a_value])
@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_a_later_fit_continues_from_what_the_objects_hold(backend, change, opt_name):
    if change is _write_into_a_value and not backend.fastpath_enabled:
        pytest.skip("no flat update here")
    try:
        _between_fits(backend, "float64", opt_name, change)
    except TypeError as exc:  # an immutable library's arrays take no write
        if change is _write_into_a_value:
            pytest.skip(str(exc))
        raise


def test_a_later_fit_rebinds_no_parameter(backend):
    model = _model(backend, True, "float32")
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if _fit(model, opt).execution != "flat":
        pytest.skip(f"{backend.spec} does not run the flat update")
    held = [p.value for p in model.parameters()]
    state = [dict(opt.state[i]) for i in sorted(opt.state)]
    _fit(model, opt)
    assert all(p.value is v for p, v in zip(model.parameters(), held, strict=True))
    assert all(opt.state[i][k] is a for i, entry in enumerate(state) for k, a in entry.items())


def test_the_kept_buffers_keep_no_optimizer_alive(backend):
    model = _model(backend, True, "float32")
    opt = optim.Adam(model.parameters(), lr=0.05)
    if _fit(model, opt).execution != "flat":
        pytest.skip(f"{backend.spec} does not run the flat update")
    gone = weakref.ref(opt)
    kept = len(flat._LAID_OUT)
    model.optimizer = None
    del opt
    gc.collect()
    assert gone() is None
    assert len(flat._LAID_OUT) <= max(kept - 1, 0)
