"""Optimizers: trajectories against torch.optim on every backend, state round trips, checks."""

from __future__ import annotations

import json
import math

import array_api_compat
import numpy as np
import pytest

import nnx
from nnx.layers import Parameter
from nnx.optim import (
    OPTIMIZERS,
    SGD,
    Adagrad,
    Adam,
    AdamW,
    Lion,
    Momentum,
    Optimizer,
    RMSprop,
    get_optimizer,
)
from nnx.regularizers import L1, L2, ElasticNet

# 30 steps: momentum builds up, Adam's bias corrections still act, and amsgrad's max exceeds the running
# average on some elements in every amsgrad case (a few dozen element-steps each).
STEPS = 30
SHAPES = {"w": (4, 3), "b": (3,)}


def _problem():
    """Initial values and, per parameter, an SPD matrix and a direction for the gradient."""
    rng = np.random.default_rng(7)
    init, mats, dirs = {}, {}, {}
    for name, shape in SHAPES.items():
        n = math.prod(shape)
        q = rng.standard_normal((n, n))
        mats[name] = q @ q.T / n + 0.1 * np.eye(n)
        dirs[name] = rng.standard_normal(shape)
        init[name] = rng.standard_normal(shape)
    return init, mats, dirs


INIT, MATS, DIRS = _problem()


def _grad(name: str, value: np.ndarray, t: int, sign: float = 1.0) -> np.ndarray:
    """A gradient that depends on the current value (quadratic plus a cubic) and on the step.

    `sign=-1` gives the gradient of the negated objective, which `maximize=True` climbs stably.
    """
    quad = (MATS[name] @ value.reshape(-1)).reshape(value.shape)
    return sign * (quad + 0.1 * value**3) + math.sin(0.7 * t) * DIRS[name]


def _params(backend, values=None, dtype="float64"):
    values = INIT if values is None else values
    # Copies: on NumPy asarray returns the very array, and optimizers update values in place.
    return [Parameter(name, backend.asarray(values[name].copy(), dtype=dtype)) for name in SHAPES]


def _host(backend, params):
    # Copies: on NumPy to_host returns the live array, which later steps update in place.
    return {p.name: backend.to_host(p.value).copy() for p in params}


def _set_grads(backend, params, t, skip=None, sign=1.0):
    for p in params:
        if skip is not None and skip(p.name, t):
            p.grad = None
        else:
            p.grad = backend.asarray(_grad(p.name, backend.to_host(p.value), t, sign), dtype="float64")


# (nnx class, torch class, kwargs shared by both)
TORCH_CASES = [
    (SGD, "SGD", {"lr": 0.05}),
    (SGD, "SGD", {"lr": 0.03, "momentum": 0.9}),
    (SGD, "SGD", {"lr": 0.03, "momentum": 0.8, "dampening": 0.3}),
    (SGD, "SGD", {"lr": 0.03, "momentum": 0.9, "nesterov": True}),
    (SGD, "SGD", {"lr": 0.03, "momentum": 0.7, "dampening": 0.1, "weight_decay": 0.05}),
    (SGD, "SGD", {"lr": 0.02, "weight_decay": 0.1, "maximize": True}),
    (SGD, "SGD", {"lr": 0.01, "momentum": 0.5, "nesterov": True, "weight_decay": 0.02, "maximize": True}),
    (Adam, "Adam", {"lr": 0.05}),
    (Adam, "Adam", {"lr": 0.05, "betas": (0.8, 0.99), "eps": 1e-6, "amsgrad": True}),
    (Adam, "Adam", {"lr": 0.05, "weight_decay": 0.1}),
    (Adam, "Adam", {"lr": 0.05, "weight_decay": 0.1, "amsgrad": True}),
    (AdamW, "AdamW", {"lr": 0.05}),
    (AdamW, "AdamW", {"lr": 0.05, "weight_decay": 0.2, "amsgrad": True}),
    (AdamW, "AdamW", {"lr": 0.05, "betas": (0.5, 0.9), "weight_decay": 0.0}),
    (RMSprop, "RMSprop", {"lr": 0.01}),
    (RMSprop, "RMSprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.5}),
    (RMSprop, "RMSprop", {"lr": 0.01, "centered": True}),
    (RMSprop, "RMSprop", {"lr": 0.005, "centered": True, "momentum": 0.8, "weight_decay": 0.05, "eps": 1e-6}),
    (Adagrad, "Adagrad", {"lr": 0.1}),
    (Adagrad, "Adagrad", {"lr": 0.1, "lr_decay": 0.05}),
    (Adagrad, "Adagrad", {"lr": 0.1, "initial_accumulator_value": 0.5, "weight_decay": 0.05}),
    (Adagrad, "Adagrad", {"lr": 0.2, "lr_decay": 0.01, "initial_accumulator_value": 0.1, "eps": 1e-6}),
]


def _case_id(case):
    cls, _, kwargs = case
    return cls.__name__ + "-" + "-".join(f"{k}={v}" for k, v in kwargs.items())


def _run_against_torch(backend, cls, torch_name, kwargs, steps=STEPS, skip=None, lr_at=None):
    torch = pytest.importorskip("torch")
    params = _params(backend)
    opt = cls(params, **kwargs)
    tparams = [torch.tensor(INIT[name], dtype=torch.float64) for name in SHAPES]
    topt = getattr(torch.optim, torch_name)(tparams, foreach=False, **kwargs)
    sign = -1.0 if kwargs.get("maximize") else 1.0
    for t in range(1, steps + 1):
        if lr_at is not None:
            opt.lr = lr_at(t)
            topt.param_groups[0]["lr"] = lr_at(t)
        _set_grads(backend, params, t, skip, sign)
        for name, tp in zip(SHAPES, tparams, strict=True):
            if skip is not None and skip(name, t):
                tp.grad = None
            else:
                tp.grad = torch.from_numpy(_grad(name, tp.detach().numpy(), t, sign))
        opt.step()
        topt.step()
        ours = _host(backend, params)
        for name, tp in zip(SHAPES, tparams, strict=True):
            np.testing.assert_allclose(
                ours[name], tp.detach().numpy(), rtol=1e-9, atol=1e-9, err_msg=f"{name} at step {t}"
            )
    # The trajectory stayed finite and actually moved, so agreement is not vacuous.
    final = _host(backend, params)
    assert all(np.isfinite(v).all() for v in final.values())
    assert not np.allclose(final["w"], INIT["w"])


@pytest.mark.parametrize("case", TORCH_CASES, ids=_case_id)
def test_matches_torch(backend, case):
    cls, torch_name, kwargs = case
    _run_against_torch(backend, cls, torch_name, kwargs)


@pytest.mark.parametrize(
    "case",
    [TORCH_CASES[3], TORCH_CASES[9], TORCH_CASES[12], TORCH_CASES[17], TORCH_CASES[21]],
    ids=_case_id,
)
def test_matches_torch_with_skipped_grads_and_lr_schedule(backend, case):
    """A parameter without a gradient keeps its own step count, and lr changes take effect."""
    cls, torch_name, kwargs = case
    lr0 = kwargs["lr"]
    _run_against_torch(
        backend, cls, torch_name, kwargs, steps=30,
        skip=lambda name, t: name == "b" and t % 3 == 1,
        lr_at=lambda t: lr0 * (1.0 + 0.5 * math.cos(0.3 * t)),
    )


def test_momentum_matches_reference(backend):
    lr, mu = 0.02, 0.85
    params = _params(backend)
    opt = Momentum(params, lr=lr, momentum=mu)
    ref = {name: INIT[name].copy() for name in SHAPES}
    vel = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    for t in range(1, STEPS + 1):
        _set_grads(backend, params, t)
        opt.step()
        for name in SHAPES:
            vel[name] = mu * vel[name] - lr * _grad(name, ref[name], t)
            ref[name] = ref[name] + vel[name]
        ours = _host(backend, params)
        for name in SHAPES:
            np.testing.assert_allclose(ours[name], ref[name], rtol=1e-9, atol=1e-9, err_msg=f"{name} at step {t}")


def test_lion_matches_reference(backend):
    """Lion (Chen et al., 2023, Algorithm 2; torch has none): a reference written from the paper, with a parameter
    skipped on some steps and the rate changed between steps (decoupled decay uses the step's rate)."""
    beta1, beta2, wd = 0.8, 0.95, 0.3
    params = _params(backend)
    opt = Lion(params, lr=0.01, beta1=beta1, beta2=beta2, weight_decay=wd)
    ref = {name: INIT[name].copy() for name in SHAPES}
    m = {name: np.zeros(shape) for name, shape in SHAPES.items()}
    skip = lambda name, t: name == "b" and t % 3 == 1  # noqa: E731
    for t in range(1, 31):
        lr = 0.01 * (1.0 + 0.5 * math.cos(0.3 * t))
        opt.lr = lr
        _set_grads(backend, params, t, skip)
        opt.step()
        for name in SHAPES:
            if skip(name, t):
                continue
            g = _grad(name, ref[name], t)
            ref[name] = ref[name] - lr * (np.sign(beta1 * m[name] + (1 - beta1) * g) + wd * ref[name])
            m[name] = beta2 * m[name] + (1 - beta2) * g
        ours = _host(backend, params)
        for name in SHAPES:
            np.testing.assert_allclose(ours[name], ref[name], rtol=1e-12, atol=1e-12, err_msg=f"{name} at step {t}")
    assert opt.state_dict()["param_steps"] == [30, 20]


def _np(backend, a):
    return a if isinstance(a, np.ndarray) else backend.to_host(a)


ROUND_TRIP_CASES = [
    (SGD, {"lr": 0.03, "momentum": 0.9, "nesterov": True}),
    (SGD, {"lr": 0.03}),
    (Momentum, {"lr": 0.02, "momentum": 0.8}),
    (Adam, {"lr": 0.05, "amsgrad": True, "weight_decay": 0.01}),
    (AdamW, {"lr": 0.05, "betas": (0.8, 0.99)}),
    (RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.5}),
    (Adagrad, {"lr": 0.1, "lr_decay": 0.05, "initial_accumulator_value": 0.1}),
    (Lion, {"lr": 0.01, "beta1": 0.8, "weight_decay": 0.1}),
]


@pytest.mark.parametrize("to_host", [False, True], ids=["backend-arrays", "numpy-arrays"])
@pytest.mark.parametrize("case", ROUND_TRIP_CASES, ids=lambda c: c[0].__name__ + "-" + "-".join(map(str, c[1])))
def test_state_dict_round_trip(backend, case, to_host):
    cls, kwargs = case
    skip = lambda name, t: name == "b" and t == 2  # noqa: E731 (unequal per-parameter step counts)
    params = _params(backend)
    opt = cls(params, **kwargs)
    for t in range(1, 11):
        _set_grads(backend, params, t, skip)
        opt.step()
    sd = opt.state_dict()
    saved_values = _host(backend, params)
    json.dumps({k: v for k, v in sd.items() if k != "state"})  # everything but the arrays is JSON
    assert sd["type"] == cls.__name__ and sd["step"] == 10
    if to_host:
        sd["state"] = {i: {k: backend.to_host(v) for k, v in st.items()} for i, st in sd["state"].items()}
    # Continue the original first: the snapshot must not follow its in-place updates.
    for t in range(11, 21):
        _set_grads(backend, params, t)
        opt.step()
    expected = _host(backend, params)

    fresh = _params(backend, saved_values)
    opt2 = cls(fresh, lr=0.5)  # other hyper-parameters on purpose: loading restores them
    snapshot = {i: {k: _np(backend, v).copy() for k, v in st.items()} for i, st in sd["state"].items()}
    opt2.load_state_dict(sd)
    assert opt2.hyperparams == opt.hyperparams and isinstance(opt2.lr, float)
    for t in range(11, 21):
        _set_grads(backend, fresh, t)
        opt2.step()
    got = _host(backend, fresh)
    for name in SHAPES:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-12, atol=1e-14)
    # Loading copied the arrays: stepping opt2 did not write into the caller's snapshot.
    for i, st in sd["state"].items():
        for k, v in st.items():
            np.testing.assert_array_equal(_np(backend, v), snapshot[i][k])
    assert opt2.state_dict()["step"] == 20


# nnx's own optimizers. Not the registry as collection finds it: test modules register optimizers of their own
# when they are imported, so the registry's names depend on which modules were collected first, and a test id
# made from one collection would be missing from another (pytest-xdist's workers then ran nothing)
BUILT_IN = sorted(name for name in OPTIMIZERS if OPTIMIZERS[name].__module__ == "nnx.optim")


@pytest.mark.parametrize("name", BUILT_IN)
def test_dtype_and_device_preserved(backend, dtype, name):
    """Updates and state stay in the model's dtype and on its device (float32 on strict's device1)."""
    params = _params(backend, dtype=dtype)
    opt = OPTIMIZERS[name](params, lr=0.01)
    for t in range(1, 4):
        for p in params:
            p.grad = backend.asarray(_grad(p.name, backend.to_host(p.value), t), dtype=dtype)
        opt.step()
    target = backend.float_dtype(dtype)
    arrays = [p.value for p in params] + [a for st in opt.state.values() for a in st.values()]
    for a in arrays:
        assert a.dtype == target
        assert str(array_api_compat.device(a)) == str(backend.device)
    sd = opt.state_dict()
    for st in sd["state"].values():
        for a in st.values():
            assert a.dtype == target


RULE_CASES = [(cls, kwargs) for cls, _, kwargs in TORCH_CASES] + [
    (Momentum, {"lr": 0.05, "momentum": 0.9}), (Lion, {"lr": 0.01, "weight_decay": 0.1})]


@pytest.mark.parametrize("cls, kwargs", RULE_CASES, ids=lambda c: c.__name__ if isinstance(c, type) else
                         "-".join(f"{k}={v}" for k, v in c.items()))
def test_rule_called_directly_takes_the_step_and_rate_as_arrays(backend, dtype, cls, kwargs):
    """`update(xp, value, grad, state, step, lr)` with `step` and `lr` as 0-d arrays of the value's dtype (how a
    compiler traces them, and how a user's own loop may hold them) gives the numbers of Python-number arguments
    in the value's dtype, on every namespace: no bool times float (the array API refuses it, NumPy promotes it)."""
    opt = cls(_params(backend, dtype=dtype), **kwargs)
    value = backend.asarray(INIT["w"], dtype=dtype)
    xp, device = backend.xp, array_api_compat.device(value)
    target = backend.float_dtype(dtype)
    plain, traced = (value, opt.init_state(xp, value)), (value, opt.init_state(xp, value))
    for t in range(1, 4):
        grad = backend.asarray(_grad("w", backend.to_host(plain[0]), t), dtype=dtype)
        plain = opt.update(xp, plain[0], grad, plain[1], t, opt.lr)
        step, lr = (xp.asarray(x, dtype=target, device=device) for x in (float(t), opt.lr))
        traced = opt.update(xp, traced[0], grad, traced[1], step, lr)
        for got, want in [(traced[0], plain[0]), *((traced[1][k], plain[1][k]) for k in plain[1])]:
            assert got.dtype == target
            assert str(array_api_compat.device(got)) == str(device)
            # a float32 step rounds Adam's bias corrections (beta ** step) to float32: a few ulps of the values
            tol = 1e-5 if dtype == "float32" else 1e-12
            np.testing.assert_allclose(backend.to_host(got), backend.to_host(want), rtol=tol, atol=tol)


def test_zero_grad_and_skipped_params(backend):
    params = _params(backend)
    opt = Adam(params, lr=0.1)
    params[0].grad = backend.asarray(np.ones(SHAPES["w"]), dtype="float64")
    params[1].grad = None
    opt.step()
    assert not np.allclose(backend.to_host(params[0].value), INIT["w"])
    np.testing.assert_array_equal(backend.to_host(params[1].value), INIT["b"])
    assert set(opt.state) == {0}
    assert opt.state_dict()["param_steps"] == [1, 0]
    opt.zero_grad()
    assert all(p.grad is None for p in params)
    before = _host(backend, params)
    with pytest.warns(UserWarning, match="no gradient in any of its 2 parameters"):
        opt.step()  # no gradients: nothing moves, and a warning says so
    after = _host(backend, params)
    for name in SHAPES:
        np.testing.assert_array_equal(after[name], before[name])


@pytest.mark.parametrize(
    "cls, kwargs",
    [(SGD, {"momentum": 0.9}), (SGD, {"momentum": 0.9, "weight_decay": 0.1}), (Momentum, {}), (Adam, {}),
     (AdamW, {}), (RMSprop, {"momentum": 0.5, "centered": True}), (Adagrad, {})],
    ids=lambda v: v.__name__ if isinstance(v, type) else "-".join(v),
)
def test_grad_is_not_modified(backend, cls, kwargs):
    """Optimizers only read p.grad: the same gradient array reused over steps stays intact."""
    params = _params(backend)
    opt = cls(params, lr=0.1, **kwargs)
    g = np.full(SHAPES["w"], 0.5)
    params[0].grad = backend.asarray(g.copy(), dtype="float64")  # no alias of g on NumPy
    for _ in range(3):
        opt.step()
        np.testing.assert_array_equal(backend.to_host(params[0].grad), g)


def test_lr_change_between_steps(backend):
    params = _params(backend)
    opt = SGD(params, lr=0.1)
    g = np.ones(SHAPES["w"])
    params[0].grad = backend.asarray(g, dtype="float64")
    opt.step()
    opt.lr = 0.5
    opt.step()
    np.testing.assert_allclose(backend.to_host(params[0].value), INIT["w"] - 0.6, rtol=1e-12)
    opt.lr = np.float64(0.25)  # a NumPy scalar from a schedule is kept as a Python float
    assert type(opt.lr) is float
    opt.step()
    np.testing.assert_allclose(backend.to_host(params[0].value), INIT["w"] - 0.85, rtol=1e-12)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = float("nan")


def test_get_optimizer():
    params = [Parameter("w", np.zeros(3))]
    builtins = {"sgd", "momentum", "adam", "adamw", "rmsprop", "adagrad"}
    # registered under their class names; subclasses defined elsewhere (nnx.sklearn, users) register too
    assert {"SGD", "Momentum", "Adam", "AdamW", "RMSprop", "Adagrad"} <= set(OPTIMIZERS)
    for name in builtins:
        cls = OPTIMIZERS[name]
        for spelling in (name, name.upper(), name.capitalize()):
            opt = get_optimizer(spelling, params, lr=0.3)
            assert type(opt) is cls and opt.lr == 0.3
    opt = Adam(params)
    assert get_optimizer(opt, params) is opt
    assert type(get_optimizer(RMSprop, params, alpha=0.5)) is RMSprop
    with pytest.raises(ValueError) as info:
        get_optimizer("adamax", params)
    for name in OPTIMIZERS:
        assert repr(name) in str(info.value)
    assert "adamax" in str(info.value)
    with pytest.raises(TypeError):
        get_optimizer(3, params)


def test_defaults_match_torch():
    params = [Parameter("w", np.zeros(3))]
    assert SGD(params).lr == 0.01 and Adam(params).lr == 1e-3 and RMSprop(params).lr == 1e-2
    assert Adagrad(params).lr == 1e-2 and Momentum(params).momentum == 0.9
    assert AdamW(params).weight_decay == 1e-2 and Adam(params).weight_decay == 0
    assert Adam(params).hyperparams == {"lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0,
                                        "amsgrad": False}
    assert Adagrad(params).eps == 1e-10 and RMSprop(params).alpha == 0.99


@pytest.mark.parametrize(
    "cls, kwargs, argname",
    [
        (SGD, {"lr": 0.0}, "lr"),
        (SGD, {"lr": -0.1}, "lr"),
        (Adam, {"lr": float("nan")}, "lr"),
        (Adagrad, {"lr": float("inf")}, "lr"),
        (SGD, {"momentum": -0.5}, "momentum"),
        (SGD, {"momentum": 1.5}, "momentum"),
        (SGD, {"dampening": 2.0}, "dampening"),
        (SGD, {"weight_decay": -1.0}, "weight_decay"),
        (SGD, {"nesterov": True}, "nesterov"),
        (SGD, {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, "nesterov"),
        (Momentum, {"momentum": -0.1}, "momentum"),
        (Adam, {"betas": (1.0, 0.999)}, r"betas\[0\]"),
        (Adam, {"betas": (0.9, -0.1)}, r"betas\[1\]"),
        (Adam, {"betas": (0.9,)}, "betas"),
        (AdamW, {"eps": -1e-8}, "eps"),
        (AdamW, {"weight_decay": float("inf")}, "weight_decay"),
        (RMSprop, {"alpha": 1.5}, "alpha"),
        (RMSprop, {"momentum": -0.1}, "momentum"),
        (RMSprop, {"eps": float("nan")}, "eps"),
        (Adagrad, {"lr_decay": -0.1}, "lr_decay"),
        (Adagrad, {"initial_accumulator_value": -1.0}, "initial_accumulator_value"),
        (Adagrad, {"weight_decay": -0.1}, "weight_decay"),
    ],
)
def test_invalid_hyperparameters(cls, kwargs, argname):
    with pytest.raises(ValueError, match=argname):
        cls([Parameter("w", np.zeros(3))], **kwargs)


def test_invalid_lr_message_names_value():
    with pytest.raises(ValueError, match=r"lr.*-0\.25"):
        SGD([Parameter("w", np.zeros(3))], lr=-0.25)


def test_invalid_params():
    with pytest.raises(ValueError, match="params"):
        SGD([])
    p = Parameter("w", np.zeros(3))
    with pytest.raises(ValueError, match="more than once"):
        SGD([p, p])
    with pytest.raises(TypeError, match="params"):
        SGD([np.zeros(3)])
    with pytest.raises(TypeError, match="amsgrad"):
        Adam([p], amsgrad="yes")


def _trained(backend, cls=Adam, **kwargs):
    params = _params(backend)
    opt = cls(params, lr=0.05, **kwargs)
    _set_grads(backend, params, 1)
    opt.step()
    return opt


def test_load_state_dict_errors(backend):
    sd = _trained(backend, amsgrad=True).state_dict()

    with pytest.raises(ValueError, match="Adam.*SGD|SGD.*Adam"):
        SGD(_params(backend), momentum=0.9).load_state_dict(sd)

    one = Adam([_params(backend)[0]])
    with pytest.raises(ValueError, match="2 parameters.*has 1"):
        one.load_state_dict(sd)

    wrong = dict(sd, state={k: dict(v) for k, v in sd["state"].items()})
    wrong["state"]["1"]["exp_avg"] = np.zeros((4,))
    opt = Adam(_params(backend))
    with pytest.raises(ValueError, match=r"exp_avg.*'b'.*\(4,\).*\(3,\)"):
        opt.load_state_dict(wrong)
    assert opt.state == {} and opt.step_count == 0  # nothing changed on failure

    swapped = Adam([Parameter(p.name, p.value) for p in reversed(_params(backend))])
    with pytest.raises(ValueError, match="shape"):
        swapped.load_state_dict(sd)

    missing = dict(sd, state={k: dict(v) for k, v in sd["state"].items()})
    del missing["state"]["0"]["max_exp_avg_sq"]
    with pytest.raises(ValueError, match="max_exp_avg_sq"):
        Adam(_params(backend)).load_state_dict(missing)

    extra = dict(sd, hyperparams=dict(sd["hyperparams"], momentum=0.9))
    with pytest.raises(ValueError, match="momentum"):
        Adam(_params(backend)).load_state_dict(extra)

    bad_hp = dict(sd, hyperparams=dict(sd["hyperparams"], eps=-1.0))
    with pytest.raises(ValueError, match="eps"):
        Adam(_params(backend)).load_state_dict(bad_hp)

    with pytest.raises(ValueError, match="state"):
        Adam(_params(backend)).load_state_dict({"type": "Adam", "hyperparams": sd["hyperparams"], "step": 1})


@pytest.mark.parametrize("cls, kwargs, key", [
    (Adam, {"amsgrad": True}, "max_exp_avg_sq"),
    (RMSprop, {}, "square_avg"),
    (Adagrad, {}, "sum"),
])
def test_load_state_dict_refuses_negative_squares(backend, cls, kwargs, key):
    """A second moment below zero would make the next step's square root NaN: the snapshot is refused."""
    sd = _trained(backend, cls, **kwargs).state_dict()
    bad = dict(sd, state={k: dict(v) for k, v in sd["state"].items()})
    bad["state"]["1"][key] = -np.ones((3,))
    opt = cls(_params(backend), **kwargs)
    with pytest.raises(ValueError, match=rf"{key}.*'b'.*negative"):
        opt.load_state_dict(bad)
    assert opt.state == {}


def test_load_state_dict_withoutparam_steps(backend):
    """A snapshot without per-parameter counts (e.g. written by an older saver) still loads."""
    opt = _trained(backend)
    sd = opt.state_dict()
    del sd["param_steps"]
    opt2 = Adam(_params(backend))
    opt2.load_state_dict(sd)
    assert opt2.state_dict()["param_steps"] == [1, 1]


def test_is_optimizer_subclass():
    for cls in OPTIMIZERS.values():
        assert issubclass(cls, Optimizer)
        if cls.__module__.startswith("nnx."):  # (other tests register optimizers of their own in this process)
            assert cls.__doc__ and cls.step.__doc__, cls


def test_a_rate_set_to_zero_survives_save_and_load(backend, tmp_path):
    """The `lr` setter takes 0 (a frozen phase, a warm-up's first epoch); the constructors refuse it, so rebuilding
    the optimizer from a checkpoint (`nnx.load`, `model.to`) once refused the file the model had just written."""
    # the integer-state test's model and data shapes (8 rows, batches of 4): JAX compiles no op shapes of its own
    model = nnx.Sequential(nnx.Dense(3, 2), backend=backend, seed=0)
    X, y = np.ones((8, 3)), np.zeros((8, 2))
    model.fit(X, y, loss="mse", optimizer="adam", lr=0.1, epochs=1, batch_size=4, verbose=0)
    model.optimizer.lr = 0.0
    model.save(tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz", backend=backend)
    assert loaded.optimizer.lr == 0.0 and loaded.optimizer.state_dict()["step"] == 2
    assert model.to(backend).optimizer.lr == 0.0


class _CountingSGD(Optimizer, name="tests.counting_sgd"):
    """SGD that counts, per element, the steps whose gradient was positive: an integer state, as optax's count."""

    elementwise = True

    def __init__(self, params, lr=0.1):
        super().__init__(params, lr)

    def init_state(self, xp, value):
        return {"ups": xp.zeros(value.shape, dtype=xp.int32, device=array_api_compat.device(value))}

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * grad, {"ups": state["ups"] + xp.astype(grad > 0, xp.int32)}


def test_an_integer_state_survives_state_dict_save_load_and_to(backend, tmp_path):
    """`init_state` may hold integer arrays (a count), and `fit` trained with them; but loading the state back
    cast every array through the model's float dtypes, so `load_state_dict`, `nnx.load` and `model.to` failed
    with "dtype must be one of ('float32', 'float64'), got 'int32'", naming no array. An integer state keeps its
    dtype and its counts, and a float snapshot given for it is refused, naming the array, not truncated."""
    model = nnx.Sequential(nnx.Dense(3, 2), backend=backend, seed=0)
    X = np.random.default_rng(0).standard_normal((8, 3))
    opt = _CountingSGD(model.parameters())
    model.fit(X, np.zeros((8, 2)), loss="mse", optimizer=opt, epochs=2, batch_size=4, verbose=0)
    snapshot = opt.state_dict()
    ups = {k: model.backend.to_host(v["ups"]) for k, v in snapshot["state"].items()}
    assert all(u.dtype == np.int32 and u.max() > 0 for u in ups.values())

    opt.load_state_dict(snapshot)
    model.save(tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz", backend=backend)
    wider = model.to(dtype="float64")
    for other in (opt, loaded.optimizer, wider.optimizer):
        for i, state in other.state.items():
            got = nnx.get_backend(state["ups"]).to_host(state["ups"])
            assert got.dtype == np.int32
            np.testing.assert_array_equal(got, ups[str(i)])
    bad = {**snapshot, "state": {k: {"ups": u + 0.5} for k, u in ups.items()}}
    with pytest.raises(ValueError, match=r"state_dict state 'ups' for parameter 0 .*int32.*non-integer"):
        opt.load_state_dict(bad)


# Optimizer and regularizer settings changed after construction, as a PyTorch / Keras user changes them.
@pytest.mark.parametrize("make, name", [(lambda: L1(0.1), "l"), (lambda: L2(0.1), "l"),
                                        (lambda: ElasticNet(0.1, 0.2), "l1"), (lambda: ElasticNet(0.1, 0.2), "l2")])
@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf])
def test_a_regularizer_strength_set_after_construction_is_checked(make, name, bad):
    """The constructor refuses a negative or non-finite strength; `reg.l = ...` (documented: a callback's way to
    change it between epochs) refused nothing, and a negative one trained towards ever larger weights with a
    loss falling below 0, a NaN one ended the fit as 'lower the learning rate'."""
    reg = make()
    with pytest.raises(ValueError, match=rf"{name}.*finite number >= 0"):
        setattr(reg, name, bad)
    assert getattr(reg, name) in (0.1, 0.2)  # unchanged
    setattr(reg, name, np.float32(0.5))  # a valid one is taken, as a Python float
    assert getattr(reg, name) == 0.5 and type(getattr(reg, name)) is float
    setattr(reg, name, 0)
    assert float(reg.penalty(np.zeros(3))) == 0.0


OPTIMIZER_CASES = [
    (SGD, {"momentum": 0.9}, "momentum", 1.5),
    (SGD, {"momentum": 0.9}, "weight_decay", -0.1),
    (SGD, {}, "nesterov", True),  # nesterov without momentum, which the constructor refuses
    (Momentum, {}, "momentum", -0.1),
    (Adam, {}, "betas", (0.9, 1.0)),
    (Adam, {}, "eps", 0.0),
    (AdamW, {}, "weight_decay", math.nan),
    (RMSprop, {}, "alpha", 1.5),
    (Adagrad, {}, "lr_decay", -1.0),
    (Lion, {}, "beta1", math.nan),
]


@pytest.mark.parametrize("cls, kwargs, name, bad", OPTIMIZER_CASES)
def test_an_optimizer_setting_changed_after_construction_is_checked_before_fit_or_snapshot(cls, kwargs, name, bad):
    """``opt.momentum = 1.5`` trained on without a word, and `state_dict` (so `nnx.save`) wrote a checkpoint that
    `load_state_dict` (so `nnx.load`) then refused: fit and `state_dict` now check the settings as the constructor
    does, naming the one out of range."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 1))
    model = nnx.Sequential(nnx.Dense(3, 1), dtype="float64", seed=0)
    opt = cls(model.parameters(), lr=0.01, **kwargs)
    setattr(opt, name, bad)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=name):
        model.fit(X, y, loss="mse", optimizer=opt, epochs=1, batch_size=8, verbose=0)
    for k, v in model.state_dict().items():  # refused before the first step
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ValueError, match=name):
        opt.state_dict()


def test_a_valid_setting_changed_after_construction_is_saved_and_loaded():
    params = [Parameter("w", np.ones(3))]
    opt = SGD(params, lr=0.1, momentum=0.9)
    params[0].grad = np.ones(3)
    opt.step()
    opt.momentum, opt.nesterov = 0.5, True
    other = SGD([Parameter("w", np.ones(3))], lr=0.1, momentum=0.9)
    other.load_state_dict(opt.state_dict())
    assert other.momentum == 0.5 and other.nesterov is True


class _SlotsSGD(SGD):
    """A subclass keeping its own setting, and a private one, in slots."""

    __slots__ = ("scale", "__note")

    def __init__(self, params, **kwargs):
        super().__init__(params, **kwargs)
        self.scale = [np.array(2.0)]
        self.__note = "kept"


def test_a_setting_kept_in_a_slot_is_a_rule_constant_and_copied_deeply():
    import copy

    opt = _SlotsSGD([Parameter("w", np.zeros(3))], lr=0.1)
    constants = opt.rule_constants()
    assert constants["scale"] is opt.scale and constants["_SlotsSGD__note"] == "kept"
    copied = copy.deepcopy(opt)  # (it copied the __dict__ only: the copy had no scale)
    assert copied.scale[0] is not opt.scale[0] and float(copied.scale[0]) == 2.0
    assert copied.rule_constants()["_SlotsSGD__note"] == "kept"
