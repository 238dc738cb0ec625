"""Resources nnx must not leave behind or hold: open files, temporary files, threads, the data after fit."""

from __future__ import annotations

import errno
import gc
import os
import threading
import weakref

import numpy as np
import pytest

import nnx
from nnx import io as nnx_io

needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads open files from /proc/self/fd")


def _open_files() -> set[str]:
    """The paths this process holds open (Linux)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            found.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the descriptor listdir itself used, closed by now
    return found


def _model() -> nnx.Sequential:
    return nnx.Sequential(nnx.Dense(3, 2), nnx.ReLU(), nnx.Dense(2, 1), nnx.Sigmoid(), seed=0)


def _data(rows: int = 40) -> tuple[np.ndarray, np.ndarray]:
    X = np.random.default_rng(0).random((rows, 3)).astype("float32")
    return X, (X[:, :1] > 0.5).astype("float32")


@needs_proc
def test_a_save_that_fails_before_writing_closes_its_temporary_file(tmp_path, monkeypatch):
    """chmod refused (a CIFS or FAT mount, a file system that takes no modes) made the save fail with the
    temporary file's descriptor still open: deleted but never closed, one more leaked for every retry."""
    path = tmp_path / "model.npz"
    model = _model()
    model.save(path)
    good = path.read_bytes()
    before = _open_files()

    def refuse(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(nnx_io.os, "chmod", refuse)
    for _ in range(3):
        with pytest.raises(OSError):
            model.save(path)
    monkeypatch.undo()
    assert not {f for f in _open_files() - before if ".nnx-" in f}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
    assert path.read_bytes() == good


@needs_proc
@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("x"),
                                 KeyboardInterrupt()], ids=["disk-full", "error", "ctrl-c"])
def test_a_save_failing_midway_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch, exc):
    path = tmp_path / "model.npz"
    model = _model()
    model.save(path)
    good = path.read_bytes()
    before = _open_files()

    def half_written(handle, **arrays):
        handle.write(b"PK\x03\x04 half a file")
        raise exc

    monkeypatch.setattr(nnx_io.np, "savez", half_written)
    with pytest.raises(type(exc)):
        model.save(path)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]
    assert path.read_bytes() == good
    assert not {f for f in _open_files() - before if ".nnx-" in f}


@needs_proc
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "zip-of-text"])
def test_load_closes_the_file_also_when_it_refuses_it(tmp_path, damage):
    good = tmp_path / "model.npz"
    _model().save(good)
    bad = tmp_path / "bad.npz"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(b"not a zip file at all")
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        import zipfile
        with zipfile.ZipFile(bad, "w") as zf:
            zf.writestr("notes.txt", "hello")
    with pytest.raises(nnx_io.CheckpointError):
        nnx.load(bad)
    nnx.load(good)
    gc.collect()
    assert not {f for f in _open_files() if f.startswith(str(tmp_path))}


def test_fit_predict_and_evaluate_let_the_data_go(tmp_path):
    model = _model()
    X, y = _data(61)
    Xv, yv = _data(23)
    refs = [weakref.ref(a) for a in (X, y, Xv, yv)]
    model.fit(X, y, loss="bce", epochs=2, batch_size=8, verbose=0, validation_data=(Xv, yv), metrics=["accuracy"],
              callbacks=[nnx.callbacks.CSVLogger(tmp_path / "log.csv"),
                         nnx.callbacks.EarlyStopping(monitor="val_loss", restore_best_weights=True)])
    model.predict(Xv, batch_size=8)
    model.evaluate(X, y, batch_size=8)
    del X, y, Xv, yv
    gc.collect()
    assert [r() is None for r in refs] == [True] * 4


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "nnx-prefetch" and t.is_alive()]


@pytest.mark.parametrize("call", ["predict", "evaluate", "validation"])
def test_no_prefetch_thread_outlives_a_source_that_fails(call):
    model = _model()
    X, y = _data()
    model.fit(X, y, loss="bce", epochs=1, verbose=0)

    def batches():
        for _ in range(3):
            yield X[:5] if call == "predict" else (X[:5], y[:5])
        raise OSError("the disk went away")

    with pytest.raises(OSError, match="went away"):
        if call == "predict":
            model.predict(batches())
        elif call == "evaluate":
            model.evaluate(batches())
        else:
            model.fit(X, y, loss="bce", epochs=1, verbose=0, validation_data=batches(), validation_steps=5)
    for thread in _prefetch_threads():
        thread.join(1.0)
    assert not _prefetch_threads()


@pytest.mark.parametrize("mistake", ["gradients-without-bias-columns", "history-of-text", "scores-of-no-class",
                                     "decision-boundary-in-given-axes"])
def test_a_plot_that_fails_leaves_no_figure_open(mistake):
    """pyplot keeps every figure it made until plt.close: one made by a call that then raised was never
    handed back, so it stayed open (memory, and the 'more than 20 figures' warning) with no way to close it."""
    plt = pytest.importorskip("matplotlib.pyplot")
    from nnx import plot

    class NoClasses:
        def predict(self, grid):
            return np.zeros((len(grid), 0))

    given = plt.subplots()[0] if mistake == "decision-boundary-in-given-axes" else None
    before = set(plt.get_fignums())
    with pytest.raises((KeyError, ValueError)):
        if mistake == "gradients-without-bias-columns":
            plot.plot_gradients({f"weight_{s}": np.ones((3, 2)) for s in ("mean", "max", "norm")})
        elif mistake == "history-of-text":
            plot.plot_history({"loss": ["high", "low"]})
        elif mistake == "scores-of-no-class":
            plot.plot_decision_boundary(NoClasses(), np.zeros((4, 2)), np.zeros(4))
        else:
            plot.plot_decision_boundary(NoClasses(), np.zeros((4, 2)), np.zeros(4), ax=given.axes[0])
    try:
        assert set(plt.get_fignums()) == before  # a figure the caller gave stays theirs, open
    finally:
        if given is not None:
            plt.close(given)
