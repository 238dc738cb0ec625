"""Data bigger than memory: memmaps, array-likes and iterables of batches in fit, evaluate and predict.

Every route must give the answer in-memory arrays give (same batches, same
weights), validate every batch, keep memory bounded, and fail clearly.
"""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest

import nnx
from nnx.callbacks import Callback


def _model(backend, dtype, seed=3):
    return nnx.Sequential(nnx.Dense(4, 8), nnx.Tanh(), nnx.Dense(8, 1), nnx.Sigmoid(),
                          backend=backend, dtype=dtype, seed=seed)


# The tests run on every backend share one batch size that divides the 150 rows, the 120 and 30 of
# validation_split=0.2 and the 60 validation rows: no partial last batch, and JAX compiles each program once
# for the file.
BATCH = 15


def _data(n=150, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.float64)
    return X, y


def _memmap(tmp_path, name, a, dtype=np.float64):
    mm = np.memmap(tmp_path / name, dtype=dtype, mode="w+", shape=a.shape)
    mm[:] = a
    mm.flush()
    del mm
    return np.memmap(tmp_path / name, dtype=dtype, mode="r", shape=a.shape)


def _weights(model):
    return {k: model.backend.to_host(v) for k, v in model.state_dict().items()}


def _assert_same_weights(a, b, dtype):
    tol = 1e-12 if dtype == "float64" else 1e-6
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        np.testing.assert_allclose(wb[k], wa[k], rtol=0, atol=tol, err_msg=k)


def _batches(X, y, size, w=None):
    return [(X[i:i + size], y[i:i + size]) if w is None else (X[i:i + size], y[i:i + size], w[i:i + size])
            for i in range(0, X.shape[0], size)]


class SortedReadsOnly:
    """An h5py-like array-like: `shape`, `dtype` and `[]` that, like h5py, reads only increasing indices."""

    def __init__(self, a):
        self._a = np.asarray(a)
        self.shape, self.dtype = self._a.shape, self._a.dtype
        self.reads = 0

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, key):
        if isinstance(key, np.ndarray):
            assert np.all(np.diff(key) > 0), "indices must be increasing"
        self.reads += 1
        return self._a[key].copy()


class Recorder(Callback):
    def __init__(self):
        self.begin, self.ended, self.batches = None, False, 0

    def on_train_begin(self, logs=None):
        self.begin = dict(logs or {})

    def on_batch_end(self, batch, logs=None):
        self.batches += 1

    def on_train_end(self, logs=None):
        self.ended = True


def _no_prefetch_threads(timeout=6.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(t.name == "nnx-prefetch" and t.is_alive() for t in threading.enumerate()):
            return True
        time.sleep(0.02)
    return False


# -- (a) a memmap trains exactly as the same array in memory ---------------------------------
@pytest.mark.parametrize("prefetch", [True, False])
def test_fit_on_memmap_equals_fit_in_memory(backend, dtype, tmp_path, prefetch):
    X, y = _data()
    w = np.linspace(0.5, 2.0, X.shape[0])
    mx, my, mw = _memmap(tmp_path, "x.dat", X), _memmap(tmp_path, "y.dat", y), _memmap(tmp_path, "w.dat", w)
    kw = dict(loss="bce", epochs=3, batch_size=BATCH, validation_split=0.2, metrics=["accuracy"])
    a, b = _model(backend, dtype), _model(backend, dtype)
    ha = a.fit(X, y, sample_weight=w, **kw)
    hb = b.fit(mx, my, sample_weight=mw, prefetch=prefetch, **kw)
    _assert_same_weights(a, b, dtype)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(hb[key], ha[key], rtol=1e-9 if dtype == "float64" else 1e-5, err_msg=key)


def test_fit_on_sorted_reads_array_like_equals_in_memory(backend, dtype):
    """An h5py-like object (increasing reads only) gets the rows in the permutation's order all the same."""
    X, y = _data()
    Xs = SortedReadsOnly(X)
    a, b = _model(backend, dtype), _model(backend, dtype)
    a.fit(X, y, loss="bce", epochs=2, batch_size=BATCH)
    b.fit(Xs, y, loss="bce", epochs=2, batch_size=BATCH)
    assert Xs.reads >= 2 * 10  # read batch by batch, never whole
    _assert_same_weights(a, b, dtype)


def test_evaluate_and_predict_on_memmap_equal_arrays(backend, dtype, tmp_path):
    X, y = _data()
    mx, my = _memmap(tmp_path, "x.dat", X), _memmap(tmp_path, "y.dat", y)
    m = _model(backend, dtype)
    m.fit(X, y, loss="bce", epochs=1, batch_size=BATCH)
    tol = 1e-12 if dtype == "float64" else 1e-6
    got, want = m.evaluate(mx, my, metrics=["accuracy"], batch_size=BATCH), m.evaluate(X, y, metrics=["accuracy"])
    assert got["accuracy"] == want["accuracy"]
    assert got["loss"] == pytest.approx(want["loss"], abs=tol)
    np.testing.assert_allclose(m.backend.to_host(m.predict(mx, batch_size=BATCH)), m.backend.to_host(m.predict(X)),
                               atol=tol, rtol=0)


# -- (b) iterables of batches ---------------------------------------------------------------------
def test_fit_on_list_of_batches_equals_unshuffled_arrays(backend, dtype):
    X, y = _data()
    w = np.linspace(0.5, 2.0, X.shape[0])
    a, b = _model(backend, dtype), _model(backend, dtype)
    ha = a.fit(X, y, sample_weight=w, loss="bce", epochs=3, batch_size=BATCH, shuffle=False, metrics=["accuracy"])
    rec = Recorder()
    hb = b.fit(_batches(X, y, BATCH, w), loss="bce", epochs=3, metrics=["accuracy"], callbacks=[rec])
    _assert_same_weights(a, b, dtype)
    np.testing.assert_allclose(hb["loss"], ha["loss"], rtol=1e-9 if dtype == "float64" else 1e-5)
    assert hb["accuracy"] == ha["accuracy"]
    assert rec.begin["steps"] == 10 and rec.batches == 30 and rec.ended


def test_fit_from_endless_generator_with_steps_per_epoch(backend, dtype):
    """Keras's rule: with steps_per_epoch, each epoch takes that many batches and the next continues."""
    X, y = _data()
    batches = _batches(X, y, BATCH)
    pulled = []

    def forever():
        while True:
            for i, batch in enumerate(batches):
                pulled.append(i)
                yield batch

    a, b = _model(backend, dtype), _model(backend, dtype)
    a.fit(batches, loss="bce", epochs=2)
    rec = Recorder()
    history = b.fit(forever(), loss="bce", epochs=4, steps_per_epoch=5, callbacks=[rec])
    assert len(history) == 4 and rec.begin["steps"] == 5 and rec.batches == 20
    assert pulled[:20] == list(range(10)) * 2  # epochs 2 and 4 continued where 1 and 3 stopped
    _assert_same_weights(a, b, dtype)


class Reader:
    """A re-iterable source (as a file reader would be): every `iter()` starts over; no len()."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        yield from self.batches


def test_re_iterable_object_is_read_afresh_each_epoch(backend, dtype):
    X, y = _data()
    reader, rec = Reader(_batches(X, y, BATCH)), Recorder()
    a, b = _model(backend, dtype), _model(backend, dtype)
    a.fit(_batches(X, y, BATCH), loss="bce", epochs=3)
    b.fit(reader, loss="bce", epochs=3, callbacks=[rec])
    assert reader.passes == 3 and rec.begin["steps"] is None and rec.batches == 30
    _assert_same_weights(a, b, dtype)


def test_validation_data_as_memmaps(backend, dtype, tmp_path):
    X, y = _data()
    Xv, yv = _data(60, seed=1)
    mv, myv = _memmap(tmp_path, "xv.dat", Xv), _memmap(tmp_path, "yv.dat", yv)
    # the settings of test_validation_data_as_iterable's in-memory fit: on JAX its epoch program, compiled once
    kw = dict(loss="bce", epochs=2, batch_size=BATCH, shuffle=False, metrics=["accuracy"])
    ha = _model(backend, dtype).fit(X, y, validation_data=(Xv, yv), **kw)
    hb = _model(backend, dtype).fit(X, y, validation_data=(mv, myv), **kw)
    np.testing.assert_allclose(hb["val_loss"], ha["val_loss"], rtol=1e-9 if dtype == "float64" else 1e-5)
    assert hb["val_accuracy"] == ha["val_accuracy"]


def test_validation_split_of_memmaps_keeps_the_held_out_rows_sample_weight(backend, dtype, tmp_path):
    X, y = _data()  # 0.2 holds out the last 30 of 150
    w = np.linspace(0.0, 3.0, X.shape[0])
    mx, my, mw = _memmap(tmp_path, "x.dat", X), _memmap(tmp_path, "y.dat", y), _memmap(tmp_path, "w.dat", w)
    kw = dict(loss="bce", epochs=2, batch_size=BATCH, metrics=["accuracy"])
    split = _model(backend, dtype).fit(mx, my, sample_weight=mw, validation_split=0.2, **kw)
    given = _model(backend, dtype).fit(X[:120], y[:120], sample_weight=w[:120],
                                       validation_data=(X[120:], y[120:], w[120:]), **kw)
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(split[key], given[key], rtol=1e-9 if dtype == "float64" else 1e-5, err_msg=key)


def test_one_shot_generator_without_steps_ends_the_epoch(backend, dtype):
    X, y = _data()
    rec = Recorder()
    m = _model(backend, dtype)
    history = m.fit((b for b in _batches(X, y, BATCH)), loss="bce", epochs=1, callbacks=[rec])
    assert rec.begin["steps"] is None and rec.batches == 10 and len(history) == 1


def test_validation_data_as_iterable(backend, dtype):
    X, y = _data()
    Xv, yv = _data(60, seed=1)
    a, b, c = _model(backend, dtype), _model(backend, dtype), _model(backend, dtype)
    kw = dict(loss="bce", epochs=2, batch_size=BATCH, shuffle=False, metrics=["accuracy"])
    ha = a.fit(X, y, validation_data=(Xv, yv), **kw)
    hb = b.fit(X, y, validation_data=_batches(Xv, yv, 2 * BATCH), **kw)

    def endless():
        while True:
            yield from _batches(Xv, yv, BATCH)

    hc = c.fit(X, y, validation_data=endless(), validation_steps=4, **kw)
    for h in (hb, hc):
        np.testing.assert_allclose(h["val_loss"], ha["val_loss"], rtol=1e-9 if dtype == "float64" else 1e-5)
        assert h["val_accuracy"] == ha["val_accuracy"]


def test_evaluate_and_predict_on_iterables_equal_arrays(backend, dtype):
    X, y = _data()
    w = np.linspace(0.5, 2.0, X.shape[0])
    m = _model(backend, dtype)
    m.fit(X, y, loss="bce", epochs=1, batch_size=BATCH)
    tol = 1e-12 if dtype == "float64" else 1e-6
    want = m.evaluate(X, y, metrics=["accuracy", "f1"], sample_weight=w)
    for source in (_batches(X, y, BATCH, w), iter(_batches(X, y, BATCH, w))):
        got = m.evaluate(source, metrics=["accuracy", "f1"])
        assert got["loss"] == pytest.approx(want["loss"], abs=tol)
        assert got["accuracy"] == want["accuracy"] and got["f1"] == pytest.approx(want["f1"], abs=tol)
    P = m.backend.to_host(m.predict(X))
    for source in ([b[0] for b in _batches(X, y, BATCH)], (b[0] for b in _batches(X, y, BATCH)),
                   _batches(X, y, BATCH)):
        np.testing.assert_allclose(m.backend.to_host(m.predict(source)), P, atol=tol, rtol=0)
    got = m.backend.to_host(m.predict(iter([b[0] for b in _batches(X, y, BATCH)]), steps=2))
    np.testing.assert_allclose(got, P[:2 * BATCH], atol=tol, rtol=0)


def test_nested_list_is_still_one_array():
    m = _model("numpy", "float64")
    X = [[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 0.0, 1.0]]
    assert m.predict(X).shape == (2, 1)


def test_rows_as_tuples_are_one_array_in_predict_as_in_fit_and_evaluate():
    """A list of rows written as tuples was read as (X, ...) batches whose X was a number: "X of batch 0 must be
    2-D", while fit and evaluate took the same rows as one array."""
    m = _model("numpy", "float64")
    rows = [(0.0, 1.0, 2.0, 3.0), (1.0, 0.0, 0.0, 1.0), (np.float64(2.0), 1.0, 0.5, 0.0)]
    want = m.predict(np.array(rows, dtype=np.float64))
    np.testing.assert_array_equal(m.predict(rows), want)
    np.testing.assert_array_equal(m.predict(tuple(rows)), want)
    assert m.evaluate(rows, [0.0, 1.0, 1.0], loss="bce")["loss"] == m.evaluate(np.array(rows), [0.0, 1.0, 1.0])["loss"]


# -- (c) memory stays bounded -----------------------------------------------------------------------
def _rss_anon_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    pytest.skip("/proc/self/status has no RssAnon (not Linux)")


def test_training_on_memmap_4x_the_memory_budget_keeps_rss_bounded(tmp_path):
    """A 50 MiB float32 memmap trains one epoch with under 12 MiB of memory growth.

    What is measured: RssAnon from /proc/self/status, the process's anonymous
    (heap) resident memory, sampled every few milliseconds by a thread during
    `fit`; the growth is its peak minus its value before `fit`. VmRSS would also
    count the memmap's pages that were read (RssFile): those are the kernel's page
    cache, shared and dropped under memory pressure without any swap, so they are
    not memory the process holds on to. The test would fail if any step copied X
    (or a shuffled X) into memory: that alone is 50 MiB of RssAnon (the growth
    without a copy is about 3 MiB: the shuffled index, y, one batch). 50 MiB rather
    than more: writing and reading the file is most of this test's time.
    """
    n, f = 2**17, 100  # 2**17 rows * 100 * 4 bytes = 50 MiB
    budget = 12 * 2**20
    path = tmp_path / "big.dat"
    mm = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, f))
    rng = np.random.default_rng(0)
    chunk = 2**16
    for start in range(0, n, chunk):  # written in chunks: never the whole array in memory at once
        mm[start:start + chunk] = rng.standard_normal((chunk, f), dtype=np.float32)
    mm.flush()
    del mm
    X = np.memmap(path, dtype=np.float32, mode="r", shape=(n, f))
    assert X.nbytes >= 4 * budget
    y = (np.arange(n) % 2).astype(np.float32)  # 0.5 MB, in memory like most targets
    model = nnx.Sequential(nnx.Dense(f, 8), nnx.ReLU(), nnx.Dense(8, 1), nnx.Sigmoid(), backend="numpy", seed=0)

    base = _rss_anon_bytes()
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_anon_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        history = model.fit(X, y, loss="bce", epochs=1, batch_size=2048)
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _rss_anon_bytes())
    growth = peak[0] - base
    print(f"RssAnon growth {growth / 2**20:.1f} MiB for a {X.nbytes / 2**20:.0f} MiB memmap "
          f"(budget {budget / 2**20:.0f} MiB)")
    assert np.isfinite(history["loss"][0])
    assert growth < budget, f"RssAnon grew by {growth / 2**20:.1f} MiB, budget {budget / 2**20:.0f} MiB"


# -- (d) clear errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("prefetch", [True, False])
def test_mismatched_rows_in_a_batch(prefetch):
    X, y = _data()
    batches = _batches(X, y, 16)
    batches[1] = (batches[1][0], batches[1][1][:-1])
    with pytest.raises(ValueError, match=r"X of batch 2 has 16 samples but y of batch 2 has 15"):
        _model("numpy", "float64").fit(batches, loss="bce", prefetch=prefetch)
    assert _no_prefetch_threads()


def test_generator_with_wrong_shapes():
    X, y = _data()

    def gen():
        yield X[:16], y[:16]
        yield X[16:32, :3], y[16:32]

    with pytest.raises(ValueError, match=r"X of batch 2 has 3 features but the model expects 4"):
        _model("numpy", "float64").fit(gen(), loss="bce")
    with pytest.raises(TypeError, match=r"batch 1 must be a tuple \(X, y\) or \(X, y, sample_weight\)"):
        _model("numpy", "float64").fit(iter([X[:16]]), loss="bce")
    with pytest.raises(ValueError, match=r"y of batch 1 for binary cross-entropy must lie in \[0, 1\]"):
        _model("numpy", "float64").fit([(X[:16], y[:16] + 3)], loss="bce")


def test_exhausted_one_shot_generator():
    X, y = _data()
    rec = Recorder()
    with pytest.raises(ValueError, match=r"one-shot iterator .* is exhausted.*steps_per_epoch"):
        _model("numpy", "float64").fit(iter(_batches(X, y, 16)), loss="bce", epochs=2, callbacks=[rec])
    assert rec.ended and rec.batches == 10
    with pytest.raises(ValueError, match=r"validation_data is a one-shot iterator .* exhausted"):
        _model("numpy", "float64").fit(X, y, loss="bce", epochs=2, validation_data=iter(_batches(X, y, 50)))
    with pytest.raises(ValueError, match=r"X yielded no batches"):
        _model("numpy", "float64").fit([], loss="bce")


def test_memmap_row_mismatch_and_misused_arguments(tmp_path):
    X, y = _data()
    mx = _memmap(tmp_path, "x.dat", X)
    m = _model("numpy", "float64")
    with pytest.raises(ValueError, match=r"X has 150 samples but y has 149"):
        m.fit(mx, y[:-1], loss="bce")
    with pytest.raises(ValueError, match=r"steps_per_epoch applies to an iterable of batches"):
        m.fit(X, y, loss="bce", steps_per_epoch=3)
    with pytest.raises(ValueError, match=r"sample_weight cannot be passed with an iterable of batches"):
        m.fit(_batches(X, y, 16), loss="bce", sample_weight=np.ones(150))
    with pytest.raises(TypeError, match=r"y is required when X is an array"):
        m.fit(X, loss="bce")
    with pytest.raises(ValueError, match=r"prefetch must be"):
        m.fit(_batches(X, y, 16), loss="bce", prefetch=-1)


# -- (e) a failing generator ------------------------------------------------------------------------
class DataError(Exception):
    pass


@pytest.mark.parametrize("prefetch", [True, False])
def test_generator_error_mid_epoch_propagates_and_callbacks_end(prefetch):
    X, y = _data()

    def gen():
        yield from _batches(X, y, 16)[:3]
        raise DataError("disk went away")

    rec = Recorder()
    m = _model("numpy", "float64")
    with pytest.raises(DataError, match="disk went away"):
        m.fit(gen(), loss="bce", epochs=2, callbacks=[rec], prefetch=prefetch)
    assert rec.ended and rec.batches == 3
    assert _no_prefetch_threads()


def test_error_in_the_step_stops_the_prefetch_thread(tmp_path):
    X, y = _data(2000)
    mx, my = _memmap(tmp_path, "x.dat", X), _memmap(tmp_path, "y.dat", y)

    class Boom(Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == 2:
                raise DataError("callback failed")

    rec = Recorder()
    with pytest.raises(DataError):
        _model("numpy", "float64").fit(mx, my, loss="bce", batch_size=8, callbacks=[Boom(), rec])
    assert rec.ended
    assert _no_prefetch_threads()


def test_interrupt_during_memmap_training_returns_history(tmp_path):
    """Ctrl-C (KeyboardInterrupt between steps) ends the run cleanly and stops the prefetch thread."""
    X, y = _data(2000)
    mx = _memmap(tmp_path, "x.dat", X)

    class CtrlC(Callback):
        def on_batch_end(self, batch, logs=None):
            if batch == 3:
                raise KeyboardInterrupt

    m = _model("numpy", "float64")
    history = m.fit(mx, y, loss="bce", batch_size=8, epochs=3, callbacks=[CtrlC()])
    assert history.interrupted
    assert _no_prefetch_threads()


def test_steps_beyond_what_the_iterable_holds_warn():
    """Keras warns when the input runs out before steps_per_epoch / steps; a short epoch must not pass silently."""
    X, y = _data()
    batches = _batches(X, y, 50)  # 3 batches
    m, rec = _model("numpy", "float64"), Recorder()
    with pytest.warns(UserWarning, match=r"X ran out after 3 of the 5 batches steps_per_epoch asks for"):
        m.fit(batches, loss="bce", epochs=1, steps_per_epoch=5, callbacks=[rec], prefetch=False)
    assert rec.batches == 3
    with pytest.warns(UserWarning, match=r"validation_data ran out after 3 of the 4 batches validation_steps"):
        m.fit(X, y, loss="bce", validation_data=batches, validation_steps=4)
    with pytest.warns(UserWarning, match=r"X ran out after 3 of the 4 batches steps asks for"):
        m.evaluate(iter(batches), steps=4)
    with pytest.warns(UserWarning, match=r"X ran out after 3 of the 7 batches steps asks for"):
        assert m.predict([b[0] for b in batches], steps=7).shape == (150, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.fit(batches, loss="bce", epochs=1, steps_per_epoch=3)  # exactly enough: no warning
        m.evaluate(batches)


def test_validation_data_and_validation_split_together_are_refused(tmp_path):
    """fit used the split and dropped validation_data without a word (Keras documents the opposite)."""
    X, y = _data()
    Xv, yv = _data(60, seed=1)
    for data in ((X, y), (_memmap(tmp_path, "x.dat", X), y)):
        m = _model("numpy", "float64")
        with pytest.raises(ValueError, match=r"validation_data or validation_split, not both"):
            m.fit(*data, loss="bce", validation_data=(Xv, yv), validation_split=0.2)
        assert m.epochs_trained == 0


class EagerReader:
    """A re-iterable whose ``__iter__`` starts a pass at once, as a seeded torch DataLoader draws from its
    generator on ``iter()`` (an extra call shifts every later shuffle)."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def test_a_re_iterable_is_iterated_once_per_pass(backend, dtype):
    """fit called iter() once more to tell a generator from a re-iterable: a seeded DataLoader then shuffled
    otherwise than the same loader in a PyTorch loop."""
    X, y = _data()
    train, val = EagerReader(_batches(X, y, BATCH)), EagerReader(_batches(X, y, 2 * BATCH))
    m = _model(backend, dtype)
    m.fit(train, loss="bce", epochs=3, validation_data=val)
    assert (train.passes, val.passes) == (3, 3)
    m.evaluate(val)
    inputs = EagerReader([b[0] for b in _batches(X, y, BATCH)])
    m.predict(inputs)
    assert (val.passes, inputs.passes) == (4, 1)


class CountingRows(SortedReadsOnly):
    """An array-like that records the most rows one read asked for."""

    def __init__(self, a):
        super().__init__(a)
        self.most = 0

    def __getitem__(self, key):
        block = super().__getitem__(key)
        self.most = max(self.most, block.shape[0])
        return block


def test_predict_and_evaluate_read_host_data_in_batches_without_batch_size(backend, dtype, monkeypatch):
    """Without batch_size, predict and evaluate read a memmap or array-like whole (the in-memory default,
    one batch), which for data bigger than memory is what reading it batch by batch exists to avoid."""
    from nnx.training import data

    monkeypatch.setattr(data, "HOST_BATCH_BYTES", BATCH * 4 * 8, raising=False)  # BATCH rows of 4 float64 features
    X, y = _data(150)
    m = _model(backend, dtype)
    Xs, ys = CountingRows(X), CountingRows(y)
    tol = 1e-12 if dtype == "float64" else 1e-6
    np.testing.assert_allclose(m.backend.to_host(m.predict(Xs)), m.backend.to_host(m.predict(X)), atol=tol, rtol=0)
    assert Xs.most == BATCH
    got = m.evaluate(Xs, ys, metrics=["accuracy"])
    want = m.evaluate(X, y, metrics=["accuracy"])
    assert got["loss"] == pytest.approx(want["loss"], abs=tol) and got["accuracy"] == want["accuracy"]
    assert Xs.most == ys.most == BATCH
    m.predict(Xs, batch_size=150)  # a batch_size given is kept
    assert Xs.most == 150


def test_predict_takes_list_batches_as_a_torch_dataloader_yields_them(backend, dtype):
    """A DataLoader over a TensorDataset yields [X, y] lists (and [X] for X alone): fit and evaluate read
    them, predict refused them as one ragged array (or took [X] for an array of one more axis)."""
    X, y = _data(37)
    m = _model(backend, dtype)
    want = m.backend.to_host(m.predict(X))
    tol = 1e-12 if dtype == "float64" else 1e-6
    pairs = [[X[i:i + 8], y[i:i + 8]] for i in range(0, 37, 8)]
    for source in (pairs, iter(pairs), [[b[0]] for b in pairs]):
        np.testing.assert_allclose(m.backend.to_host(m.predict(source)), want, atol=tol, rtol=0)
    rows = [list(X[i:i + 8]) for i in range(0, 37, 8)]  # a batch given as a list of rows is still one batch
    np.testing.assert_allclose(m.backend.to_host(m.predict(iter(rows))), want, atol=tol, rtol=0)


def test_shuffle_and_check_finite_must_be_bools(tmp_path):
    """Keras's shuffle="batch" (shuffle in batch-sized chunks, for HDF5) shuffled every row here, and
    check_finite="no" checked: a string where a flag belongs is refused, before any step."""
    X, y = _data()
    for data in ((X, y), (_memmap(tmp_path, "x.dat", X), y)):
        m = _model("numpy", "float64")
        with pytest.raises(TypeError, match=r"shuffle must be True or False, got 'batch'"):
            m.fit(*data, loss="bce", shuffle="batch")
        with pytest.raises(TypeError, match=r"check_finite must be True or False, got 'no'"):
            m.fit(*data, loss="bce", check_finite="no")
        assert m.epochs_trained == 0
    m = _model("numpy", "float64")
    with pytest.raises(TypeError, match=r"check_finite must be True or False, got None"):
        m.predict(X, check_finite=None)
    with pytest.raises(TypeError, match=r"check_finite must be True or False, got 'no'"):
        m.evaluate(X, y, check_finite="no")
    m.fit(X, y, loss="bce", shuffle=0, check_finite=1)  # 0 and 1 are flags, as elsewhere


def test_y_beside_an_iterable_and_a_memmap_without_y_are_named(tmp_path):
    """A generator with y was cast to an array ("X must hold numbers, got dtype object"), and evaluate on a
    memmap without y blamed its batches ("batch 0 has no targets")."""
    X, y = _data()
    m = _model("numpy", "float64")
    for call in (lambda gen: m.fit(gen, y, loss="bce"), lambda gen: m.evaluate(gen, y)):
        with pytest.raises(ValueError, match=r"y cannot be passed with an iterable of batches"):
            call(b[0] for b in _batches(X, y, 16))
    with pytest.raises(TypeError, match=r"y is required when X is an array"):
        m.evaluate(_memmap(tmp_path, "x.dat", X))
    assert m.epochs_trained == 0


def test_validation_split_takes_a_numpy_float32(tmp_path):
    """np.float32(0.2) (a fraction read from a config array) was refused as "must be in [0, 1), got 0.2"."""
    X, y = _data()
    for data in ((X, y), (_memmap(tmp_path, "x.dat", X), y)):
        kw = dict(loss="bce", epochs=1, batch_size=16)
        want = _model("numpy", "float64").fit(*data, validation_split=0.25, **kw)
        got = _model("numpy", "float64").fit(*data, validation_split=np.float32(0.25), **kw)
        assert got["val_loss"] == want["val_loss"]


class StaleReader:
    """A re-iterable in name only: ``__iter__`` hands back one iterator, which a second pass finds spent."""

    def __init__(self, batches):
        self._it = iter(batches)

    def __iter__(self):
        return self._it


def test_a_re_iterable_that_does_not_start_over_is_named():
    """Its second pass said "X yielded no batches; at least one is needed", which the first pass belied."""
    X, y = _data()
    rec = Recorder()
    with pytest.raises(ValueError, match=r"X yielded no batches for pass 2 \(the pass before got 10\).*__iter__"):
        _model("numpy", "float64").fit(StaleReader(_batches(X, y, 16)), loss="bce", epochs=2, callbacks=[rec])
    assert rec.batches == 10 and rec.ended


def _reused_buffers(X, y, size, w=None):
    """A generator that fills the same arrays for every batch (as a loader with preallocated buffers does)."""
    bx, by = np.empty((size, X.shape[1]), X.dtype), np.empty(size, y.dtype)
    bw = None if w is None else np.empty(size, w.dtype)
    for i in range(0, X.shape[0] - size + 1, size):
        bx[:], by[:] = X[i:i + size], y[i:i + size]
        if bw is None:
            yield bx, by
        else:
            bw[:] = w[i:i + size]
            yield bx, by, bw


@pytest.mark.parametrize("prefetch", [True, False])
def test_a_generator_that_reuses_its_buffers_gives_the_batches_it_yielded(backend, dtype, prefetch):
    """The prepared batch shared the generator's arrays on NumPy, torch and array_api_strict: the prefetch thread
    refilled them while the step still read them, and the epoch's metrics read every batch's targets at the end,
    all of them the last batch's by then."""
    X, y = _data()
    w = np.linspace(0.5, 2.0, X.shape[0])
    a, b = _model(backend, dtype), _model(backend, dtype)
    ha = a.fit(X, y, sample_weight=w, loss="bce", epochs=1, batch_size=BATCH, shuffle=False, metrics=["accuracy"])
    hb = b.fit(_reused_buffers(X, y, BATCH, w), loss="bce", epochs=1, metrics=["accuracy"], prefetch=prefetch)
    _assert_same_weights(a, b, dtype)
    assert hb["accuracy"] == ha["accuracy"]
    want = a.evaluate(X, y, metrics=["accuracy"], sample_weight=w)
    got = a.evaluate(_reused_buffers(X, y, BATCH, w), metrics=["accuracy"], prefetch=prefetch)
    assert got["accuracy"] == want["accuracy"]
    P = a.backend.to_host(a.predict(X))
    got_P = a.backend.to_host(a.predict((bx for bx, _ in _reused_buffers(X, y, BATCH)), prefetch=prefetch))
    np.testing.assert_allclose(got_P, P, atol=1e-12 if dtype == "float64" else 1e-6, rtol=0)


def test_validation_steps_without_validation_data_is_refused():
    """validation_steps with no validation at all was dropped without a word (a validation pass forgotten)."""
    X, y = _data()
    m = _model("numpy", "float64")
    with pytest.raises(ValueError, match=r"validation_steps=2 .* no validation_data"):
        m.fit(X, y, loss="bce", validation_steps=2)
    with pytest.raises(ValueError, match=r"validation_steps=2 .* no validation_data"):
        m.fit(_batches(X, y, 50), loss="bce", steps_per_epoch=2, validation_steps=2)
    assert m.epochs_trained == 0
