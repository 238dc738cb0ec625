"""The gradient stage and the optimizers' less common settings against PyTorch, in float64.

Each test trains an nnx model with `fit` (plain loop, flat update, JAX's compiled program) and a
torch twin with the loop a torch user writes (``clip_grad_norm_``, ``clip_grad_value_``, gradient
accumulation over micro-batches, ``param_group["lr"]`` changed, ``state_dict`` round trips), from the
same weights over the same batches, and compares the weights.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import optim

torch = pytest.importorskip("torch")

TOL = {"rtol": 1e-9, "atol": 1e-11}


def _executions():
    out = []
    for name in ("numpy", "torch", "jax"):
        if name not in nnx.available_backends():
            continue
        out.append(pytest.param(name, True, id=f"{name}-derived"))
    if "jax" in nnx.available_backends():
        out.append(pytest.param("jax", "per-step", id="jax-compiled-step"))
    out.append(pytest.param("numpy", False, id="numpy-plain"))
    return out


EXECUTIONS = _executions()


def _data(n=20, seed=0):
    """20 rows: batches of 5 are all one shape, so JAX compiles one step; the tests of an uneven last batch or a
    partial group of micro-batches ask for 23 rows."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    y = X @ rng.standard_normal((4, 2)) + 0.3 * rng.standard_normal((n, 2))
    return X, y


class _EachBatch(nnx.callbacks.Callback):
    """Needs the host after every batch, so JAX compiles one step rather than the epoch."""

    def on_batch_end(self, batch, logs=None):
        pass


def _fit(model, fast, X, y, check_mode=True, **kwargs):
    if fast == "per-step":
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), _EachBatch()]
    history = model.fit(X, y, shuffle=False, **kwargs)
    expected = {"per-step": "step", True: "epoch" if model.backend.name == "jax" else "step", False: "step"}[fast]
    assert history.execution_mode == expected or not check_mode
    return history


def _model(backend="numpy", fast=True):
    be = nnx.get_backend(backend).with_fastpath(fast is not False)
    return nnx.Sequential(nnx.Dense(4, 6), nnx.Tanh(), nnx.Dense(6, 2), backend=be, dtype="float64", seed=0)


def _host(model):
    return {k: np.asarray(model.backend.to_host(v)) for k, v in model.state_dict().items()}


def _twin(model):
    """A torch model with `model`'s weights (nnx's Dense weight is torch's transposed)."""
    w = _host(model)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2)).double()
    with torch.no_grad():
        for i in (0, 2):
            net[i].weight.copy_(torch.from_numpy(w[f"{i}.weight"].T.copy()))
            net[i].bias.copy_(torch.from_numpy(w[f"{i}.bias"].copy()))
    return net


def _assert_same(model, net, **tol):
    w = _host(model)
    for i in (0, 2):
        np.testing.assert_allclose(w[f"{i}.weight"], net[i].weight.detach().numpy().T, **(tol or TOL),
                                   err_msg=f"{i}.weight")
        np.testing.assert_allclose(w[f"{i}.bias"], net[i].bias.detach().numpy(), **(tol or TOL), err_msg=f"{i}.bias")


def _torch_epochs(net, opt, X, y, epochs, batch_size, accumulate=1, clip_norm=None, norm_type=2.0,
                  clip_value=None, sample_weight=None):
    """A torch user's loop: MSE per row (mean over outputs), micro-batches of a group summed as one large batch
    (each micro-batch's sum(w * loss) divided by the group's rows), clipping after the last, then a step."""
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    w = torch.ones(len(X), dtype=torch.float64) if sample_weight is None else torch.from_numpy(sample_weight)
    n = len(X)
    starts = list(range(0, n, batch_size))
    for _ in range(epochs):
        for g in range(0, len(starts), accumulate):
            group = [slice(s, min(s + batch_size, n)) for s in starts[g:g + accumulate]]
            rows = sum(s.stop - s.start for s in group)
            net.zero_grad()  # the model's, as the optimizer may hold only some parameters
            for s in group:
                per_row = ((net(Xt[s]) - yt[s]) ** 2).mean(dim=1)
                ((w[s] * per_row).sum() / rows).backward()
            if clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip_norm, norm_type=norm_type)
            if clip_value is not None:
                torch.nn.utils.clip_grad_value_(net.parameters(), clip_value)
            opt.step()


def _mode(history):
    return history.execution_mode


# -- clipping ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,fast", EXECUTIONS)
@pytest.mark.parametrize("clip", [dict(clip_norm=0.05), dict(clip_value=0.02), dict(clip_norm=0.05, clip_value=0.01)],
                         ids=["norm", "value", "norm-then-value"])
def test_clipping_matches_torch_clip_grad(backend, fast, clip):
    X, y = _data()
    model = _model(backend, fast)
    net = _twin(model)
    _fit(model, fast, X, y, loss="mse", optimizer="sgd", lr=0.1, epochs=2, batch_size=5, **clip)
    _torch_epochs(net, torch.optim.SGD(net.parameters(), lr=0.1), X, y, 2, 5, **clip)
    _assert_same(model, net)


# -- accumulation -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend,fast", EXECUTIONS)
@pytest.mark.parametrize("k", [2, 3])
def test_accumulation_with_uneven_last_batch_and_sample_weight_matches_torch(backend, fast, k):
    """23 rows in batches of 5: the last batch has 3 rows, and the last group is partial for k=3 (5 batches)."""
    X, y = _data(23)
    sw = np.linspace(0.2, 2.0, len(X))
    model = _model(backend, fast)
    net = _twin(model)
    _fit(model, fast, X, y, loss="mse", optimizer=optim.SGD(model.parameters(), lr=0.1, momentum=0.9), epochs=3,
              batch_size=5, accumulate=k, clip_norm=0.2, sample_weight=sw)
    _torch_epochs(net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), X, y, 3, 5, accumulate=k,
                  clip_norm=0.2, sample_weight=sw)
    _assert_same(model, net)
    assert model.optimizer.step_count == 3 * -(-5 // k)


# -- optimizers' less common settings ---------------------------------------------------------------------------

SETTINGS = [
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.1, maximize=False)),
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)),
    ("SGD", dict(lr=0.001, momentum=0.5, weight_decay=0.1, maximize=True)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, amsgrad=True)),
    ("AdamW", dict(lr=0.01, weight_decay=0.5, amsgrad=True)),
    ("AdamW", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, weight_decay=0.1, momentum=0.5, centered=True)),
    ("Adagrad", dict(lr=0.05, lr_decay=0.1, weight_decay=0.1, initial_accumulator_value=0.2, eps=1e-6)),
]


@pytest.mark.parametrize("backend,fast", EXECUTIONS)
@pytest.mark.parametrize("name,kwargs", SETTINGS, ids=lambda v: v if isinstance(v, str) else "-".join(map(str, v)))
def test_settings_and_weight_decay_on_biases_match_torch(backend, fast, name, kwargs):
    """torch decays every parameter, biases included, unless param groups say otherwise: so does nnx's
    weight_decay (the regularizers are the way to leave biases out)."""
    X, y = _data()
    model = _model(backend, fast)
    net = _twin(model)
    _fit(model, fast, X, y, loss="mse", optimizer=getattr(optim, name)(model.parameters(), **kwargs), epochs=3,
              batch_size=5)
    _torch_epochs(net, getattr(torch.optim, name)(net.parameters(), **kwargs), X, y, 3, 5)
    _assert_same(model, net)


@pytest.mark.parametrize("backend,fast", EXECUTIONS)
def test_lr_changed_between_fits_and_a_new_optimizer_match_torch(backend, fast):
    X, y = _data()
    model = _model(backend, fast)
    net = _twin(model)
    topt = torch.optim.Adam(net.parameters(), lr=0.01, amsgrad=True)
    _fit(model, fast, X, y, loss="mse", optimizer=optim.Adam(model.parameters(), lr=0.01, amsgrad=True), epochs=1,
              batch_size=5)
    _torch_epochs(net, topt, X, y, 1, 5)
    model.optimizer.lr = 0.003  # as a torch user sets param_group["lr"]
    for group in topt.param_groups:
        group["lr"] = 0.003
    _fit(model, fast, X, y, epochs=1, batch_size=5)
    _torch_epochs(net, topt, X, y, 1, 5)
    _assert_same(model, net)
    _fit(model, fast, X, y, lr=0.02, epochs=1, batch_size=5)  # the kept optimizer at a new rate
    for group in topt.param_groups:
        group["lr"] = 0.02
    _torch_epochs(net, topt, X, y, 1, 5)
    _assert_same(model, net)
    assert model.optimizer.step_count == topt.state[next(iter(net.parameters()))]["step"].item() == 12
    # switching optimizers: a new one starts from fresh state, as a new torch optimizer does
    _fit(model, fast, X, y, optimizer="sgd", lr=0.05, epochs=1, batch_size=5)
    _torch_epochs(net, torch.optim.SGD(net.parameters(), lr=0.05), X, y, 1, 5)
    _assert_same(model, net)
    _fit(model, fast, X, y, optimizer="adam", lr=0.01, epochs=1, batch_size=5)
    _torch_epochs(net, torch.optim.Adam(net.parameters(), lr=0.01), X, y, 1, 5)
    _assert_same(model, net)
    assert model.optimizer.step_count == 4


@pytest.mark.parametrize("backend,fast", EXECUTIONS)
@pytest.mark.parametrize("name,kwargs", [("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.1)),
                                         ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.5)),
                                         ("Adagrad", dict(lr=0.05, lr_decay=0.1))], ids=["adam", "sgd", "adagrad"])
def test_state_dict_round_trip_resumes_as_torch_does(backend, fast, name, kwargs):
    """An optimizer state saved after some epochs and loaded into a fresh optimizer (and model) resumes the
    trajectory: step counts (bias corrections, SGD's first-step dampening, Adagrad's decay) included."""
    X, y = _data()
    model = _model(backend, fast)
    net = _twin(model)
    topt = getattr(torch.optim, name)(net.parameters(), **kwargs)
    _fit(model, fast, X, y, loss="mse", optimizer=getattr(optim, name)(model.parameters(), **kwargs), epochs=2,
              batch_size=5)
    _torch_epochs(net, topt, X, y, 2, 5)
    saved_opt, saved_weights = model.optimizer.state_dict(), model.state_dict()
    tsaved = topt.state_dict()

    fresh = _model(backend, fast)
    fresh.load_state_dict(saved_weights)
    opt = getattr(optim, name)(fresh.parameters(), **{**kwargs, "lr": 0.5})  # the saved rate comes back
    opt.load_state_dict(saved_opt)
    assert opt.lr == kwargs["lr"] and opt.step_count == 8
    _fit(fresh, fast, X, y, loss="mse", optimizer=opt, epochs=2, batch_size=5)
    topt2 = getattr(torch.optim, name)(net.parameters(), **{**kwargs, "lr": 0.5})
    topt2.load_state_dict(tsaved)
    _torch_epochs(net, topt2, X, y, 2, 5)
    _assert_same(fresh, net)


@pytest.mark.parametrize("backend,fast", EXECUTIONS)
def test_accumulation_under_mean_with_sample_weight_matches_one_large_batch(backend, fast):
    """Under ``mean_with_sample_weight`` a group of micro-batches is one batch whose loss is sum(w*l) / sum(w)
    over the group: torch users divide each micro-batch's weighted sum by the group's sum of weights."""
    X, y = _data(23)
    sw = np.linspace(0.0, 2.0, len(X))
    model = _model(backend, fast)
    net = _twin(model)
    _fit(model, fast, X, y, loss=nnx.losses.MSE(reduction="mean_with_sample_weight"),
         optimizer=optim.Adam(model.parameters(), lr=0.01), epochs=2, batch_size=5, accumulate=2, sample_weight=sw,
         clip_value=0.3)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    Xt, yt, wt = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(sw)
    for _ in range(2):
        for g in range(0, 23, 10):
            net.zero_grad()  # the model's, as the optimizer may hold only some parameters
            s = slice(g, min(g + 10, 23))
            total = wt[s].sum()
            for m in range(s.start, s.stop, 5):
                b = slice(m, min(m + 5, s.stop))
                ((wt[b] * ((net(Xt[b]) - yt[b]) ** 2).mean(dim=1)).sum() / total).backward()
            torch.nn.utils.clip_grad_value_(net.parameters(), 0.3)
            opt.step()
    _assert_same(model, net)


@pytest.mark.parametrize("backend,fast", EXECUTIONS)
def test_step_decay_across_fits_matches_torch_step_lr(backend, fast):
    X, y = _data(23)  # 5 batches in groups of 2: the last group is partial
    model = _model(backend, fast)
    net = _twin(model)
    topt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.5)
    sched = torch.optim.lr_scheduler.StepLR(topt, step_size=2, gamma=0.5)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    for epochs in (3, 2):
        _fit(model, fast, X, y, loss="mse", optimizer=opt, epochs=epochs, batch_size=5, accumulate=2,
             callbacks=[nnx.callbacks.StepDecay(2, 0.5)])
        for _ in range(epochs):
            _torch_epochs(net, topt, X, y, 1, 5, accumulate=2)
            sched.step()
    _assert_same(model, net)
    assert opt.lr == 0.1 * 0.5 ** 2 and opt.initial_lr == 0.1


@pytest.mark.parametrize("backend,fast", EXECUTIONS)
@pytest.mark.parametrize("name,before,after", [
    ("SGD", dict(lr=0.05, momentum=0.5), dict(momentum=0.9, weight_decay=0.1, dampening=0.3)),
    ("SGD", dict(lr=0.05), dict(momentum=0.9, nesterov=True)),  # a buffer starts at the gradient, as torch's
    ("Adam", dict(lr=0.01), dict(betas=(0.5, 0.9), weight_decay=0.2, eps=1e-4)),
    ("RMSprop", dict(lr=0.01, momentum=0.3), dict(alpha=0.5, momentum=0.6)),
], ids=["sgd", "sgd-momentum-on", "adam", "rmsprop"])
def test_hyperparameters_changed_between_fits_take_effect_as_in_torch(backend, fast, name, before, after):
    """A setting assigned between fits (as a torch user edits ``param_groups``) is used from the next step on,
    with the state kept; a compiled program holds settings as constants, so it must trace again."""
    X, y = _data()
    model = _model(backend, fast)
    net = _twin(model)
    opt = getattr(optim, name)(model.parameters(), **before)
    topt = getattr(torch.optim, name)(net.parameters(), **before)
    _fit(model, fast, X, y, loss="mse", optimizer=opt, epochs=1, batch_size=5)
    _torch_epochs(net, topt, X, y, 1, 5)
    for key, value in after.items():
        setattr(opt, key, value)
        topt.param_groups[0][key] = value
    _fit(model, fast, X, y, epochs=2, batch_size=5)
    _torch_epochs(net, topt, X, y, 2, 5)
    _assert_same(model, net)


@pytest.mark.parametrize("backend,fast", EXECUTIONS)
def test_clip_norm_with_an_optimizer_over_some_parameters(backend, fast):
    """The norm is over every gradient backward computed (torch's ``clip_grad_norm_(model.parameters())``), the
    update moves only the optimizer's parameters: the others keep their values on every execution."""
    X, y = _data()  # whole batches and groups: JAX, stepping batch by batch here, compiles one step
    model = _model(backend, fast)
    net = _twin(model)
    first = _host(model)
    head = [p for p in model.parameters() if p.name.startswith("2.")]
    _fit(model, fast, X, y, loss="mse", optimizer=optim.Adam(head, lr=0.01), epochs=2, batch_size=5, clip_norm=0.05,
         accumulate=2, check_mode=False)  # JAX steps batch by batch here (verbose=2 says why)
    _torch_epochs(net, torch.optim.Adam(net[2].parameters(), lr=0.01), X, y, 2, 5, clip_norm=0.05, accumulate=2)
    _assert_same(model, net)
    np.testing.assert_array_equal(_host(model)["0.weight"], first["0.weight"])


@pytest.mark.parametrize("backend", [b for b in ("numpy", "array_api_strict", "torch", "jax")
                                     if b in nnx.available_backends()])
@pytest.mark.parametrize("transform", ["norm", "value"])
def test_transforms_called_by_hand_match_torch_and_skip_missing_gradients(backend, transform):
    """A hand-written loop: backward, the transform on ``model.parameters()``, ``opt.step()``; a parameter without a
    gradient is left out of the norm and left None, as torch leaves ``p.grad is None``."""
    from nnx.training import ClipByNorm, ClipByValue
    rng = np.random.default_rng(1)
    be = nnx.get_backend(backend)
    shapes = [(3, 4), (4,), (2, 2)]
    grads = [rng.standard_normal(s) * 3 for s in shapes]
    params = [nnx.layers.Parameter(f"p{i}", be.asarray(np.zeros(s), dtype="float64")) for i, s in enumerate(shapes)]
    tparams = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    for i, (p, tp, g) in enumerate(zip(params, tparams, grads, strict=True)):
        if i != 1:
            p.grad = be.asarray(g, dtype="float64")
            tp.grad = torch.from_numpy(g.copy())
    if transform == "norm":
        assert ClipByNorm(0.7).apply(params, 4) is True
        torch.nn.utils.clip_grad_norm_(tparams, 0.7)
    else:
        assert ClipByValue(0.5).apply(params, 4) is True
        torch.nn.utils.clip_grad_value_(tparams, 0.5)
    assert params[1].grad is None
    for p, tp in zip(params, tparams, strict=True):
        if tp.grad is not None:
            np.testing.assert_allclose(np.asarray(be.to_host(p.grad)), tp.grad.numpy(), **TOL)


@pytest.mark.parametrize("backend,fast", EXECUTIONS)
def test_accumulated_group_whose_weights_sum_to_zero_keeps_the_penalty_gradient(backend, fast):
    """Under ``mean_with_sample_weight`` a batch whose weights sum to 0 has no data gradient, but its regularizer's
    gradient is still there (one call over those rows gives it): k accumulated batches give it too, as one batch
    k times larger does, rather than a zero gradient."""
    X, y = _data(23)
    # batches of 5 in groups of 2: a first group whose weights are all 0, and the epoch's last, partial group (its
    # one batch of 3 rows, applied at the flush) with weights all 0 too; the large batches of 10 are those groups
    sw = np.ones(23)
    sw[:10] = 0.0
    sw[20:] = 0.0

    def trained(name, execution, **kwargs):
        model = nnx.Sequential(nnx.Dense(4, 6), nnx.Tanh(), nnx.Dense(6, 2), dtype="float64", seed=0,
                               backend=nnx.get_backend(name).with_fastpath(execution is not False),
                               regularizer=nnx.regularizers.L2(0.5))
        _fit(model, execution, X, y, loss=nnx.losses.MSE(reduction="mean_with_sample_weight"), sample_weight=sw,
             optimizer=optim.SGD(model.parameters(), lr=0.1, momentum=0.5), epochs=2, **kwargs)
        return _host(model)

    # the larger batches on NumPy (the same seed gives every backend the same initial weights): no program of theirs
    # to compile on JAX
    large, accumulated = trained("numpy", True, batch_size=10), trained(backend, fast, batch_size=5, accumulate=2)
    for name, value in large.items():
        np.testing.assert_allclose(accumulated[name], value, **TOL, err_msg=name)
