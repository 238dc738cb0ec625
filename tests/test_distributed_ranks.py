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
