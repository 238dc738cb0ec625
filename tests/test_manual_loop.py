"""The loop by hand (README's quick start, docs/getting_started.md): forward, the loss's gradient, backward, step.

A PyTorch user's loop, written beside it in torch, must give the same weights to float64 rounding, also when
the same optimizer goes on in `fit` and back, when `predict` or `evaluate` runs between a forward and its
backward, and when a second backward follows (it overwrites `p.grad`, as the docs say, on every backend).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nnx

torch = pytest.importorskip("torch")

N, D, H = 12, 3, 5

# The hand-written loop runs the same Python on every backend; `fit` runs it plainly (array_api_strict), over flat
# buffers (NumPy, torch) or compiled (JAX). JAX's compiles cost seconds here, and the probes of this file gave its
# numbers to 1e-16 too; the suite checks its compiled step against the plain loop elsewhere (test_compiled_epoch).
QUICK = ["numpy", "torch", "array_api_strict"]


@pytest.fixture(params=QUICK)
def quick(request):
    ok, why = nnx.backends.backend_status(request.param)
    if not ok:
        pytest.skip(f"{request.param} not available: {why}")
    return nnx.get_backend(request.param)


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((N, D))
    y = (rng.random((N, 1)) > 0.5).astype(np.float64)
    return X, y


def _model(backend, *layers):
    layers = layers or (nnx.Dense(D, H), nnx.Tanh(), nnx.Dense(H, 1), nnx.Sigmoid())
    return nnx.Sequential(*layers, backend=backend, dtype="float64", seed=3)


def _host(model):
    return {k: np.asarray(model.backend.to_host(v)) for k, v in model.state_dict().items()}


def _torch_twin(model):
    """The torch model with `model`'s weights: Dense layers become Linear (weight transposed), the rest by name."""
    mods, names = [], []
    for i, layer in enumerate(model.layers):
        if isinstance(layer, nnx.Dense):
            lin = torch.nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
            with torch.no_grad():
                lin.weight.copy_(torch.tensor(_host(model)[f"{i}.weight"].T))
                lin.bias.copy_(torch.tensor(_host(model)[f"{i}.bias"]))
            mods.append(lin)
            names.append(i)
        elif isinstance(layer, nnx.BatchNorm):
            mods.append(torch.nn.BatchNorm1d(layer.num_features if hasattr(layer, "num_features") else H,
                                             dtype=torch.float64))
        else:
            mods.append({"Tanh": torch.nn.Tanh(), "Sigmoid": torch.nn.Sigmoid(),
                         "ReLU": torch.nn.ReLU()}[type(layer).__name__])
    return torch.nn.Sequential(*mods), names


def _same_weights(model, twin, names):
    got = _host(model)
    for i in names:
        np.testing.assert_allclose(got[f"{i}.weight"], twin[i].weight.detach().numpy().T, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got[f"{i}.bias"], twin[i].bias.detach().numpy(), rtol=0, atol=1e-12)


def _torch_step(twin, topt, X, y):
    topt.zero_grad()
    torch.nn.functional.binary_cross_entropy(twin(torch.tensor(X)), torch.tensor(y)).backward()
    topt.step()


def _nnx_step(model, opt, loss_fn, X, y):
    out = model.forward(X, training=True)
    model.backward(loss_fn.gradient(y, out))
    opt.step()


@pytest.mark.parametrize("rule", ["adam", "sgd_momentum"])
def test_a_manual_loop_then_fit_then_a_manual_loop_follows_torch(quick, data, rule):
    """One optimizer shared by hand-written steps and `fit` (mini-batches, in order): one step count, one
    Adam bias correction, one momentum buffer, the same weights as torch's loop over the same batches."""
    X, y = data
    model = _model(quick)
    twin, names = _torch_twin(model)
    if rule == "adam":
        opt = nnx.optim.Adam(model.parameters(), lr=0.05)
        topt = torch.optim.Adam(twin.parameters(), lr=0.05)
    else:
        opt = nnx.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        topt = torch.optim.SGD(twin.parameters(), lr=0.2, momentum=0.9)
    loss_fn = nnx.losses.BinaryCrossEntropy()
    for _ in range(3):
        _nnx_step(model, opt, loss_fn, X, y)
        _torch_step(twin, topt, X, y)
    _same_weights(model, twin, names)
    model.fit(X, y, loss="bce", optimizer=opt, epochs=2, batch_size=4, shuffle=False, verbose=0)
    for _ in range(2):
        for i in range(0, N, 4):
            _torch_step(twin, topt, X[i:i + 4], y[i:i + 4])
    _same_weights(model, twin, names)
    assert model.optimizer is opt and opt.step_count == 3 + 2 * 3
    for _ in range(2):
        _nnx_step(model, opt, loss_fn, X[:5], y[:5])
        _torch_step(twin, topt, X[:5], y[:5])
    _same_weights(model, twin, names)


def test_predict_and_evaluate_between_forward_and_backward_leave_the_training_pass_alone(data):
    """An inference pass between a training forward and its backward (a progress print) keeps nothing: the
    backward uses the training forward's inputs, batch statistics and output shape."""
    X, y = data
    model = _model("numpy", nnx.Dense(D, H), nnx.BatchNorm(H), nnx.ReLU(), nnx.Dense(H, 1), nnx.Sigmoid())
    twin, names = _torch_twin(model)
    opt = nnx.optim.SGD(model.parameters(), lr=0.1)
    topt = torch.optim.SGD(twin.parameters(), lr=0.1)
    loss_fn = nnx.losses.BinaryCrossEntropy()
    for _ in range(2):
        out = model.forward(X, training=True)
        model.predict(X[:3])
        model(X[:2])
        model.evaluate(X[:5], y[:5], loss="bce")
        model.backward(loss_fn.gradient(y, out))
        opt.step()
        _torch_step(twin, topt, X, y)
    _same_weights(model, twin, names)
    stats = _host(model)
    np.testing.assert_allclose(stats["1.running_mean"], twin[1].running_mean.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats["1.running_var"], twin[1].running_var.numpy(), rtol=0, atol=1e-12)


def test_a_second_backward_overwrites_the_gradients_after_fit_too(quick, data):
    """The docs' "backward overwrites p.grad": two backwards in a row leave the second batch's gradient, not the
    sum torch's accumulation would give, also once `fit` has trained the model on flat buffers; an array kept
    from the first backward is not changed by the second."""
    X, y = data
    backend = quick
    model = _model(backend)
    model.fit(X, y, loss="bce", optimizer="adam", epochs=1, batch_size=4, shuffle=False, verbose=0)
    twin, _ = _torch_twin(model)
    loss_fn = nnx.losses.BinaryCrossEntropy()
    model.backward(loss_fn.gradient(y[:6], model.forward(X[:6], training=True)))
    first = {p.name: p.grad for p in model.parameters()}
    first_host = {name: np.array(model.backend.to_host(g)) for name, g in first.items()}
    model.backward(loss_fn.gradient(y[6:], model.forward(X[6:], training=True)))
    torch.nn.functional.binary_cross_entropy(twin(torch.tensor(X[6:])), torch.tensor(y[6:])).backward()
    for p in model.parameters():
        layer = twin[int(p.name.split(".")[0])]
        expected = layer.weight.grad.numpy().T if p.name.endswith("weight") else layer.bias.grad.numpy()
        np.testing.assert_allclose(np.asarray(model.backend.to_host(p.grad)), expected, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(np.asarray(model.backend.to_host(first[p.name])), first_host[p.name])


def test_the_second_of_two_training_forwards_is_the_one_backpropagated(quick, data):
    """forward twice, then backward: the gradient is the second forward's, its input and its dropout mask, on every
    backend; the first forward (as long as the second, other inputs, another mask) leaves nothing behind."""
    X, y = data
    backend = quick
    model = _model(backend, nnx.Dropout(0.5), nnx.Dense(D, 1))
    model.forward(X * 3.0, training=True)
    out = np.asarray(backend.to_host(model.forward(X, training=True)))
    dY = np.full((N, 1), 1.0 / N)
    dX = np.asarray(backend.to_host(model.backward(dY)))
    W, b = _host(model)["1.weight"], _host(model)["1.bias"]
    kept = dX / (dY @ W.T)  # the mask times 1/(1-rate): 0 or 2, as backward applied it
    assert set(np.round(kept, 12).ravel()) <= {0.0, 2.0} and 0 < np.count_nonzero(kept) < kept.size
    np.testing.assert_allclose(out, (X * kept) @ W + b, rtol=0, atol=1e-12)  # the mask of the second forward
    np.testing.assert_allclose(np.asarray(backend.to_host(model.layers[1].weight.grad)), (X * kept).T @ dY,
                               rtol=0, atol=1e-12)  # and its input X, not X * 3


@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_a_model_output_passed_first_names_the_argument_order(quick, data, loss):
    """torch's ``loss(input, target)`` order, a model's output first and NumPy targets second: the error says a loss
    takes (y_true, y_pred), not that some model "runs on the numpy backend"."""
    backend = quick
    if backend.name == "numpy":
        pytest.skip("both arguments are NumPy arrays: nothing tells the order")
    X, y = data
    model = _model(backend)
    out = model.forward(X, training=True)
    loss_fn = {"bce": nnx.losses.BinaryCrossEntropy(), "mse": nnx.losses.MSE()}[loss]
    for call in (loss_fn, loss_fn.gradient):
        with pytest.raises(TypeError, match=r"loss\(y_true, y_pred\)") as info:
            call(out, y)
        assert "model runs on" not in str(info.value)
    np.testing.assert_allclose(float(loss_fn(y, out)), float(loss_fn(backend.asarray(y, dtype="float64"), out)))


def test_a_loss_given_arrays_of_two_other_libraries_names_both_not_a_model():
    """Found in review: jax targets with a torch y_pred were told that "this model runs on the torch backend" and
    to call model.to('jax'), where no model is in the call."""
    torch, jnp = pytest.importorskip("torch"), pytest.importorskip("jax.numpy")
    for y_true, y_pred, mine in ((jnp.zeros(3), torch.zeros(3, dtype=torch.float64), "torch"),
                                 (torch.zeros(3), jnp.zeros(3), "jax")):
        for call in (nnx.losses.MSE(), nnx.losses.MSE().gradient):
            expected = rf"y_true is an? \w+ array but y_pred is an? {mine} array: a loss computes on y_pred's " \
                       rf"library.*pass y_true as an? {mine} array"
            with pytest.raises(TypeError, match=expected) as info:
                call(y_true, y_pred)
            assert "model" not in str(info.value)


@pytest.mark.parametrize("rebuild", ["to", "nest"])
def test_a_step_that_finds_no_gradient_warns_instead_of_training_nothing(data, rebuild):
    """An optimizer built before `model.to()` (or before its model was nested, which rebuilds it) holds the old
    model's parameters: torch moves a module in place, nnx returns a new model, so a torch user's loop ran
    backward on the new model and stepped the old one's, training nothing without a word."""
    X, y = data
    model = _model("numpy")
    opt = nnx.optim.Adam(model.parameters(), lr=0.1)
    if rebuild == "to":
        model = model.to("numpy")
    else:
        model = nnx.Sequential(model, backend="numpy", dtype="float64", seed=3)
    before = _host(model)
    loss_fn = nnx.losses.BinaryCrossEntropy()
    with pytest.warns(UserWarning, match=r"no gradient in any of its 4 parameters.*to\(\)"):
        _nnx_step(model, opt, loss_fn, X, y)
    for name, value in _host(model).items():
        np.testing.assert_array_equal(value, before[name])
    opt = nnx.optim.Adam(model.parameters(), lr=0.1)  # built after: it trains, with no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _nnx_step(model, opt, loss_fn, X, y)
    assert not np.array_equal(_host(model)[next(iter(before))], before[next(iter(before))])


def test_an_optimizer_a_manual_loop_assigns_to_the_model_goes_on_in_its_copies(data, tmp_path):
    """getting_started: `save`/`nnx.load` and `to()` carry `model.optimizer`, also one a loop by hand assigned, and
    the copy's `optimizer` goes on where the original's stands: the same next steps, Adam's moments included."""
    X, y = data
    model = _model("numpy")
    opt = nnx.optim.Adam(model.parameters(), lr=0.1)
    loss_fn = nnx.losses.BinaryCrossEntropy()
    for _ in range(2):
        _nnx_step(model, opt, loss_fn, X, y)
    model.optimizer = opt
    model.save(tmp_path / "m.npz")
    copies = [nnx.load(tmp_path / "m.npz"), model.to("numpy")]
    for _ in range(2):
        _nnx_step(model, opt, loss_fn, X, y)
        for copy in copies:
            assert copy.optimizer is not None and copy.optimizer is not opt
            _nnx_step(copy, copy.optimizer, loss_fn, X, y)
    for copy in copies:
        assert copy.optimizer.step_count == opt.step_count == 4
        for name, value in _host(copy).items():
            np.testing.assert_array_equal(value, _host(model)[name])


def test_the_loss_value_passed_to_backward_says_backward_takes_its_gradient(data):
    """torch's ``loss.backward()`` habit, ``model.backward(loss_fn(y, out))``: the error says backward takes the
    gradient of the loss w.r.t. the output (``loss_fn.gradient(y, out)``), not only that the shapes differ."""
    X, y = data
    model = _model("numpy")
    loss_fn = nnx.losses.BinaryCrossEntropy()
    out = model.forward(X, training=True)
    with pytest.raises(ValueError, match=r"loss_fn\.gradient\(y, out\)"):
        model.backward(loss_fn(y, out))
    model.forward(X, training=True)
    with pytest.raises(ValueError, match=r"shape \(12,\) but the last forward's output has shape \(12, 1\)") as info:
        model.backward(np.ones(N))
    assert "gradient(y, out)" not in str(info.value)


def test_load_state_dict_between_a_forward_and_its_backward_is_refused(data):
    """torch refuses a backward after ``load_state_dict`` changed the weights its forward used (the in-place copy
    bumps their version); nnx backpropagated the old forward's activations through the new weights, a gradient of
    neither. The next training forward backpropagates as usual."""
    X, y = data
    model = _model("numpy")
    loss_fn = nnx.losses.BinaryCrossEntropy()
    start = model.state_dict()
    out = model.forward(X, training=True)
    model.load_state_dict({k: v * 0.5 for k, v in start.items()})
    with pytest.raises(RuntimeError, match="load_state_dict"):
        model.backward(loss_fn.gradient(y, out))
    out = model.forward(X, training=True)
    model.backward(loss_fn.gradient(y, out))
    assert all(p.grad is not None for p in model.parameters())
    model.forward(X, training=True)
    with pytest.raises(RuntimeError, match=r"needs a forward\(X, training=True\) first") as info:
        model.backward(loss_fn.gradient(y, out))
        model.backward(loss_fn.gradient(y, out))
    assert "load_state_dict" not in str(info.value)
