"""The recorded passes (`nnx.training.recorded`): where replayed, a fit gives the plain passes' numbers bit for bit.

Each fit runs twice in one test: as it runs, and with the backend's `tape` capability switched off (the plain
passes, everything else the same). Weights, history (metrics read every batch's head outputs, so a head output
overwritten by a later step would show) and gradients are compared byte for byte. Only backends with the
capability take part (NumPy); elsewhere there is nothing to compare.
"""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest
from user_code import CallCounting, UserDense

import nnx
from nnx.backends import backend_status
from nnx.backends.recording import Noted, Tape
from nnx.training import recorded
from nnx.training.step import TrainStep


@pytest.fixture
def recording_backend(backend):
    if backend.tape() is None:
        pytest.skip(f"{backend.name}'s arrays do not tell what is done to them: nothing is recorded")
    return backend


class Counts:
    """How often the passes were recorded, replayed, and refused, over one fit."""

    def __init__(self, monkeypatch):
        self.recorded = self.replayed = 0
        self.refusals: list[str] = []
        replay, record = recorded.RecordedPasses._replay, recorded.RecordedPasses._record
        counts = self

        def counting_replay(passes, *args):  # every replay, from `run` or back to back from `run_back_to_back`
            counts.replayed += 1
            return replay(passes, *args)

        def counting_record(passes, *args):
            counts.recorded += 1
            out = record(passes, *args)
            if passes.refusal is not None:
                counts.refusals.append(passes.refusal)
            return out
        monkeypatch.setattr(recorded.RecordedPasses, "_replay", counting_replay)
        monkeypatch.setattr(recorded.RecordedPasses, "_record", counting_record)


def _bits(x):
    a = np.asarray(x)
    return a.dtype.str, a.shape, a.tobytes()


def _fit_twice(monkeypatch, backend, build, fit_args, data):
    """(fit with the recorded passes, counts), (fit with the plain passes): each a (weights, history) pair."""
    results = []
    counts = None
    for plain in (False, True):
        with monkeypatch.context() as m:
            if plain:
                m.setattr(type(backend), "tape", lambda self: None)
            else:
                counts = Counts(m)
            model = build(backend)
            history = model.fit(*data, **fit_args)
            weights = [_bits(backend.to_host(p.value)) for p in model.parameters()]
            weights += [_bits(backend.to_host(b.value)) for b in model.buffers()]
            results.append((weights, {k: [_bits(v) for v in vs] for k, vs in history.history.items()}))
    return results[0], results[1], counts


def _data(rng, n, features, outputs=1, kind="binary", dtype="float64"):
    X = rng.standard_normal((n, features)).astype(dtype)
    if kind == "binary":
        y = (rng.random((n, outputs)) < 0.5).astype(dtype)
    elif kind == "classes":
        y = rng.integers(0, outputs, n)
    else:
        y = rng.standard_normal((n, outputs)).astype(dtype)
    return X, y


def _dense_relu(sizes, head=None):
    def build(backend, dtype="float64"):
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nnx.Dense(a, b), nnx.ReLU()]
        layers = layers[:-1] + ([head()] if head is not None else [])
        return nnx.Sequential(*layers, backend=backend, dtype=dtype, seed=3)
    return build


CASES = {
    # name: (build, fit arguments, data kind, outputs)
    "bce logits, sgd momentum": (_dense_relu((6, 8, 5, 1)), dict(loss="bce_with_logits", optimizer="sgd", lr=0.1,
                                                                    metrics=["accuracy"]), "binary", 1),
    "sigmoid head, bce, adam": (_dense_relu((6, 8, 1), nnx.Sigmoid), dict(loss="bce", optimizer="adam"), "binary", 1),
    "softmax, cross-entropy, class indices": (_dense_relu((6, 8, 3), nnx.Softmax),
                                              dict(loss="cross_entropy", optimizer="rmsprop",
                                                   metrics=["accuracy"]), "classes", 3),
    "mse, two outputs, adamw": (_dense_relu((6, 8, 2)), dict(loss="mse", optimizer="adamw"), "regression", 2),
    "mae": (_dense_relu((6, 4, 1)), dict(loss="mae", optimizer="sgd"), "regression", 1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_fit_replays_the_plain_passes_bit_for_bit(monkeypatch, recording_backend, rng, case):
    build, fit_args, kind, outputs = CASES[case]
    data = _data(rng, 50, 6, outputs, kind)  # batches of 16, 16, 16 and 2 rows: two recorded layouts
    got, plain, counts = _fit_twice(monkeypatch, recording_backend, build,
                                    dict(fit_args, epochs=3, batch_size=16), data)
    assert got == plain
    assert counts.refusals == []
    assert counts.replayed >= 3 * 4 - 1 - 2  # all but the first batch and one recording per layout


def _normalised(backend):
    model = nnx.Sequential(nnx.Dense(5, 8), nnx.BatchNorm(8), nnx.LeakyReLU(0.1), nnx.Dense(8, 6), nnx.LayerNorm(6),
                           nnx.Tanh(), nnx.Dense(6, 1, regularizer=nnx.regularizers.L2(0.01)),
                           backend=backend, dtype="float64", seed=5)
    return model


def _user_layers(backend):
    return nnx.Sequential(UserDense(5, 7), nnx.Softplus(), UserDense(7, 1), backend=backend, dtype="float64",
                          seed=6)


class HalfSquared(nnx.losses.Loss):
    """A user's loss through the public API: half the squared error per row."""

    name = "half_squared_test_recorded"

    def rows(self, xp, y_true, y_pred):
        diff = y_pred - y_true
        n_out = math.prod(y_pred.shape[1:])
        return xp.sum(diff * diff, axis=1) / (2 * n_out), diff / math.prod(y_pred.shape)


@pytest.mark.parametrize("build, loss", [(_normalised, "mse"), (_user_layers, HalfSquared())],
                         ids=["buffers, penalty, normalisation", "user layers and loss"])
def test_buffers_penalties_and_user_code_replay_bit_for_bit(monkeypatch, recording_backend, rng, build, loss):
    X, y = _data(rng, 40, 5, 1, "regression")
    w = rng.random(40)
    got, plain, counts = _fit_twice(monkeypatch, recording_backend, build,
                                    dict(loss=loss, optimizer="adam", epochs=2, batch_size=8), (X, y))
    assert got == plain and counts.refusals == [] and counts.replayed > 0
    got, plain, _ = _fit_twice(monkeypatch, recording_backend, build,
                               dict(loss=loss, optimizer="sgd", epochs=2, batch_size=8, sample_weight=w), (X, y))
    assert got == plain


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN fed on purpose
def test_float32_and_nan_inputs_give_the_plain_bits(monkeypatch, recording_backend, rng):
    """NaN and inf flow through the replayed lines as through the plain passes (an unchecked fit)."""
    X, y = _data(rng, 48, 6, 1, "binary", dtype="float32")
    X[20, 2], X[30, 1] = np.nan, np.inf
    build = _dense_relu((6, 8, 1))
    got, plain, counts = _fit_twice(monkeypatch, recording_backend, lambda be: build(be, "float32"),
                                    dict(loss="bce_with_logits", optimizer="sgd", epochs=2, batch_size=8,
                                         check_finite=False, shuffle=False), (X, y))
    assert got == plain and counts.replayed > 0


class _SlopeSchedule(nnx.callbacks.Callback):
    """Changes a layer's setting and the loss's between batches: each change is another recorded structure."""

    def on_batch_begin(self, batch, logs=None):
        self.model.layers[1].negative_slope = 0.05 * (batch % 3)


def test_a_setting_changed_between_batches_records_again(monkeypatch, recording_backend, rng):
    def build(backend):
        return nnx.Sequential(nnx.Dense(4, 6), nnx.LeakyReLU(0.1), nnx.Dense(6, 1), backend=backend,
                              dtype="float64", seed=1)
    X, y = _data(rng, 64, 4, 1, "binary")
    got, plain, counts = _fit_twice(monkeypatch, recording_backend, build,
                                    dict(loss="bce_with_logits", epochs=1, batch_size=8,
                                         callbacks=[_SlopeSchedule()]), (X, y))
    assert got == plain
    assert counts.recorded >= 3  # one per slope at least: a stale recording would have kept the first slope


class ReadsAValue(nnx.Layer):
    """A layer that branches on its input's values in Python: its recording cannot stand for another batch."""

    def forward(self, X, training=False):
        return X * 2.0 if float(self.xp.max(X)) > 1.0 else X

    def backward(self, dY, need_dX=True):
        return dY


class CountsCalls(nnx.Layer):
    """A layer whose Python state changes every forward."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, X, training=False):
        self.calls += 1
        return X * 1.0

    def backward(self, dY, need_dX=True):
        return dY


class RefusesForeignArrays(nnx.Layer):
    """A layer that checks its input's type as a library might: the recording's stand-ins fail it."""

    def forward(self, X, training=False):
        if type(X) is not type(self.xp.asarray(0.0)):
            raise TypeError("not an array of mine")
        return X

    def backward(self, dY, need_dX=True):
        return dY


@pytest.mark.parametrize("layer, why", [(ReadsAValue, "value read in Python"), (CountsCalls, "Python state"),
                                        (nnx.Dropout, "random numbers"), (RefusesForeignArrays, "raised")])
def test_passes_that_cannot_be_replayed_run_plainly(monkeypatch, recording_backend, rng, layer, why):
    def build(backend):
        middle = layer(0.3) if layer is nnx.Dropout else layer()
        return nnx.Sequential(nnx.Dense(4, 6), middle, nnx.Dense(6, 1), backend=backend, dtype="float64", seed=2)
    X, y = _data(rng, 40, 4, 1, "binary")
    got, plain, counts = _fit_twice(monkeypatch, recording_backend, build,
                                    dict(loss="bce_with_logits", epochs=2, batch_size=8), (X, y))
    assert got == plain
    assert counts.replayed == 0 and counts.recorded == 1 and why in counts.refusals[0]


def test_outputs_and_gradients_are_new_arrays_every_step(recording_backend, rng):
    """What leaves a replayed step (head outputs, gradients) is never a buffer the next step writes again."""
    model = _dense_relu((6, 8, 1))(recording_backend)
    opt = nnx.optim.SGD(model.parameters(), lr=0.1)
    step = TrainStep(model, model.resolve_loss("bce_with_logits"), opt)
    X, y = _data(rng, 64, 6, 1, "binary")
    kept = []
    for k in range(4):
        value, Z = step.forward_loss(X[16 * k:16 * k + 16], y[16 * k:16 * k + 16])
        step.backward()
        kept.append((Z, np.array(Z), [(p.grad, np.array(p.grad)) for p in model.parameters()]))
        assert step.check(value)
        step.update()
    assert len(step.recorded._recordings) == 1 and step.recorded.refusal is None
    for Z, Z_then, grads in kept:
        assert np.array_equal(Z, Z_then)
        assert all(np.array_equal(g, g_then) for g, g_then in grads)
    assert len({id(Z) for Z, _, _ in kept}) == 4


def test_a_large_network_writes_its_gradients_into_the_offered_buffer(monkeypatch, recording_backend, rng):
    """From `replay.MIN_ELEMENTS` parameters the flat update offers one buffer; replayed gradients are its views."""
    build = _dense_relu((400, 400, 1))
    X, y = _data(rng, 24, 400, 1, "binary")
    got, plain, counts = _fit_twice(monkeypatch, recording_backend, build,
                                    dict(loss="bce_with_logits", optimizer="adam", epochs=1, batch_size=8), (X, y))
    assert got == plain and counts.replayed == 1
    model = build(recording_backend)
    step = TrainStep(model, model.resolve_loss("bce_with_logits"), nnx.optim.Adam(model.parameters()))
    for k in range(3):
        step.forward_loss(X[8 * k:8 * k + 8], y[8 * k:8 * k + 8])
        step.backward()
    owners = {id(p.grad.base) for p in model.parameters()}
    assert len(owners) == 1 and all(p.grad.base is not None for p in model.parameters())


class ScaledByATable(nnx.Layer):
    """Multiplies by an array it holds (not a parameter), or by its ``exp`` (`through_exp`: computed from that
    array alone, with no input): a callback may rebind the array, or write into it, between batches."""

    def __init__(self, width, through_exp=False):
        super().__init__()
        self.width, self.through_exp = width, through_exp
        self.table = None

    def build(self, input_shape):
        self.table = self.xp.zeros((self.width,), dtype=self.xp.float64)
        if not self.through_exp:
            self.table = self.table + 1.0

    def _scale(self):
        return self.xp.exp(self.table) if self.through_exp else self.table

    def forward(self, X, training=False):
        return X * self._scale()

    def backward(self, dY, need_dX=True):
        return dY * self._scale()


class _RebindsTheTable(nnx.callbacks.Callback):
    def on_batch_begin(self, batch, logs=None):
        layer = self.model.layers[1]
        if batch == 2:
            layer.table = layer.table * 3.0  # another array: the recording read the first one
        if batch == 4:
            layer.table[...] = 0.5  # written in place: read as it stands, by every call


def test_an_array_a_layer_holds_is_read_as_the_plain_passes_read_it(monkeypatch, recording_backend, rng):
    def build(backend):
        return nnx.Sequential(nnx.Dense(4, 3), ScaledByATable(3), nnx.Dense(3, 1), backend=backend,
                              dtype="float64", seed=4)
    X, y = _data(rng, 64, 4, 1, "binary")
    got, plain, counts = _fit_twice(monkeypatch, recording_backend, build,
                                    dict(loss="bce_with_logits", epochs=1, batch_size=8, shuffle=False,
                                         callbacks=[_RebindsTheTable()]), (X, y))
    assert got == plain
    assert counts.recorded == 2 and counts.replayed >= 4


def test_a_loss_method_patched_between_fits_is_recorded_again(monkeypatch, recording_backend, rng):
    """The second fit runs a patched `rows`: a recording of the first fit's code would replay the old one."""
    X, y = _data(rng, 32, 4, 1, "regression")
    rows = nnx.losses.MSE.rows

    def doubled(self, xp, y_true, y_pred):
        value, grad = rows(self, xp, y_true, y_pred)
        return 2.0 * value, 2.0 * grad

    def fits(plain):
        with monkeypatch.context() as m:
            if plain:
                m.setattr(type(recording_backend), "tape", lambda self: None)
            model = nnx.Sequential(nnx.Dense(4, 1), backend=recording_backend, dtype="float64", seed=0)
            model.fit(X, y, loss="mse", optimizer="sgd", epochs=1, batch_size=8)
            m.setattr(nnx.losses.MSE, "rows", doubled)
            model.fit(X, y, epochs=1, batch_size=8)
            return [_bits(p.value) for p in model.parameters()]

    assert fits(plain=False) == fits(plain=True)


def test_the_recordings_kept_per_model_do_not_keep_it_alive(recording_backend, rng):
    import gc
    import weakref

    X, y = _data(rng, 32, 4, 1, "binary")
    model = nnx.Sequential(nnx.Dense(4, 3), nnx.ReLU(), nnx.Dense(3, 1), backend=recording_backend, seed=0)
    model.fit(X, y, loss="bce_with_logits", epochs=2, batch_size=8)
    assert recorded._PASSES[model]._recordings
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_steps_whose_arrays_are_large_run_plainly(monkeypatch, recording_backend, rng):
    """Recording pays where the Python around each operation costs as much as the operation: a step whose buffers
    would hold more than `MAX_SCRATCH_BYTES` is not replayed (nor its buffers kept)."""
    monkeypatch.setattr(recorded, "MAX_SCRATCH_BYTES", 4096)
    build = _dense_relu((6, 64, 1))
    X, y = _data(rng, 48, 6, 1, "binary")
    got, plain, counts = _fit_twice(monkeypatch, recording_backend, build,
                                    dict(loss="bce_with_logits", epochs=1, batch_size=16), (X, y))
    assert got == plain and counts.replayed == 0 and "bytes" in counts.refusals[0]


class _WritesTheExponent(nnx.callbacks.Callback):
    def on_batch_begin(self, batch, logs=None):
        self.model.layers[1].table[...] = 0.1 * batch  # in place: the same array, new values


def test_what_is_computed_from_a_held_array_alone_follows_writes_into_it(monkeypatch, recording_backend, rng):
    def build(backend):
        return nnx.Sequential(nnx.Dense(4, 3), ScaledByATable(3, through_exp=True), nnx.Dense(3, 1), backend=backend,
                              dtype="float64", seed=4)
    X, y = _data(rng, 64, 4, 1, "binary")
    got, plain, counts = _fit_twice(monkeypatch, recording_backend, build,
                                    dict(loss="bce_with_logits", epochs=1, batch_size=8, shuffle=False,
                                         callbacks=[_WritesTheExponent()]), (X, y))
    assert got == plain
    assert counts.recorded == 1 and counts.replayed == 6


def test_a_later_fits_first_batch_replays_after_its_input_checks(monkeypatch, recording_backend, rng):
    """A fit's first batch is never recorded (its inputs are checked first), but replays what an earlier fit of
    the model recorded, and still goes through the checks: a fit per epoch pays no plain first step."""
    X, y = _data(rng, 48, 6, 1, "binary")
    results, checks = [], []
    check = nnx.losses.Loss.check_inputs

    def counted_check(self, *args, **kwargs):
        checks.append(1)
        return check(self, *args, **kwargs)

    for plain in (False, True):
        with monkeypatch.context() as m:
            if plain:
                m.setattr(type(recording_backend), "tape", lambda self: None)
            else:
                counts = Counts(m)
            model = _dense_relu((6, 8, 1))(recording_backend)
            for _ in range(3):
                model.fit(X, y, loss="bce_with_logits", optimizer="sgd", epochs=1, batch_size=16, shuffle=False)
            results.append([_bits(p.value) for p in model.parameters()])
            if not plain:
                m.setattr(nnx.losses.BinaryCrossEntropy, "check_inputs", counted_check)
                model.fit(X, y, epochs=1, batch_size=16, shuffle=False)
                assert checks == [1]  # the replayed first batch's
    assert results[0] == results[1]
    # the first fit's first batch ran plainly and its second was recorded; every later batch replayed
    assert counts.recorded == 1 and counts.replayed == 1 + 3 + 3 + 3


# State a layer or loss keeps in a Counter or defaultdict changes every step: the trace and the recorded replay look
# into containers of any dict or list type.
class BatchCountingLoss(nnx.losses.Loss):
    """A squared error whose weight falls with the batches it scored, counted in a defaultdict."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = collections.defaultdict(int)

    def rows(self, xp, y_true, y_pred):
        self.seen["batches"] += 1
        scale = 1.0 / self.seen["batches"]
        d = y_pred - y_true
        return scale * xp.sum(d * d, axis=1), 2.0 * scale * d


def _counted_backends() -> list[str]:
    return ["numpy"] + (["jax"] if backend_status("jax")[0] else [])


@pytest.mark.parametrize("backend", _counted_backends())
@pytest.mark.parametrize("kind", ["counter", "defaultdict"])
def test_layer_state_kept_in_a_dict_subclass_changes_every_step(backend: str, kind: str) -> None:
    """The trace and the recorded replay looked only at containers of type exactly dict or list: a count kept in a
    Counter or a defaultdict (the usual ways to count in Python) changed only when the step was traced or recorded
    ({'calls': 3} after 9 batches on NumPy, 2 on JAX), and the layer scaling by it trained other weights."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((45, 5))
    y = (X[:, 0] > 0).astype(np.float64)
    model = nnx.Sequential(nnx.Dense(5, 8), CallCounting(kind), nnx.Dense(8, 1), nnx.Sigmoid(),
                           backend=backend, dtype="float64", seed=7)
    model.fit(X, y, loss="bce", optimizer="sgd", lr=0.1, epochs=3, batch_size=16, verbose=0)
    assert model.layers[1].stats["calls"] == 9


@pytest.mark.parametrize("backend", _counted_backends())
def test_loss_state_kept_in_a_defaultdict_changes_every_step(backend: str) -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((45, 5))
    y = X[:, :2] @ np.array([[1.0, -0.5], [0.3, 2.0]])
    model = nnx.Sequential(nnx.Dense(5, 8), nnx.ReLU(), nnx.Dense(8, 2), backend=backend, dtype="float64", seed=7)
    loss = BatchCountingLoss()
    model.fit(X, y, loss=loss, optimizer="sgd", lr=0.01, epochs=3, batch_size=16, verbose=0)
    assert loss.seen["batches"] == 9


# Ways a replay could differ from the plain passes: each compares with the plain passes (the backend's tape switched
# off) or checks what a replayed step must leave.
def test_a_view_of_a_result_written_in_place_leaves_as_a_new_array():
    """``g = (a @ b).T; g *= 2``: the output is a view of the product, so the product must be made anew by every
    call, not written into a buffer the next call overwrites."""
    tape = Tape()
    a, b = tape.note(np.arange(6.0).reshape(2, 3)), tape.note(np.ones((3, 2)))
    g = (a @ b).T
    g *= 2.0
    replayed = tape.compile([g])
    first = replayed(np.arange(6.0).reshape(2, 3), np.ones((3, 2)))[0]
    kept = first.copy()
    replayed(np.arange(6.0).reshape(2, 3) * 10, np.ones((3, 2)))
    assert np.array_equal(first, kept)


@pytest.mark.parametrize("size", [16, 8192], ids=["below the bitwise select", "bitwise select"])
def test_a_select_and_a_reshape_replay_as_the_namespace_runs_them(size):
    """A small condition's select is replayed as ``np.where`` itself, a large one's as the namespace's where (a
    bitwise select), and ``np.reshape`` as the array's method: the same bits, NaN payloads and signed zeros
    included."""
    xp = nnx.get_backend("numpy").xp
    tape = nnx.get_backend("numpy").tape()
    x = np.array([np.nan, -0.0, 0.0, -1.5, 2.0, np.inf, -np.inf, 3.0] * (size // 8)).reshape(-1, 8)
    noted = tape.note(x)
    selected = xp.where(noted > 0, noted, 0.0)
    flat = xp.reshape(xp.where(noted <= 0, 0.0, noted), (size,))
    replayed = tape.compile([selected, flat])
    assert ".reshape(" in replayed.source
    assert any(f is np.where for f in replayed.__globals__.values()) == (size < 4096)
    y = x[::-1].copy()
    got = replayed(y)
    for out, want in zip(got, [np.where(y > 0, y, 0.0), np.where(y <= 0, 0.0, y).reshape(size)], strict=True):
        assert out.tobytes() == want.tobytes()


class Applies(nnx.Layer):
    """Applies a function it holds (a NumPy ufunc: not a setting `layer_settings` can describe)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, X, training=False):
        return self.fn(X)

    def backward(self, dY, need_dX=True):
        return dY


def test_a_function_a_layer_holds_swapped_between_fits_is_recorded_again(monkeypatch, recording_backend, rng):
    X, y = _data(rng, 32, 4, 1, "binary")

    def fits(plain):
        with monkeypatch.context() as m:
            if plain:
                m.setattr(type(recording_backend), "tape", lambda self: None)
            model = nnx.Sequential(nnx.Dense(4, 3), Applies(np.tanh), nnx.Dense(3, 1), backend=recording_backend,
                                   dtype="float64", seed=0)
            model.fit(X, y, loss="bce_with_logits", optimizer="sgd", epochs=1, batch_size=8)
            model.layers[1].fn = np.sin
            model.fit(X, y, epochs=1, batch_size=8)
            return [_bits(p.value) for p in model.parameters()]

    assert fits(plain=False) == fits(plain=True)


class ScaledByADict(nnx.Layer):
    """Keeps a setting in a dict (`layer_settings` passes dicts over: a layer's tables)."""

    def __init__(self):
        super().__init__()
        self.options = {"scale": 2.0}

    def forward(self, X, training=False):
        return X * self.options["scale"]

    def backward(self, dY, need_dX=True):
        return dY * self.options["scale"]


class _ScaleSchedule(nnx.callbacks.Callback):
    def on_batch_begin(self, batch, logs=None):
        self.model.layers[1].options["scale"] = 1.0 + batch % 3


def test_a_setting_kept_in_a_dict_changed_between_batches_records_again(monkeypatch, recording_backend, rng):
    def build(backend):
        return nnx.Sequential(nnx.Dense(4, 3), ScaledByADict(), nnx.Dense(3, 1), backend=backend, dtype="float64",
                              seed=0)
    X, y = _data(rng, 64, 4, 1, "binary")
    got, plain, _ = _fit_twice(monkeypatch, recording_backend, build,
                               dict(loss="bce_with_logits", epochs=1, batch_size=8, callbacks=[_ScaleSchedule()]),
                               (X, y))
    assert got == plain


class KeepsEveryOutput(nnx.Layer):
    """Appends each training forward's output to a list it keeps: Python state a replay would not change."""

    def __init__(self):
        super().__init__()
        self.outputs = []

    def forward(self, X, training=False):
        Y = X * 1.0
        if training:
            self.outputs.append(Y)
        return Y

    def backward(self, dY, need_dX=True):
        return dY


def test_a_layer_appending_to_a_list_it_keeps_is_not_replayed(monkeypatch, recording_backend, rng):
    X, y = _data(rng, 64, 4, 1, "binary")
    kept = []
    for plain in (False, True):
        with monkeypatch.context() as m:
            if plain:
                m.setattr(type(recording_backend), "tape", lambda self: None)
            layer = KeepsEveryOutput()
            outputs = layer.outputs
            model = nnx.Sequential(nnx.Dense(4, 3), layer, nnx.Dense(3, 1), backend=recording_backend,
                                   dtype="float64", seed=0)
            model.fit(X, y, loss="bce_with_logits", epochs=1, batch_size=8, shuffle=False)
            assert layer.outputs is outputs  # the list the layer keeps, as the plain passes leave it
            assert all(type(Y) is np.ndarray for Y in outputs)
            kept.append([_bits(Y) for Y in outputs])
    assert kept[0] == kept[1]


class InterruptedWhileRecorded(nnx.Layer):
    """Stands for Ctrl-C pressed while the passes are recorded (fit stops and returns; the model is used on)."""

    def forward(self, X, training=False):
        if type(X) is Noted:
            raise KeyboardInterrupt
        return X

    def backward(self, dY, need_dX=True):
        return dY


def test_an_interrupt_while_recorded_leaves_the_models_own_arrays(recording_backend, rng):
    X, y = _data(rng, 64, 4, 1, "binary")
    model = nnx.Sequential(nnx.Dense(4, 3), nnx.BatchNorm(3), InterruptedWhileRecorded(), nnx.Dense(3, 1),
                           backend=recording_backend, dtype="float64", seed=0)
    history = model.fit(X, y, loss="bce_with_logits", epochs=1, batch_size=8)  # fit hands back what it has
    assert history.interrupted
    assert all(type(b.value) is np.ndarray for b in model.buffers())
    assert all(type(p.value) is np.ndarray for p in model.parameters())
    model.predict(X)  # and the model still runs


# A step that fails, and what a failed step leaves: each case runs as it runs and with the backend's tape switched off
# (the plain passes), and compares what the model holds afterwards bit for bit, gradients included.
def _batchnorm(backend):
    return nnx.Sequential(nnx.Dense(6, 4), nnx.BatchNorm(4), nnx.ReLU(), nnx.Dense(4, 1), backend=backend,
                          dtype="float64", seed=3)


def _held(model):
    """Everything a user can read off the model after a fit: weights, buffers and each p.grad."""
    return ([_bits(p.value) for p in model.parameters()] + [_bits(b.value) for b in model.buffers()]
            + [None if p.grad is None else _bits(p.grad) for p in model.parameters()])


def _both(monkeypatch, backend, fits):
    """`fits(model)` -> list of outcomes, run with the recorded passes and with the plain ones."""
    results = []
    for plain in (False, True):
        with monkeypatch.context() as m:
            if plain:
                m.setattr(type(backend), "tape", lambda self: None)
            model = _batchnorm(backend)
            results.append(fits(model) + [_held(model)])
    return results


def _raises(fit):
    try:
        fit()
    except ValueError as exc:
        return str(exc)
    return None


def test_a_step_that_raises_leaves_the_gradients_the_plain_passes_leave(monkeypatch, recording_backend, rng):
    """The last batch holds one row, which BatchNorm refuses in training: the fit raises there, plainly and while
    the passes are recorded alike, and p.grad still holds the last step's gradients (the plain step raised in its
    forward, before its backward cleared them), not None."""
    X, y = _data(rng, 17, 6, 1, "binary")

    def fits(model):
        return [_raises(lambda: model.fit(X, y, loss="bce_with_logits", optimizer="sgd", epochs=1, batch_size=8,
                                          shuffle=False))]
    got, plain = _both(monkeypatch, recording_backend, fits)
    assert plain[0] is not None and "BatchNorm" in plain[0]
    assert got == plain


def test_a_later_fits_first_batch_that_raises_leaves_the_gradients(monkeypatch, recording_backend, rng):
    """A later fit whose first batch (one row) BatchNorm refuses: nothing recorded holds for it, so it runs plainly
    and raises; the gradients of the earlier fit's last step are still there, as plainly."""
    X, y = _data(rng, 16, 6, 1, "binary")

    def fits(model):
        model.fit(X, y, loss="bce_with_logits", optimizer="sgd", epochs=2, batch_size=8, shuffle=False)
        return [_raises(lambda: model.fit(X[:1], y[:1], epochs=1, batch_size=8))]
    got, plain = _both(monkeypatch, recording_backend, fits)
    assert plain[0] is not None and "BatchNorm" in plain[0]
    assert got == plain


def test_a_fit_that_raised_in_the_model_does_not_stop_later_fits_replaying(monkeypatch, recording_backend, rng):
    """The model's own error (a one-row BatchNorm batch) raised while the passes were recorded: that says nothing
    of whether they can be replayed, so the next fit, with a batch size that fits, replays them again."""
    X, y = _data(rng, 17, 6, 1, "binary")
    model = _batchnorm(recording_backend)
    with pytest.raises(ValueError, match="BatchNorm"):
        model.fit(X, y, loss="bce_with_logits", optimizer="sgd", epochs=1, batch_size=8, shuffle=False)
    counts = Counts(monkeypatch)
    model.fit(X[:16], y[:16], epochs=3, batch_size=8)
    assert counts.replayed >= 4


def test_a_recording_does_not_keep_parameter_arrays_the_model_let_go(recording_backend, rng):
    import gc
    import weakref

    X, y = _data(rng, 32, 6, 1, "binary")
    model = _batchnorm(recording_backend)
    model.fit(X, y, loss="bce_with_logits", epochs=2, batch_size=8)
    old = [weakref.ref(p.value) for p in model.parameters()]
    model.load_state_dict({k: v.copy() for k, v in model.state_dict().items()})
    gc.collect()
    assert all(ref() is None for ref in old)
