"""Data-parallel `fit` against one process, as a PyTorch DDP / Horovod user meets it, on ranks that are threads of
this process (tests/threaded_ranks.py): every elementwise optimizer (amsgrad Adam, Lion, ...) sharded and not, on 2
and 3 ranks with uneven slices and uneven last batches, with sample and class weights, accumulation, clipping and
regularizers, equal to one process; and what each rank must share to train one model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from threaded_ranks import run_ranks

import nnx
from nnx import distributed as dist


def _data(n: int, seed: int = 0, classes: int = 1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    if classes == 1:
        return X, (X[:, 0] + 0.3 * X[:, 1] > 0).astype(np.float64)
    return X, np.abs(X[:, 0] * 2).astype(np.int64) % classes


def _model(classes: int = 1, dropout: bool = False, backend: str = "numpy", extra: tuple = ()) -> nnx.Sequential:
    layers = [nnx.Dense(4, 6, regularizer=nnx.regularizers.L2(1e-2)), nnx.Tanh(), *extra]
    if dropout:
        layers.append(nnx.Dropout(0.3))
    layers.append(nnx.Dense(6, classes))
    if classes == 1:
        layers.append(nnx.Sigmoid())
    return nnx.Sequential(*layers, dtype="float64", seed=5, backend=backend, regularizer=nnx.regularizers.L1(1e-3))


OPTIMIZERS = {
    "sgd nesterov": lambda p: nnx.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam amsgrad": lambda p: nnx.optim.Adam(p, lr=0.01, amsgrad=True, weight_decay=1e-3),
    "adamw amsgrad": lambda p: nnx.optim.AdamW(p, lr=0.01, amsgrad=True),
    "rmsprop centered": lambda p: nnx.optim.RMSprop(p, lr=0.01, momentum=0.5, centered=True),
    "adagrad": lambda p: nnx.optim.Adagrad(p, lr=0.05, lr_decay=0.01),
    "lion": lambda p: nnx.optim.Lion(p, lr=0.01, weight_decay=0.1),
    "momentum": lambda p: nnx.optim.Momentum(p, lr=0.05),
}


def _host(tree):
    """A state dict, History or optimizer state dict as {path: float64 array} (other leaves as they are)."""
    out = {}

    def walk(path, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{path}/{k}", x)
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(f"{path}/{i}", x)
        else:
            try:
                out[path] = np.asarray(v, dtype=np.float64)
            except (TypeError, ValueError):
                out[path] = v
    walk("", tree)
    return out


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    worst = 0.0
    for k, v in a.items():
        if isinstance(v, np.ndarray):
            w = np.asarray(b[k], dtype=np.float64)
            assert v.shape == w.shape, k
            if v.size:
                assert np.array_equal(np.isnan(v), np.isnan(w)), k
                worst = max(worst, float(np.max(np.abs(np.where(np.isnan(v), 0.0, v - w)))))
        else:
            assert v == b[k], k
    return worst


def _equal_to_one_process(size: int, fit, tol: float = 1e-12) -> None:
    """`fit(comm)` (comm None: one process) returns (weights, History, optimizer state); every rank's equal one's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        one = [_host(part) for part in fit(None)]
        many = run_ranks(size, fit)
    for rank, got in enumerate(many):
        for what, ref, part in zip(("weights", "History", "optimizer state"), one, got, strict=True):
            assert _max_diff(ref, _host(part)) <= tol, (rank, what)


def _fit_with(optimizer: str, classes: int = 1, dropout: bool = False, n: int = 23, batch_size: int | None = 7,
              epochs: int = 3, shard: bool = False, backend: str = "numpy", **kw):
    X, y = _data(n, classes=classes)

    def fit(comm):
        model = _model(classes, dropout, backend)
        opt = OPTIMIZERS[optimizer](model.parameters())
        d = None if comm is None else dist.DataParallel(comm, shard_update=shard)
        hist = model.fit(X, y, optimizer=opt, epochs=epochs, batch_size=batch_size, distributed=d, **kw)
        return ({k: model.backend.to_host(v) for k, v in model.state_dict().items()}, hist.history,
                model.optimizer.state_dict())
    return fit


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("shard", [False, True], ids=["all-reduce", "sharded"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_every_elementwise_optimizer_with_clip_norm_on_uneven_slices_equals_one_process(optimizer, shard, size):
    """23 rows in global batches of 7 (slices 4/3 and 3/2/2, a last batch of 2 that leaves a third rank a
    placeholder row), L1 and L2, clip_norm (the norm of the whole gradient): weights, optimizer state and
    History equal to 1e-12, sharded or not."""
    _equal_to_one_process(size, _fit_with(optimizer, shard=shard, clip_norm=0.3, metrics=["accuracy"]))


WEIGHTED = {
    "sample_weight": dict(sample_weight=np.linspace(0.1, 2, 23)),
    "class_weight": dict(class_weight={0: 0.3, 1: 2.0}),
    "mean_with_sample_weight, accumulate, clip_norm": dict(
        sample_weight=np.linspace(0.0, 2, 23), accumulate=2, clip_norm=0.1,
        loss=nnx.losses.BinaryCrossEntropy(reduction="mean_with_sample_weight")),
    "dropout, accumulate, clip_norm": dict(dropout=True, accumulate=2, clip_norm=0.5),
    "clip_value, accumulate 3": dict(clip_value=0.05, accumulate=3),
    "validation_split, shuffle": dict(validation_split=0.25, metrics=["accuracy"]),
    "validation_data": dict(validation_data=_data(9, seed=4), metrics=["accuracy"]),
    "no shuffle": dict(shuffle=False),
    "full batch": dict(batch_size=None, clip_norm=0.01),
    "fewer rows than ranks": dict(n=2),
    "cross-entropy with class weights": dict(classes=4, loss="cross_entropy", metrics=["accuracy"],
                                             class_weight={0: 1.0, 1: 2.0, 2: 0.5, 3: 1.0}),
}


@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("shard", [False, True], ids=["all-reduce", "sharded"])
@pytest.mark.parametrize("case", list(WEIGHTED))
def test_weights_accumulation_clipping_and_validation_on_ranks_equal_one_process(case, shard, size):
    kw = dict(WEIGHTED[case])
    optimizer = "lion" if "clip_value" in case else "adam amsgrad"
    _equal_to_one_process(size, _fit_with(optimizer, shard=shard, **kw), tol=1e-11)


def test_iterable_batches_with_weights_and_a_last_batch_smaller_than_the_world_equal_one_process():
    X, y = _data(16)
    w = np.linspace(0, 1, 16)
    batches = [(X[:7], y[:7], w[:7]), (X[7:14], y[7:14], w[7:14]), (X[14:], y[14:], w[14:])]
    loss = nnx.losses.BinaryCrossEntropy(reduction="mean_with_sample_weight")

    def fit(comm):
        model = _model(dropout=True)
        d = None if comm is None else dist.DataParallel(comm, shard_update=True)
        hist = model.fit(batches, optimizer=OPTIMIZERS["lion"](model.parameters()), epochs=3, loss=loss,
                         distributed=d)
        return model.state_dict(), hist.history, model.optimizer.state_dict()
    _equal_to_one_process(3, fit)


@pytest.mark.parametrize("backend", ["torch", "array_api_strict"])
def test_a_frozen_layer_and_a_switch_between_sharded_and_all_reduce_fits_equal_one_process(backend):
    """An optimizer given a subset of the parameters (a frozen first layer), a sharded fit then an all-reduce one
    then a sharded one with another batch size: the flat layout follows each fit."""
    if backend not in nnx.available_backends():
        pytest.skip(f"{backend} not installed")
    X, y = _data(23)

    def fit(comm):
        model = _model(dropout=True, backend=backend)
        d = (lambda s: None) if comm is None else (lambda s: dist.DataParallel(comm, shard_update=s))
        model.fit(X, y, optimizer=nnx.optim.Adam(model.parameters()[2:], lr=0.02, amsgrad=True), epochs=2,
                  batch_size=7, distributed=d(True))
        model.fit(X, y, epochs=1, batch_size=7, distributed=d(False))
        hist = model.fit(X, y, epochs=2, batch_size=5, distributed=d(True))
        return ({k: model.backend.to_host(v) for k, v in model.state_dict().items()}, hist.history,
                {k: v for k, v in model.optimizer.state_dict().items() if k != "state"})
    _equal_to_one_process(3, fit)


@pytest.mark.parametrize("shard", [False, True], ids=["all-reduce", "sharded"])
def test_ranks_whose_optimizers_update_other_parameters_raise_the_same_error_everywhere(shard):
    """Rank 0 froze the first layer (its optimizer holds the last layer's parameters), rank 1 did not: the
    all-reduce trained every rank on the same averaged gradients but rank 1 updated parameters rank 0 kept, and the
    ranks' weights drifted apart (0.15 after two epochs) without a word; sharded, the ranks cut flat buffers of
    other sizes and failed on a broadcast of (7,) against (37,)."""
    X, y = _data(24)

    def rank(comm):
        model = nnx.Sequential(nnx.Dense(4, 6), nnx.Tanh(), nnx.Dense(6, 1), nnx.Sigmoid(), dtype="float64", seed=5)
        params = model.parameters()[2:] if comm.rank == 0 else model.parameters()
        try:
            model.fit(X, y, optimizer=nnx.optim.SGD(params, lr=0.1), epochs=2, batch_size=8,
                      distributed=dist.DataParallel(comm, shard_update=shard))
        except ValueError as exc:
            return str(exc)
        return "trained"

    got = run_ranks(2, rank)
    assert got[0] == got[1] and "parameters the optimizer updates" in got[0], got
    assert "2.weight" in got[0] and "0.weight" in got[0], got[0]


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_every_rule_replayed_into_uneven_slices_on_three_ranks_equals_one_process(optimizer, monkeypatch):
    """From `replay.MIN_ELEMENTS` parameters (here: any) each rank's slice is updated by the replayed rule: amsgrad's
    running maximum, Lion's sign, centered RMSprop and the rest, on slices of 13/12/12 elements with dropout and
    clip_value, equal to one process to 1e-12."""
    from nnx.training import replay

    monkeypatch.setattr(replay, "MIN_ELEMENTS", 0)
    replayed = []
    real_apply = replay.RuleReplay.apply
    monkeypatch.setattr(replay.RuleReplay, "apply", lambda self, *args, **kwargs: replayed.append(
        real_apply(self, *args, **kwargs)) or replayed[-1])
    _equal_to_one_process(3, _fit_with(optimizer, shard=True, dropout=True, clip_value=0.05))
    assert replayed and all(replayed)




class PassCounter(nnx.Layer):
    """A user's activation that counts its calls in a Python attribute: no compiled program can keep the count."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, X, training=False):
        self.calls += 1
        self._X = X
        return X * 0.5

    def backward(self, dY, need_dX=True):
        return dY * 0.5


@pytest.mark.parametrize("user_layer", [False, True], ids=["built-ins", "untraceable user layer"])
@pytest.mark.parametrize("shard", [False, True], ids=["all-reduce", "sharded"])
def test_jax_ranks_run_their_passes_as_one_program_with_one_processs_numbers(shard, user_layer):
    """A JAX data-parallel step cannot be one compiled program (the all-reduce runs on the host between the backward
    and the update), so each rank's forward, loss and backward are (`nnx.training.compiled_passes`): with dropout's
    windows of rows, penalties and uneven last slices, 3 ranks equal one process. A layer whose code cannot be
    traced leaves them to the plain passes, with the same numbers, and `execution_reason` says which ran."""
    if "jax" not in nnx.available_backends():
        pytest.skip("jax not installed")
    X, y = _data(23)

    def fit(comm):
        model = _model(dropout=True, backend="jax", extra=(PassCounter(),) if user_layer else ())
        opt = OPTIMIZERS["adam amsgrad"](model.parameters())
        d = None if comm is None else dist.DataParallel(comm, shard_update=shard)
        hist = model.fit(X, y, optimizer=opt, epochs=2, batch_size=7, distributed=d)
        if comm is not None:
            assert ("run as one compiled program" in hist.execution_reason) != user_layer, hist.execution_reason
        return ({k: model.backend.to_host(v) for k, v in model.state_dict().items()}, hist.history,
                model.optimizer.state_dict())
    # one process runs each epoch as one program: another program of other shapes, rounded apart
    _equal_to_one_process(3, fit, tol=1e-10)
