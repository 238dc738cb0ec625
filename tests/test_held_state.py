"""State a user's layer keeps in Python outside its own attributes, lists and dicts, which its code changes in a
step: every execution gives the plain loop's numbers (found in review: the recorded passes and JAX's programs ran
that code once, so such state moved once where the plain loop moves it at every step)."""

from __future__ import annotations

import itertools
import types

import numpy as np
import pytest

import nnx


class HeldCounter(nnx.Layer):
    """Counts its training steps in an object it keeps, and scales by the count."""

    def __init__(self):
        super().__init__()
        self.h = types.SimpleNamespace(n=0)

    def forward(self, X, training=False):
        if training:
            self.h.n += 1
        self._k = 1.0 + 0.01 * self.h.n
        return X * self._k

    def backward(self, dY, need_dX=True):
        return dY * self._k


class HeldRunningMean(nnx.Layer):
    """Centres by a running mean kept as an array in an object it keeps, read and rebound each step."""

    def __init__(self):
        super().__init__()
        self.h = types.SimpleNamespace(mu=None)

    def forward(self, X, training=False):
        if self.h.mu is None:
            self.h.mu = self.xp.zeros(X.shape[1:], dtype=X.dtype, device=self.backend.device)
        if training:
            self.h.mu = 0.5 * self.h.mu + 0.5 * self.xp.mean(X, axis=0)
        return X - self.h.mu

    def backward(self, dY, need_dX=True):
        return dY


class HeldCache(nnx.Layer):
    """Squares, keeping its input for the backward in an object it keeps: a cache, which compiles as usual."""

    def __init__(self):
        super().__init__()
        self.h = types.SimpleNamespace(X=None)

    def forward(self, X, training=False):
        self.h.X = X
        return X * X

    def backward(self, dY, need_dX=True):
        return 2.0 * self.h.X * dY


class IteratedWarmup(nnx.Layer):
    """Scales up over its first ten training steps, counted by an iterator it advances."""

    def __init__(self):
        super().__init__()
        self.steps = itertools.count(1)

    def forward(self, X, training=False):
        k = next(self.steps) if training else 10
        self._s = self.xp.asarray(min(1.0, 0.1 * k), dtype=X.dtype, device=self.backend.device)
        return X * self._s

    def backward(self, dY, need_dX=True):
        return dY * self._s


def _fit(backend, make, fast):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 4)), rng.standard_normal((32, 2))
    layer = make()
    model = nnx.Sequential(nnx.Dense(4, 4), layer, nnx.Dense(4, 2), backend=backend.with_fastpath(fast),
                           dtype="float64", seed=0)
    model.fit(X, y, loss="mse", optimizer="sgd", lr=0.05, epochs=3, batch_size=8)
    return [model.backend.to_host(p.value) for p in model.parameters()], layer


@pytest.mark.parametrize("make", [HeldCounter, IteratedWarmup], ids=["counter-in-a-held-object", "iterator"])
def test_python_state_a_layer_advances_each_step_gives_the_plain_numbers(backend, make):
    (fast, fast_layer), (plain, plain_layer) = _fit(backend, make, True), _fit(backend, make, False)
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    if make is HeldCounter:
        assert fast_layer.h.n == plain_layer.h.n == 12
    else:
        assert next(fast_layer.steps) == next(plain_layer.steps) == 13


@pytest.mark.parametrize("make", [HeldRunningMean, HeldCache], ids=["carried", "cache"])
def test_an_array_a_layer_keeps_in_a_held_object_gives_the_plain_numbers(backend, make):
    """NumPy's recording took the running mean as a constant of the replay, and JAX's trace left its tracer there
    (JAX's own error at the next step): a carried array runs plainly now, with the reason, and a cache compiles."""
    (fast, fast_layer), (plain, plain_layer) = _fit(backend, make, True), _fit(backend, make, False)
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    if make is HeldRunningMean:
        np.testing.assert_allclose(fast_layer.backend.to_host(fast_layer.h.mu),
                                   plain_layer.backend.to_host(plain_layer.h.mu), rtol=1e-12)


class Mut4NestedDictCounter(nnx.Layer):
    """Counts its training steps in a dict inside a dict it keeps (``self.stats["train"]["n"]``), and scales by it."""

    def __init__(self):
        super().__init__()
        self.stats = {"train": {"n": 0}}

    def forward(self, X, training=False):
        if training:
            self.stats["train"]["n"] += 1
        return X * (1.0 + 0.01 * self.stats["train"]["n"])

    def backward(self, dY, need_dX=True):
        return dY * (1.0 + 0.01 * self.stats["train"]["n"])


class Mut4BareHeldCounter(nnx.Layer):
    """Counts its training steps in an object it keeps and scales by the count; no attribute of its own changes."""

    def __init__(self):
        super().__init__()
        self.h = types.SimpleNamespace(n=0)

    def forward(self, X, training=False):
        if training:
            self.h.n += 1
        return X * (1.0 + 0.01 * self.h.n)

    def backward(self, dY, need_dX=True):
        return dY * (1.0 + 0.01 * self.h.n)


@pytest.mark.parametrize("make", [Mut4NestedDictCounter, Mut4BareHeldCounter],
                         ids=["nested-dict", "held-object-alone"])
def test_a_counter_two_levels_down_or_in_a_held_object_alone_counts_every_step(backend, make):
    """Found by mutation testing: a dict inside a dict was not copied to be compared (its depth), and a held object's
    change was looked for only where the layer's own attributes changed too; JAX's compiled step then ran the
    counting code once per trace, so the count read 1 or 2 after 12 steps and the weights left the plain loop's."""
    (fast, fast_layer), (plain, plain_layer) = _fit(backend, make, True), _fit(backend, make, False)
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    count = (lambda layer: layer.stats["train"]["n"]) if make is Mut4NestedDictCounter else (lambda layer: layer.h.n)
    assert count(fast_layer) == count(plain_layer) == 12


class Mut4ListCache(nnx.Layer):
    """Squares, keeping its input for the backward in a list it holds (``self.cache[0] = X``): a cache."""

    def __init__(self):
        super().__init__()
        self.cache = [None]

    def forward(self, X, training=False):
        self.cache[0] = X
        return X * X

    def backward(self, dY, need_dX=True):
        return 2.0 * self.cache[0] * dY


def test_a_list_cache_holds_no_traced_value_after_predict_or_fit(backend):
    """Found by mutation testing: what a trace wrote into a list a layer keeps was not put back, so after a compiled
    predict or fit on JAX the list held the trace's tracer (any later read of it fails with JAX's leaked-tracer
    error); the fit itself must still give the plain loop's numbers."""
    (fast, fast_layer), (plain, _) = _fit(backend, Mut4ListCache, True), _fit(backend, Mut4ListCache, False)
    for a, b in zip(fast, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert not backend.is_traced(fast_layer.cache[0])
    model = nnx.Sequential(nnx.Dense(4, 4), Mut4ListCache(), backend=backend, dtype="float64", seed=0)
    model.predict(np.ones((8, 4)))
    assert not backend.is_traced(model.layers[1].cache[0])
