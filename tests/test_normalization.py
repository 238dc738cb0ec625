"""BatchNorm, LayerNorm and Flatten: PyTorch parity, buffers, saving, moving and resuming, on every backend."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import nnx
from nnx.regularizers import L1, L2

TOL = 1e-12


def _host(model, value):
    return np.array(model.backend.to_host(value))  # a writable copy (torch.from_numpy warns on read-only)


def _state(model) -> dict[str, np.ndarray]:
    return {k: _host(model, v) for k, v in model.state_dict().items()}


def _randomize_affine(model, rng) -> None:
    """Weights and biases away from ones/zeros, so the affine terms are exercised."""
    for p in model.parameters():
        p.value = model.backend.asarray(rng.standard_normal(p.shape), dtype=model.dtype)


# -- PyTorch parity, float64 -------------------------------------------------------------

def test_batchnorm_matches_torch_batchnorm1d(backend):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    features, momentum, eps = 5, 0.3, 1e-3
    model = nnx.Sequential(nnx.BatchNorm(features, momentum=momentum, eps=eps), backend=backend,
                           dtype="float64", seed=0)
    _randomize_affine(model, rng)
    ref = torch.nn.BatchNorm1d(features, momentum=momentum, eps=eps, dtype=torch.float64)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(_host(model, model.layers[0].weight.value)))
        ref.bias.copy_(torch.from_numpy(_host(model, model.layers[0].bias.value)))
    ref.train()
    # two batch sizes (a general one and 2, the smallest the unbiased running variance takes) in turn: on JAX each
    # new size compiles every op of the forward and backward again
    for step, n in enumerate((7, 2, 7, 2, 7)):
        X = rng.standard_normal((n, features)) * (1 + step) + step
        dY = rng.standard_normal((n, features))
        Y = model.forward(X, training=True)
        dX = model.backward(dY)
        Xt = torch.from_numpy(X).requires_grad_(True)
        ref.weight.grad = ref.bias.grad = None
        Yt = ref(Xt)
        Yt.backward(torch.from_numpy(dY))
        layer = model.layers[0]
        np.testing.assert_allclose(_host(model, Y), Yt.detach().numpy(), rtol=1e-10, atol=TOL, err_msg="Y")
        np.testing.assert_allclose(_host(model, dX), Xt.grad.numpy(), rtol=1e-10, atol=TOL, err_msg="dX")
        np.testing.assert_allclose(_host(model, layer.weight.grad), ref.weight.grad.numpy(), rtol=1e-10, atol=TOL)
        np.testing.assert_allclose(_host(model, layer.bias.grad), ref.bias.grad.numpy(), rtol=1e-10, atol=TOL)
        np.testing.assert_allclose(_host(model, layer.running_mean.value), ref.running_mean.numpy(),
                                   rtol=1e-12, atol=TOL, err_msg=f"running_mean after step {step}")
        np.testing.assert_allclose(_host(model, layer.running_var.value), ref.running_var.numpy(),
                                   rtol=1e-12, atol=TOL, err_msg=f"running_var after step {step}")
    ref.eval()
    X = rng.standard_normal((7, features))
    np.testing.assert_allclose(_host(model, model.predict(X)), ref(torch.from_numpy(X)).detach().numpy(),
                               rtol=1e-10, atol=TOL)


@pytest.mark.parametrize("shape", [(6,), (2, 3)], ids=["last-axis", "two-axes"])
def test_layernorm_matches_torch_layernorm(backend, shape):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    eps = 1e-4
    normalized = shape[0] if len(shape) == 1 else shape
    model = nnx.Sequential(nnx.LayerNorm(normalized, eps=eps), backend=backend, dtype="float64", seed=0)
    _randomize_affine(model, rng)
    ref = torch.nn.LayerNorm(shape, eps=eps, dtype=torch.float64)
    layer = model.layers[0]
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(_host(model, layer.weight.value)))
        ref.bias.copy_(torch.from_numpy(_host(model, layer.bias.value)))
    for n in (5, 1):  # a second batch of another size (one row): gradients are replaced, not added to
        X = rng.standard_normal((n, *shape)) * 3 + 1
        dY = rng.standard_normal((n, *shape))
        Y = model.forward(X, training=True)
        dX = model.backward(dY)
        Xt = torch.from_numpy(X).requires_grad_(True)
        ref.weight.grad = ref.bias.grad = None
        Yt = ref(Xt)
        Yt.backward(torch.from_numpy(dY))
        np.testing.assert_allclose(_host(model, Y), Yt.detach().numpy(), rtol=1e-10, atol=TOL)
        np.testing.assert_allclose(_host(model, dX), Xt.grad.numpy(), rtol=1e-10, atol=TOL)
        np.testing.assert_allclose(_host(model, layer.weight.grad), ref.weight.grad.numpy(), rtol=1e-10, atol=TOL)
        np.testing.assert_allclose(_host(model, layer.bias.grad), ref.bias.grad.numpy(), rtol=1e-10, atol=TOL)
        # LayerNorm has no train/inference difference
        np.testing.assert_allclose(_host(model, model.predict(X)), Yt.detach().numpy(), rtol=1e-10, atol=TOL)


# -- gradient checks of whole models with the new layers -----------------------------------

# Every hidden layer 4 wide (the batch 7 rows): few parameters to perturb one by one, and one set of shapes for
# JAX to compile its ops for across the cases.
@pytest.mark.parametrize("case", [
    ("bn-mlp", lambda: [nnx.Dense(4, 4), nnx.BatchNorm(), nnx.ReLU(), nnx.Dense(4, 4), nnx.BatchNorm(),
                        nnx.Dense(4, 2)], None),
    ("ln-mlp", lambda: [nnx.Dense(4, 4), nnx.LayerNorm(), nnx.Tanh(), nnx.Dense(4, 2)], None),
    ("flatten-bn-ln", lambda: [nnx.Flatten(), nnx.BatchNorm(), nnx.Dense(4, 4), nnx.LayerNorm(4),
                               nnx.Dense(4, 2)], (2, 2)),
    ("ln-2d-flatten", lambda: [nnx.LayerNorm((2, 2)), nnx.Flatten(), nnx.Dense(4, 2)], (2, 2)),
], ids=lambda c: c[0])
def test_check_gradients_with_norm_layers(backend, case):
    _, make, sample = case
    rng = np.random.default_rng(3)
    model = nnx.Sequential(*make(), backend=backend, dtype="float64", seed=2,
                           input_shape=sample, regularizer=L2(0.1))
    _randomize_affine(model, rng)
    X = rng.standard_normal((7, *(sample or (4,))))
    err = nnx.check_gradients(model, X, rng.standard_normal((7, 2)), "mse")
    assert err < 1e-6, f"relative error {err:.2e}"


def test_wrong_batchnorm_backward_is_caught(backend, monkeypatch):
    right = nnx.BatchNorm.backward

    def wrong(self, dY, need_dX=True):
        dX = right(self, dY, need_dX)
        return dX * 1.01

    monkeypatch.setattr(nnx.BatchNorm, "backward", wrong)
    # the shapes of the checks above (7 rows, 4 wide, 2 outputs): JAX compiles no op again
    model = nnx.Sequential(nnx.Dense(4, 4), nnx.BatchNorm(), nnx.Dense(4, 2), backend=backend, dtype="float64")
    rng = np.random.default_rng(0)
    assert nnx.check_gradients(model, rng.standard_normal((7, 4)), rng.standard_normal((7, 2))) > 1e-4


# -- behaviour -------------------------------------------------------------------------------

def test_batchnorm_train_and_inference(backend, dtype):
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.BatchNorm(momentum=0.5), backend=backend, dtype=dtype, seed=0)
    bn = model.layers[1]
    assert bn.num_features == 4
    assert [b.name for b in model.buffers()] == ["1.running_mean", "1.running_var"]
    np.testing.assert_array_equal(_host(model, bn.running_mean.value), np.zeros(4))
    np.testing.assert_array_equal(_host(model, bn.running_var.value), np.ones(4))
    X = np.random.default_rng(0).standard_normal((16, 3)) * 2 + 1
    Y = _host(model, model.forward(X, training=True))
    tol = 1e-10 if dtype == "float64" else 1e-4
    np.testing.assert_allclose(Y.mean(axis=0), 0, atol=tol)
    np.testing.assert_allclose(Y.var(axis=0), 1, atol=1e-3)  # eps keeps it just under 1
    moved = _state(model)
    assert not np.array_equal(moved["1.running_mean"], np.zeros(4))
    # inference reads the running statistics and leaves them alone
    before = _state(model)
    out = _host(model, model.predict(X))
    H = X.astype(dtype) @ before["0.weight"] + before["0.bias"]
    expected = (H - before["1.running_mean"]) / np.sqrt(before["1.running_var"] + 1e-5)
    np.testing.assert_allclose(out, expected, rtol=1e-5 if dtype == "float32" else 1e-10, atol=tol)
    for k, v in _state(model).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    for b in model.buffers():
        assert b.value.dtype == backend.float_dtype(dtype)


def test_batchnorm_takes_momentum_and_eps_by_name_only():
    """torch's order is BatchNorm1d(num_features, eps, momentum), nnx's was (num_features, momentum, eps): a
    torch user's BatchNorm(16, 1e-3) trained with momentum 1e-3 and eps 1e-5 without a word. Both are now
    keyword-only, so the positional call is a TypeError."""
    with pytest.raises(TypeError):
        nnx.BatchNorm(16, 1e-3)
    layer = nnx.BatchNorm(16, eps=1e-3, momentum=0.2)
    assert (layer.eps, layer.momentum) == (1e-3, 0.2)


def test_batchnorm_errors(backend):
    with pytest.raises(ValueError, match="needs num_features"):
        nnx.Sequential(nnx.Flatten(), nnx.BatchNorm(), backend=backend)
    with pytest.raises(ValueError, match=r"BatchNorm\(3\) expects samples of shape \(3,\) but gets \(4,\)"):
        nnx.Sequential(nnx.Dense(2, 4), nnx.BatchNorm(3), backend=backend)
    with pytest.raises(ValueError, match="put a Flatten before it"):
        nnx.Sequential(nnx.BatchNorm(), backend=backend, input_shape=(2, 3))
    with pytest.raises(ValueError, match="momentum"):
        nnx.BatchNorm(4, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        nnx.LayerNorm(4, eps=0)
    model = nnx.Sequential(nnx.BatchNorm(2), backend=backend)
    with pytest.raises(ValueError, match="more than one sample"):
        model.forward(np.ones((1, 2)), training=True)
    assert model.predict(np.ones((1, 2))).shape == (1, 2)  # inference takes a single sample
    # 9 rows in batches of 4 leave a last batch of one: the error says where it comes from and what to change
    with pytest.raises(ValueError, match="batch of 1 .*choose a batch_size that does not leave one"):
        model.fit(np.ones((9, 2)), np.ones((9, 2)), loss="mse", epochs=1, batch_size=4)


def test_flatten_shapes(backend, dtype):
    model = nnx.Sequential(nnx.Flatten(), nnx.Dense(12, 4), input_shape=(3, 4), backend=backend, dtype=dtype, seed=0)
    assert model.input_shape == (3, 4) and model.output_sample_shape == (4,)
    X = np.random.default_rng(0).standard_normal((5, 3, 4))
    Y = model.predict(X)
    W = _host(model, model.layers[1].weight.value)
    np.testing.assert_allclose(_host(model, Y), X.reshape(5, 12).astype(dtype) @ W,
                               rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-6)
    shown: list[str] = []
    model.summary(print_fn=shown.append)
    assert "(batch, 12)" in shown[0]
    with pytest.raises(ValueError, match=r"samples of shape \(4, 3\) but the model expects \(3, 4\)"):
        model.predict(np.ones((2, 4, 3)))
    with pytest.raises(ValueError, match="put a Flatten before it"):
        nnx.Sequential(nnx.Dense(12, 4), input_shape=(3, 4), backend=backend)
    # without input_shape, (batch, ...) inputs still flow to the first Flatten
    loose = nnx.Sequential(nnx.Flatten(), nnx.Dense(12, 1), backend=backend, dtype=dtype, seed=0)
    assert loose.input_shape is None
    hist = loose.fit(X, np.ones((5, 1)), epochs=2, batch_size=5, verbose=0)
    assert len(hist) == 2
    out = loose.forward(X, training=True)
    dX = loose.backward(loose.backend.asarray(np.ones((5, 1)), dtype=dtype))
    assert tuple(out.shape) == (5, 1) and tuple(dX.shape) == (5, 3, 4)
    empty = model.predict(np.zeros((0, 3, 4)))
    assert tuple(empty.shape) == (0, 4)


# -- buffers: never trained, never penalised ---------------------------------------------------

def test_buffers_are_not_parameters_and_not_regularized(backend):
    model = nnx.Sequential(nnx.Dense(3, 4, regularizer=L1(0.5)), nnx.BatchNorm(), nnx.LayerNorm(), nnx.Dense(4, 1),
                           backend=backend, dtype="float64", seed=0, regularizer=L2(10.0))
    params = {p.name for p in model.parameters()}
    buffers = {b.name for b in model.buffers()}
    assert buffers == {"1.running_mean", "1.running_var"}
    assert not params & buffers
    assert set(model.state_dict()) == params | buffers
    # only Dense weights are regularized: norm weights and biases are not
    assert {p.name for p in model.parameters() if p.regularized} == {"0.weight", "3.weight"}
    s = _state(model)
    expected = 0.5 * np.abs(s["0.weight"]).sum() + 5.0 * ((s["0.weight"] ** 2).sum() + (s["3.weight"] ** 2).sum())
    np.testing.assert_allclose(model.backend.to_float(model.penalty()), expected, rtol=1e-12)
    # optimizers see parameters only; weight decay leaves the buffers to the running-statistics rule
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((12, 3)), rng.standard_normal((12, 1))
    model.fit(X, y, optimizer=nnx.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.5), epochs=1,
              batch_size=6, verbose=0)
    assert {p.name for p in model.optimizer.params} == params


def test_running_stats_follow_the_rule_during_fit(backend):
    """After fit with SGD(lr=0) the weights stand still, so the running statistics are a plain EMA of batches."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((12, 3)) * 3 + 2
    model = nnx.Sequential(nnx.BatchNorm(3, momentum=0.25), backend=backend, dtype="float64", seed=0)
    model.fit(X, np.zeros((12, 3)), optimizer=nnx.optim.SGD(model.parameters(), lr=1e-300), epochs=1,
              batch_size=4, shuffle=False, verbose=0)
    mean, var = np.zeros(3), np.ones(3)
    for start in (0, 4, 8):
        batch = X[start:start + 4]
        mean = 0.75 * mean + 0.25 * batch.mean(axis=0)
        var = 0.75 * var + 0.25 * batch.var(axis=0, ddof=1)
    s = _state(model)
    np.testing.assert_allclose(s["0.running_mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(s["0.running_var"], var, rtol=1e-12)


def _buffers(model):
    return [_host(model, b.value) for b in model.buffers()]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the inf that makes the step refused
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize(("accumulate", "deferred"), [(1, False), (2, False), (1, True)])
def test_a_refused_step_leaves_the_running_statistics_of_the_last_finite_one(backend, dtype, accumulate, deferred,
                                                                             monkeypatch):
    """A step refused as non-finite applies nothing, its forward's batch statistics included: the model goes on
    (a lower rate, evaluate, predict) from the last finite step, not with NaN running statistics for good.
    `deferred`: the check kept on the device, as on an accelerator (its arrays said not to be in host memory);
    on JAX the epoch is one compiled program either way."""
    if deferred:
        monkeypatch.setattr(type(backend), "arrays_on_host", property(lambda self: False))
    rng = np.random.default_rng(6)
    X, y = rng.standard_normal((24, 3)), rng.standard_normal((24, 1))
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.BatchNorm(4), nnx.Dense(4, 1), backend=backend, dtype=dtype, seed=0)
    model.layers[0].weight.value = model.backend.asarray(np.full((3, 4), 4.0), dtype=model.dtype)
    reference = model.to(backend)  # the same start, given only the batch before the bad one
    settings = dict(loss="mse", optimizer="sgd", epochs=1, batch_size=4, shuffle=False, accumulate=accumulate)
    reference.fit(X[:4], y[:4], **settings)
    bad = X.copy()
    bad[5] = 1e38 if dtype == "float32" else 1e308  # finite; four times it is not: an inf batch mean in batch 2
    with pytest.raises(FloatingPointError, match=r"batch 2\b"):
        model.fit(bad, y, **settings)
    for got, want in zip(_buffers(model), _buffers(reference), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.isfinite(_host(model, model.predict(X))).all()


# -- saving, loading, moving, resuming -----------------------------------------------------

def _bn_model(backend, seed=4):
    # one hidden layer with every kind of array and draw to keep: BatchNorm's buffers, Dropout's stream, LayerNorm
    return nnx.Sequential(nnx.Dense(4, 6), nnx.BatchNorm(), nnx.ReLU(), nnx.Dropout(0.2), nnx.LayerNorm(), nnx.Tanh(),
                          nnx.Dense(6, 2), backend=backend, dtype="float64", seed=seed)


def _data():
    """32 rows: four full batches of 8, one batch shape for JAX to compile a program for."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((32, 4))
    return X, X @ rng.standard_normal((4, 2)) + 0.1 * rng.standard_normal((32, 2))


def test_save_load_to_keeps_buffers_and_predictions(backend, tmp_path):
    X, y = _data()
    model = _bn_model(backend)
    model.fit(X, y, optimizer="adam", epochs=2, batch_size=8, verbose=0)
    before = _state(model)
    assert not np.array_equal(before["1.running_var"], np.ones(6))
    pred = _host(model, model.predict(X))
    model.save(tmp_path / "bn.npz")
    loaded = nnx.load(tmp_path / "bn.npz")
    for k, v in _state(loaded).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    np.testing.assert_array_equal(_host(loaded, loaded.predict(X)), pred)
    moved = loaded.to(backend)
    np.testing.assert_array_equal(_host(moved, moved.predict(X)), pred)
    for k, v in _state(moved).items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    # the copy is independent: training it does not move the original's buffers
    moved.fit(X, y, epochs=1, batch_size=8, verbose=0)
    np.testing.assert_array_equal(_state(loaded)["1.running_mean"], before["1.running_mean"])


def test_to_across_backends_keeps_buffers(tmp_path):
    chain = [b for b in ("numpy", "torch", "jax", "array_api_strict") if b in nnx.available_backends()]
    X, y = _data()
    model = _bn_model(chain[0])
    model.fit(X, y, optimizer="adam", epochs=2, batch_size=8, verbose=0)
    pred, state = _host(model, model.predict(X)), _state(model)
    for name in chain[1:]:
        model.save(tmp_path / "m.npz")
        model = nnx.load(tmp_path / "m.npz", backend=name).to(name)
        assert model.backend.name == name
        for k, v in _state(model).items():
            np.testing.assert_array_equal(v, state[k], err_msg=f"{k} on {name}")
        np.testing.assert_allclose(_host(model, model.predict(X)), pred, rtol=1e-12, atol=1e-13, err_msg=name)
        model = model.to("numpy").to(name)
        for k, v in _state(model).items():
            np.testing.assert_array_equal(v, state[k], err_msg=f"{k} on {name} after to()")


def test_resume_with_batchnorm_is_exact(backend, tmp_path):
    X, y = _data()
    full = _bn_model(backend)
    full.fit(X, y, optimizer="adam", lr=0.01, epochs=2, batch_size=8, verbose=0)
    part = _bn_model(backend)
    part.fit(X, y, optimizer="adam", lr=0.01, epochs=1, batch_size=8, verbose=0)
    part.save(tmp_path / "half.npz")
    resumed = nnx.load(tmp_path / "half.npz")
    resumed.fit(X, y, epochs=1, batch_size=8, verbose=0)
    assert resumed.epochs_trained == 2
    a, b = _state(resumed), _state(full)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=TOL, err_msg=k)


def test_batchnorm_in_fit_trains_as_torch_batchnorm1d(backend: Any) -> None:
    # train-mode batch statistics, torch's momentum and unbiased running variance, eval-mode predictions
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(40, 5)) * 3 + 2, rng.normal(size=(40, 1))
    model = nnx.Sequential(nnx.Dense(5, 4), nnx.BatchNorm(4, momentum=0.2), nnx.Tanh(), nnx.Dense(4, 1),
                           backend=backend, dtype="float64", seed=1)
    state = {k: torch.from_numpy(_writable_host(model, v).copy()) for k, v in model.state_dict().items()}
    ref = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4, momentum=0.2), torch.nn.Tanh(),
                              torch.nn.Linear(4, 1)).double()
    with torch.no_grad():
        for i in (0, 3):
            ref[i].weight.copy_(state[f"{i}.weight"].T)
            ref[i].bias.copy_(state[f"{i}.bias"])
    opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for i in range(0, 40, 8):
            opt.zero_grad()
            ((ref(torch.from_numpy(X[i:i + 8])) - torch.from_numpy(y[i:i + 8])) ** 2).mean().backward()
            opt.step()
    ref.eval()
    model.fit(X, y, loss="mse", optimizer=nnx.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), epochs=3,
              batch_size=8, shuffle=False)
    got = {k: _writable_host(model, v) for k, v in model.state_dict().items()}
    np.testing.assert_allclose(got["1.running_mean"], ref[1].running_mean.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["1.running_var"], ref[1].running_var.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_writable_host(model, model.predict(X)), ref(torch.from_numpy(X)).detach().numpy(),
                               rtol=1e-9, atol=1e-11)


def _writable_host(model: Any, value: Any) -> np.ndarray:
    return np.array(model.backend.to_host(value))  # a writable copy (JAX's host view is read-only)
