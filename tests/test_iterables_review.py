"""Review of training and evaluating from iterables of batches: what a Keras or torch DataLoader user hits.

Each test holds one mistake that passed silently or with a misleading error before it was fixed.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx


def _data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (np.abs(X[:, 0]) * 2).astype(np.int64) % 3
    return X, y


def _classifier(backend="numpy", dtype="float64"):
    return nnx.Sequential(nnx.Dense(4, 8), nnx.Tanh(), nnx.Dense(8, 3), backend=backend, dtype=dtype, seed=0)


@pytest.mark.parametrize("backend", ["numpy", "array_api_strict", "jax"])
def test_class_indices_in_some_batches_and_one_hot_rows_in_others_score_together(backend):
    """Cross-entropy reads indices and one-hot rows alike (docs/training.md), batch by batch; the epoch's
    metrics joined the batches' targets as given and failed after the whole epoch, in the backend's words."""
    pytest.importorskip(backend)
    X, y = _data()
    onehot = np.eye(3)[y]
    spans = [(0, 40), (40, 41), (41, 90), (90, 120)]
    mixed = [(X[a:b], y[a:b] if i % 2 == 0 else onehot[a:b]) for i, (a, b) in enumerate(spans)]
    plain = [(X[a:b], y[a:b]) for a, b in spans]
    got = _classifier(backend).fit(mixed, loss="ce", epochs=2, metrics=["accuracy", "f1"], verbose=0).history
    want = _classifier(backend).fit(plain, loss="ce", epochs=2, metrics=["accuracy", "f1"], verbose=0).history
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-9, err_msg=key)
    m = _classifier(backend)
    got_eval = m.evaluate(mixed, loss="ce", metrics=["accuracy", "f1"])
    assert got_eval == m.evaluate(plain, loss="ce", metrics=["accuracy", "f1"])
    # as validation_data too
    h = _classifier(backend).fit(plain, loss="ce", validation_data=mixed, metrics=["accuracy"], verbose=0)
    h_plain = _classifier(backend).fit(plain, loss="ce", validation_data=plain, metrics=["accuracy"], verbose=0)
    assert h.history == h_plain.history
