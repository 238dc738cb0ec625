"""The flat update's rule as one compiled program on JAX (`nnx.training.compiled_rule.CompiledRule`).

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
from nnx.training import compiled_rule

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
    run, compile_ = compiled_rule.CompiledRule.run, nnx.get_backend("jax").compile

    def counted_run(self, *args):
        out = run(self, *args)
        counts["program" if out is not None else "eager"] += 1
        return out

    def counted_compile(fn, args):
        counts["compiled"] += getattr(fn, "__func__", None) is compiled_rule.CompiledRule._pure
        return compile_(fn, args)

    monkeypatch.setattr(compiled_rule.CompiledRule, "run", counted_run)
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


class LoggingSGD(nnx.optim.SGD):
    """An elementwise rule that notes each update count in a list it keeps: a trace would note a traced value once."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.log = []

    def update(self, xp, value, grad, state, step, lr):
        self.log.append(step)
        return super().update(xp, value, grad, state, step, lr)


def test_a_rule_that_changes_what_the_optimizer_holds_in_place_runs_op_by_op_with_nothing_traced_left(monkeypatch):
    counts = _counting(monkeypatch)
    jax = nnx.get_backend("jax")
    compiled, opt, _ = _fit(jax, lambda ps: LoggingSGD(ps, lr=0.1, momentum=0.9))
    assert counts["eager"] == 6 and opt.log == [1, 2, 3, 4, 5, 6], (counts, opt.log)  # the trace's entry undone
    plain, _, _ = _fit(jax.with_fastpath(False), lambda ps: LoggingSGD(ps, lr=0.1, momentum=0.9))
    _assert_same(plain, compiled)


class MomentumEachBatch(nnx.callbacks.Callback):
    """A cyclical momentum set before every batch: a constant of the program that changes every step."""

    def __init__(self, opt):
        self.opt, self.batches = opt, 0

    def on_batch_begin(self, batch, logs=None):
        self.batches += 1
        self.opt.momentum = 0.5 + 0.05 * (self.batches % 7)


def test_a_hyper_parameter_set_every_step_stops_compiling_after_a_few_programs(monkeypatch):
    counts = _counting(monkeypatch)
    jax = nnx.get_backend("jax")

    def run(be):
        model, opt, _ = _fit(be, lambda ps: nnx.optim.SGD(ps, lr=0.1, momentum=0.9), epochs=0)
        _fit(be, None, epochs=3, callbacks=[MomentumEachBatch(opt)], model=model, opt=opt)
        return model

    compiled = run(jax)
    most = compiled_rule.CompiledRule.MAX_PROGRAMS
    assert counts["program"] == most and counts["eager"] == 9 - most, counts
    _assert_same(run(jax.with_fastpath(False)), compiled)


def test_equal_optimizers_on_two_jax_devices_each_get_a_program_of_their_own():
    """The programs are shared by definition and input shapes, which two devices have alike: the device is part
    of the definition, or the second model's rule ran a program compiled for the first device (a crash)."""
    import os
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import numpy as np, nnx
        from nnx import distributed as dist
        class OneProcess(dist.SingleProcess):
            engine = "test"
        def run(spec, parallel=True):
            be = nnx.get_backend(spec) if parallel else nnx.get_backend(spec).with_fastpath(False)
            X = np.random.default_rng(0).standard_normal((48, 5)); y = (X[:, 0] > X[:, 1]).astype(float)
            m = nnx.Sequential(nnx.Dense(5, 6), nnx.Tanh(), nnx.Dense(6, 1), nnx.Sigmoid(), backend=be,
                               dtype="float64", seed=3)
            extra = {"distributed": dist.DataParallel(OneProcess(), shard_update=False)} if parallel else {}
            m.fit(X, y, loss="bce", optimizer=nnx.optim.Adam(m.parameters(), lr=0.01), epochs=2, batch_size=16,
                  shuffle=False, **extra)
            return [np.asarray(p.value) for p in m.parameters()]
        run("jax:cpu:0")
        got, want = run("jax:cpu:1"), run("jax:cpu:1", parallel=False)
        print(max(float(np.abs(a - b).max()) for a, b in zip(got, want)))
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split()[-1]) < 1e-12, out.stdout


class NestedLogSGD(nnx.optim.SGD):
    """An elementwise rule that notes each count inside a dict of lists, and in a set, on the optimizer."""

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.log = {"steps": []}
        self.seen = set()

    def update(self, xp, value, grad, state, step, lr):
        self.log["steps"].append(step)
        self.seen.add(step)
        return super().update(xp, value, grad, state, step, lr)


def test_a_rule_that_changes_what_the_optimizer_holds_deep_down_is_traced_on_a_copy_and_runs_op_by_op(monkeypatch):
    """The trace runs on a copy of the optimizer: a set it adds a traced value to (which would raise) and a list
    inside a dict are the copy's, the user's object holds the op-by-op counts only, and no later fit of an equal
    optimizer takes a program traced from it (the first fit's trace found it impure)."""
    counts = _counting(monkeypatch)
    jax = nnx.get_backend("jax")
    for fit in range(2):
        compiled, opt, _ = _fit(jax, lambda ps: NestedLogSGD(ps, lr=0.1, momentum=0.9))
        assert opt.log == {"steps": [1, 2, 3, 4, 5, 6]} and opt.seen == {1, 2, 3, 4, 5, 6}, (fit, opt.log, opt.seen)
        assert counts["program"] == 0 and counts["eager"] == 6 * (fit + 1), (fit, counts)
    plain, _, _ = _fit(jax.with_fastpath(False), lambda ps: NestedLogSGD(ps, lr=0.1, momentum=0.9))
    _assert_same(plain, compiled)


def test_an_equal_optimizer_of_a_later_fit_does_not_take_a_program_its_rule_proved_unfit_for(monkeypatch):
    """The counting rule's trace is found impure in the first fit; the program stays out of the shared table, so a
    fresh, equal optimizer of a later fit runs op by op too, with the first fit's numbers."""
    counts = _counting(monkeypatch)
    jax = nnx.get_backend("jax")
    first, opt1, _ = _fit(jax, lambda ps: CountingSGD(ps, lr=0.1, momentum=0.9))
    second, opt2, _ = _fit(jax, lambda ps: CountingSGD(ps, lr=0.1, momentum=0.9))
    assert counts["program"] == 0 and opt1.calls == opt2.calls == 6, (counts, opt1.calls, opt2.calls)
    _assert_same(first, second)
