"""Data-parallel `fit` on ranks that are threads of this process (tests/threaded_ranks.py): fast checks of what the
ranks agree on and of what equals one process, beside the real MPI and torchrun jobs of tests/test_distributed.py."""

from __future__ import annotations

import numpy as np
import pytest
from threaded_ranks import run_ranks

import nnx
from nnx import distributed as dist

BACKENDS = [b for b in ("numpy", "array_api_strict", "torch", "jax") if b in nnx.available_backends()]
TOL = 1e-12  # float64: N ranks against one process on the same global batches


def _model(backend: str = "numpy") -> nnx.Sequential:
    return nnx.Sequential(nnx.Dense(4, 5), nnx.ReLU(), nnx.Dense(5, 1), nnx.Sigmoid(), backend=backend,
                          dtype="float64", seed=3, regularizer="l2")


def _host(model: nnx.Sequential) -> dict[str, np.ndarray]:
    return {k: np.asarray(model.backend.to_host(v), dtype=np.float64) for k, v in model.state_dict().items()}


def _fit(backend: str, X, y, distributed=None, **kw) -> tuple[dict[str, np.ndarray], dict[str, list[float]]]:
    model = _model(backend)
    kw.setdefault("optimizer", "adam")
    kw.setdefault("lr", 0.05)
    hist = model.fit(X, y, distributed=distributed, **kw)
    return _host(model), hist.history


def _assert_close(got, ref) -> None:
    (w, h), (w_ref, h_ref) = got, ref
    for k in w_ref:
        np.testing.assert_allclose(w[k], w_ref[k], rtol=0, atol=TOL, err_msg=k)
    assert set(h) == set(h_ref)
    for k in h_ref:
        np.testing.assert_allclose(h[k], h_ref[k], rtol=0, atol=TOL, err_msg=k)


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, (X[:, 0] > 0).astype(np.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shard", [False, True], ids=["all-reduce", "sharded"])
@pytest.mark.parametrize("size", [2, 3])
def test_mean_with_sample_weight_on_ranks_equals_one_process(backend, shard, size):
    """Each rank's gradient is a mean over its slice's sum of weights: the ranks must be averaged by those sums,
    not by rows. Uneven weights across ranks, a slice weighted 0, a last batch smaller than the world
    (placeholder rows), accumulation; the epoch loss too."""
    X, y = _data(23)
    w = np.random.default_rng(1).uniform(0.0, 3.0, size=23)
    w[:9] *= 0.05  # the first rows (rank 0's slices, unshuffled) weigh far less
    w[10:13] = 0.0  # a slice of the second batch weighs nothing
    loss = nnx.losses.BinaryCrossEntropy(reduction="mean_with_sample_weight")
    for extra in ({}, {"accumulate": 2}):
        kw = dict(loss=loss, sample_weight=w, epochs=2, batch_size=10, shuffle=False, **extra)
        ref = _fit(backend, X, y, **kw)
        got = run_ranks(size, lambda comm, kw=kw: _fit(backend, X, y, dist.DataParallel(comm, shard), **kw))
        for g in got:
            _assert_close(g, ref)



@pytest.mark.parametrize("shard", [False, True], ids=["all-reduce", "sharded"])
def test_accumulation_flushing_a_last_batch_smaller_than_the_world(shard):
    """21 rows in batches of 10, accumulate=2: the epoch's last update is the 1-row batch alone, which leaves the
    other ranks only a placeholder row (0 rows accumulated); they must add nothing, not divide by 0."""
    X, y = _data(21)
    kw = dict(epochs=2, batch_size=10, accumulate=2)
    ref = _fit("numpy", X, y, **kw)
    for g in run_ranks(3, lambda comm: _fit("numpy", X, y, dist.DataParallel(comm, shard), **kw)):
        _assert_close(g, ref)


class Rows:
    """An array-like read batch by batch, as an h5py dataset is (`fit` then gathers each rank's rows)."""

    def __init__(self, a: np.ndarray) -> None:
        self.a, self.shape, self.dtype = a, a.shape, a.dtype

    def __getitem__(self, rows):
        return self.a[rows]


def _on_rank(comm, rank: int, value, otherwise):
    return value if comm.rank == rank else otherwise


class LooksAtGradients(nnx.callbacks.Callback):
    def on_gradients(self, grads):
        return None


class HalvesGradients(nnx.callbacks.Callback):
    def on_gradients(self, grads):
        return {name: g * 0.5 for name, g in grads.items()}


class SetsAGradientHookLate(nnx.callbacks.Callback):
    """Gives itself an on_gradients as training begins, too late for the gradient stage."""

    def on_train_begin(self, logs=None):
        self.on_gradients = lambda grads: None


class HandlesNonFiniteFromEpoch2(nnx.callbacks.Callback):
    """Takes non-finite steps itself from the second epoch on (which changes the collectives of each step)."""

    def on_epoch_end(self, epoch, logs=None):
        self.handles_non_finite = True


class SetsMomentum(nnx.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.optimizer.momentum = 0.9


# what a rank's fit may get wrong that the others do not: each made the ranks' collectives pair up wrongly (a hang,
# or another rank's error), or trained silently on overlapping slices or with weights drifting apart
RANK_MISMATCHES = {
    "rows": (lambda c: dict(X=_data(20 - c.rank)[0], y=_data(20 - c.rank)[1]), "data as fit starts"),
    "batches": (lambda c: dict(X=_data(20 + 10 * c.rank)[0], y=_data(20 + 10 * c.rank)[1]), "data as fit starts"),
    "dtype": (lambda c: dict(dtype=_on_rank(c, 1, "float32", "float64")), "dtype as fit starts"),
    "lr": (lambda c: dict(lr=_on_rank(c, 1, 0.2, 0.1)), "optimizer as fit starts"),
    "clip_norm": (lambda c: dict(clip_norm=_on_rank(c, 1, 0.01, None)), "gradient stage as fit starts"),
    "sample_weight": (lambda c: dict(sample_weight=_on_rank(c, 0, np.linspace(0, 2, 20), None)),
                      "weights as fit starts"),
    "shuffle": (lambda c: dict(shuffle=c.rank == 0), "data as fit starts"),
    # as DDP users shard their data: every rank its own rows, as many on each
    "a shard of X on each rank": (lambda c: dict(X=_data(40)[0][c.rank::2], y=_data(40)[1][c.rank::2]),
                                  "data contents as fit starts"),
    "a shard of an h5py-like X on each rank": (lambda c: dict(X=Rows(_data(40)[0][c.rank::2]),
                                                              y=_data(40)[1][c.rank::2]),
                                        "data contents as fit starts"),
    "sample weights": (lambda c: dict(sample_weight=np.linspace(0, 2, 20) ** (c.rank + 1)),
                       "data contents as fit starts"),
    "class weights from each rank's own rows": (lambda c: dict(X=Rows(_data(20)[0]),
                                                               class_weight={0: 1.0, 1: 1.0 + c.rank}),
                                                "weights as fit starts"),
    "a shard of validation_data on each rank": (
        lambda c: dict(validation_data=(_data(40)[0][c.rank::2], _data(40)[1][c.rank::2])),
        "validation data contents as fit starts"),
    "shard_update": (lambda c: dict(shard=c.rank == 0), "shard_update as fit starts"),
    # each rank scored its own metrics over every rank's outputs: Histories apart, or one rank's TypeError alone
    "metrics on rank 0 only": (lambda c: dict(metrics=_on_rank(c, 0, ["accuracy"], None)), "metrics as fit starts"),
    "other metrics": (lambda c: dict(metrics=_on_rank(c, 0, ["accuracy"], ["mse"])), "metrics as fit starts"),
    # the sharded update refused the hook on rank 0 alone, as the fit was set up: rank 1 waited in the first collective
    "a gradient hook on rank 0 only, sharded": (
        lambda c: dict(shard=True, callbacks=_on_rank(c, 0, [LooksAtGradients()], [])),
        "what refuses the sharded update as fit starts"),
    # replacements applied on rank 0 alone: its weights drifted from the others' without a word
    "gradients replaced on rank 0 only": (lambda c: dict(callbacks=_on_rank(c, 0, [HalvesGradients()], [])),
                                          "steps whose gradients on_gradients replaced after the callbacks of epoch 1"),
    # refused on rank 0 alone (a hook fit would skip): rank 1 waited in the first collective
    "a gradient hook set in on_train_begin on rank 0 only": (
        lambda c: dict(callbacks=_on_rank(c, 0, [SetsAGradientHookLate()], [])),
        "per-batch hooks set too late to be called in on_train_begin (rank 0: [('SetsAGradientHookLate', "
        "'on_gradients')]; rank 1: [])"),
    # the steps of a rank handling non-finite steps run other collectives: "message truncated" under MPI
    "TerminateOnNaN on rank 0 only": (
        lambda c: dict(callbacks=_on_rank(c, 0, [nnx.callbacks.TerminateOnNaN()], [])),
        "whether a callback handles non-finite steps in on_train_begin (rank 0: True; rank 1: False)"),
    "a callback handling non-finite steps from epoch 2 on rank 0 only": (
        lambda c: dict(callbacks=_on_rank(c, 0, [HandlesNonFiniteFromEpoch2()], [])),
        "whether a callback handles non-finite steps after the callbacks of epoch 1 (rank 0: True; rank 1: False)"),
    "momentum changed on rank 0 only": (lambda c: dict(callbacks=_on_rank(c, 0, [SetsMomentum()], [])),
                                        "optimizer hyper-parameters after the callbacks of epoch 1"),
    "resumed on rank 0 only": (lambda c: dict(resumed=c.rank == 0), "epochs trained as fit starts"),
    "EarlyStopping on rank 0 only": (
        lambda c: dict(callbacks=[nnx.callbacks.EarlyStopping(monitor="loss", min_delta=10.0, patience=0)]
                       if c.rank == 0 else []), "stop_training after the callbacks of epoch 2"),
    "a schedule on rank 0 only": (lambda c: dict(callbacks=[nnx.callbacks.StepDecay(1, 0.5)] if c.rank == 0 else []),
                                  "learning rate after the callbacks of epoch 2"),
    "iterable batches": (lambda c: dict(X=[_data(10 + c.rank, seed=b) for b in range(2)], y=None, batch_size=None),
                         "other sizes this epoch"),
    "an iterable of each rank's own batches": (
        lambda c: dict(X=[_data(10, seed=2 * b + c.rank) for b in range(2)], y=None, batch_size=None),
        "the ranks' iterables gave other batches"),
    "an iterable that ends early on one rank": (
        lambda c: dict(X=iter([_data(10, seed=b) for b in range(2 + c.rank)]), y=None, batch_size=None),
        "batch 3, rank 0: ended; rank 1: 10"),
    # models alike in their parameters' shapes but not in what they compute: each rank's gradient came from another
    # function, averaged without a word
    "another activation on one rank": (lambda c: dict(layers=_on_rank(c, 1, [nnx.Tanh()], [nnx.ReLU()])),
                                       "layers as fit starts (layer 1, rank 0: ReLU {}; rank 1: Tanh {})"),
    "another dropout rate on one rank": (
        lambda c: dict(layers=[nnx.ReLU(), nnx.Dropout(_on_rank(c, 1, 0.5, 0.2))]),
        "layers as fit starts (layer 2, rank 0: Dropout {'rate': 0.2}; rank 1: Dropout {'rate': 0.5})"),
    "a dropout layer on one rank only": (
        lambda c: dict(layers=[nnx.ReLU(), *_on_rank(c, 1, [nnx.Dropout(0.5)], [])]),
        "layers as fit starts (layer 2, rank 0: Dense"),
    "a model regularizer on one rank only": (lambda c: dict(regularizer=_on_rank(c, 0, "l2", None)),
                                             "regularizer as fit starts"),
}


@pytest.mark.parametrize("case", list(RANK_MISMATCHES))
def test_ranks_running_different_fits_raise_the_same_error_everywhere(case):
    """Each rank's own fit arguments are compared once as fit starts (one collective), the stop decision and the
    learning rate after each epoch's callbacks, and the global batch sizes with the epoch's logs."""
    make, message = RANK_MISMATCHES[case]
    errors = []

    def rank(comm):
        kw = dict(X=_data(20)[0], y=_data(20)[1], batch_size=10, epochs=3, optimizer="sgd", lr=0.1)
        kw.update(make(comm))
        model = nnx.Sequential(nnx.Dense(4, 5), *kw.pop("layers", [nnx.ReLU()]), nnx.Dense(5, 1), nnx.Sigmoid(),
                               dtype=kw.pop("dtype", "float64"), seed=3, regularizer=kw.pop("regularizer", None))
        if kw.pop("resumed", False):
            model.fit(kw["X"], kw["y"], epochs=1, optimizer="sgd")
        shard = kw.pop("shard", False)
        try:
            model.fit(kw.pop("X"), kw.pop("y"), distributed=dist.DataParallel(comm, shard), **kw)
        except ValueError as exc:
            errors.append(str(exc))
            return
        errors.append(None)

    run_ranks(2, rank)
    assert len(errors) == 2 and errors[0] == errors[1], errors
    assert errors[0] is not None and message in errors[0], errors[0]


def test_a_rank_whose_batches_fail_to_read_stops_every_rank():
    """An iterable that raised on one rank left the others waiting in their next collective; now that rank raises
    its own error and the others a RuntimeError naming it, at the same batch."""
    def batches(rank):
        for b in range(3):
            if rank == 1 and b == 1:
                raise OSError("disk gone")
            yield _data(10, seed=b)

    def rank(comm):
        model = _model()
        try:
            model.fit(batches(comm.rank), distributed=dist.DataParallel(comm), epochs=1, optimizer="sgd")
        except (OSError, RuntimeError) as exc:
            return type(exc).__name__, str(exc)
        return None

    (kind0, msg0), (kind1, msg1) = run_ranks(2, rank)
    assert (kind0, kind1) == ("RuntimeError", "OSError") and msg1 == "disk gone"
    assert "rank 1 failed reading batch 2" in msg0 and "disk gone" in msg0, msg0


def test_a_csv_log_given_to_every_rank_is_written_once(tmp_path):
    """Every rank logs the same epochs: rank 0 writes the file (as `model.save` does), not every rank into it (a run
    continued with ``append=True`` got every row once per rank)."""
    path = tmp_path / "log.csv"
    X, y = _data(20)
    _model().fit(X, y, batch_size=10, epochs=1, callbacks=[nnx.callbacks.CSVLogger(path)])

    def rank(comm):
        model = _model()
        model.fit(X, y, batch_size=10, epochs=2, distributed=comm,
                  callbacks=[nnx.callbacks.CSVLogger(path, append=True)])
        return model.history["loss"]

    losses = run_ranks(2, rank)[0]
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == ["epoch", "loss"] and len(lines) == 4, lines
    assert [float(line.split(",")[1]) for line in lines[2:]] == losses


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("shard", [False, True], ids=["all-reduce", "sharded"])
def test_a_step_not_finite_while_accumulating_is_named_as_one_process_names_it(shard):
    """One process refuses the batch whose step is not finite; the ranks learn of it at the update it would join
    (the all-reduce carries it), and must still name that batch, not the update's, and keep the same weights."""
    X, y = _data(40)
    X[25] = 1e308  # the third batch overflows on the rank computing row 25
    _refused_alike(X, y, shard, batch_size=10, epochs=1, shuffle=False, accumulate=4)


def _refused_alike(X, y, shard: bool, atol: float = 0.0, **kw) -> None:
    """One process refuses the third batch of `fit(X, y, **kw)`; two ranks must raise the same message there and
    keep the same weights (bit for bit, or to `atol` where the ranks sum in another order)."""
    def run(comm=None):
        model = _model()
        try:
            model.fit(X, y, distributed=None if comm is None else dist.DataParallel(comm, shard), **kw)
        except FloatingPointError as exc:
            return str(exc).split(";")[0], _host(model)
        return None, _host(model)

    message, weights = run()
    assert message is not None and message.endswith("at epoch 1, batch 3")
    for got_message, got_weights in run_ranks(2, run):
        assert got_message == message
        for k, v in weights.items():
            np.testing.assert_allclose(got_weights[k], v, rtol=0, atol=atol, err_msg=k)


@pytest.mark.parametrize("shard", [False, True], ids=["all-reduce", "sharded"])
def test_a_callback_that_only_looks_at_gradients_may_run_on_rank_0_alone(shard):
    """`GradientAnalyzer` on rank 0 only changes no gradient: the ranks do not refuse to train for it (its
    ``on_backward`` runs in front of the average, sharded or not)."""
    X, y = _data(20)

    def rank(comm):
        model = _model()
        callbacks = [nnx.callbacks.GradientAnalyzer()] if comm.rank == 0 else []
        model.fit(X, y, batch_size=10, epochs=2, distributed=nnx.distributed.DataParallel(comm, shard_update=shard),
                  callbacks=callbacks, clip_norm=1.0)
        if callbacks:
            assert callbacks[0].steps == 4
        return _host(model)

    a, b = run_ranks(2, rank)
    for k, v in a.items():
        np.testing.assert_array_equal(b[k], v, err_msg=k)


class InfiniteLossOnMarkedRows(nnx.losses.Loss):
    """Squared error whose value is infinite on rows with a target above 1, while its gradient stays finite."""

    name = "test_infinite_loss_on_marked_rows"

    def rows(self, xp, y_true, y_pred):
        d = y_pred - y_true
        per_row = xp.where(y_true[:, 0] > 1, xp.inf, nnx.losses.row_mean(xp, d * d))
        return per_row, 2 * d / (y_pred.shape[0] * y_pred.shape[1])


# NumPy posing as a device library warns of the inf and NaN the device check makes on purpose
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("shard", [False, True], ids=["all-reduce", "sharded"])
def test_a_loss_not_finite_on_one_rank_under_the_device_check_stops_every_rank(shard, monkeypatch):
    """On an accelerator the finite check stays on the device (deferred); a rank whose loss alone is not finite
    (its gradients are) must still refuse the step on every rank, at that batch, as one process does, not update
    apart from the others and raise alone at the end of the epoch while they wait."""
    backend = nnx.get_backend("numpy")
    monkeypatch.setattr(type(backend), "arrays_on_host", property(lambda self: False))
    X, y = _data(40)
    y[25] = 5.0  # the third batch's loss is infinite on the rank computing row 25
    _refused_alike(X, y, shard, TOL, loss=InfiniteLossOnMarkedRows(), batch_size=10, epochs=2, shuffle=False)


class CountingSGD(nnx.optim.Optimizer, name="test_counting_sgd_ranks"):
    """An elementwise rule whose state holds a 0-d count: no slice of a flat buffer can hold it."""

    elementwise = True

    def __init__(self, params, lr=0.05):
        super().__init__(params, lr)

    def init_state(self, xp, value):
        return {"n": xp.zeros((), dtype=value.dtype)}

    def update(self, xp, value, grad, state, step, lr):
        n = state["n"] + 1.0
        return value - lr * grad / n, {"n": n}


def test_the_sharded_update_names_a_rule_whose_state_is_not_shaped_like_the_parameters():
    """shard_update=True splits the rule's state with the parameters; a 0-d count cannot be split, and the step
    must say so (it crashed with an IndexError on every rank), while the all-reduce trains as one process."""
    X, y = _data(20)

    def run(comm, shard):
        model = _model()
        return model.fit(X, y, batch_size=10, epochs=2, optimizer=CountingSGD(model.parameters()),
                         distributed=dist.DataParallel(comm, shard)).history["loss"]

    with pytest.raises(ValueError, match=r"needs an optimizer whose state is shaped like the parameters.*'n'.*\(\)"):
        run_ranks(2, lambda comm: run(comm, True))
    model = _model()
    one = model.fit(X, y, batch_size=10, epochs=2, optimizer=CountingSGD(model.parameters())).history["loss"]
    for losses in run_ranks(2, lambda comm: run(comm, False)):
        np.testing.assert_allclose(losses, one, rtol=0, atol=TOL)


# inf and NaN made on purpose by the row that overflows
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("kw", [dict(accumulate=2), dict(accumulate=2, shard=True), dict(check_finite=False),
                                dict(metrics=["accuracy"], bad=5)],
                         ids=["accumulating", "accumulating, sharded", "check_finite=False", "first batch, metrics"])
def test_terminate_on_nan_stops_every_rank_where_one_process_stops(kw):
    """TerminateOnNaN decides on the loss of its own rank's slice. While accumulating (the all-reduce waits for the
    update) or with check_finite=False, only the rank holding the bad row stopped, and the ranks' collectives paired
    up wrongly; stopped at the first batch with metrics, the ranks had no outputs to score and crashed."""
    kw = dict(kw)
    X, y = _data(40)
    X[kw.pop("bad", 25)] = 1e308  # the step is not finite on the rank computing that row
    shard = kw.pop("shard", False)

    def run(comm=None):
        model = _model()
        hist = model.fit(X, y, batch_size=10, epochs=2, shuffle=False, optimizer="sgd",
                         distributed=None if comm is None else dist.DataParallel(comm, shard),
                         callbacks=[nnx.callbacks.TerminateOnNaN()], **kw)
        return _host(model), hist.history

    weights, history = run()
    assert len(history["loss"]) == 1 and not np.isfinite(history["loss"][0])
    for got_weights, got_history in run_ranks(2, run):
        assert set(got_history) == set(history) and len(got_history["loss"]) == 1
        for k, v in weights.items():
            np.testing.assert_allclose(got_weights[k], v, rtol=0, atol=TOL, err_msg=k)


@pytest.mark.parametrize("iterable", [False, True], ids=["arrays", "iterable"])
def test_a_batchnorm_slice_of_one_row_is_refused_on_every_rank_naming_the_split(iterable):
    """24 rows in batches of 10 on 3 ranks: the last batch of 4 gives slices of 2, 1 and 1 rows. One process trains
    on it; BatchNorm on ranks 1 and 2 raised that the last batch_size leaves one row over, while rank 0 waited in
    the all-reduce. Every rank now raises the same error naming the batch and the ranks, before training."""
    X, y = _data(24)
    data = dict(X=X, y=y, batch_size=10) if not iterable else \
        dict(X=[(X[a:a + 10], y[a:a + 10]) for a in (0, 10, 20)], y=None, batch_size=None)

    def rank(comm):
        model = nnx.Sequential(nnx.Dense(4, 5), nnx.BatchNorm(5), nnx.ReLU(), nnx.Dense(5, 1), nnx.Sigmoid(),
                               dtype="float64", seed=3)
        try:
            model.fit(epochs=1, optimizer="sgd", distributed=comm, **data)
        except ValueError as exc:
            return str(exc)
        return None

    errors = run_ranks(3, rank)
    assert errors[0] is not None and errors == [errors[0]] * 3, errors
    assert "batch 3 of 4 rows, cut between 3 ranks" in errors[0], errors[0]


def test_a_checkpoint_given_to_every_rank_says_saved_once(tmp_path, capsys):
    """Rank 0 alone writes the file: the other ranks printed "saved" too, for a file they never wrote."""
    X, y = _data(20)

    def rank(comm):
        checkpoint = nnx.callbacks.ModelCheckpoint(tmp_path / "m{epoch}.npz", monitor="loss", verbose=1)
        _model().fit(X, y, batch_size=10, epochs=2, distributed=comm, callbacks=[checkpoint])
        return checkpoint.saved

    saved = run_ranks(2, rank)
    lines = [line for line in capsys.readouterr().out.splitlines() if "ModelCheckpoint" in line]
    assert lines == [f"ModelCheckpoint: saved {tmp_path / f'm{e}.npz'}" for e in (1, 2)], lines
    assert saved[0] == saved[1] == [str(tmp_path / f"m{e}.npz") for e in (1, 2)]  # every rank knows where they are


class BatchGate(nnx.Layer):
    """Stochastic depth as a user writes it: one draw per batch decides whether the whole batch passes."""

    def forward(self, X, training=False):
        if not training:
            return X
        self.keep = self.xp.astype(self.rng.uniform((1,), self.dtype) < 0.5, X.dtype)
        return X * self.keep

    def backward(self, dY, need_dX=True):
        return dY * self.keep


def test_a_draw_cut_as_rows_on_some_ranks_alone_is_refused_on_every_rank():
    """Batches of 4 on 3 ranks leave slices of 2, 1 and 1 rows: the gate's draw of shape (1,) was taken for a draw
    of a 1-row slice on ranks 1 and 2 (cut from a draw of the batch's 4 rows) and not on rank 0, so the ranks' random
    streams parted and each trained with other gates, while their weights stayed equal: wrong without a word."""
    X, y = _data(12)
    errors = []

    def rank(comm):
        model = nnx.Sequential(nnx.Dense(4, 5), BatchGate(), nnx.Dense(5, 1), nnx.Sigmoid(), dtype="float64", seed=0)
        try:
            model.fit(X, y, loss="bce", optimizer="sgd", epochs=2, batch_size=4, distributed=comm)
        except ValueError as exc:
            errors.append(str(exc))
            return
        errors.append(None)

    run_ranks(3, rank)
    assert len(set(errors)) == 1 and errors[0] is not None, errors
    assert "random stream after the callbacks of epoch 1" in errors[0] and "first axis" in errors[0], errors[0]


# What every rank logs and prints, as a DDP or Horovod user meets it.
def _logging_model() -> nnx.Sequential:
    return nnx.Sequential(nnx.Dense(4, 5), nnx.ReLU(), nnx.Dense(5, 1), nnx.Sigmoid(), dtype="float64", seed=3)


def _batches(seeds):
    return [_data(7, seed=s) for s in seeds]


# validation each rank reads apart from the others: each History and each rank's callbacks (rank 0's checkpoints)
# saw its own val_loss, or none, while training went on without a word
VALIDATION_APART = {
    "an iterable on rank 0 only": lambda r: dict(validation_data=_batches([1]) if r == 0 else None),
    "an iterable of each rank's own batches": lambda r: dict(validation_data=_batches([1 + r])),
    "other validation_steps": lambda r: dict(validation_data=_batches([1, 2, 3]), validation_steps=1 + r),
    "a list of each rank's own shard": lambda r: dict(validation_data=[_data(14, 1)[0][r::2], _data(14, 1)[1][r::2]]),
}


@pytest.mark.parametrize("case", list(VALIDATION_APART))
def test_validation_that_differs_between_the_ranks_is_refused_on_every_rank(case):
    X, y = _data(20)

    def rank(comm):
        model = _logging_model()
        try:
            model.fit(X, y, batch_size=10, epochs=2, optimizer="sgd", distributed=comm,
                      **VALIDATION_APART[case](comm.rank))
        except ValueError as exc:
            return str(exc)
        return model.history.history

    got = run_ranks(2, rank)
    assert isinstance(got[0], str) and got[0] == got[1], got
    assert "validation" in got[0], got[0]


def test_the_same_validation_iterable_on_every_rank_gives_one_history():
    X, y = _data(20)
    one = _logging_model().fit(X, y, batch_size=10, epochs=2, optimizer="sgd", validation_data=_batches([1, 2]),
                       metrics=["accuracy"]).history

    def rank(comm):
        return _logging_model().fit(X, y, batch_size=10, epochs=2, optimizer="sgd", validation_data=_batches([1, 2]),
                            metrics=["accuracy"], distributed=comm).history

    for got in run_ranks(2, rank):
        assert set(got) == set(one)
        for k in one:
            np.testing.assert_allclose(got[k], one[k], rtol=0, atol=1e-12, err_msg=k)


def test_what_fit_and_its_callbacks_print_is_printed_once(capsys):
    """verbose=2's line, a ProgressBar given to every rank, EarlyStopping's and LearningRateScheduler's messages:
    every rank printed them, so a job of N ranks printed each N times (ModelCheckpoint's already printed once)."""
    X, y = _data(20)

    def rank(comm):
        callbacks = [nnx.callbacks.ProgressBar(use_tqdm=False),
                     nnx.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5, verbose=1),
                     nnx.callbacks.EarlyStopping(monitor="loss", min_delta=10.0, patience=0, verbose=1,
                                                 restore_best_weights=True)]
        _logging_model().fit(X, y, batch_size=10, epochs=3, optimizer="sgd", verbose=2, distributed=comm,
                     callbacks=callbacks)

    run_ranks(2, rank)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), lines
    assert any(line.startswith("fit: ") for line in lines) and any(line.startswith("epoch 2/3") for line in lines)
    assert sum(line.startswith("EarlyStopping") for line in lines) == 2, lines
    assert sum(line.startswith("LearningRateScheduler") for line in lines) == 2, lines


def test_a_non_finite_handler_switched_on_one_rank_after_the_last_epoch_is_no_mismatch():
    """Found in review: the ranks compared whether a callback handles non-finite steps after every epoch, the
    last too, so a flag one rank switched when no step was left refused a fit that had already finished."""
    epochs = []

    def rank(comm):
        model = nnx.Sequential(nnx.Dense(4, 5), nnx.ReLU(), nnx.Dense(5, 1), nnx.Sigmoid(), dtype="float64", seed=3)
        X, y = _data(20)
        history = model.fit(X, y, batch_size=10, epochs=1, optimizer="sgd", lr=0.1,
                            distributed=dist.DataParallel(comm),
                            callbacks=_on_rank(comm, 0, [HandlesNonFiniteFromEpoch2()], []))
        epochs.append(len(history["loss"]))

    run_ranks(2, rank)
    assert epochs == [1, 1]
