"""What training keeps per model (compiled programs, recorded passes) belongs to that model object alone.

A model class may define ``__eq__``: two models of one architecture then compare equal, and with ``__hash__``
removed (Python's default when ``__eq__`` is defined) a model is no dictionary key at all. Neither may change
what a fit computes.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx


class ComparedByLayers(nnx.Sequential):
    """Equal to another of the same layer types, so unhashable: ``__eq__`` without ``__hash__``."""

    def __eq__(self, other):
        return type(other) is type(self) and [type(a) for a in self.layers] == [type(b) for b in other.layers]


class HashedByLayers(ComparedByLayers):
    """The same, hashable consistently with its ``__eq__``: two such models are one dictionary key."""

    def __hash__(self):
        return hash(tuple(type(layer).__name__ for layer in self.layers))


def _fit(cls, backend, seed, X, y):
    model = cls(nnx.Dense(4, 5), nnx.ReLU(), nnx.Dense(5, 1), backend=backend, dtype="float64", seed=seed)
    model.fit(X, y, loss="bce_with_logits", optimizer="sgd", epochs=2, batch_size=8, shuffle=False)
    model.fit(X, y, epochs=1, batch_size=8, shuffle=False)
    return model, [np.asarray(backend.to_host(p.value)) for p in model.parameters()]


@pytest.mark.parametrize("cls", [ComparedByLayers, HashedByLayers], ids=["unhashable", "equal-hash"])
def test_models_that_compare_equal_train_as_plain_sequentials(backend, rng, cls):
    X = rng.standard_normal((40, 4))
    y = (rng.random((40, 1)) < 0.5).astype(np.float64)
    kept = []  # the first model stays alive while the second, equal to it, trains: it must not run its programs
    for seed in (1, 2):
        model, got = _fit(cls, backend, seed, X, y)
        kept.append(model)
        _, want = _fit(nnx.Sequential, backend, seed, X, y)
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
