"""A user's layer and callback as the tests that compare executions use them: written with the public API only;
and the call counter the tests that count a step's checks share."""

from __future__ import annotations

import collections
import math
from typing import Any

import numpy as np

import nnx


class UserDense(nnx.Layer):
    """``X @ W + b`` written as a user writes a layer: the built-in Dense's math, none of its code."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.X: Any = None

    def build(self, input_shape):
        self.weight = self.add_parameter("weight", (self.in_features, self.out_features), "glorot", regularized=True)
        self.bias = self.add_parameter("bias", (self.out_features,), "zeros")

    def output_shape(self, input_shape):
        return (self.out_features,)

    def forward(self, X, training=False):
        if training:
            self.X = X
        return X @ self.weight.value + self.bias.value

    def backward(self, dY, need_dX=True):
        self.weight.grad = self.X.T @ dY
        self.bias.grad = self.xp.sum(dY, axis=0)
        return dY @ self.weight.value.T if need_dX else None

    def get_config(self):
        return {"type": "UserDense", "in_features": self.in_features, "out_features": self.out_features}


class SetAfterFirstEpoch(nnx.callbacks.Callback):
    """A user's schedule of a hyper-parameter set after the first epoch (momentum on, amsgrad off, a NumPy float)."""

    def __init__(self, **change):
        self.change = change

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            for name, value in self.change.items():
                setattr(self.model.optimizer, name, value)


class DoubledWithAFunction(nnx.Layer):
    """``2 X``, constructed with a function (``fn``): its config is not JSON, so it cannot be rebuilt from one."""

    def __init__(self, fn=None):
        super().__init__()
        self.fn = fn

    def forward(self, X, training=False):
        return X * 2.0

    def backward(self, dY, need_dX=True):
        return dY * 2.0


class CallCounting(nnx.Layer):
    """Counts its training calls in ``stats["calls"]`` (a dict, a Counter or a defaultdict, by `kind`) and scales by
    ``1 / (1 + calls)``: its numbers depend on Python state a compiled or replayed step must not freeze."""

    def __init__(self, kind: str = "dict") -> None:
        super().__init__()
        self.kind = kind
        self.stats = {"dict": lambda: {"calls": 0}, "counter": collections.Counter,
                      "defaultdict": lambda: collections.defaultdict(int)}[kind]()

    def forward(self, X, training=False):
        if training:
            self.stats["calls"] += 1
        return X * (1.0 / (1 + self.stats["calls"]))

    def backward(self, dY, need_dX=True):
        return dY * (1.0 / (1 + self.stats["calls"]))


def counted_calls(monkeypatch: Any, cls: type, name: str) -> list[int]:
    """Count the calls of method `name` of `cls` for the test (in a one-element list, read as it grows)."""
    counter = [0]
    original = getattr(cls, name)

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return original(self, *args, **kwargs)
    monkeypatch.setattr(cls, name, counted)
    return counter


class PerEpoch(nnx.callbacks.Callback):
    """How often `counter[0]` grew in each epoch (an epoch-level hook only: the steps still run back to back)."""

    def __init__(self, counter: list[int]) -> None:
        super().__init__()
        self.counter, self.seen, self.per_epoch = counter, 0, []

    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch.append(self.counter[0] - self.seen)
        self.seen = self.counter[0]


def keras_plateau_rates(values: Any, lr: float, factor: float, patience: int, cooldown: int, min_lr: float,
                        min_delta: float) -> list[float]:
    """Keras's ReduceLROnPlateau.on_epoch_end (mode min), written out: the rate each epoch trains with, for the
    monitored `values` (Keras compares the rate with min_lr in float32)."""
    best, wait, cool, rates = math.inf, 0, 0, []
    for current in values:
        rates.append(lr)
        if cool > 0:
            cool -= 1
            wait = 0
        if current < best - min_delta:
            best, wait = current, 0
        elif cool <= 0:
            wait += 1
            if wait >= patience and lr > np.float32(min_lr):
                lr = max(lr * factor, min_lr)
                cool, wait = cooldown, 0
    return rates


def matrix_decay(value: Any, rate: float) -> float:
    """A helper a user's optimizer rule calls from another module: decay for matrices, none for vectors."""
    return rate if value.ndim > 1 else 0.0
