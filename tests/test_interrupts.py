"""Interrupts and failed writes lose nothing.

* Ctrl-C (SIGINT) during `fit` leaves the weights of the last completed optimizer step,
  never a half-applied update, and `fit` returns its history with `interrupted=True`.
* `model.save` and `ModelCheckpoint` files are never partial: a write that fails midway
  leaves the previous file intact and no temporary file behind.
"""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
from tally import write_counts

import nnx
from nnx.callbacks import Callback

# The suite's classic XLA emitters (conftest) for nnx's programs, except in the one test that compares an
# interrupted run of whole epochs as one program bit for bit with a reference run step by step (two programs
# that may round differently under the classic emitters): it takes `jax_default_emitters`. Every other test
# here compares runs of the same program (each has an on_batch_end callback, so both run step by step) or
# allows rounding, and compiles in about 60% of the time.
pytestmark = [pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name == "nt",
                                 reason="needs POSIX signals delivered with os.kill")]

FAULTS: dict[str, int] = {}


def _fault(kind: str) -> None:
    FAULTS[kind] = FAULTS.get(kind, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    write_counts({"file": "test_interrupts", "faults": FAULTS})


@pytest.fixture(autouse=True)
def _ctrl_c_raises_keyboard_interrupt():
    """Python's own Ctrl-C handling for each test, as in an interactive run.

    A process started in the background by a non-interactive shell (``pytest &`` in a script)
    inherits SIGINT ignored, and the SIGINTs these tests send would then never arrive.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _data(n: int = 48):
    gen = np.random.default_rng(3)
    X = gen.normal(size=(n, 5))
    return X, (X[:, :1] - X[:, 1:2] > 0).astype(float)


def _model(backend, seed: int = 5) -> nnx.Sequential:
    """The module's one model: on JAX each test after the first of an optimizer reuses its compiled programs."""
    return nnx.Sequential(nnx.Dense(5, 6), nnx.Tanh(), nnx.Dropout(0.1), nnx.Dense(6, 1), nnx.Sigmoid(),
                          backend=backend, dtype="float64", seed=seed)


def _host(model) -> list[np.ndarray]:
    return [np.array(model.backend.to_host(p.value), copy=True) for p in model.parameters()]


class Recorder(Callback):
    """Host copies of every parameter after each optimizer step (index = steps taken - 1)."""

    def __init__(self) -> None:
        self.after_step: list[list[np.ndarray]] = []

    def on_batch_end(self, batch, logs=None):
        self.after_step.append(_host(self.model))


def _reference(backend, optimizer, epochs, **fit) -> list[list[np.ndarray]]:
    X, y = _data()
    model = _model(backend)
    rec = Recorder()
    model.fit(X, y, loss="bce", optimizer=optimizer, lr=0.05, epochs=epochs, batch_size=8, callbacks=[rec], **fit)
    return rec.after_step  # indexed by batch: with `accumulate`, not by update


@pytest.fixture(scope="module")
def reference():
    """``reference(backend, optimizer, **fit)``: the 2-epoch `_reference` run, made once per module for each
    backend, optimizer and fit arguments; the tests only read it (it was run again by each of their cases)."""
    runs: dict = {}

    def run(backend, optimizer, **fit) -> list[list[np.ndarray]]:
        be = nnx.get_backend(backend)  # never a reference compiled under other settings (compiler options)
        key = (backend, optimizer, tuple(sorted(fit.items())), be.program_settings() if be.can_compile else ())
        if key not in runs:
            runs[key] = _reference(backend, optimizer, epochs=2, **fit)
        return runs[key]

    return run


def _assert_weights(model, expected: list[np.ndarray], exact: bool = True) -> None:
    for p, want in zip(model.parameters(), expected, strict=True):
        if exact:
            np.testing.assert_array_equal(model.backend.to_host(p.value), want, err_msg=p.name)
        else:
            np.testing.assert_allclose(model.backend.to_host(p.value), want, rtol=1e-12, atol=1e-15, err_msg=p.name)


# -- KeyboardInterrupt during fit --------------------------------------------------------

class RaiseAt(Callback):
    def __init__(self, step: int, hook: str = "on_batch_end") -> None:
        self.step, self.hook, self.count = step, hook, 0

    def on_batch_end(self, batch, logs=None):
        self.count += 1
        if self.hook == "on_batch_end" and self.count == self.step:
            raise KeyboardInterrupt

    def on_epoch_end(self, epoch, logs=None):
        if self.hook == "on_epoch_end" and epoch + 1 == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_keyboard_interrupt_from_callback(backend, optimizer, reference):
    _fault("KeyboardInterrupt in on_batch_end")
    ref = reference(backend, optimizer)
    X, y = _data()
    model = _model(backend)
    history = model.fit(X, y, loss="bce", optimizer=optimizer, lr=0.05, epochs=3, batch_size=8,
                        callbacks=[RaiseAt(9)])  # step 9 = batch 3 of epoch 2
    assert history.interrupted
    assert history.epoch == [0] and len(history["loss"]) == 1, "completed epochs are reported"
    assert model.epochs_trained == 1
    assert model.optimizer.step_count == 9
    _assert_weights(model, ref[8])
    # Training continues from there: the optimizer state is consistent.
    more = model.fit(X, y, epochs=1, batch_size=8)
    assert not more.interrupted and model.epochs_trained == 2


def test_keyboard_interrupt_at_epoch_end(backend, reference):
    _fault("KeyboardInterrupt in on_epoch_end")
    ref = reference(backend, "adam")
    X, y = _data()
    model = _model(backend)
    history = model.fit(X, y, loss="bce", optimizer="adam", lr=0.05, epochs=3, batch_size=8,
                        callbacks=[RaiseAt(2, "on_epoch_end")])
    assert history.interrupted and history.epoch == [0]
    _assert_weights(model, ref[11])


class SignalInForward(nnx.Layer):
    """A user's pass-through layer that sends a real SIGINT to this process during its `at`-th training forward."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, X, training=False):
        if training:
            self.calls += 1
            if self.calls == self.at:
                os.kill(os.getpid(), signal.SIGINT)  # Python raises it at the next bytecode, in this forward
        return X

    def backward(self, dY, need_dX=True):
        return dY


def test_sigint_in_a_forward_stops_before_that_steps_update(backend, reference):
    """Ctrl-C in the forward of a step that follows the last back to back (no per-batch callback): the step in
    one call (`TrainStep.run_back_to_back`) holds it back during its update only, so the fit stops before the update."""
    if backend.can_compile:
        pytest.skip("the step is one compiled program: the layer's Python runs only while it is traced")
    _fault("SIGINT in a training forward")
    ref = reference(backend, "sgd")
    X, y = _data()
    layers = _model(backend).layers
    model = nnx.Sequential(SignalInForward(9), *(type(layer).from_config(layer.get_config()) for layer in layers),
                           backend=backend, dtype="float64", seed=5)  # step 9 = batch 3 of epoch 2
    history = model.fit(X, y, loss="bce", optimizer="sgd", lr=0.05, epochs=3, batch_size=8)
    assert history.interrupted
    assert model.optimizer.step_count == 8
    _assert_weights(model, ref[7])


def _signal_inside_step(opt, model, at_step: int, before_param: int = 0):
    """Replace the optimizer's rule on this object so that a real SIGINT arrives inside step `at_step`, just
    before parameter `before_param` is updated (parameters before it already are). Where the rule runs once
    over all parameters as one flat buffer, the signal arrives just before that update."""
    original = opt.update
    sizes = [int(np.prod(tuple(p.value.shape))) for p in model.parameters()]
    calls = []

    def update(xp, value, grad, state, step, lr):
        if opt.step_count == at_step:
            flat = int(np.prod(tuple(value.shape))) == sum(sizes) and len(sizes) > 1
            if flat or len(calls) == before_param:
                os.kill(os.getpid(), signal.SIGINT)  # Python raises it at the next bytecode, in this step
            calls.append(step)
        return original(xp, value, grad, state, step, lr)

    opt.update = update


OPTIMIZERS = {"adam": lambda ps: nnx.optim.Adam(ps, lr=0.05), "sgd": lambda ps: nnx.optim.SGD(ps, lr=0.05)}


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("before_param", [0, 3])
@pytest.mark.parametrize("hooked", ["before_first_step", "after_first_epoch"])
def test_sigint_in_the_middle_of_an_optimizer_step(backend, optimizer, before_param, hooked, reference):
    """A SIGINT inside the step: the step still completes for every parameter (and the step
    counters), then fit returns interrupted. Hooking after the first epoch keeps a backend's
    fused flat update (the numpy fast path) in play; hooking before forces per-parameter updates."""
    _fault("SIGINT inside optimizer step")
    ref = reference(backend, optimizer)
    X, y = _data()
    model = _model(backend)
    opt = OPTIMIZERS[optimizer](model.parameters())
    if hooked == "before_first_step":
        _signal_inside_step(opt, model, at_step=9, before_param=before_param)
    model.fit(X, y, loss="bce", optimizer=opt, epochs=1, batch_size=8)  # 6 steps
    if hooked == "after_first_epoch":
        _signal_inside_step(opt, model, at_step=9, before_param=before_param)
    history = model.fit(X, y, epochs=1, batch_size=8)
    assert history.interrupted
    # The step in flight was completed, every parameter of it, and nothing after it ran.
    assert opt.step_count == 9
    assert opt.param_steps == [9] * len(model.parameters())
    # Where the backend compiles the whole step (JAX), the hooked optimizer makes fit fall back to the
    # portable stages while the reference ran compiled: the two agree to rounding, not bit for bit.
    compiled = (backend.can_compile and backend.fastpath_enabled)
    _assert_weights(model, ref[8], exact=not compiled)


# -- SIGINT while gradients are being accumulated ----------------------------------------------

class SigintAt(Callback):
    """Sends a real SIGINT to this process from on_batch_end of the `at`-th batch (1-based, over epochs)."""

    def __init__(self, at: int) -> None:
        self.at, self.count = at, 0

    def on_batch_end(self, batch, logs=None):
        self.count += 1
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGINT)


ACCUMULATE = 3  # 6 batches of 8 per epoch: 2 updates


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("at", [2, 4, 5, 11])
def test_sigint_mid_accumulation_never_applies_half_a_step(backend, optimizer, at, reference):
    """Interrupted after some of the k batches of an update (at=2, 5, 11: after k-1 of k): the batches
    gathered so far are dropped, the weights are the last completed update's, and the next fit starts
    a fresh accumulation."""
    _fault("SIGINT mid-accumulation")
    ref = reference(backend, optimizer, accumulate=ACCUMULATE, clip_norm=0.5)
    X, y = _data()
    model = _model(backend)
    history = model.fit(X, y, loss="bce", optimizer=optimizer, lr=0.05, epochs=2, batch_size=8,
                        accumulate=ACCUMULATE, clip_norm=0.5, callbacks=[SigintAt(at)])
    assert history.interrupted
    updates = at // ACCUMULATE
    assert model.optimizer.step_count == updates
    assert model.optimizer.param_steps == [updates] * len(model.parameters())
    if updates:
        _assert_weights(model, ref[updates * ACCUMULATE - 1])
    else:
        _assert_weights(model, _host(_model(backend)))
    # Nothing half-gathered survives into the next run: one more epoch is exactly 2 more updates.
    model.fit(X, y, epochs=1, batch_size=8, accumulate=ACCUMULATE)
    assert model.optimizer.step_count == updates + 2


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_sigint_inside_an_accumulated_update(backend, optimizer, reference):
    """A SIGINT inside the optimizer step of an accumulated update: that update completes, then fit stops."""
    _fault("SIGINT inside an accumulated update")
    ref = reference(backend, optimizer, accumulate=ACCUMULATE)
    X, y = _data()
    model = _model(backend)
    opt = OPTIMIZERS[optimizer](model.parameters())
    _signal_inside_step(opt, model, at_step=3, before_param=3)
    history = model.fit(X, y, loss="bce", optimizer=opt, epochs=2, batch_size=8, accumulate=ACCUMULATE)
    assert history.interrupted
    assert opt.step_count == 3 and opt.param_steps == [3] * len(model.parameters())
    # As above: where the backend compiles (JAX), the reference's update ran the rule as a compiled program
    # (`nnx.training.compiled_rule.CompiledRule`) and the hooked optimizer's runs op by op: equal to rounding
    compiled = (backend.can_compile and backend.fastpath_enabled)
    _assert_weights(model, ref[3 * ACCUMULATE - 1], exact=not compiled)


def test_sigint_handler_is_restored(backend):
    X, y = _data()
    before = signal.getsignal(signal.SIGINT)
    model = _model(backend)
    model.fit(X, y, loss="bce", epochs=1, batch_size=8)
    assert signal.getsignal(signal.SIGINT) is before
    model.fit(X, y, epochs=2, batch_size=8, callbacks=[RaiseAt(3)])
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(ValueError):
        model.fit(X, y, epochs=-1)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_sigint_handler_installed_from_c_is_left_in_place(monkeypatch):
    # signal.getsignal gives None for a handler Python did not install; none can be put back in its place
    import types

    from nnx.training import interrupts

    calls = []

    def install(signum, handler):
        if handler is None:
            raise TypeError("signal handler must be signal.SIG_IGN, signal.SIG_DFL, or a callable object")
        calls.append(handler)
        return None

    fake = types.SimpleNamespace(SIGINT=signal.SIGINT, SIG_IGN=signal.SIG_IGN, getsignal=lambda signum: None,
                                 signal=install)
    monkeypatch.setattr(interrupts, "signal", fake)
    X, y = _data()
    history = _model("numpy").fit(X, y, loss="bce", epochs=2, batch_size=8)
    assert len(history["loss"]) == 2
    assert calls == []  # the C handler was never replaced


def test_custom_sigint_handler_still_sees_the_signal():
    calls = []

    def handler(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        X, y = _data()
        model = _model("numpy")
        model.fit(X, y, loss="bce", epochs=1, batch_size=8)
        _signal_inside_step(model.optimizer, model, at_step=8)
        history = model.fit(X, y, epochs=2, batch_size=8)
        # The user's handler ran once (after the step); it did not raise, so training went on.
        assert calls == [signal.SIGINT]
        assert not history.interrupted and model.epochs_trained == 3
        assert signal.getsignal(signal.SIGINT) is handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_fit_in_a_worker_thread():
    # Signal handlers can only be installed from the main thread; fit must still run elsewhere.
    X, y = _data()
    model = _model("numpy")
    errors = []

    def work():
        try:
            model.fit(X, y, loss="bce", epochs=2, batch_size=8)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert not errors and model.epochs_trained == 2


class SigintAfter(Callback):
    """Sends this process SIGINT from a timer thread `delay` seconds after training begins.

    Started from on_train_begin, so the signal cannot arrive while fit is still preparing its data (a slow,
    loaded machine would otherwise let it land before fit handles Ctrl-C, and stop the whole test run)."""

    def __init__(self, delay: float) -> None:
        self.timer = threading.Timer(delay, os.kill, args=(os.getpid(), signal.SIGINT))

    def on_train_begin(self, logs=None):
        self.timer.start()

    def stop(self) -> None:
        self.timer.cancel()
        if self.timer.is_alive():
            self.timer.join()


@pytest.mark.usefixtures("jax_default_emitters")  # whole-epoch programs against a step-by-step reference
def test_sigint_from_a_timer_thread_lands_between_steps(backend):
    """Real Ctrl-C at arbitrary moments: the weights always equal those after some whole step.

    The module's model, not a deeper one: the share of a step spent updating parameters, where a Ctrl-C would
    split an update, does not grow with depth, and on JAX a model of its own cost two programs (about 7 s)."""
    X, y = _data()
    gen = np.random.default_rng(0)
    stopped = []  # (trial, steps taken, the weights then)
    for trial in range(6):
        _fault("SIGINT from a timer thread")
        model = _model(backend)
        model.fit(X, y, loss="bce", optimizer="adam", lr=0.05, epochs=1, batch_size=8)  # warm up (JIT etc.)
        ctrl_c = SigintAfter(float(gen.uniform(0.005, 0.1)))  # from inside the first epoch to many epochs in
        try:
            history = model.fit(X, y, epochs=5000, batch_size=8, callbacks=[ctrl_c])
        finally:
            ctrl_c.stop()
        assert history.interrupted, f"trial {trial}: the run ended before the signal"
        steps = model.optimizer.step_count
        assert model.optimizer.param_steps == [steps] * len(model.parameters()), trial
        stopped.append((trial, steps, _host(model)))
    # one reference run long enough for every trial, not one more each time a trial got further
    ref = _reference(backend, "adam", epochs=max(steps for _, steps, _ in stopped) // 6 + 2)
    for trial, steps, weights in stopped:
        for got, want in zip(weights, ref[steps - 1], strict=True):
            np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")


# -- never a partial file ------------------------------------------------------------------

def _tmp_leftovers(directory) -> list[str]:
    return sorted(name for name in os.listdir(directory) if name.endswith(".tmp") or name.startswith("."))


def _trained(backend="numpy") -> nnx.Sequential:
    X, y = _data()
    model = _model(backend)
    model.fit(X, y, loss="bce", epochs=1, batch_size=8)
    return model


class _FailingWriter:
    """A file object that writes `budget` bytes, then raises `exc`."""

    def __init__(self, handle, budget: int, exc: BaseException) -> None:
        self._handle, self._budget, self._exc = handle, budget, exc

    def write(self, data):
        data = bytes(data)
        if len(data) > self._budget:
            self._handle.write(data[:self._budget])
            self._budget = 0
            raise self._exc
        self._budget -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()
        return False


def _inject(monkeypatch, where: str, exc: BaseException, budget: int = 0) -> None:
    import nnx.io

    if where == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(nnx.io.os, "fdopen",
                            lambda fd, *a, **k: _FailingWriter(real_fdopen(fd, *a, **k), budget, exc))
    elif where == "savez":
        real_savez = np.savez

        def savez(handle, *args, **kwargs):
            handle.write(b"PK\x03\x04" + b"\0" * budget)  # some bytes of a zip, then the failure
            raise exc

        monkeypatch.setattr(nnx.io.np, "savez", savez)
        assert real_savez is not None
    elif where == "fsync":
        def fsync(fd):
            raise exc

        monkeypatch.setattr(nnx.io.os, "fsync", fsync)
    elif where == "replace":
        def replace(src, dst):
            raise exc

        monkeypatch.setattr(nnx.io.os, "replace", replace)
    else:
        raise AssertionError(where)


WRITE_FAULTS = [("write", 0), ("write", 64), ("write", 1000), ("write", 5000), ("savez", 10), ("savez", 3000),
                ("fsync", 0), ("replace", 0)]


@pytest.mark.parametrize("exc_type", [OSError, KeyboardInterrupt])
@pytest.mark.parametrize(("where", "budget"), WRITE_FAULTS)
def test_save_failing_midway_keeps_previous_file(tmp_path, monkeypatch, where, budget, exc_type):
    _fault(f"save: {where} raises {exc_type.__name__}")
    model = _trained()
    path = tmp_path / "model.npz"
    model.save(path)
    good = path.read_bytes()
    model.fit(*_data(), epochs=1, batch_size=8)  # the next save would write different weights
    with monkeypatch.context() as patch:
        _inject(patch, where, exc_type("injected fault"), budget)
        with pytest.raises(exc_type, match="injected fault"):
            model.save(path)
    assert path.read_bytes() == good, "the previous checkpoint was damaged"
    assert _tmp_leftovers(tmp_path) == [], "a temporary file was left behind"
    assert nnx.load(path).epochs_trained == 1
    # and the first save to a new path leaves nothing at all
    with monkeypatch.context() as patch:
        _inject(patch, where, exc_type("injected fault"), budget)
        with pytest.raises(exc_type):
            model.save(tmp_path / "fresh.npz")
    assert sorted(os.listdir(tmp_path)) == ["model.npz"]


def _checkpoint_class():
    cls = getattr(nnx.callbacks, "ModelCheckpoint", None)
    if cls is None:
        pytest.skip("nnx.callbacks.ModelCheckpoint is not there yet")
    return cls


@pytest.mark.parametrize(("where", "budget"), [("write", 700), ("savez", 100), ("replace", 0)])
def test_model_checkpoint_write_failing_midway(tmp_path, monkeypatch, where, budget):
    _fault(f"ModelCheckpoint: {where} raises OSError")
    ModelCheckpoint = _checkpoint_class()
    X, y = _data()
    model = _model("numpy")
    path = tmp_path / "ckpt.npz"
    saves = {"n": 0}
    import nnx.io

    real_save = nnx.io.save_model

    def save_model(*args, **kwargs):
        saves["n"] += 1
        if saves["n"] == 2:  # the second epoch's save fails halfway
            with monkeypatch.context() as patch:
                _inject(patch, where, OSError("disk full (injected)"), budget)
                return real_save(*args, **kwargs)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(nnx.io, "save_model", save_model)
    with pytest.raises(OSError, match="injected"):
        model.fit(X, y, loss="bce", epochs=3, batch_size=8, callbacks=[ModelCheckpoint(path, monitor="loss")])
    assert _tmp_leftovers(tmp_path) == []
    restored = nnx.load(path)
    assert restored.epochs_trained == 1, "the checkpoint of epoch 1 survived intact"


def test_sigint_during_checkpoint_write(tmp_path, monkeypatch):
    """Ctrl-C while ModelCheckpoint writes: fit returns interrupted, the last good checkpoint survives."""
    _fault("ModelCheckpoint: SIGINT during the write")
    ModelCheckpoint = _checkpoint_class()
    X, y = _data()
    model = _model("numpy")
    path = tmp_path / "ckpt.npz"
    writes = {"n": 0}
    real_fdopen = os.fdopen

    class SignallingWriter(_FailingWriter):
        def write(self, data):
            writes["n"] += 1
            if saves_done["n"] == 2 and writes["n"] > 3:
                os.kill(os.getpid(), signal.SIGINT)
            return self._handle.write(data)

    saves_done = {"n": 0}

    class Counter(Callback):
        def on_epoch_begin(self, epoch, logs=None):
            saves_done["n"] = epoch
            writes["n"] = 0

    import nnx.io

    monkeypatch.setattr(nnx.io.os, "fdopen", lambda fd, *a, **k: SignallingWriter(real_fdopen(fd, *a, **k), 0, None))
    history = model.fit(X, y, loss="bce", epochs=4, batch_size=8,
                        callbacks=[Counter(), ModelCheckpoint(path, monitor="loss")])
    assert history.interrupted
    assert _tmp_leftovers(tmp_path) == []
    assert nnx.load(path).epochs_trained == 2


class _Scores(Callback):
    """Logs a chosen 'score' per epoch (counted over the model's whole training), for a checkpoint to monitor."""

    adds_logs = ("score",)

    def __init__(self, scores: list[float]) -> None:
        self.scores = scores

    def on_epoch_end(self, epoch, logs=None):
        logs["score"] = self.scores[epoch]


@pytest.mark.parametrize("exc_type", [OSError, KeyboardInterrupt])
def test_a_failed_best_only_save_does_not_count_as_the_best(tmp_path, monkeypatch, exc_type):
    """A best-only save that fails leaves the model's recorded best at the file's: a later fit saves a model
    better than the file's, though not better than the epoch whose write failed (found in review)."""
    ModelCheckpoint = _checkpoint_class()
    X, y = _data()
    model = _model("numpy")
    path = tmp_path / "best.npz"
    import nnx.io

    real_save = nnx.io.save_model

    def save_model(target, *args, **kwargs):
        if target.epochs_trained == 2:  # epoch 2, the best so far, fails to reach the disk
            raise exc_type("disk full (injected)")
        return real_save(target, *args, **kwargs)

    scores = [3.0, 1.0, 2.0]

    def callbacks():
        return [_Scores(scores), ModelCheckpoint(path, monitor="score", mode="min", save_best_only=True)]

    with monkeypatch.context() as patch:
        patch.setattr(nnx.io, "save_model", save_model)
        try:
            model.fit(X, y, loss="bce", epochs=2, batch_size=8, callbacks=callbacks())
        except OSError:
            pass
    assert nnx.load(path).epochs_trained == 1
    model.fit(X, y, loss="bce", epochs=1, batch_size=8, callbacks=callbacks())
    assert nnx.load(path).epochs_trained == 3, "epoch 3 beats the file's epoch 1, yet was not saved"
