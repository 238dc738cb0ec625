"""``p.grad`` after each step is a fresh array, on every backend, with the fast path on and off.

A callback that keeps ``p.grad`` from step k (to log it, average it, plot it) must find the
same values there after step k+1: JAX arrays cannot change, so no backend may write again
a gradient buffer that anyone still holds, whole or in part.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx


class _KeepGrads(nnx.callbacks.Callback):
    """Holds every parameter's `grad` (or only `part` of it) after each batch, with a host copy of its values."""

    def __init__(self, part=lambda grad: grad):
        self.kept = []
        self.part = part

    def on_batch_end(self, batch, logs=None):
        be = self.model.backend
        for p in self.model.parameters():
            held = self.part(p.grad)
            self.kept.append((p.name, held, np.array(be.to_host(held), copy=True)))


@pytest.mark.parametrize("fast", [True, False], ids=["fastpath_on", "fastpath_off"])
@pytest.mark.parametrize("loss", ["cross_entropy", "bce"])
def test_grads_a_callback_keeps_do_not_change_later(backend, dtype, fast, loss):
    be = backend.with_fastpath(fast)
    classes = 3 if loss == "cross_entropy" else 1
    layers = [nnx.Dense(5, 7), nnx.ReLU(), nnx.Dropout(0.2), nnx.Dense(7, classes)]
    if loss == "bce":
        layers.append(nnx.Sigmoid())
    model = nnx.Sequential(*layers, backend=be, dtype=dtype, seed=1)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((48, 5))
    y = rng.integers(0, 3, 48) if loss == "cross_entropy" else (rng.random((48, 1)) > 0.5).astype(float)
    keep = _KeepGrads()
    opt = nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = model.fit(X, y, loss=loss, optimizer=opt, epochs=2, batch_size=16, callbacks=[keep])
    if fast and not backend.can_compile:  # JAX compiles the whole step instead
        assert history.execution == "flat", "the flat update was not taken"
    n_params = len(model.parameters())
    assert len(keep.kept) == 6 * n_params
    for name, grad, values in keep.kept:
        np.testing.assert_array_equal(be.to_host(grad), values, err_msg=f"{name} changed after its step")
    for k in range(n_params, len(keep.kept)):  # each step's grad is a new array, not last step's rebound
        assert keep.kept[k][1] is not keep.kept[k - n_params][1]


@pytest.mark.parametrize("fast", [True, False], ids=["fastpath_on", "fastpath_off"])
def test_a_kept_view_of_a_grad_does_not_change_later(backend, dtype, fast):
    # the NumPy fast path writes its gradient buffer again only when nobody holds any part of it
    be = backend.with_fastpath(fast)
    model = nnx.Sequential(nnx.Dense(5, 7), nnx.ReLU(), nnx.Dense(7, 3), backend=be, dtype=dtype, seed=1)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((48, 5)), rng.integers(0, 3, 48)
    keep = _KeepGrads(part=lambda grad: grad[:1, ...])  # a slice (a view on NumPy), never the grad itself
    model.fit(X, y, loss="cross_entropy", optimizer=nnx.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
              epochs=2, batch_size=16, callbacks=[keep])
    assert len(keep.kept) == 6 * len(model.parameters())
    for name, part, values in keep.kept:
        np.testing.assert_array_equal(be.to_host(part), values, err_msg=f"a slice of {name}'s grad changed")
