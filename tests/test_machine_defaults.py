"""What nnx does around training and inference, outside the step: copies of the data, compiled programs, threads.

Counts of copies, compiles and settings, never timings, so these hold on a busy machine.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import pytest

import nnx
from nnx.training import data as data_module


def _xy(n: int = 300, features: int = 7, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, features)).astype(np.float32)
    return X, (X[:, 0] - 0.5 * X[:, 1]).astype(np.float32)


def _full_gathers(monkeypatch, rows: int, features: int) -> list[tuple[int, ...]]:
    """Calls of the numpy backend's ``xp.take`` that gather all `rows` rows of a (rows, features) X."""
    seen: list[tuple[int, ...]] = []
    xp = nnx.get_backend("numpy").xp
    take = xp.take

    def counting(a, indices, *args, **kwargs):
        out = take(a, indices, *args, **kwargs)
        if getattr(a, "ndim", 0) == 2 and a.shape[1] == features and out.shape[0] == rows:
            seen.append(out.shape)
        return out

    monkeypatch.setattr(xp, "take", counting)
    return seen


def test_sklearn_estimator_gathers_each_batch_of_a_big_X_instead_of_copying_it_every_epoch(monkeypatch):
    # scikit-learn's MLP gathers X[sample_idx[batch]] per batch; nnx.sklearn took all of X in shuffled order
    # every epoch, holding a big X twice, where fit (ArrayBatches) gathers batches above COPY_LIMIT
    pytest.importorskip("sklearn")
    from nnx.sklearn import MLPRegressor

    X, y = _xy()
    limit_16_mib = data_module.COPY_LIMIT

    def run(limit: int, count: bool) -> tuple[list[float], list]:
        monkeypatch.setattr(data_module, "COPY_LIMIT", limit)
        est = MLPRegressor(hidden_layer_sizes=(8,), max_iter=3, batch_size=64, random_state=0, backend="numpy",
                           tol=0.0)
        with pytest.warns(Warning):  # ConvergenceWarning after max_iter
            with monkeypatch.context() as m:
                seen = _full_gathers(m, X.shape[0], X.shape[1]) if count else []
                est.fit(X, y)
        return list(est.loss_curve_), seen

    copied, _ = run(limit_16_mib, False)
    gathered, seen = run(0, True)  # as for X above 16 MiB
    assert seen == [], f"X gathered whole {len(seen)} times in 3 epochs"
    _, seen = run(limit_16_mib, True)
    assert len(seen) == 3  # a small X is still copied once an epoch (contiguous batches), as fit does
    assert gathered == copied  # the same rows in the same order: the same numbers


def test_fit_and_predict_leave_thread_settings_alone_in_one_process():
    # thread limits are for ranks sharing a host (distributed); a single process keeps every core
    torch = pytest.importorskip("torch")
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import os

    before = (torch.get_num_threads(), [p["num_threads"] for p in threadpoolctl.threadpool_info()],
              {k: v for k, v in os.environ.items() if k.endswith("_NUM_THREADS")})
    X, y = _xy(100)
    for name in ("numpy", "torch"):
        model = nnx.Sequential(nnx.Dense(7, 8), nnx.ReLU(), nnx.Dense(8, 1), backend=name, seed=0)
        model.fit(X, y, loss="mse", epochs=1, batch_size=32, validation_data=(X, y))
        model.predict(X)
    after = (torch.get_num_threads(), [p["num_threads"] for p in threadpoolctl.threadpool_info()],
             {k: v for k, v in os.environ.items() if k.endswith("_NUM_THREADS")})
    assert after == before


def test_float32_numpy_data_is_not_copied_to_train_or_predict_on_numpy():
    X, y = _xy(50)
    model = nnx.Sequential(nnx.Dense(7, 4), nnx.ReLU(), nnx.Dense(4, 1), backend="numpy", seed=0)
    assert np.shares_memory(model.prepare_inputs(X), X)


class _CompiledNames(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Compiling jit("):
            self.names.append(message[len("Compiling jit("):message.index(")")])


@contextlib.contextmanager
def _compiled_names(jax) -> Iterator[list[str]]:
    """The names of the programs JAX compiles inside the block, in order (``jit(name)`` in its log)."""
    handler, logger = _CompiledNames(), logging.getLogger("jax")
    level, old = logger.level, jax.config.jax_log_compiles
    jax.config.update("jax_log_compiles", True)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.names
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        jax.config.update("jax_log_compiles", old)


def test_jax_fit_predict_and_evaluate_compile_nothing_when_called_again_on_the_same_shapes():
    jax = pytest.importorskip("jax")
    X, y = _xy(100)
    model = nnx.Sequential(nnx.Dense(7, 8), nnx.ReLU(), nnx.Dense(8, 1), backend="jax", seed=0)
    kwargs = dict(loss="mse", epochs=2, batch_size=32, validation_data=(X[:50], y[:50]), metrics=["mae"])
    model.fit(X, y, **kwargs)
    model.predict(X, batch_size=32)
    model.evaluate(X, y, batch_size=32)
    with _compiled_names(jax) as names:
        model.fit(X, y, **kwargs)
        model.predict(X, batch_size=32)
        model.evaluate(X, y, batch_size=32)
    assert names == [], f"{len(names)} programs compiled again for the same shapes"


def test_jax_fit_checks_and_splits_its_data_in_one_program_each_and_checks_held_out_rows_once():
    # run op by op, JAX compiles every operation as a program of its own for each new shape (about 25 ms on a
    # CPU): fit's check of BCE targets (>= 0, <= 1, and, all), its finite checks (a sum per array), the split
    # of validation_split (a slice per array and part) and the same checks again on the held-out rows made
    # about 20 programs on a first fit
    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(233, 7)).astype(np.float32)  # a row count no other test of this process fits
    y = (X[:, 0] > 0).astype(np.float32)
    model = nnx.Sequential(nnx.Dense(7, 8), nnx.ReLU(), nnx.Dense(8, 1), nnx.Sigmoid(), backend="jax", seed=0)
    with _compiled_names(jax) as names:
        model.fit(X, y, loss="bce", epochs=1, batch_size=32, validation_split=0.2)
    single_ops = {"greater_equal", "less_equal", "bitwise_and", "_reduce_all", "_reduce_sum", "dynamic_slice",
                  "slice"}
    assert not single_ops & set(names), names
    # all of X and y, once: the held-out rows are part of them
    assert names.count("_in_unit_interval") == names.count("_sums") == 1
    assert names.count("_split_rows") == 1


def test_jax_load_checks_the_files_weights_on_the_host_and_the_optimizer_state_in_one_program(tmp_path):
    # the finite check summed each array on the device, one program per shape: loading an Adam model of three
    # layers compiled 18 of them on JAX (about 0.4 s on a CPU) to read a few kilobytes
    jax = pytest.importorskip("jax")
    X = np.random.default_rng(2).normal(size=(40, 11)).astype(np.float32)  # widths no other test of this file has
    saved = nnx.Sequential(nnx.Dense(11, 13), nnx.ReLU(), nnx.Dense(13, 3), nnx.ReLU(), nnx.Dense(3, 1), seed=0)
    saved.fit(X, X[:, :1], loss="mse", optimizer="adam", epochs=1)
    saved.save(tmp_path / "model.npz")
    with _compiled_names(jax) as names:
        loaded = nnx.load(tmp_path / "model.npz", backend="jax")
    assert "_reduce_sum" not in names, names
    assert names.count("_sums") == 1  # the optimizer's state, all of it
    for got, want in zip(loaded.parameters(), saved.parameters(), strict=True):
        np.testing.assert_array_equal(np.asarray(got.value), want.value)


def test_sklearn_estimator_on_jax_runs_each_batchs_passes_as_one_program_with_numpys_numbers():
    # scikit-learn's loop runs the step's stages one by one (its objective scales the gradients between the backward
    # and the update), so the step cannot be one program; its forward, loss and backward ran op by op on JAX, each
    # operation dispatched alone: 13.6 ms an epoch of ten 200-row batches where NumPy took 1.7 ms
    jax = pytest.importorskip("jax")
    pytest.importorskip("sklearn")
    from nnx.sklearn import MLPClassifier

    rng = np.random.default_rng(3)
    X = rng.normal(size=(120, 5))
    y = (X[:, 0] + 0.3 * X[:, 1] > 0).astype(int)
    fits = {}
    for backend in ("numpy", "jax"):
        clf = MLPClassifier(hidden_layer_sizes=(6,), max_iter=4, batch_size=40, alpha=1e-3, random_state=0,
                            backend=backend, dtype="float64", tol=0.0)
        with pytest.warns(Warning), _compiled_names(jax) as names:  # ConvergenceWarning after max_iter
            clf.fit(X, y)
        fits[backend] = clf, names
    (plain, _), (compiled, names) = fits["numpy"], fits["jax"]
    assert "_passes" in names, names
    np.testing.assert_allclose(compiled.loss_curve_, plain.loss_curve_, rtol=1e-12)
    for got, want in zip(compiled.coefs_ + compiled.intercepts_, plain.coefs_ + plain.intercepts_, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_progress_lines_without_a_terminal_add_no_per_batch_hook_to_the_steps(monkeypatch):
    # verbose=1 into a log or a notebook (no terminal) prints one line per epoch and draws no bar, yet its
    # on_batch_end made fit call a hook after every step and give up running steps back to back (numpy:
    # fit about 1.2x slower than verbose=0 on 32-row batches)
    import io

    from nnx.callbacks import ProgressBar

    calls: list[int] = []
    hook = ProgressBar.on_batch_end

    def counting(self, batch, logs=None):
        calls.append(batch)
        return hook(self, batch, logs)

    monkeypatch.setattr(ProgressBar, "on_batch_end", counting)
    X, y = _xy(128)
    model = nnx.Sequential(nnx.Dense(7, 4), nnx.ReLU(), nnx.Dense(4, 1), backend="numpy", seed=0)
    out = io.StringIO()
    model.fit(X, y, loss="mse", epochs=2, batch_size=32, callbacks=[ProgressBar(file=out)])
    assert calls == []
    assert out.getvalue().count("epoch ") == 2  # its lines are still written
    pytest.importorskip("tqdm")
    bar = ProgressBar(file=io.StringIO(), use_tqdm=True)  # a bar drawn: every batch moves it
    model.fit(X, y, epochs=1, batch_size=32, callbacks=[bar])
    assert calls == [0, 1, 2, 3]
    model.fit(X, y, epochs=1, batch_size=32, callbacks=[bar], verbose=0)  # the same bar, reused
    assert calls == [0, 1, 2, 3] * 2


def test_a_progress_bar_subclass_keeps_its_own_batch_hook_without_a_terminal():
    import io

    from nnx.callbacks import ProgressBar

    class Counting(ProgressBar):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.batches = 0

        def on_batch_end(self, batch, logs=None):
            self.batches += 1
            super().on_batch_end(batch, logs)

    X, y = _xy(128)
    model = nnx.Sequential(nnx.Dense(7, 4), nnx.ReLU(), nnx.Dense(4, 1), backend="numpy", seed=0)
    bar = Counting(file=io.StringIO())
    model.fit(X, y, loss="mse", epochs=1, batch_size=32, callbacks=[bar])
    assert bar.batches == 4
    import copy

    plain = ProgressBar()
    model.fit(X, y, epochs=1, batch_size=32, callbacks=[plain])  # lines to stdout, no bar: its hook is set aside
    twin = copy.deepcopy(plain)  # as a callback list is copied: the copy's hook is its own
    assert twin.on_batch_end.__self__ is twin
