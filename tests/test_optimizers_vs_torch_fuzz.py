"""Every built-in optimizer against torch.optim as a PyTorch user drives it, over a seeded grid of settings.

The rules do not depend on the backend, so this runs on NumPy in float64 and compares whole trajectories to 1e-12:
option combinations, zero, tiny and partly zero gradients, a parameter without a gradient on some steps, the rate
and other settings changed between steps (torch reads its param group every step), a setting switched off and on
again, a snapshot loaded into a fresh optimizer mid-run, positional arguments in torch's order, and the flat update
of `fit` against `Optimizer.step` parameter by parameter. Lion, which torch lacks, follows its published rule.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import nnx
from nnx.callbacks import Callback
from nnx.layers import Parameter
from nnx.optim import SGD, Adagrad, Adam, AdamW, Lion, Momentum, RMSprop

torch = pytest.importorskip("torch")

BE = nnx.get_backend("numpy")
SHAPES = [(3, 4), (5,)]
STEPS = 24
INIT = [np.random.default_rng(11).standard_normal(s) for s in SHAPES]


def _grads(t: int, values: list[np.ndarray], mode: str) -> list[np.ndarray | None]:
    """The step's gradients (a function of the values, so a wrong step shows in every later one) under `mode`."""
    rng = np.random.default_rng(1000 + t)
    out: list[np.ndarray | None] = []
    for i, v in enumerate(values):
        g = 0.5 * v + rng.standard_normal(v.shape)
        if mode == "zero" and t % 4 == 0:
            g = np.zeros_like(g)
        elif mode == "tiny":
            g = g * 1e-30
        elif mode == "sparse":
            g = np.where(rng.random(v.shape) < 0.3, 0.0, g)
        out.append(None if mode == "skip" and i == 1 and t % 3 == 1 else g)
    return out


class _Pair:
    """An nnx optimizer and its torch twin over the same starting values, stepped together."""

    def __init__(self, cls, torch_name, kwargs, values=None):
        values = INIT if values is None else values
        self.params = [Parameter(f"p{i}", BE.asarray(v.copy())) for i, v in enumerate(values)]
        self.opt = cls(self.params, **kwargs)
        self.tparams = [torch.tensor(v.copy()) for v in values]
        self.topt = getattr(torch.optim, torch_name)(self.tparams, foreach=False, **kwargs)

    def set(self, name, value):
        setattr(self.opt, name, value)
        self.topt.param_groups[0][name] = value

    def step(self, t, mode="plain", where=""):
        for p, tp, g in zip(self.params, self.tparams, _grads(t, [np.asarray(p.value) for p in self.params], mode),
                            strict=True):
            p.grad = None if g is None else BE.asarray(g.copy())
            tp.grad = None if g is None else torch.from_numpy(g.copy())
        self.opt.step()
        self.topt.step()
        for p, tp in zip(self.params, self.tparams, strict=True):
            np.testing.assert_allclose(np.asarray(p.value), tp.numpy(), rtol=1e-12, atol=1e-12,
                                       err_msg=f"{p.name} at step {t} {where}")


def _grid(seed: int = 5, per_class: int = 6) -> list[tuple]:
    """A seeded sample of every optimizer's options, each with a way of feeding or changing it."""
    rng = np.random.default_rng(seed)

    def pick(*choices):
        return choices[int(rng.integers(len(choices)))]

    cases = []
    for _ in range(per_class):
        mom = pick(0.0, 0.5, 0.9)
        damp = 0.0 if mom and rng.random() < 0.4 else pick(0.0, 0.3)
        cases.append((SGD, "SGD", {"lr": 0.03, "momentum": mom, "dampening": damp, "weight_decay": pick(0.0, 0.1),
                                   "nesterov": bool(mom and not damp and rng.random() < 0.6),
                                   "maximize": pick(False, True)}))
        for cls in (Adam, AdamW):
            cases.append((cls, cls.__name__, {"lr": 0.02, "betas": pick((0.9, 0.999), (0.5, 0.6), (0.0, 0.9)),
                                              "eps": pick(1e-8, 1e-3), "weight_decay": pick(0.0, 0.1),
                                              "amsgrad": pick(False, True)}))
        cases.append((RMSprop, "RMSprop", {"lr": 0.01, "alpha": pick(0.99, 0.5), "eps": pick(1e-8, 1e-2),
                                           "weight_decay": pick(0.0, 0.1), "momentum": pick(0.0, 0.7),
                                           "centered": pick(False, True)}))
        cases.append((Adagrad, "Adagrad", {"lr": 0.1, "lr_decay": pick(0.0, 0.1), "weight_decay": pick(0.0, 0.1),
                                           "initial_accumulator_value": pick(0.0, 0.5), "eps": pick(1e-10, 1e-3)}))
    modes = ["plain", "zero", "tiny", "sparse", "skip", "rate", "settings"]
    return [(*case, modes[i % len(modes)]) for i, case in enumerate(cases)]


def _change_settings(pair: _Pair, name: str, kwargs: dict, t: int) -> None:
    """Settings a user (or a callback) changes between steps, each one torch reads from its param group."""
    if "weight_decay" in kwargs:
        pair.set("weight_decay", 0.05 * (t % 3))
    if t == 9:
        if name in ("Adam", "AdamW"):
            pair.set("betas", (0.7, 0.8))
        elif name == "SGD" and kwargs["momentum"] and not kwargs["nesterov"]:
            pair.set("dampening", 0.2)
        elif name == "RMSprop":
            pair.set("alpha", 0.8)
        elif name == "Adagrad":
            pair.set("lr_decay", 0.3)


@pytest.mark.parametrize("cls, torch_name, kwargs, mode", _grid(),
                         ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_a_seeded_grid_of_settings_follows_torch_step_by_step(cls, torch_name, kwargs, mode):
    pair = _Pair(cls, torch_name, kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a step that finds no gradient at all (never here) would warn
        for t in range(1, STEPS + 1):
            if mode == "rate":
                pair.set("lr", kwargs["lr"] * (1.0 + 0.5 * math.sin(t)))
            elif mode == "settings":
                _change_settings(pair, torch_name, kwargs, t)
            pair.step(t, mode, where=f"({mode})")
    if mode == "skip":
        assert pair.opt.param_steps == [STEPS, STEPS - STEPS // 3]


def test_sgd_takes_positional_arguments_in_torchs_order():
    """torch's SGD is ``(params, lr, momentum, dampening, weight_decay, nesterov)``: ``SGD(p, 0.1, 0.9, 0, 1)`` is a
    weight decay of 1 there, and was Nesterov momentum without decay here."""
    for args in [(0.05, 0.9, 0.0, 1), (0.05, 0.8, 0.0, 0.01, True), (0.05, 0.5, 0.2, 0.1)]:
        params = [Parameter(f"p{i}", BE.asarray(v.copy())) for i, v in enumerate(INIT)]
        opt = SGD(params, *args)
        tparams = [torch.tensor(v.copy()) for v in INIT]
        topt = torch.optim.SGD(tparams, *args, foreach=False)
        assert opt.hyperparams == {k: topt.param_groups[0][k] for k in opt.hyperparams}, args
        for t in range(1, 6):
            for p, tp, g in zip(params, tparams, _grads(t, [np.asarray(p.value) for p in params], "plain"),
                                strict=True):
                p.grad, tp.grad = BE.asarray(g.copy()), torch.from_numpy(g.copy())
            opt.step()
            topt.step()
        for p, tp in zip(params, tparams, strict=True):
            np.testing.assert_allclose(np.asarray(p.value), tp.numpy(), rtol=1e-12, atol=1e-12)


# (class, torch name, settings, the setting switched off at step 7 and on again at step 13)
SWITCHED = [
    (SGD, "SGD", {"lr": 0.03, "momentum": 0.9, "dampening": 0.3}, "momentum", 0.0),
    (Adam, "Adam", {"lr": 0.02, "amsgrad": True}, "amsgrad", False),
    (AdamW, "AdamW", {"lr": 0.02, "amsgrad": True, "betas": (0.5, 0.6)}, "amsgrad", False),
    (RMSprop, "RMSprop", {"lr": 0.01, "momentum": 0.7}, "momentum", 0.0),
    (RMSprop, "RMSprop", {"lr": 0.01, "centered": True, "momentum": 0.5}, "centered", False),
]


@pytest.mark.parametrize("cls, torch_name, kwargs, name, off", SWITCHED,
                         ids=lambda v: v if isinstance(v, str) else None)
def test_a_setting_switched_off_and_on_again_keeps_its_state_as_torch_does(cls, torch_name, kwargs, name, off):
    """torch keeps a momentum buffer, an AMSGrad maximum or a centered average, untouched, while its setting is off
    and goes on from it when it is on again; a snapshot taken while it is off loads and goes on the same."""
    pair = _Pair(cls, torch_name, kwargs)
    for t in range(1, 19):
        if t == 7:
            pair.set(name, off)
        if t == 13:
            pair.set(name, kwargs[name])
        if t == 10:  # a checkpoint while the setting is off, loaded into a fresh optimizer that goes on
            fresh = [Parameter(p.name, BE.asarray(np.asarray(p.value).copy())) for p in pair.params]
            snapshot = pair.opt.state_dict()
            pair.opt = cls(fresh, lr=0.5)
            pair.opt.load_state_dict(snapshot)
            pair.params = fresh
        pair.step(t, "skip" if t == 4 else "plain", where=f"({name} {'off' if 7 <= t < 13 else 'on'})")


def test_sgd_momentum_switched_on_loads_before_its_first_step_and_after_a_skipped_one():
    """Momentum set after steps without it (a warm-up): a snapshot before the buffer exists, and one where a
    parameter without a gradient at the switch has none yet, both load and go on as torch does."""
    pair = _Pair(SGD, "SGD", {"lr": 0.03, "momentum": 0.0, "dampening": 0.25})
    for t in range(1, 13):
        if t == 4:
            pair.set("momentum", 0.9)
        if t in (4, 5):  # before the step with momentum, then after the step that skipped p1
            fresh = [Parameter(p.name, BE.asarray(np.asarray(p.value).copy())) for p in pair.params]
            snapshot = pair.opt.state_dict()
            pair.opt = SGD(fresh, lr=0.5)
            pair.opt.load_state_dict(snapshot)
            pair.params = fresh
        pair.step(t, "skip")


@pytest.mark.parametrize("switched", [("momentum", 0.9, "momentum_buffer"), ("centered", True, "grad_avg")],
                         ids=lambda v: v[0])
def test_rmsprop_momentum_or_centering_switched_on_starts_from_zeros(switched):
    """Found by mutation testing: switched on after steps without it, RMSprop's momentum buffer (or centered
    average) starts as torch's would from zeros, which torch itself cannot do (it made none, and raises KeyError):
    here its state is given the zeros, and the two go on together."""
    name, value, buffer = switched
    pair = _Pair(RMSprop, "RMSprop", {"lr": 0.01, "alpha": 0.9, "momentum": 0.0, "centered": False})
    for t in range(1, 10):
        if t == 4:
            pair.set(name, value)
            for tp in pair.tparams:
                pair.topt.state[tp][buffer] = torch.zeros_like(tp)
        pair.step(t, where=f"({name} {'on' if t >= 4 else 'off'})")


@pytest.mark.parametrize("cls, kwargs", [
    (SGD, {"lr": 0.03, "momentum": 0.8, "dampening": 0.2, "weight_decay": 0.1}),
    (SGD, {"lr": 0.03, "momentum": 0.9, "nesterov": True, "maximize": True}),
    (Adam, {"lr": 0.02, "amsgrad": True, "weight_decay": 0.05}),
    (AdamW, {"lr": 0.02, "betas": (0.5, 0.7), "eps": 1e-4}),
    (RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.6, "weight_decay": 0.1}),
    (Adagrad, {"lr": 0.1, "lr_decay": 0.1, "initial_accumulator_value": 0.3}),
    (Lion, {"lr": 0.01, "beta1": 0.6, "weight_decay": 0.2}),
    (Momentum, {"lr": 0.02, "momentum": 0.7}),
], ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_snapshot_mid_run_goes_on_as_the_uninterrupted_run(cls, kwargs):
    """Saved at step k (after a skipped gradient and changed settings), loaded into a fresh optimizer built with
    other settings: the rest of the run is the uninterrupted one's, bit for bit."""
    def run(split):
        params = [Parameter(f"p{i}", BE.asarray(v.copy())) for i, v in enumerate(INIT)]
        opt = cls(params, **kwargs)
        for t in range(1, 21):
            if t == split:
                fresh = [Parameter(p.name, BE.asarray(np.asarray(p.value).copy())) for p in params]
                snapshot = opt.state_dict()
                opt = cls(fresh, lr=0.9)
                opt.load_state_dict(snapshot)
                params = fresh
            if t == 6:
                opt.lr = 0.5 * kwargs["lr"]
            for p, g in zip(params, _grads(t, [np.asarray(p.value) for p in params], "skip"), strict=True):
                p.grad = None if g is None else BE.asarray(g.copy())
            opt.step()
        return [np.asarray(p.value) for p in params], opt.param_steps

    want, want_steps = run(split=0)
    for split in (2, 8, 14):
        got, got_steps = run(split)
        assert got_steps == want_steps
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


def test_lion_follows_its_published_rule_with_zero_and_tiny_gradients():
    """Lion (Chen et al., 2023): ``p -= lr * (sign(b1*m + (1-b1)*g) + wd*p)``, ``m = b2*m + (1-b2)*g``; a zero
    interpolation moves nothing but the decay, and a gradient of 1e-30 moves as far as one of 1."""
    b1, b2, wd = 0.7, 0.9, 0.1
    for mode in ("zero", "tiny", "sparse", "skip"):
        params = [Parameter(f"p{i}", BE.asarray(v.copy())) for i, v in enumerate(INIT)]
        opt = Lion(params, lr=0.02, beta1=b1, beta2=b2, weight_decay=wd)
        ref = [v.copy() for v in INIT]
        m = [np.zeros_like(v) for v in INIT]
        for t in range(1, STEPS + 1):
            lr = 0.02 * (1.0 + 0.5 * math.cos(t))
            opt.lr = lr
            gs = _grads(t, [np.asarray(p.value) for p in params], mode)
            for p, g in zip(params, gs, strict=True):
                p.grad = None if g is None else BE.asarray(g.copy())
            opt.step()
            for i, g in enumerate(_grads(t, ref, mode)):
                if g is None:
                    continue
                ref[i] = ref[i] - lr * (np.sign(b1 * m[i] + (1 - b1) * g) + wd * ref[i])
                m[i] = b2 * m[i] + (1 - b2) * g
            for p, r in zip(params, ref, strict=True):
                np.testing.assert_allclose(np.asarray(p.value), r, rtol=1e-12, atol=1e-12, err_msg=f"{mode} {t}")


class _OptFuzzSettings(Callback):
    """Changes optimizer settings before given batches (counted over the whole fit), as a user's callback does."""

    def __init__(self, opt, changes):
        super().__init__()
        self.opt, self.changes, self.n = opt, changes, 0

    def on_batch_begin(self, batch, logs=None):
        self.n += 1
        for name, value in self.changes.get(self.n, {}).items():
            setattr(self.opt, name, value)


FIT_CASES = [
    (SGD, {"lr": 0.02, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.1},
     {3: {"momentum": 0.0}, 6: {"momentum": 0.5, "dampening": 0.0, "nesterov": True}}),
    (SGD, {"lr": 0.02, "maximize": False}, {3: {"momentum": 0.9}, 5: {"dampening": 0.4}}),
    (Adam, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1},
     {3: {"amsgrad": False}, 5: {"betas": (0.5, 0.6), "eps": 1e-3}, 8: {"amsgrad": True}}),
    (AdamW, {"lr": 0.01}, {4: {"weight_decay": 0.5, "lr": 0.02}}),
    (RMSprop, {"lr": 0.01, "centered": True, "momentum": 0.5},
     {3: {"centered": False, "momentum": 0.0}, 5: {"alpha": 0.5}, 8: {"centered": True, "momentum": 0.3}}),
    (Adagrad, {"lr": 0.1, "lr_decay": 0.1, "initial_accumulator_value": 0.3}, {4: {"lr_decay": 0.0}}),
    (Lion, {"lr": 0.01, "weight_decay": 0.1}, {4: {"beta1": 0.3}}),
    (Momentum, {"lr": 0.01}, {4: {"momentum": 0.3}}),
]


@pytest.mark.parametrize("cls, kwargs, changes", FIT_CASES, ids=lambda v: v.__name__ if isinstance(v, type) else None)
def test_fits_flat_update_gives_the_numbers_of_the_step_parameter_by_parameter(cls, kwargs, changes):
    """`fit` updates every parameter at once over flat buffers; with settings switched off and on by a callback
    between batches, the weights and the optimizer's state are `Optimizer.step`'s (the plain loop) exactly."""
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((16, 4)), rng.standard_normal((16, 1))
    results = []
    for fast in (True, False):
        model = nnx.Sequential(nnx.Dense(4, 6), nnx.Tanh(), nnx.Dense(6, 1), dtype="float64", seed=1,
                               backend=nnx.get_backend("numpy").with_fastpath(fast))
        opt = cls(model.parameters(), **kwargs)
        model.fit(X, y, loss="mse", optimizer=opt, epochs=3, batch_size=4, shuffle=False,
                  callbacks=[_OptFuzzSettings(opt, changes)])
        state = opt.state_dict()
        results.append(({k: np.asarray(v).copy() for k, v in model.state_dict().items()},
                        {i: {k: np.asarray(v) for k, v in s.items()} for i, s in state["state"].items()},
                        state["param_steps"]))
    (w_flat, s_flat, n_flat), (w_plain, s_plain, n_plain) = results
    assert n_flat == n_plain == [12] * 4
    for k in w_plain:
        np.testing.assert_array_equal(w_flat[k], w_plain[k], err_msg=k)
    assert {i: sorted(s) for i, s in s_flat.items()} == {i: sorted(s) for i, s in s_plain.items()}
    for i, s in s_plain.items():
        for k, v in s.items():
            np.testing.assert_array_equal(s_flat[i][k], v, err_msg=f"{i} {k}")
