"""Callbacks that run inference, change the model or fail mid-fit, a fit run inside a fit, and threads.

What a PyTorch or Keras user does from a callback (a probe's ``predict``, weights loaded, the learning rate
changed, a stop asked for) must give the numbers of the same changes made between two plain calls, and what a
running fit cannot honour (a new ``model.loss`` or ``model.optimizer``) is said, not ignored. Inference from
several threads, on one model or beside a fit of another, gives the serial answers.
"""

from __future__ import annotations

import importlib.util
import threading
import warnings

import numpy as np
import pytest

import nnx

BACKENDS = ["numpy", pytest.param("torch", marks=pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                                                    reason="torch is not installed"))]

_RNG = np.random.default_rng(7)
X = _RNG.standard_normal((32, 3))
Y = (_RNG.random((32, 1)) < 0.5).astype(np.float64)
NEW_WEIGHT = _RNG.standard_normal((5, 1))


def _model(backend, seed=3, dropout=False):
    layers = [nnx.Dense(3, 5), nnx.ReLU(), *([nnx.Dropout(0.25)] if dropout else []), nnx.Dense(5, 1)]
    return nnx.Sequential(*layers, backend=backend, dtype="float64", seed=seed)


def _weights(model):
    return [np.array(model.backend.to_host(v)) for v in model.state_dict().values()]  # copies: flat buffers move on


def _host(model, a):
    return np.array(model.backend.to_host(a))


def _fit(model, X_, y_, **kw):
    kw.setdefault("batch_size", 8)
    kw.setdefault("shuffle", False)
    return model.fit(X_, y_, **kw)


def _same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(_weights(a), _weights(b), strict=True))


class ReentProbe(nnx.callbacks.Callback):
    """Predicts and evaluates from inside the fit, and keeps the weights it saw."""

    def __init__(self, hook):
        self.hook, self.seen = hook, []

    def _probe(self):
        m = self.model
        self.seen.append((_weights(m), _host(m, m.predict(X[:7], batch_size=4)), m.evaluate(X[:10], Y[:10])["loss"]))

    def on_batch_end(self, batch, logs=None):
        if self.hook == "batch":
            self._probe()

    def on_epoch_end(self, epoch, logs=None):
        if self.hook == "epoch":
            self._probe()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hook", ["batch", "epoch"])
def test_inference_inside_a_callback_neither_disturbs_training_nor_differs_from_saved_weights(backend, hook):
    probed, plain = _model(backend, dropout=True), _model(backend, dropout=True)
    probe = ReentProbe(hook)
    h1 = probed.fit(X, Y, loss="bce_with_logits", epochs=2, batch_size=8, callbacks=[probe])
    h2 = plain.fit(X, Y, loss="bce_with_logits", epochs=2, batch_size=8)
    assert h1.history == h2.history and _same(probed, plain)
    later = _model(backend, dropout=True)
    later.loss = nnx.losses.BinaryCrossEntropy(from_logits=True)
    for weights, outputs, loss in probe.seen:
        later.load_state_dict(dict(zip(later.state_dict(), weights, strict=True)))
        np.testing.assert_array_equal(_host(later, later.predict(X[:7], batch_size=4)), outputs)
        assert later.evaluate(X[:10], Y[:10])["loss"] == loss


def _set_value(m):
    m.layers[2].weight.value = m.backend.asarray(NEW_WEIGHT)  # a new array, as torch's ``p.data = ...``


def _load(m):
    m.load_state_dict({**m.state_dict(), "2.weight": NEW_WEIGHT})


def _lr(m):
    m.optimizer.lr = 0.05


class ReentChange(nnx.callbacks.Callback):
    def __init__(self, change, batch=1):
        self.change, self.batch = change, batch

    def on_batch_end(self, batch, logs=None):
        if batch == self.batch and self.model.epochs_trained == 0:
            self.change(self.model)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", [_set_value, _load, _lr], ids=["p.value", "load_state_dict", "optimizer.lr"])
def test_a_change_made_by_a_callback_mid_epoch_is_the_change_made_between_two_fits(backend, change):
    inside = _model(backend)
    _fit(inside, X, Y, loss="bce_with_logits", optimizer="adam", epochs=2, callbacks=[ReentChange(change)])
    between = _model(backend)
    _fit(between, X[:16], Y[:16], loss="bce_with_logits", optimizer="adam")
    change(between)
    _fit(between, X[16:], Y[16:])
    _fit(between, X, Y)
    assert _same(inside, between)


@pytest.mark.parametrize("what", ["loss", "optimizer"])
def test_a_loss_or_optimizer_set_by_a_callback_mid_fit_is_said_not_silently_ignored(what):
    def swap(m):
        if what == "loss":
            m.loss = nnx.losses.MSE()
        else:
            m.optimizer = nnx.optim.SGD(m.parameters(), lr=0.5)

    swapped, plain = _model("numpy"), _model("numpy")
    with pytest.warns(RuntimeWarning, match=rf"model\.{what} was set while fit was running.*next call to fit"):
        _fit(swapped, X, Y, loss="bce_with_logits", optimizer="adam", epochs=2, callbacks=[ReentChange(swap)])
    _fit(plain, X, Y, loss="bce_with_logits", optimizer="adam", epochs=2)
    assert _same(swapped, plain)  # this fit went on with what it started with, as the warning says
    assert getattr(swapped, what) is not getattr(plain, what)  # and the next one takes the new one
    assert type(swapped.loss if what == "loss" else swapped.optimizer).__name__ in ("MSE", "SGD")


class ReentStop(nnx.callbacks.Callback):
    def __init__(self):
        self.batches = []

    def on_batch_end(self, batch, logs=None):
        self.batches.append((self.model.epochs_trained, batch))
        if batch == 1:
            self.model.stop_training = True


def test_stop_training_set_mid_epoch_stops_after_that_batch_as_keras():
    stopped, stop = _model("numpy"), ReentStop()
    history = _fit(stopped, X, Y, loss="bce_with_logits", epochs=3, callbacks=[stop])
    assert stop.batches == [(0, 0), (0, 1)] and stopped.epochs_trained == 1 and len(history.history["loss"]) == 1
    short = _model("numpy")
    _fit(short, X[:16], Y[:16], loss="bce_with_logits")
    assert _same(stopped, short)


class ReentBoom(Exception):
    pass


class ReentRaise(nnx.callbacks.Callback):
    def __init__(self, hook):
        self.hook, self.backwards = hook, 0

    def on_batch_begin(self, batch, logs=None):
        if self.hook == "on_batch_begin" and batch == 2:
            raise ReentBoom

    def on_backward(self):
        self.backwards += 1
        if self.hook == "on_backward" and self.backwards == 3:
            raise ReentBoom

    def on_batch_end(self, batch, logs=None):
        if self.hook == "on_batch_end" and batch == 2:
            raise ReentBoom

    def on_epoch_end(self, epoch, logs=None):
        if self.hook == "on_epoch_end":
            raise ReentBoom


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("hook, rows", [("on_batch_begin", 16), ("on_backward", 16), ("on_batch_end", 24),
                                        ("on_epoch_end", 32)])
def test_a_fit_after_a_callback_failed_mid_epoch_is_a_fresh_continuation(backend, hook, rows):
    failed = _model(backend)
    with pytest.raises(ReentBoom):
        _fit(failed, X, Y, loss="bce_with_logits", optimizer="adam", epochs=2, callbacks=[ReentRaise(hook)])
    _fit(failed, X, Y)
    fresh = _model(backend)
    _fit(fresh, X[:rows], Y[:rows], loss="bce_with_logits", optimizer="adam")
    _fit(fresh, X, Y)
    assert _same(failed, fresh)


class ReentFit(nnx.callbacks.Callback):
    """Runs a whole fit of the model from inside its fit, once, after the second batch."""

    def __init__(self):
        self.inner = None

    def on_batch_end(self, batch, logs=None):
        if batch == 1 and self.inner is None:
            self.inner = _fit(self.model, X, Y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fit_run_by_a_callback_trains_in_order_and_leaves_the_outer_history_on_the_model(backend):
    nested, reent = _model(backend), ReentFit()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the inner fit keeps the loss and optimizer: nothing was swapped
        outer = _fit(nested, X, Y, loss="bce_with_logits", optimizer="adam", epochs=2, callbacks=[reent])
    assert nested.history is outer and reent.inner is not outer
    assert nested.epochs_trained == 3 and len(outer.history["loss"]) == 2
    # the updates ran in the order the batches were met: 0, 1, the inner epoch, 2, 3, then the second epoch
    order = [0, 1, 0, 1, 2, 3, 2, 3, 0, 1, 2, 3]
    in_order = _model(backend)
    _fit(in_order, np.concatenate([X[8 * i:8 * i + 8] for i in order]),
         np.concatenate([Y[8 * i:8 * i + 8] for i in order]), loss="bce_with_logits", optimizer="adam")
    assert _same(nested, in_order)


def _join(threads):
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_from_four_threads_on_one_model_gives_the_serial_outputs(backend):
    model = _model(backend, dropout=True)
    _fit(model, X, Y, loss="bce_with_logits", epochs=1)
    inputs = [X[:n] for n in (3, 5, 6, 9)]
    serial = [[_host(model, model.predict(x)), _host(model, model.predict(x, batch_size=2))] for x in inputs]
    got, errors = {}, []

    def work(i):
        try:
            got[i] = [[_host(model, model.predict(inputs[i])), _host(model, model.predict(inputs[i], batch_size=2))]
                      for _ in range(5)]
        except Exception as exc:  # noqa: BLE001 -- reported below, with the thread's input
            errors.append((i, exc))

    _join([threading.Thread(target=work, args=(i,)) for i in range(4)])
    assert not errors
    for i, runs in got.items():
        for run in runs:
            for a, b in zip(run, serial[i], strict=True):
                np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fit_beside_another_models_predicting_thread_trains_as_alone(backend):
    other = _model(backend, seed=9)
    expected = _host(other, other.predict(X[:7]))
    alone, beside = _model(backend, dropout=True), _model(backend, dropout=True)
    _fit(alone, X, Y, loss="bce_with_logits", epochs=2, shuffle=True)
    stop, wrong, errors = threading.Event(), [], []

    def predict():
        try:
            while not stop.is_set():
                if not np.array_equal(_host(other, other.predict(X[:7])), expected):
                    wrong.append(True)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=predict)
    thread.start()
    try:
        _fit(beside, X, Y, loss="bce_with_logits", epochs=2, shuffle=True)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive() and not errors and not wrong
    assert _same(alone, beside)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_models_of_one_definition_trained_in_turns_each_train_as_alone(backend):
    a, b = _model(backend, seed=1, dropout=True), _model(backend, seed=2, dropout=True)
    for _ in range(2):
        for m in (a, b):
            _fit(m, X, Y, loss="bce_with_logits", epochs=1, shuffle=True)
    for seed, turned in ((1, a), (2, b)):
        alone = _model(backend, seed=seed, dropout=True)
        _fit(alone, X, Y, loss="bce_with_logits", epochs=1, shuffle=True)
        _fit(alone, X, Y, epochs=1, shuffle=True)
        assert _same(turned, alone)


_ARMED, _TRACING, _GO = threading.Event(), threading.Event(), threading.Event()


def _hold_first_trace(X, armed, tracing, go):
    """Once `armed`, the first call with a JAX tracer (a program being traced) sets `tracing` and waits for `go`."""
    traced = type(X).__module__.startswith("jax") and "Tracer" in type(X).__name__
    if traced and armed.is_set() and not tracing.is_set():
        tracing.set()
        go.wait(timeout=10)


class ReentSlowTrace(nnx.Layer):
    """Identity whose first traced call (JAX compiling a new input shape) waits, so that another thread's predict
    runs while the program's trace has the model's parameters bound to its placeholders."""

    def forward(self, X, training=False):
        _hold_first_trace(X, _ARMED, _TRACING, _GO)
        return X

    def backward(self, dY, need_dX=True):
        return dY


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_a_jax_predict_beside_another_threads_first_compile_reads_the_weights_not_the_trace():
    """A JAX predict compiling a new shape binds the model's parameters to the trace's placeholders while it
    traces: another thread's predict at that moment passed those placeholders on as the weights (and a second
    trace would save and restore them in place of the weights). Programs of one model now trace one at a time,
    and a call waits while one traces."""
    model = nnx.Sequential(nnx.Dense(3, 5), ReentSlowTrace(), nnx.Dense(5, 1), backend="jax", dtype="float64",
                           seed=3)
    reference = nnx.Sequential(nnx.Dense(3, 5), nnx.Identity(), nnx.Dense(5, 1), dtype="float64")
    reference.load_state_dict({k: _host(model, v) for k, v in model.state_dict().items()})
    model.predict(X[:4])  # compiled for 4 rows before the slow trace is armed
    _ARMED.set()
    got, errors = {}, []

    def run(name, rows):
        try:
            got[name] = _host(model, model.predict(X[:rows]))
        except Exception as exc:  # noqa: BLE001 -- reported below
            errors.append((name, exc))

    tracer = threading.Thread(target=run, args=("new shape", 7))
    tracer.start()
    assert _TRACING.wait(timeout=30)
    other = threading.Thread(target=run, args=("compiled shape", 4))
    other.start()
    other.join(timeout=0.2)
    _GO.set()
    for t in (tracer, other):
        t.join(timeout=30)
    assert not tracer.is_alive() and not other.is_alive()
    assert not errors, errors
    np.testing.assert_allclose(got["compiled shape"], _host(reference, reference.predict(X[:4])), rtol=1e-12)
    np.testing.assert_allclose(got["new shape"], _host(reference, reference.predict(X[:7])), rtol=1e-12)
    assert all(type(v).__module__.startswith("jax") and "Tracer" not in type(v).__name__
               for v in model.state_dict().values())


_FIT_ARMED, _FIT_TRACING, _FIT_GO = threading.Event(), threading.Event(), threading.Event()


class ReentSlowFitTrace(nnx.Layer):
    """Identity whose first traced call once armed waits (its own events): a trace of a predict or of a fit's step
    is held open while another thread fits or predicts."""

    def forward(self, X, training=False):
        _hold_first_trace(X, _FIT_ARMED, _FIT_TRACING, _FIT_GO)
        return X

    def backward(self, dY, need_dX=True):
        return dY


def _in_threads(first, second):
    """Run `first` in a thread until its trace waits, then `second` in another; let the trace go once `second` had
    time to run into it. Returns the errors either raised."""
    errors = []

    def guarded(fn):
        def run():
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 -- reported by the caller
                errors.append(exc)
        return run

    for event in (_FIT_TRACING, _FIT_GO):
        event.clear()
    _FIT_ARMED.set()
    threads = [threading.Thread(target=guarded(first))]
    threads[0].start()
    assert _FIT_TRACING.wait(timeout=30)
    threads.append(threading.Thread(target=guarded(second)))
    threads[1].start()
    threads[1].join(timeout=0.2)
    _FIT_GO.set()
    for t in threads:
        t.join(timeout=30)
    _FIT_ARMED.clear()
    assert not any(t.is_alive() for t in threads)
    return errors


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_a_jax_fit_beside_another_threads_trace_trains_from_the_weights_not_the_placeholders():
    """The per-model lock (cc2c21f) kept one predict from reading another's trace placeholders, but a fit's steps
    read the same parameters: a fit while another thread's predict traced a new shape failed with 'DynamicJaxprTracer
    is not a valid JAX type', and a predict while a fit's step traced read the step's placeholders. Both now wait for
    the trace (a predict that would trace while another thread fits runs op by op instead), and train and predict
    what they do one after the other."""
    def make():
        return nnx.Sequential(nnx.Dense(3, 5), ReentSlowFitTrace(), nnx.Dense(5, 1), backend="jax", dtype="float64",
                              seed=3)
    model, twin = make(), make()
    for m in (model, twin):
        _fit(m, X, Y, epochs=1)
        m.predict(X[:4])
    got = {}  # (the twin shares the model's programs: it traces nothing first)
    errors = _in_threads(lambda: got.setdefault("new shape", _host(model, model.predict(X[:7]))),
                         lambda: _fit(model, X, Y, epochs=1))
    assert not errors, errors
    np.testing.assert_allclose(got["new shape"], _host(twin, twin.predict(X[:7])), rtol=1e-12)
    _fit(twin, X, Y, epochs=1)
    # and a predict while the fit's step traces (a batch size not compiled before)
    errors = _in_threads(lambda: _fit(model, X, Y, epochs=1, batch_size=16),
                         lambda: got.setdefault("compiled shape", _host(model, model.predict(X[:4]))))
    assert not errors, errors
    assert np.isfinite(got["compiled shape"]).all()
    _fit(twin, X, Y, epochs=1, batch_size=16)
    for name, value in twin.state_dict().items():
        np.testing.assert_allclose(_host(model, model.state_dict()[name]), _host(twin, value), rtol=1e-12,
                                   err_msg=name)
