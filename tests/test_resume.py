"""Resume is exact: stop after epoch k, save, load, train the rest -> the weights of an uninterrupted run.

The checkpoint carries the weights, the optimizer state, the shuffle and dropout
RNG states and the epoch counter; `fit(epochs=n)` runs n more epochs.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.callbacks import Callback, CosineDecay, LearningRateScheduler, ModelCheckpoint, StepDecay

EPOCHS = 5
TOL = 1e-12


# 21 rows are not a multiple of the batch size (8): a short last batch of 5, whose dropout draws and shuffle the
# checkpoint must carry too. The regression fits, whose cases differ by the optimizer's state, train the first 16
# rows in whole batches: on JAX a short last batch is a second copy of the step in each epoch program, which about
# doubles its compile time. The binary and multiclass tasks and the accumulation test keep the short last batch.
ROWS = {"regression": 16, "binary": 21, "multiclass": 21}


def _data(task: str, n: int | None = None):
    gen = np.random.default_rng(7)
    X = gen.normal(size=(21, 4))
    if task == "regression":
        y = X @ gen.normal(size=(4, 2)) + 0.1 * gen.normal(size=(21, 2))
    elif task == "binary":
        y = (X[:, 0] + X[:, 1] > 0).astype(float)
    else:
        y = np.argmax(X[:, :3], axis=1)
    n = ROWS[task] if n is None else n
    return X[:n], y[:n]


def _model(backend, task: str, seed: int = 11) -> nnx.Sequential:
    head = {"regression": [nnx.Dense(8, 2)],
            "binary": [nnx.Dense(8, 1), nnx.Sigmoid()],
            "multiclass": [nnx.Dense(8, 3), nnx.Softmax()]}[task]
    # one hidden layer: each JAX program compiles smaller; its dropout's draws are what the checkpoint must carry
    return nnx.Sequential(nnx.Dense(4, 8), nnx.Tanh(), nnx.Dropout(0.3), *head, backend=backend, dtype="float64",
                          seed=seed, regularizer=nnx.regularizers.L2(1e-3))


OPTIMIZERS = {
    "adam": lambda params: nnx.optim.Adam(params, lr=0.01),
    "sgd_momentum": lambda params: nnx.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda params: nnx.optim.RMSprop(params, lr=0.01, momentum=0.5, centered=True),
    "adamw_amsgrad": lambda params: nnx.optim.AdamW(params, lr=0.01, amsgrad=True),
}


class StopAfter(Callback):
    """Saves a checkpoint and stops the run at the end of epoch `k` (0-based k-1)."""

    def __init__(self, k: int, path) -> None:
        self.k, self.path = k, path

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.k:
            self.model.save(self.path)
            self.model.stop_training = True


def _host_weights(model) -> dict[str, np.ndarray]:
    return {k: model.backend.to_host(v) for k, v in model.state_dict().items()}


def _assert_same(a: dict, b: dict, tol: float = TOL) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=tol, err_msg=name)


def _fit_kwargs(task, X, y):
    loss = {"regression": "mse", "binary": "bce", "multiclass": "cross_entropy"}[task]
    return dict(loss=loss, batch_size=8, metrics=["mse" if task == "regression" else "accuracy"],
                validation_data=(X[:10], y[:10]))


# Every optimizer on regression; each other task with one of them (the head and the optimizer's state
# are saved by separate code, so their cross product repeats the same checks).
CASES = [("regression", name) for name in sorted(OPTIMIZERS)] + [("binary", "adam"), ("multiclass", "sgd_momentum")]


@pytest.mark.parametrize(("task", "opt_name"), CASES)
def test_resume_matches_uninterrupted_run(backend, tmp_path, task, opt_name):
    X, y = _data(task)
    kwargs = _fit_kwargs(task, X, y)
    # three epochs: stopped after the first (two epochs to resume) and after the second (the last one to resume)
    epochs = 3

    full = _model(backend, task)
    full_hist = full.fit(X, y, optimizer=OPTIMIZERS[opt_name](full.parameters()), epochs=epochs, **kwargs)
    assert full.epochs_trained == epochs

    for k in (1, 2):
        ckpt = tmp_path / f"{task}-{opt_name}-{k}.npz"
        part = _model(backend, task)
        part_hist = part.fit(X, y, optimizer=OPTIMIZERS[opt_name](part.parameters()), epochs=epochs,
                             callbacks=[StopAfter(k, ckpt)], **kwargs)
        assert len(part_hist) == k and part.epochs_trained == k
        # Train the stopped model further in memory first: the checkpoint must not follow it.
        part.fit(X, y, epochs=1, **kwargs)

        resumed = nnx.load(ckpt)
        assert resumed.backend == full.backend and resumed.epochs_trained == k
        assert type(resumed.optimizer) is type(full.optimizer)
        hist = resumed.fit(X, y, epochs=epochs - k, **kwargs)
        assert resumed.epochs_trained == epochs
        assert hist.epoch == list(range(k, epochs))
        _assert_same(_host_weights(resumed), _host_weights(full))
        # The losses reported after resuming are the uninterrupted run's, epoch by epoch.
        np.testing.assert_allclose(part_hist["loss"] + hist["loss"], full_hist["loss"], rtol=0, atol=TOL)
        np.testing.assert_allclose(hist["val_loss"], full_hist["val_loss"][k:], rtol=0, atol=TOL)


BINARY_EPOCHS = 3  # two interruptions need three epochs


def _uninterrupted_binary_run(backend):
    """The binary model trained BINARY_EPOCHS epochs in one fit with Adam at lr 0.02: (X, y, fit arguments, model)."""
    X, y = _data("binary")
    kwargs = _fit_kwargs("binary", X, y)
    full = _model(backend, "binary")
    full.fit(X, y, optimizer="adam", lr=0.02, epochs=BINARY_EPOCHS, **kwargs)
    return X, y, kwargs, full


def test_resume_twice_and_by_optimizer_name(backend, tmp_path):
    """Two interruptions in one run; the resumed fit names its optimizer again (state continues)."""
    X, y, kwargs, full = _uninterrupted_binary_run(backend)
    model = _model(backend, "binary")
    model.fit(X, y, optimizer="adam", lr=0.02, epochs=1, **kwargs)
    model.save(tmp_path / "a.npz")
    model = nnx.load(tmp_path / "a.npz")
    model.fit(X, y, optimizer="adam", lr=0.02, epochs=1, **kwargs)
    model.save(tmp_path / "b.npz")
    model = nnx.load(tmp_path / "b.npz")
    model.fit(X, y, optimizer="adam", lr=0.02, epochs=1, **kwargs)
    assert model.epochs_trained == BINARY_EPOCHS
    _assert_same(_host_weights(model), _host_weights(full))


def test_resume_in_memory_equals_split_fit_calls(backend):
    """fit(epochs=a) then fit(epochs=b) on one model is fit(epochs=a+b): counters and RNGs carry over."""
    # the binary model and optimizer of the test above: on JAX its programs are compiled already
    X, y, kwargs, full = _uninterrupted_binary_run(backend)
    split = _model(backend, "binary")
    split.fit(X, y, optimizer="adam", lr=0.02, epochs=2, **kwargs)
    split.fit(X, y, optimizer="adam", lr=0.02, epochs=BINARY_EPOCHS - 2, **kwargs)
    _assert_same(_host_weights(split), _host_weights(full))


def test_checkpoint_holds_everything_resume_needs(backend, tmp_path):
    """The loaded model's optimizer state, RNG states and counters equal the saved model's."""
    X, y = _data("regression")
    model = _model(backend, "regression")
    # an optimizer of test_resume_matches_uninterrupted_run's: on JAX its programs are compiled already
    model.fit(X, y, optimizer=OPTIMIZERS["sgd_momentum"](model.parameters()), epochs=2,
              **_fit_kwargs("regression", X, y))
    model.save(tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz")
    assert loaded.epochs_trained == model.epochs_trained == 2
    assert loaded.seed == model.seed
    assert loaded.shuffle_rng.bit_generator.state == model.shuffle_rng.bit_generator.state
    assert loaded.dropout_rng.get_state() == model.dropout_rng.get_state()
    saved, restored = model.optimizer.state_dict(), loaded.optimizer.state_dict()
    assert saved["step"] == restored["step"] and saved["hyperparams"] == restored["hyperparams"]
    for i, entry in saved["state"].items():
        for key, arr in entry.items():
            np.testing.assert_array_equal(model.backend.to_host(arr), loaded.backend.to_host(restored["state"][i][key]))
    assert loaded.loss.get_config() == model.loss.get_config()
    # Without the optimizer the weights still load, and a fresh optimizer is made by the next fit.
    model.save(tmp_path / "w.npz", include_optimizer=False)
    assert nnx.load(tmp_path / "w.npz").optimizer is None


@pytest.mark.parametrize(("opt_name", "clip"), [("adam", {"clip_norm": 0.3}), ("sgd_momentum", {"clip_value": 0.05})],
                         ids=["adam-clip_norm", "sgd_momentum-clip_value"])
def test_resume_is_exact_with_accumulation_and_clipping(backend, tmp_path, opt_name, clip):
    """2 epochs, save, load, 1 more == 3 straight, with accumulate=2 over batches of 8 (21 rows: 3 batches,
    the last update gathers a single short batch) and clipping after the accumulation."""
    X, y = _data("regression", n=21)
    kwargs = dict(loss="mse", batch_size=8, accumulate=2, **clip)
    full = _model(backend, "regression")
    full_hist = full.fit(X, y, optimizer=OPTIMIZERS[opt_name](full.parameters()), epochs=3, **kwargs)
    assert full.optimizer.step_count == 3 * 2

    part = _model(backend, "regression")
    part_hist = part.fit(X, y, optimizer=OPTIMIZERS[opt_name](part.parameters()), epochs=2, **kwargs)
    part.save(tmp_path / "m.npz")
    resumed = nnx.load(tmp_path / "m.npz")
    hist = resumed.fit(X, y, epochs=1, **kwargs)
    assert resumed.epochs_trained == 3 and resumed.optimizer.step_count == 6
    _assert_same(_host_weights(resumed), _host_weights(full))
    np.testing.assert_allclose(part_hist["loss"] + hist["loss"], full_hist["loss"], rtol=0, atol=TOL)


# -- callbacks' state across a resume: the learning-rate schedule's base, the best checkpoint so far ------------

SCHEDULES = {
    "step": lambda: StepDecay(step_size=2, gamma=0.5),
    "cosine-wrapped": lambda: LearningRateScheduler(CosineDecay(decay_epochs=4, warmup_epochs=1, min_lr=1e-3)),
}


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_a_schedule_without_initial_lr_resumes_on_the_uninterrupted_curve(backend, tmp_path, schedule):
    """The base rate is the optimizer's `initial_lr`, kept in its state: not the decayed rate it was saved with."""
    X, y = _data("regression")
    # an optimizer and the fit arguments of test_resume_matches_uninterrupted_run's: on JAX its program is compiled
    kwargs = _fit_kwargs("regression", X, y)
    full = _model(backend, "regression")
    full_hist = full.fit(X, y, optimizer=OPTIMIZERS["sgd_momentum"](full.parameters()), epochs=EPOCHS,
                         callbacks=[SCHEDULES[schedule]()], **kwargs)
    part = _model(backend, "regression")
    part.fit(X, y, optimizer=OPTIMIZERS["sgd_momentum"](part.parameters()), epochs=EPOCHS,
             callbacks=[SCHEDULES[schedule](), StopAfter(3, tmp_path / "m.npz")], **kwargs)
    resumed = nnx.load(tmp_path / "m.npz")  # as a new process would, with new callback objects
    hist = resumed.fit(X, y, epochs=EPOCHS - 3, callbacks=[SCHEDULES[schedule]()], **kwargs)
    assert hist["lr"] == full_hist["lr"][3:]
    _assert_same(_host_weights(resumed), _host_weights(full))


def test_a_resumed_fit_given_its_starting_rate_again_keeps_the_optimizer(backend, tmp_path):
    """Re-running a script that passes ``optimizer="adam", lr=...`` on a resumed model keeps the loaded optimizer
    (its moments and step count), though a schedule has decayed its rate: the run stays on the uninterrupted one."""
    X, y = _data("regression")
    # the fit arguments of test_resume_matches_uninterrupted_run's: on JAX its programs are compiled already
    kwargs = dict(_fit_kwargs("regression", X, y), optimizer="adam", lr=0.05)
    full = _model(backend, "regression")
    full.fit(X, y, epochs=EPOCHS, callbacks=[SCHEDULES["step"]()], **kwargs)
    part = _model(backend, "regression")
    part.fit(X, y, epochs=EPOCHS, callbacks=[SCHEDULES["step"](), StopAfter(3, tmp_path / "m.npz")], **kwargs)
    resumed = nnx.load(tmp_path / "m.npz")
    resumed.fit(X, y, epochs=EPOCHS - 3, callbacks=[SCHEDULES["step"]()], **kwargs)
    _assert_same(_host_weights(resumed), _host_weights(full))


def test_an_optimizer_state_from_before_initial_lr_loads():
    optimizer = nnx.optim.SGD(nnx.Sequential(nnx.Dense(2, 1), seed=0).parameters(), lr=0.1)
    optimizer.initial_lr = 0.2
    state = optimizer.state_dict()
    assert state["initial_lr"] == 0.2
    del state["initial_lr"]
    optimizer.load_state_dict(state)
    assert optimizer.initial_lr is None  # the next schedule takes the rate it finds, as before


def _overfitting(backend):
    """A model and data whose validation loss is lowest after the first epoch, rises, then falls again, not as low:
    1.39 1.91 2.22 1.84 1.59 1.66 (the model's seed picked for that curve)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 10))
    y = X[:, :1] + rng.standard_normal((40, 1))
    X_val = rng.standard_normal((200, 10))
    y_val = X_val[:, :1] + rng.standard_normal((200, 1))
    model = nnx.Sequential(nnx.Dense(10, 64), nnx.Tanh(), nnx.Dense(64, 1), backend=backend, dtype="float64", seed=8)
    return model, X, y, dict(optimizer="adam", lr=0.03, batch_size=8, validation_data=(X_val, y_val))


@pytest.fixture(scope="module")
def uninterrupted_best(tmp_path_factory):
    """``uninterrupted_best(backend)``: the epochs trained by the best checkpoint of `_overfitting`'s model over 6
    epochs in one fit, run once per module for each backend (the cases below only read it)."""
    best: dict = {}

    def run(backend) -> int:
        # by spec: the generic adapter's backend compares equal to array_api_strict's, and would read its run
        if backend.spec not in best:
            model, X, y, kwargs = _overfitting(backend)
            full = tmp_path_factory.mktemp("uninterrupted") / "full.npz"
            model.fit(X, y, epochs=6, callbacks=[ModelCheckpoint(full, save_best_only=True)], **kwargs)
            best[backend.spec] = nnx.load(full).epochs_trained
        return best[backend.spec]

    return run


@pytest.mark.parametrize(("stop", "best_first"), [(4, True), (4, False), (1, False)],
                         ids=["after-4", "after-4-last-listed-first", "after-improving-epoch-last-listed-first"])
def test_a_resumed_run_keeps_the_best_checkpoint_of_the_uninterrupted_one(backend, tmp_path, stop, best_first,
                                                                           uninterrupted_best):
    """The best so far travels in every checkpoint, whatever the order of the callbacks that write them."""
    def checkpoints():
        best, last = ModelCheckpoint(tmp_path / "best.npz", save_best_only=True), ModelCheckpoint(tmp_path / "last.npz")
        return [best, last] if best_first else [last, best]

    model, X, y, kwargs = _overfitting(backend)
    model.fit(X, y, epochs=stop, callbacks=checkpoints(), **kwargs)
    resumed = nnx.load(tmp_path / "last.npz")
    resumed.fit(X, y, epochs=6 - stop, callbacks=checkpoints(), **kwargs)
    assert nnx.load(tmp_path / "best.npz").epochs_trained == uninterrupted_best(backend) == 1

    fresh, X, y, kwargs = _overfitting(backend)  # a fresh fit starts its best anew, as before
    again = ModelCheckpoint(tmp_path / "best.npz", save_best_only=True)
    fresh.fit(X, y, epochs=1, callbacks=[again], **kwargs)
    assert again.saved == [str(tmp_path / "best.npz")]
