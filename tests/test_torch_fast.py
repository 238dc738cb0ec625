"""The torch fast path (nnx/backends/torch_fast.py) gives the portable torch path's numbers.

tests/test_fastpath.py runs its whole comparison on torch too (its `backend` fixture includes
torch); this file adds what is torch's own: the step really is torch's kernels, `fit` over
several epochs in float32 and float64 against `Backend.with_fastpath(False)`, and the step's
buffers on the model's device and dtype.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx

torch = pytest.importorskip("torch")
from nnx.backends import torch_fast  # noqa: E402

TOL = {"float32": {"rtol": 2e-5, "atol": 2e-6}, "float64": {"rtol": 1e-11, "atol": 1e-13}}


def _backend():
    be = nnx.get_backend("torch")
    if be.fastpath is None:
        pytest.skip("torch fast path switched off (NNX_FASTPATH=0)")
    return be


def _layers(kind):
    if kind == "ce":
        return [nnx.Dense(7, 12), nnx.ReLU(), nnx.Dense(12, 9), nnx.ReLU(), nnx.Dense(9, 4)], "cross_entropy"
    if kind == "bce":
        return [nnx.Dense(7, 10), nnx.ReLU(), nnx.Dense(10, 1), nnx.Sigmoid()], "bce"
    return [nnx.Dense(7, 10), nnx.ReLU(), nnx.Dense(10, 2)], "mse"


def _data(kind, n=70):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((n, 7))
    y = {"ce": rng.integers(0, 4, n), "bce": (rng.random((n, 1)) > 0.5).astype(float),
         "mse": rng.standard_normal((n, 2))}[kind]
    return X, y


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["ce", "bce", "mse"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_fit_matches_portable_torch(dtype, kind, optimizer):
    be = _backend()
    X, y = _data(kind)
    models, losses = [], []
    for backend in (be, be.with_fastpath(False)):
        layers, loss = _layers(kind)
        model = nnx.Sequential(*layers, backend=backend, dtype=dtype, seed=11)
        opt = (nnx.optim.SGD(model.parameters(), lr=0.05, momentum=0.9) if optimizer == "sgd"
               else nnx.optim.Adam(model.parameters(), lr=0.01))
        hist = model.fit(X, y, loss=loss, optimizer=opt, epochs=4, batch_size=16)  # 16, 16, 16, 16, 6 rows
        models.append((model, opt))
        losses.append(hist.history["loss"])
    (fast, fast_opt), (slow, slow_opt) = models
    np.testing.assert_allclose(losses[0], losses[1], **TOL[dtype])
    for a, b in zip(fast.parameters(), slow.parameters(), strict=True):
        assert a.value.dtype == getattr(torch, dtype)
        np.testing.assert_allclose(a.value.numpy(), b.value.numpy(), **TOL[dtype])
        np.testing.assert_allclose(a.grad.numpy(), b.grad.numpy(), **TOL[dtype])
    for i, entry in slow_opt.state.items():
        for key, arr in entry.items():
            np.testing.assert_allclose(fast_opt.state[i][key].numpy(), arr.numpy(), **TOL[dtype])
    assert fast_opt._fused is not None, "the fused update ran over the flat buffer"


def test_step_is_torch_kernels_and_grads_are_fresh():
    be = _backend()
    layers, loss = _layers("ce")
    model = nnx.Sequential(*layers, backend=be, dtype="float32", seed=1)
    step = be.fastpath.train_step(model, model.resolve_loss(loss))
    assert isinstance(step, torch_fast.TorchTrainStep)
    X, y = _data("ce", 16)
    Xt, yt = be.asarray(X, dtype="float32"), be.asarray(y)
    step(Xt, yt)
    first = [p.grad for p in model.parameters()]
    value, Z, _ = step(Xt, yt)
    assert all(p.grad is not g for p, g in zip(model.parameters(), first, strict=True))
    assert value.ndim == 0 and Z.shape == (16, 4) and Z.dtype == torch.float32
    root = {id(be.fastpath.kernels.root(p.value)) for p in model.parameters()}
    assert len(root) == 1, "parameters are views of one flat buffer"


def test_subclassed_layer_runs_portable_code():
    class TorchSubclassedDense(nnx.Dense):
        pass

    be = _backend()
    model = nnx.Sequential(TorchSubclassedDense(7, 3), backend=be, dtype="float64", seed=0)
    step = be.fastpath.train_step(model, model.resolve_loss("mse"))
    assert step is None or all(kind != torch_fast._DENSE for kind, _ in step.ops)
