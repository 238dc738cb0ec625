"""Memory with large data: what fit, predict and evaluate allocate beside the data they are given.

NumPy's allocations are traced by `tracemalloc`, so these tests measure them on the
NumPy backend (and on torch where its arrays start as NumPy ones), with data of a few
hundred KB and bounds relative to its size: a step's memory is its batch's, never the data's.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import nnx
from nnx.callbacks import Callback
from nnx.training import data as data_module


def _model(d, width=8, backend="numpy", dtype="float64"):
    return nnx.Sequential(nnx.Dense(d, width), nnx.ReLU(), nnx.Dense(width, 1), nnx.Sigmoid(),
                          backend=backend, dtype=dtype, seed=0)


def _data(n=4000, d=20, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, (X[:, 0] > 0).astype(np.float64)


class BatchPeaks(Callback):
    """The traced peak between one batch's end and the next's, above what was held at the first: what reading
    and running one step allocated."""

    def __init__(self):
        self.peaks, self.held = [], 0

    def on_batch_end(self, batch, logs=None):
        held, peak = tracemalloc.get_traced_memory()
        if batch > 0:
            self.peaks.append(peak - self.held)
        tracemalloc.reset_peak()
        self.held = held


def _step_peaks(fit):
    peaks = BatchPeaks()
    tracemalloc.start()
    try:
        fit(peaks)
    finally:
        tracemalloc.stop()
    assert peaks.peaks
    return max(peaks.peaks)


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_step_gathers_its_batch_not_the_whole_X_whatever_its_memory_order(monkeypatch, order):
    # a Fortran-ordered X (pandas' to_numpy() of a float frame, X.T of a transposed array) made
    # NumPy's take copy all of X to gather each shuffled batch: 1x the data per step, 100x slower
    monkeypatch.setattr(data_module, "COPY_LIMIT", 0)  # each batch gathered from X, as for data above 16 MiB
    X, y = _data()
    X = np.asarray(X, order=order)
    model = _model(X.shape[1])
    model.fit(X, y, loss="bce", epochs=1, batch_size=64)  # what a model allocates once (its recorded passes)
    peak = _step_peaks(lambda cb: model.fit(X, y, epochs=1, batch_size=64, callbacks=[cb]))
    assert peak < 0.25 * X.nbytes, f"one step allocated {peak} bytes for {X.nbytes} bytes of X"


def test_a_step_reads_its_batch_of_a_fortran_ordered_memmap_not_the_file(tmp_path):
    # np.save of a Fortran-ordered array writes a Fortran-ordered file; np.load(mmap_mode="r") maps it so,
    # and NumPy's take read the whole file into memory for every batch
    X, y = _data()
    np.save(tmp_path / "X.npy", np.asfortranarray(X))
    mm = np.load(tmp_path / "X.npy", mmap_mode="r")
    assert isinstance(mm, np.memmap) and mm.flags.f_contiguous
    model = _model(X.shape[1])
    model.fit(mm, y, loss="bce", epochs=1, batch_size=64, prefetch=False)  # what a model allocates once
    peak = _step_peaks(lambda cb: model.fit(mm, y, epochs=1, batch_size=64, prefetch=False, callbacks=[cb]))
    assert peak < 0.25 * X.nbytes, f"one step allocated {peak} bytes for a {X.nbytes}-byte memmap"


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_fortran_ordered_X_is_cast_into_one_c_ordered_copy(backend):
    # torch shares only C-ordered memory: the cast kept NumPy's order and torch then copied again (2x the data)
    pytest.importorskip(backend)
    X, _ = _data()
    model = _model(X.shape[1], backend=backend, dtype="float32")
    XF = np.asfortranarray(X)
    tracemalloc.start()
    try:
        X_d = model.prepare_inputs(XF)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    host = model.backend.to_host(X_d)
    np.testing.assert_array_equal(host, X.astype(np.float32))
    assert host.flags.c_contiguous
    assert peak < 1.2 * X.nbytes // 2, f"casting {X.nbytes // 2} bytes of float32 allocated {peak}"


@pytest.mark.parametrize("how", ["validation_data", "validation_split"])
def test_validation_runs_in_fits_batches_not_all_rows_at_once(how):
    # the validation pass ran every held-out row through the model at once: each layer's activations of all of
    # them (here 2000 rows x 256 units, 4 MB, beside 128 KB of data), what batch_size kept training from holding
    X, y = _data(n=4000, d=8)
    Xv, yv = X[2000:], y[2000:]
    model = _model(8, width=256)
    val = {"validation_split": 0.5} if how == "validation_split" else {"validation_data": (Xv, yv)}
    X, y = (X, y) if how == "validation_split" else (X[:2000], y[:2000])
    model.fit(X[:100], y[:100], loss="bce", epochs=1, batch_size=50)  # what a first fit allocates once
    tracemalloc.start()
    try:
        history = model.fit(X, y, epochs=2, batch_size=50, **val)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    activations = 2000 * 256 * 8
    assert peak < activations / 4, f"fit with {how} allocated {peak} bytes"
    # the same loss as evaluating them at once, up to the rounding of the batches' mean
    assert history["val_loss"][-1] == pytest.approx(model.evaluate(Xv, yv)["loss"], rel=1e-12)


def _wide_trained(width=300):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, width))
    model = nnx.Sequential(nnx.Dense(width, width), nnx.ReLU(), nnx.Dense(width, width), nnx.ReLU(),
                           nnx.Dense(width, 1), backend="numpy", dtype="float64", seed=0)
    model.fit(X, X[:, :1], loss="mse", optimizer="adam", epochs=1, batch_size=64)
    params = sum(int(p.value.size) * p.value.itemsize for p in model.parameters())
    return model, params


def _peak(call):
    tracemalloc.start()
    try:
        held = tracemalloc.get_traced_memory()[0]
        result = call()
        return tracemalloc.get_traced_memory()[1] - held, result
    finally:
        tracemalloc.stop()


def test_saving_writes_the_arrays_without_copying_them_all_first(tmp_path):
    # save copied every weight and every optimizer state array (state_dict snapshots) before writing the first:
    # a second model plus optimizer in memory (3.5x the weights with Adam), where torch.save holds no copy
    model, params = _wide_trained()
    model.save(tmp_path / "warm.npz")  # imports and first-call caches out of the way
    peak, _ = _peak(lambda: model.save(tmp_path / "m.npz"))
    assert peak < 1.5 * params, f"save held {peak / params:.2f}x the weights' bytes"
    loaded = nnx.load(tmp_path / "m.npz")
    for a, b in zip(model.parameters(), loaded.parameters(), strict=True):
        np.testing.assert_array_equal(a.value, b.value)
    for i, entry in model.optimizer.state.items():
        for k, v in entry.items():
            np.testing.assert_array_equal(v, loaded.optimizer.state[i][k])


def test_moving_a_model_copies_each_array_once():
    # to() took a state_dict (a copy of every weight, and of the optimizer's state) and then built the new
    # model from it (another copy): 1x the weights and 2x the Adam state more than the new model itself
    model, params = _wide_trained()
    model.to(dtype="float64")
    peak, other = _peak(lambda: model.to(dtype="float64"))
    assert peak < 4.5 * params, f"to() held {peak / params:.2f}x the weights' bytes (the new model holds 3x)"
    for a, b in zip(model.parameters(), other.parameters(), strict=True):
        np.testing.assert_array_equal(a.value, b.value)
        assert not np.shares_memory(a.value, b.value)
    for i, entry in model.optimizer.state.items():
        for k, v in entry.items():
            np.testing.assert_array_equal(v, other.optimizer.state[i][k])
            assert not np.shares_memory(v, other.optimizer.state[i][k])


def test_keeping_the_best_weights_copies_them_once():
    # EarlyStopping(restore_best_weights=True) copied the state_dict it took, itself a copy of every weight:
    # 2x the weights at each improvement where one copy is what it keeps
    from nnx.callbacks import EarlyStopping

    model, params = _wide_trained()
    stop = EarlyStopping("loss", patience=2, restore_best_weights=True)
    stop.set_model(model)
    stop.on_train_begin({})
    stop.on_epoch_end(0, {"loss": 2.0})
    peak, _ = _peak(lambda: stop.on_epoch_end(1, {"loss": 1.0}))
    assert peak < 1.5 * params, f"keeping the best weights held {peak / params:.2f}x their bytes"
    for p in model.parameters():
        kept = stop.best_weights[p.name]
        np.testing.assert_array_equal(kept, p.value)
        assert not np.shares_memory(kept, p.value)


def test_loading_lets_the_files_weights_go_once_the_model_holds_its_own(tmp_path):
    # load kept every array it read from the file until it returned, so while the optimizer's state was rebuilt
    # the file's weights were held beside the model's copy of them: 7.0x the weights' bytes at peak (Adam), now 6.0x
    model, params = _wide_trained()
    tmp = tmp_path / "m.npz"
    model.save(tmp)
    nnx.load(tmp)  # imports and first-call caches out of the way
    peak, loaded = _peak(lambda: nnx.load(tmp))
    assert peak < 6.5 * params, f"load held {peak / params:.2f}x the weights' bytes (the model and Adam hold 3x)"
    for a, b in zip(model.parameters(), loaded.parameters(), strict=True):
        np.testing.assert_array_equal(a.value, b.value)
