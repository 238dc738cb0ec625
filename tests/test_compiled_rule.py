"""The flat update's rule as one compiled program on JAX (`nnx.training.flat.CompiledRule`).

Where a JAX fit runs step by step with the flat update (data parallelism, scikit-learn's estimators, a model
whose step cannot be compiled whole), the optimizer's rule over the flat buffers runs as one program traced
from its own `update`. It must give the rule's numbers op by op for every built-in, follow a hyper-parameter a
callback changes, share its program with later fits of equal optimizers, and leave to op by op a rule that
cannot be traced or that changes the optimizer as it runs.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import distributed as dist
from nnx.backends import backend_status
from nnx.training import flat

ok, why = backend_status("jax")
pytestmark = pytest.mark.skipif(not ok, reason=f"jax not available: {why}")


class OneProcess(dist.SingleProcess):
    """A single process that `fit` treats as a real engine: the data-parallel step runs, with the flat update."""

    engine = "test"


def _data():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((48, 5))
    return X, (X[:, 0] - X[:, 1] > 0).astype(np.float64)


def _fit(backend, make_opt, epochs=2, callbacks=(), model=None, opt=None):
    """The model and optimizer after a data-parallel fit in one process (the plain loop without the fast paths)."""
    X, y = _data()
    if model is None:
        model = nnx.Sequential(nnx.Dense(5, 6), nnx.Tanh(), nnx.Dense(6, 1), nnx.Sigmoid(), backend=backend,
                               dtype="float64", seed=3)
        opt = make_opt(model.parameters())
    extra = {"distributed": dist.DataParallel(OneProcess(), shard_update=False)} if backend.fastpath_enabled else {}
    history = model.fit(X, y, loss="bce", optimizer=opt, epochs=epochs, batch_size=16, shuffle=False,
                        callbacks=list(callbacks), **extra)
    return model, opt, history


def _assert_same(a, b):
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_allclose(np.asarray(q.value), np.asarray(p.value), rtol=1e-12, atol=1e-14, err_msg=p.name)


def _counting(monkeypatch):
    """How often the rule's program was compiled and called, and how often the rule ran op by op."""
    counts = {"compiled": 0, "program": 0, "eager": 0}
    run, compile_ = flat.CompiledRule.run, nnx.get_backend("jax").compile

    def counted_run(self, *args):
        out = run(self, *args)
        counts["program" if out is not None else "eager"] += 1
        return out

    def counted_compile(fn, args):
        counts["compiled"] += getattr(fn, "__func__", None) is flat.CompiledRule._pure
        return compile_(fn, args)

    monkeypatch.setattr(flat.CompiledRule, "run", counted_run)
    monkeypatch.setattr(nnx.get_backend("jax"), "compile", counted_compile)
    return counts


OPTIMIZERS = {
    "sgd": lambda ps: nnx.optim.SGD(ps, lr=0.1),
    "sgd nesterov decay": lambda ps: nnx.optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd dampening": lambda ps: nnx.optim.SGD(ps, lr=0.1, momentum=0.8, dampening=0.3),
    "momentum": lambda ps: nnx.optim.Momentum(ps, lr=0.1, momentum=0.9),
    "adam amsgrad": lambda ps: nnx.optim.Adam(ps, lr=0.01, amsgrad=True),
    "adamw": lambda ps: nnx.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "rmsprop centered": lambda ps: nnx.optim.RMSprop(ps, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda ps: nnx.optim.Adagrad(ps, lr=0.1),
    "lion": lambda ps: nnx.optim.Lion(ps, lr=0.001, weight_decay=0.1),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_built_in_rule_compiled_gives_its_numbers_op_by_op(name, monkeypatch):
    counts = _counting(monkeypatch)
    jax = nnx.get_backend("jax")
    compiled, _, history = _fit(jax, OPTIMIZERS[name])
    assert history.execution == "flat"
    assert counts["program"] == 6 and counts["eager"] == 0, counts
    plain, _, _ = _fit(jax.with_fastpath(False), OPTIMIZERS[name])
    _assert_same(plain, compiled)


class MomentumAt(nnx.callbacks.Callback):
    """Sets SGD's momentum at the second epoch: a hyper-parameter the program holds as a constant."""

    def __init__(self, opt):
        self.opt = opt

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            self.opt.momentum = 0.5


def test_a_hyper_parameter_changed_by_a_callback_takes_another_program_and_a_later_fit_compiles_nothing(monkeypatch):
    counts = _counting(monkeypatch)
    jax = nnx.get_backend("jax")

    def make(ps):
        return nnx.optim.SGD(ps, lr=0.1, momentum=0.9)

    model, opt, _ = _fit(jax, make, epochs=1)
    cb = MomentumAt(opt)
    _fit(jax, make, epochs=2, callbacks=[cb], model=model, opt=opt)  # momentum 0.5 from its second epoch
    compiled_before = counts["compiled"]
    plain, plain_opt, _ = _fit(jax.with_fastpath(False), make, epochs=1)
    _fit(jax.with_fastpath(False), make, epochs=2, callbacks=[MomentumAt(plain_opt)], model=plain, opt=plain_opt)
    _assert_same(plain, model)
    assert compiled_before == 2, counts  # momentum 0.9, then 0.5
    # an equal optimizer of another model, in a later fit: the programs are shared, nothing is compiled again
    _fit(jax, make, epochs=1)
    assert counts["compiled"] == compiled_before, counts


class CountingSGD(nnx.optim.SGD):
    """An elementwise rule that counts its calls on the optimizer: a program would count only its trace."""

    calls = 0

    def update(self, xp, value, grad, state, step, lr):
        self.calls += 1
        return super().update(xp, value, grad, state, step, lr)


class StepBranchSGD(nnx.optim.SGD):
    """An elementwise rule that branches on the update count in Python: it cannot be traced."""

    def update(self, xp, value, grad, state, step, lr):
        if step > 2:
            lr = lr * 0.5
        return super().update(xp, value, grad, state, step, lr)


@pytest.mark.parametrize("cls", [CountingSGD, StepBranchSGD], ids=["changes the optimizer", "cannot be traced"])
def test_a_rule_a_program_cannot_stand_for_runs_op_by_op(cls, monkeypatch):
    counts = _counting(monkeypatch)
    jax = nnx.get_backend("jax")

    def make(ps):
        return cls(ps, lr=0.1, momentum=0.9)

    compiled, opt, history = _fit(jax, make)
    assert history.execution == "flat"
    assert counts["program"] == 0 and counts["eager"] == 6, counts
    plain, plain_opt, _ = _fit(jax.with_fastpath(False), make)
    _assert_same(plain, compiled)
    if cls is CountingSGD:  # one call a step, as the flat update runs it op by op; the trace's count undone
        assert opt.calls == 6 and plain_opt.calls == 6 * 4  # (the plain loop calls it once per parameter)


def test_a_rule_replaced_on_the_object_runs_as_written_every_step(monkeypatch):
    """A hook on the optimizer object (a SIGINT test's, a user's logging) must run at every step, as it does in the
    plain loop and the compiled step leaves it to: no program is traced from it."""
    counts = _counting(monkeypatch)
    jax = nnx.get_backend("jax")
    seen = []

    def make(ps):
        opt = nnx.optim.SGD(ps, lr=0.1, momentum=0.9)
        rule = opt.update

        def update(xp, value, grad, state, step, lr):
            seen.append(step)
            return rule(xp, value, grad, state, step, lr)

        opt.update = update
        return opt

    compiled, _, _ = _fit(jax, make)
    assert seen == [1, 2, 3, 4, 5, 6] and counts["compiled"] == 0 and counts["eager"] == 6, (seen, counts)
    plain, _, _ = _fit(jax.with_fastpath(False), make)
    _assert_same(plain, compiled)
