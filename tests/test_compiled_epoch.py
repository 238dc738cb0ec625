"""Whole epochs (and chunks of batches) as one compiled program on JAX give the step-by-step numbers.

`fit` on a backend with a compiler runs each epoch as one program when no callback needs
the host between batches (`History.execution_mode == "epoch"`), chunks of k batches for
data read batch by batch (`"chunks"`), and step by step otherwise, saying why
(`History.execution_reason`). Every mode gives the plain loop's numbers (1e-12 in float64,
1e-5 in float32: the heads and optimizers as epoch programs in tests/test_jax_compiled.py), raises on
divergence at the same epoch and batch with the same weights, and compiles once per (model layout, batch shape),
never once per epoch.
Shapes are tiny: the compiles dominate the time of these tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from user_code import UserDense

import nnx
from nnx.backends import backend_status
from nnx.training.epoch import epoch_program_of

ok, why = backend_status("jax")
pytestmark = pytest.mark.skipif(not ok, reason=f"jax not available: {why}")
# The tests that compare a compiled program's numbers with the plain loop's (or look at its memory) take XLA's
# optimisations, which the rest of the suite turns off: the programs as users compile them. The tests of behaviour
# (compile counts, the mode and its reason, what is printed, a fit that fell back to the plain loop) do not: an
# optimised compile costs 2-5x more.
AS_USERS_COMPILE = pytest.mark.usefixtures("jax_optimized")

N, BATCH = 70, 32  # three steps an epoch, the last one a partial batch of 6
FULL = 64  # two full batches of 32 (four of 16): one step shape to compile, where the partial batch is not the point


def _data(n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    return X, np.argmax(X[:, :3], axis=1)


class Untraceable(nnx.Layer):
    """A user's layer whose code needs a concrete value (a Python ``if`` on an array): it cannot be traced."""

    def forward(self, X, training=False):
        return X * 2.0 if float(self.xp.sum(X)) > -1e300 else X

    def backward(self, dY, need_dX=True):
        return dY * 2.0


class PerBatch(nnx.callbacks.Callback):
    """Looks at every batch: the fit runs step by step."""

    def on_batch_end(self, batch, logs=None):
        pass


def _model(fast: bool, dtype: str = "float64", first: Any = None, reg: bool = True):
    be = nnx.get_backend("jax").with_fastpath(fast)
    first = first or nnx.Dense(5, 8, regularizer=nnx.regularizers.L2(1e-3) if reg else None)
    return nnx.Sequential(first, nnx.ReLU(), nnx.BatchNorm(), nnx.Dropout(0.25), nnx.Dense(8, 3),
                          backend=be, dtype=dtype, seed=3)


def _fit(fast: bool, dtype: str = "float64", optimizer: Any = None, first: Any = None, epochs: int = 3,
         data: Any = None, n: int = N, **kw):
    X, y = _data(n)
    model = _model(fast, dtype, first() if first else None)
    opt = (optimizer or (lambda ps: nnx.optim.Adam(ps, lr=0.01)))(model.parameters())
    if data is not None:
        history = model.fit(data(X, y), loss="cross_entropy", optimizer=opt, epochs=epochs, **kw)
    else:
        history = model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=epochs, batch_size=BATCH, **kw)
    return model, history


def _assert_same(a, b, tol: float) -> None:
    """Parameters, gradients, buffers, optimizer state, counters and the losses of two fits agree to `tol`."""
    (ma, ha), (mb, hb) = a, b

    def close(x, y, what):
        x, y = np.asarray(x), np.asarray(y)
        assert np.max(np.abs(x - y)) <= tol * max(1.0, float(np.max(np.abs(y)))), what

    for p, q in zip(ma.parameters(), mb.parameters(), strict=True):
        close(p.value, q.value, p.name)
        close(p.grad, q.grad, f"{p.name} grad")
    for p, q in zip(ma.buffers(), mb.buffers(), strict=True):
        close(p.value, q.value, p.name)
    sa, sb = ma.optimizer.state_dict(), mb.optimizer.state_dict()
    assert (sa["step"], sa["param_steps"]) == (sb["step"], sb["param_steps"])
    for i in sa["state"]:
        for k in sa["state"][i]:
            close(sa["state"][i][k], sb["state"][i][k], f"state {i} {k}")
    assert ma.dropout_rng.counter == mb.dropout_rng.counter
    assert ha.history.keys() == hb.history.keys()
    for key in ha.history:
        np.testing.assert_allclose(ha.history[key], hb.history[key], rtol=tol, atol=tol)


@AS_USERS_COMPILE
def test_an_epoch_program_gives_the_step_by_step_numbers_float64():
    # dropout, BatchNorm, L2, clipping, sample weights, metrics, a partial last batch and a user's layer,
    # against the plain loop and against the compiled step run batch by batch
    w = np.linspace(0.2, 2.0, N)
    kw = {"clip_norm": 0.5, "sample_weight": w, "metrics": ["accuracy"], "first": lambda: UserDense(5, 8)}
    epoch = _fit(True, **kw)
    assert epoch[1].execution_mode == "epoch" and epoch[1].execution == "compiled", epoch[1].execution_reason
    plain = _fit(False, **kw)
    assert plain[1].execution_mode == "step" and "with_fastpath(False)" in plain[1].execution_reason
    _assert_same(epoch, plain, 1e-12)
    per_step = _fit(True, callbacks=[PerBatch()], **kw)
    assert per_step[1].execution_mode == "step" and "PerBatch overrides on_batch_end" in per_step[1].execution_reason
    _assert_same(epoch, per_step, 1e-12)


@AS_USERS_COMPILE
def test_chunks_of_batches_from_a_memmap_and_an_iterable(tmp_path):
    X, y = _data()
    Xm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float64, shape=X.shape)
    Xm[:] = X
    plain = _fit(False, epochs=2, metrics=["accuracy"])
    for chunk in (None, 1, 2):  # the budget's k (every batch), one batch a program, two
        kw: dict[str, Any] = {"chunk_batches": chunk} if chunk else {}
        model = _model(True)
        opt = nnx.optim.Adam(model.parameters(), lr=0.01)
        history = model.fit(Xm, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=BATCH,
                            metrics=["accuracy"], **kw)
        assert history.execution_mode == "chunks", history.execution_reason
        _assert_same((model, history), plain, 1e-12)
    # an iterable of batches (of the memmap's shapes, with the same metrics, so the programs above serve: the
    # compiles are the time of this test): two of 32 rows make a chunk, the 6 rows of another shape one of their own
    batches = [(X[i:i + BATCH], y[i:i + BATCH]) for i in range(0, N, BATCH)]
    a = _fit(True, data=lambda X, y: batches, chunk_batches=2, metrics=["accuracy"])
    assert a[1].execution_mode == "chunks"
    _assert_same(a, _fit(False, data=lambda X, y: batches, metrics=["accuracy"]), 1e-12)


@AS_USERS_COMPILE
def test_divergence_raises_at_the_same_epoch_and_batch_with_the_same_weights():
    X, y = _data(FULL)
    results = []
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(5, 4), nnx.ReLU(), nnx.Dense(4, 3),
                               backend=nnx.get_backend("jax").with_fastpath(fast), dtype="float64", seed=1)
        opt = nnx.optim.SGD(model.parameters(), lr=1e200, momentum=0.9)  # finite steps that overflow later
        with pytest.raises(FloatingPointError) as info:
            model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=3, batch_size=16)
        results.append((model, str(info.value)))
    (a, msg_a), (b, msg_b) = results
    assert msg_a == msg_b and "epoch 1, batch" in msg_a
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert np.all(np.isfinite(np.asarray(p.value)))
        np.testing.assert_allclose(np.asarray(p.value), np.asarray(q.value), rtol=1e-12, atol=1e-15)
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert (sa["step"], sa["param_steps"]) == (sb["step"], sb["param_steps"])


_PLAIN_REFUSED: dict = {}  # (accumulate, shuffle) -> the plain loop's ((model, history), message)


@AS_USERS_COMPILE
@pytest.mark.parametrize("per_batch,accumulate,shuffle", [
    (False, 1, False), (False, 3, False), (False, 1, True), (True, 1, False), (True, 3, False)],
    ids=["epoch-1", "epoch-3", "epoch-shuffled", "step-1", "step-3"])
def test_a_refused_step_leaves_the_dropout_stream_where_the_plain_loop_does(accumulate, shuffle, per_batch):
    # the plain loop stops at the refused batch, whose forward drew its masks; a compiled epoch (or a per-step
    # program read once per epoch) ran the later batches too: the stream must go on from where the plain one
    # stopped, or a fit continued after the error (at a lower rate, as it suggests) draws other masks
    X, y = _data(FULL)
    w = np.ones(FULL)
    w[40:56] = 1e308  # the batches holding two of these rows (unshuffled: the third of four) overflow the loss
    # (clipped: the accumulation test's fit is epoch-3's, whose program serves it)
    fit = {"loss": "cross_entropy", "batch_size": 16, "accumulate": accumulate, "shuffle": shuffle, "clip_norm": 0.5}

    def run(fast):
        model = _model(fast)
        with pytest.raises(FloatingPointError) as info:
            model.fit(X, y, optimizer="adam", epochs=2, sample_weight=w, callbacks=[PerBatch()] if per_batch else [],
                      **fit)
        # the masks it draws, as an epoch (the error's program, or for step-* that of epoch-*, with finite weights)
        history = model.fit(X, y, optimizer="adam", lr=1e-3, epochs=1, sample_weight=np.ones(FULL), **fit)
        return (model, history), str(info.value)

    # the plain loop's run does not depend on per_batch (PerBatch does nothing): computed once per module
    if (accumulate, shuffle) not in _PLAIN_REFUSED:
        _PLAIN_REFUSED[accumulate, shuffle] = run(False)
    (a, msg_a), (b, msg_b) = run(True), _PLAIN_REFUSED[accumulate, shuffle]
    assert msg_a == msg_b
    _assert_same(a, b, 1e-12)


@AS_USERS_COMPILE
@pytest.mark.parametrize("mode", ["epoch", "chunks", "step"])
def test_dropout_masks_move_on_without_the_finite_check(mode):
    """Found by mutation testing: no test ran JAX's compiled step with dropout and check_finite=False, where the
    program carries the dropout counter on its own (a counter left behind drew one epoch's masks at every step,
    0.35 off the plain loop's weights, and went unseen)."""
    kw: dict[str, Any] = {"check_finite": False}
    if mode == "chunks":
        X, y = _data()
        batches = [(X[i:i + BATCH], y[i:i + BATCH]) for i in range(0, N, BATCH)]
        kw.update(data=lambda X, y: batches, chunk_batches=2, steps_per_epoch=len(batches))
    elif mode == "step":
        kw["callbacks"] = [PerBatch()]
    compiled = _fit(True, **kw)
    assert compiled[1].execution == "compiled" and compiled[1].execution_mode == mode, compiled[1].execution_reason
    _assert_same(compiled, _fit(False, **kw), 1e-12)


def test_one_compile_per_layout_and_batch_shape_never_per_epoch():
    X, y = _data()
    model = _model(True, "float32")
    opt = nnx.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    schedule = nnx.callbacks.LearningRateScheduler(lambda epoch, lr: 0.01 * 0.9**epoch)  # lr is an input
    history = model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=4, batch_size=BATCH, callbacks=[schedule])
    assert history.execution_mode == "epoch"
    program = epoch_program_of(model)
    assert program is not None and program.compiles == 1  # full batches and the partial one: one program
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=3, batch_size=BATCH, callbacks=[schedule])
    assert epoch_program_of(model) is program and program.compiles == 1  # a later fit compiles nothing
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=16)
    assert program.compiles == 2  # another batch shape: one more
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=2, batch_size=16, metrics=["accuracy"])
    assert program.compiles == 3  # the outputs come back for the metrics: one more, once
    model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=3, batch_size=16, metrics=["accuracy"])
    assert program.compiles == 3


@pytest.mark.parametrize("make,named", [
    (lambda: nnx.callbacks.GradientAnalyzer(), "GradientAnalyzer overrides on_batch_end"),
    (lambda: nnx.callbacks.TerminateOnNaN(), "TerminateOnNaN handles non-finite steps"),
    (lambda: type("Look", (nnx.callbacks.Callback,), {"on_gradients": lambda self, g: None})(),
     "Look overrides on_gradients"),
], ids=["analyzer", "terminate_on_nan", "on_gradients"])
def test_fallback_to_per_step_is_automatic_and_says_why(make, named):
    X, y = _data(FULL)
    model = _model(True)
    history = model.fit(X, y, loss="cross_entropy", optimizer="sgd", epochs=1, batch_size=BATCH, callbacks=[make()])
    assert history.execution_mode == "step" and named in history.execution_reason


@AS_USERS_COMPILE
def test_accumulation_inside_the_epoch_program():
    # 64 rows in batches of 16, three to an update: updates after batch 3, and the fourth (a group of one) applied
    # at the epoch's end. Unshuffled and clipped, as the refused-step test's epoch-3 case: its program serves
    # (the partial batch in an accumulation group: test_jax_compiled_settings.py, test_jax_compiled.py)
    kw = {"accumulate": 3, "clip_norm": 0.5, "sample_weight": np.linspace(0.2, 2.0, FULL), "batch_size": 16,
          "shuffle": False}
    X, y = _data(FULL)
    runs = []
    for fast in (True, False):
        model = _model(fast)
        opt = nnx.optim.Adam(model.parameters(), lr=0.01)
        runs.append((model, model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=3, **kw)))
    assert runs[0][1].execution_mode == "epoch" and runs[0][1].execution == "compiled"
    assert runs[0][0].optimizer.step_count == 6
    _assert_same(runs[0], runs[1], 1e-12)


@AS_USERS_COMPILE
def test_accumulation_refuses_a_diverging_step_like_the_plain_loop():
    X, y = _data(FULL)
    results = []
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(5, 4), nnx.ReLU(), nnx.Dense(4, 3),
                               backend=nnx.get_backend("jax").with_fastpath(fast), dtype="float64", seed=1)
        opt = nnx.optim.SGD(model.parameters(), lr=1e200, momentum=0.9)
        with pytest.raises(FloatingPointError) as info:
            # batches of 16, as the divergence test's (its plain loop's operations serve): batch 3 is refused
            model.fit(X, y, loss="cross_entropy", optimizer=opt, epochs=3, batch_size=16, accumulate=2)
        results.append((model, str(info.value)))
    (a, msg_a), (b, msg_b) = results
    assert msg_a == msg_b
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_allclose(np.asarray(p.value), np.asarray(q.value), rtol=1e-12, atol=1e-15)
    assert a.optimizer.state_dict()["param_steps"] == b.optimizer.state_dict()["param_steps"]


def test_untraceable_code_runs_step_by_step_with_the_same_numbers(tmp_path):
    X, y = _data()
    Xm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float64, shape=X.shape)
    Xm[:] = X
    model = _model(True)
    history = model.fit(Xm, y, loss="cross_entropy", optimizer="adam", epochs=1, batch_size=16, accumulate=2)
    assert history.execution_mode == "step" and "accumulation over data read batch by batch" in \
        history.execution_reason
    c = _fit(True, first=lambda: nnx.Sequential(nnx.Dense(5, 8), Untraceable()), epochs=2)
    assert c[1].execution_mode == "step" and "did not trace" in c[1].execution_reason
    assert c[1].execution == "plain"
    _assert_same(c, _fit(False, first=lambda: nnx.Sequential(nnx.Dense(5, 8), Untraceable()), epochs=2), 1e-12)
    # from a one-shot generator: the batches the failed first chunk took are trained on, not lost
    X, y = _data()
    batches = [(X[i:i + 16], y[i:i + 16]) for i in range(0, N, 16)]
    kw = {"first": lambda: nnx.Sequential(nnx.Dense(5, 8), Untraceable()), "epochs": 1}
    d = _fit(True, data=lambda X, y: iter(batches), chunk_batches=2, **kw)
    assert d[1].execution_mode == "step"
    _assert_same(d, _fit(False, data=lambda X, y: iter(batches), **kw), 1e-12)


def test_verbose_2_prints_the_mode(capsys):
    X, y = _data(FULL)
    model = _model(True)
    model.fit(X, y, loss="cross_entropy", optimizer="sgd", epochs=1, batch_size=BATCH, verbose=2)
    assert "fit: epoch execution (compiled step)" in capsys.readouterr().out


@AS_USERS_COMPILE
def test_a_model_error_at_one_batch_shape_leaves_the_plain_loops_weights():
    # 65 rows in batches of 32 leave one row, which BatchNorm refuses in training: the plain loop applies the
    # two full batches first, and so does an epoch whose program raised that error while it was traced
    X, y = _data(65)
    runs = []
    for fast in (True, False):
        model = _model(fast)
        with pytest.raises(ValueError, match="batch of 1") as info:
            model.fit(X, y, loss="cross_entropy", optimizer="adam", epochs=2, batch_size=32)
        runs.append((model, model.history, str(info.value)))
    assert runs[0][2] == runs[1][2]
    assert runs[0][0].optimizer.step_count == 2
    _assert_same(runs[0][:2], runs[1][:2], 1e-12)


class FailingSource:
    """Batches of 16 rows, re-read each epoch; reading the `fail_at`-th batch of the fit raises OSError."""

    def __init__(self, X, y, fail_at):
        self.X, self.y, self.fail_at, self.read = X, y, fail_at, 0

    def __iter__(self):
        for i in range(0, len(self.X), 16):
            self.read += 1
            if self.read == self.fail_at:
                raise OSError("the disk went away")
            yield self.X[i:i + 16], self.y[i:i + 16]


@AS_USERS_COMPILE
@pytest.mark.parametrize("diverging,fail_at,per_batch", [(False, 8, False), (True, 4, False), (True, 4, True)],
                         ids=["chunks", "chunks_diverging", "compiled_steps_diverging"])
def test_a_source_failing_mid_epoch_leaves_the_plain_loops_weights_and_error(diverging, fail_at, per_batch):
    # reading a batch fails: the per-step loop has trained on those before it, which a chunk of three batches
    # still held (the 8th: epoch 2, batch 4); a batch refused before the failure (the 2nd, read before the 4th
    # fails) is the error the plain loop raises, with the counters of the weights kept, also where compiled
    # steps defer the check to the epoch's end (a callback with a per-batch hook). 64 rows: four batches of 16
    # an epoch, chunks of three and one, one batch shape.
    X, y = _data(FULL)
    y = np.eye(3)[y]
    if diverging:
        X = X.copy()
        X[16:32, :] = 1e200  # the second batch's squared errors overflow: refused
    runs = []
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(5, 4), nnx.ReLU(), nnx.Dropout(0.25), nnx.Dense(4, 3),
                               backend=nnx.get_backend("jax").with_fastpath(fast), dtype="float64", seed=1)
        opt = nnx.optim.Adam(model.parameters(), lr=0.01)
        with pytest.raises((OSError, FloatingPointError)) as info:
            model.fit(FailingSource(X, y, fail_at), loss="mse", optimizer=opt, epochs=3, chunk_batches=3,
                      callbacks=[PerBatch()] if per_batch else None)
        assert model.history.execution == ("compiled" if fast else "plain")
        runs.append((model, model.history, type(info.value), str(info.value)))
    assert runs[0][2:] == runs[1][2:]
    assert runs[0][2] is (nnx.training.NonFiniteStep if diverging else OSError)
    assert runs[0][0].optimizer.step_count == (1 if diverging else 7)
    if not diverging:
        _assert_same(runs[0][:2], runs[1][:2], 1e-12)
        return
    assert "epoch 1, batch 2" in runs[0][3]
    a, b = runs[0][0], runs[1][0]  # (p.grad after a refused step is not part of the contract)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        np.testing.assert_allclose(np.asarray(p.value), np.asarray(q.value), rtol=1e-12, atol=1e-15)
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert (sa["step"], sa["param_steps"], sorted(sa["state"])) == (sb["step"], sb["param_steps"], sorted(sb["state"]))


class StopBefore(nnx.callbacks.Callback):
    """Stops the fit in on_epoch_begin of epoch `epoch` (a time budget looked at between epochs)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.stop_training = True


@AS_USERS_COMPILE
@pytest.mark.parametrize("epoch,iterable", [(0, False), (1, True)], ids=["arrays", "iterable"])
def test_a_fit_stopped_before_an_epochs_first_batch_trains_on_one_batch_as_the_plain_loop(epoch, iterable):
    # the per-step loop looks at stop_training after each batch, as Keras does: the epoch trains on one batch
    X, y = _data()
    batches = [(X[i:i + BATCH], y[i:i + BATCH]) for i in range(0, N, BATCH)]  # the arrays' batches: no new shapes
    kw: dict[str, Any] = {"data": lambda X, y: batches} if iterable else {}
    runs = [_fit(fast, callbacks=[StopBefore(epoch)], metrics=["accuracy"], **kw) for fast in (True, False)]
    assert runs[0][1].execution_mode == ("chunks" if iterable else "epoch")
    assert len(runs[0][1].history["loss"]) == epoch + 1
    assert runs[0][0].optimizer.step_count == 3 * epoch + 1
    _assert_same(runs[0], runs[1], 1e-12)


@AS_USERS_COMPILE
def test_a_shuffled_epoch_gathers_each_batch_instead_of_a_shuffled_copy_of_the_data():
    """The epoch program takes each batch's rows from the data as it runs: no second, shuffled copy of X on the
    device (which doubled the data's memory)."""
    gen = np.random.default_rng(0)
    X = gen.standard_normal((2048, 64))
    model = nnx.Sequential(nnx.Dense(64, 4), nnx.Softmax(), backend="jax", dtype="float64", seed=0)
    history = model.fit(X, gen.integers(0, 4, size=2048), loss="cross_entropy", optimizer="adam", epochs=1,
                        batch_size=BATCH, verbose=0)
    assert history.execution_mode == "epoch"
    program = epoch_program_of(model)
    assert program is not None
    compiled = [c for shared in program._programs.values() for c in shared._programs.values()]
    assert len(compiled) == 1
    assert compiled[0].memory_analysis().temp_size_in_bytes < X.nbytes / 8
