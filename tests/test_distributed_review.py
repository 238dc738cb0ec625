"""Data-parallel `fit` as a DDP or Horovod user meets it: what every rank logs and prints, on ranks that are threads
of this process (tests/threaded_ranks.py)."""

from __future__ import annotations

import numpy as np
import pytest
from threaded_ranks import run_ranks

import nnx


def _data(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    return X, (X[:, 0] > 0).astype(np.float64)


def _model() -> nnx.Sequential:
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
        model = _model()
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
    one = _model().fit(X, y, batch_size=10, epochs=2, optimizer="sgd", validation_data=_batches([1, 2]),
                       metrics=["accuracy"]).history

    def rank(comm):
        return _model().fit(X, y, batch_size=10, epochs=2, optimizer="sgd", validation_data=_batches([1, 2]),
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
        _model().fit(X, y, batch_size=10, epochs=3, optimizer="sgd", verbose=2, distributed=comm,
                     callbacks=callbacks)

    run_ranks(2, rank)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == len(set(lines)), lines
    assert any(line.startswith("fit: ") for line in lines) and any(line.startswith("epoch 2/3") for line in lines)
    assert sum(line.startswith("EarlyStopping") for line in lines) == 2, lines
    assert sum(line.startswith("LearningRateScheduler") for line in lines) == 2, lines
