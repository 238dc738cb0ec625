"""Each declared kernel gives the portable rule's numbers, NaN and inf included, and applies only where declared."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.kernels import update_kernel
from nnx.training import flat

torch = pytest.importorskip("torch")

ADAMS = {
    "adam": lambda ps: nnx.optim.Adam(ps, lr=0.01),
    "adam_l2": lambda ps: nnx.optim.Adam(ps, lr=0.02, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
    "adamw": lambda ps: nnx.optim.AdamW(ps, lr=0.01, weight_decay=0.05),
    "adam_small_beta1": lambda ps: nnx.optim.Adam(ps, lr=0.01, betas=(0.3, 0.9)),
}


def _params():
    return nnx.Sequential(nnx.Dense(2, 2), backend="torch").parameters()


def _grads(gen, n, steps, bad):
    grads = gen.normal(size=(steps, n)) * gen.uniform(0.01, 100, size=n)
    if bad:  # NaN, +inf and -inf in a few places of some steps
        grads[1, :3] = [np.nan, np.inf, -np.inf]
        grads[3, 5] = np.nan
    return grads


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bad", [False, True], ids=["finite", "nan_inf"])
@pytest.mark.parametrize("name", sorted(ADAMS))
def test_torch_adam_kernel_gives_the_rules_numbers(name, bad, dtype):
    gen = np.random.default_rng(0)
    be = nnx.get_backend("torch")
    xp, n, steps = be.xp, 64, 6
    opt = ADAMS[name](_params())
    kernel = update_kernel(opt, be)
    assert kernel is not None
    start, grads = gen.normal(size=n), _grads(gen, n, steps, bad)
    rule_value, rule_state = be.asarray(start, dtype=dtype), opt.init_state(xp, be.asarray(start, dtype=dtype))
    value, state = be.asarray(start, dtype=dtype), opt.init_state(xp, be.asarray(start, dtype=dtype))
    for t in range(1, steps + 1):
        grad = be.asarray(grads[t - 1], dtype=dtype)
        rule_value, rule_state = opt.update(xp, rule_value, grad, rule_state, t, opt.lr)
        kernel(opt, value, grad, state, t, opt.lr)
        for got, want in [(value, rule_value)] + [(state[k], rule_state[k]) for k in rule_state]:
            got, want = be.to_host(got), be.to_host(want)
            np.testing.assert_array_equal(got, want)  # the rule's operations in its order: bit for bit
    assert set(state) == set(rule_state)


def test_the_kernel_applies_only_where_declared():
    torch_be, numpy_be = nnx.get_backend("torch"), nnx.get_backend("numpy")

    class _MyAdam(nnx.optim.Adam):  # private name: not registered, so other tests never see it
        """A user's Adam: the same math, but a subclass may change it."""

    assert update_kernel(nnx.optim.Adam(_params()), torch_be) is not None
    assert update_kernel(nnx.optim.AdamW(_params()), torch_be) is not None
    assert update_kernel(nnx.optim.Adam(_params()), numpy_be) is None  # one backend
    assert update_kernel(_MyAdam(_params()), torch_be) is None  # one exact class: a subclass may change the math
    assert update_kernel(nnx.optim.Adam(_params(), amsgrad=True), torch_be) is None  # settings it does not compute
    assert update_kernel(nnx.optim.SGD(_params(), lr=0.1), torch_be) is None
    hooked = nnx.optim.Adam(_params())
    hooked.update = lambda *args: nnx.optim.Adam.update(hooked, *args)  # a rule replaced on the object runs
    assert update_kernel(hooked, torch_be) is None


def test_the_flat_update_runs_the_kernel_and_gives_the_per_parameter_numbers(monkeypatch):
    ran = []

    def counting(optimizer, backend):
        kernel = update_kernel(optimizer, backend)
        ran.append(kernel is not None)
        return kernel

    monkeypatch.setattr(flat, "update_kernel", counting)
    gen = np.random.default_rng(1)
    X, y = gen.normal(size=(64, 6)), gen.normal(size=(64, 1))
    runs = {}
    for mode in ("flat", "plain"):
        be = nnx.get_backend("torch").with_fastpath(mode == "flat")
        model = nnx.Sequential(nnx.Dense(6, 16), nnx.ReLU(), nnx.Dense(16, 1), backend=be, dtype="float64", seed=0)
        opt = nnx.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)
        history = model.fit(X, y, loss="mse", optimizer=opt, epochs=3, batch_size=16, verbose=0)
        assert history.execution == mode
        runs[mode] = {k: np.asarray(be.to_host(v)) for k, v in model.state_dict().items()}
    assert ran and all(ran)  # 12 flat steps, each through the kernel
    for k, want in runs["plain"].items():
        np.testing.assert_array_equal(runs["flat"][k], want)
