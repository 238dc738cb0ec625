"""The replayed optimizer rule (`nnx.training.replay`) writes the plain call's numbers bit for bit.

Where a backend writes into given arrays (`Backend.out_functions`), the flat update records
an elementwise rule each step and replays it into its buffers. These tests call a rule
plainly and replayed on the same arrays (NaN, inf and signed zeros among them) and compare
the bits; a rule the recording cannot replay must leave every array untouched and report it.
The test optimizers' names start with an underscore, which keeps them out of nnx's registry
(other tests run every registered optimizer).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_execution import OPTIMIZERS, _assert_same, _train

import nnx
from nnx import optim
from nnx.training import replay
from nnx.training.replay import RuleReplay


class _ScalarsOnTheLeft(optim.Optimizer):
    """Python numbers before the array in every operator, a comparison and the namespace's where."""

    elementwise = True

    def init_state(self, xp, value):
        return {"s": xp.zeros_like(value) + 0.25}

    def update(self, xp, value, grad, state, step, lr):
        damp = 1.0 - state["s"]
        shrink = 2.0 / (1.0 + grad * grad)
        signed = xp.where(grad > 0.0, damp, -damp)
        return value - lr * shrink * signed + abs(-grad) * 0.0, {"s": 0.5 - damp * 0.1}


class _ReadsOldStateLate(optim.Optimizer):
    """Reads its old state after computing the new one, so the new one must not overwrite it early."""

    elementwise = True

    def init_state(self, xp, value):
        return {"m": xp.ones_like(value)}

    def update(self, xp, value, grad, state, step, lr):
        m = 0.9 * state["m"] + grad
        return value - lr * (m + state["m"]) / xp.sqrt(xp.abs(m) + 1.0), {"m": m}


class _OneResultTwice(optim.Optimizer):
    """Returns one array as the new value and as its state, and keeps another state entry unchanged."""

    elementwise = True

    def init_state(self, xp, value):
        return {"last": xp.zeros_like(value), "fixed": xp.ones_like(value)}

    def update(self, xp, value, grad, state, step, lr):
        new = value - lr * grad * state["fixed"]
        return new, {"last": new, "fixed": state["fixed"]}


class _IntermediateOutlivesItsResult(optim.Optimizer):
    """Steps toward a new state and value in their own buffers, one of them read after that state is made."""

    elementwise = True

    def init_state(self, xp, value):
        return {"m": xp.ones_like(value) * 0.5}

    def update(self, xp, value, grad, state, step, lr):
        half = 0.5 * state["m"]  # may not take m's buffer: it is read after the new m exists
        m = half + grad
        stepped = value - lr * (m + half)  # may take the value's buffer on the way to the new value
        return stepped * 0.5 + stepped * 0.5, {"m": m}


RULES = [(optim.get_optimizer, (name,), kwargs) for name, kwargs in OPTIMIZERS if isinstance(name, str)] + [
    (cls, (), {"lr": 0.01})
    for cls in (_ScalarsOnTheLeft, _ReadsOldStateLate, _OneResultTwice, _IntermediateOutlivesItsResult)
] + [(name, (), kwargs) for name, kwargs in OPTIMIZERS if not isinstance(name, str)]


def _ids(rule):
    make, args, kwargs = rule
    name = args[0] if args else make.__name__.lstrip("_")
    return "-".join([name, *[f"{k}={v}" for k, v in kwargs.items() if k != "lr"]])


def _bits(backend, x):
    """The numbers' bits (signed zeros differ), every NaN as one pattern: a kernel's NaN payload may differ
    between a vectorised body and its scalar tail, so slicing alone changes it."""
    host = np.array(backend.to_host(x), copy=True)
    host[np.isnan(host)] = np.nan
    return host.view(np.uint64 if host.dtype == np.float64 else np.uint32)


def _arrays(backend, dtype, n=37, seed=0):
    """A parameter's value and gradient with NaN, inf, -inf, 0 and -0 among ordinary numbers."""
    rng = np.random.default_rng(seed)
    value, grad = rng.standard_normal(n), rng.standard_normal(n)
    grad[[1, 4, 9, 16]] = [np.nan, np.inf, -np.inf, -0.0]
    value[[2, 5]] = [0.0, -0.0]
    return backend.from_host(value.astype(dtype)), backend.from_host(grad.astype(dtype))


def _copy(backend, x):
    return backend.from_host(np.array(backend.to_host(x), copy=True))


@pytest.mark.parametrize("rule", RULES, ids=_ids)
@pytest.mark.parametrize("piece", [None, 5], ids=["whole", "in-slices"])
def test_a_replayed_rule_writes_the_plain_calls_bits(backend, dtype, rule, piece):
    out = backend.out_functions()
    if out is None:  # an immutable or compiled library: the flat update calls the rule plainly
        assert backend.name in ("jax", "array_api_strict", "generic"), backend.spec
        return
    make, args, kwargs = rule
    xp = backend.xp
    value, grad = _arrays(backend, dtype)
    opt = make(*args, [nnx.Parameter("w", value)], **kwargs)
    recorded = RuleReplay(opt, xp, out, piece)
    state = opt.init_state(xp, value)
    for step in (1, 2, 3):
        written_value = _copy(backend, value)
        written_state = {k: _copy(backend, arr) for k, arr in state.items()}
        with np.errstate(all="ignore"):  # NaN and inf on purpose
            plain_value, plain_state = opt.update(xp, value, grad, state, step, opt.lr)
            applied = recorded.apply(written_value, grad, written_state, step, opt.lr)
        assert applied, f"{type(opt).__name__} was not replayed"
        np.testing.assert_array_equal(_bits(backend, written_value), _bits(backend, plain_value))
        assert written_state.keys() == plain_state.keys()
        for key, arr in plain_state.items():
            np.testing.assert_array_equal(_bits(backend, written_state[key]), _bits(backend, arr), err_msg=key)
        value, state = written_value, written_state
        grad = grad * 0.5


@pytest.mark.parametrize("rule", [r for r in RULES if _ids(r) in ("adam-weight_decay=0.001", "sgd", "OneResultTwice",
                                                                    "ScalarsOnTheLeft")], ids=_ids)
@pytest.mark.parametrize("verdict", [True, False], ids=["kept", "refused"])
@pytest.mark.parametrize("after_unchecked", [False, True], ids=["first", "after-a-step-without-verdict"])
def test_a_deferred_verdict_selects_as_the_plain_where_does(backend, dtype, rule, verdict, after_unchecked):
    """With the deferred finite check's 0-d flag, each result or the old array is written, as
    ``xp.where(keep, new, old)`` would; where the backend cannot select in place, nothing is written. (Found by
    mutation testing: the same replay's plan for a step without a verdict must not serve one with it, where a
    refused step would be written.)"""
    out = backend.out_functions()
    if out is None:
        return
    make, args, kwargs = rule
    xp = backend.xp
    value, _ = _arrays(backend, dtype)
    grad = backend.from_host(np.linspace(-1.0, 1.0, 37).astype(dtype))  # finite: the flag is what decides
    opt = make(*args, [nnx.Parameter("w", value)], **kwargs)
    state = {k: arr + 0.25 for k, arr in opt.init_state(xp, value).items()}
    keep = xp.asarray(verdict, device=backend.device)
    new_value, new_state = opt.update(xp, value, grad, state, 1, opt.lr)
    plain_value = xp.where(keep, new_value, value)
    plain_state = {k: xp.where(keep, arr, state[k]) for k, arr in new_state.items()}
    replay = RuleReplay(opt, xp, out)
    if after_unchecked:  # a step checked at once, on copies: its plan is the replay's before the verdict's
        replay.apply(_copy(backend, value), grad, {k: _copy(backend, arr) for k, arr in state.items()}, 1, opt.lr)
    written_value = _copy(backend, value)
    written_state = {k: _copy(backend, arr) for k, arr in state.items()}
    applied = replay.apply(written_value, grad, written_state, 1, opt.lr, keep=keep)
    if "where" not in out:  # NumPy: no out= where (and its flat update never defers the check)
        assert not applied
        plain_value, plain_state = value, state
    else:
        assert applied
    np.testing.assert_array_equal(_bits(backend, written_value), _bits(backend, plain_value))
    for key, arr in plain_state.items():
        np.testing.assert_array_equal(_bits(backend, written_state[key]), _bits(backend, arr), err_msg=key)


class _ReadsANumber(optim.Optimizer):
    """Reads an array's value in Python."""

    elementwise = True

    def update(self, xp, value, grad, state, step, lr):
        scale = float(xp.max(xp.abs(grad)))
        return value - lr * grad / scale, state


class _Branches(optim.Optimizer):
    """Branches on an element of the gradient."""

    elementwise = True

    def update(self, xp, value, grad, state, step, lr):
        return (value - lr * grad if grad[0] > 0 else value), state


class _HoldsAnArray(optim.Optimizer):
    """Multiplies by an array of its own."""

    elementwise = True

    def update(self, xp, value, grad, state, step, lr):
        return value - self.scale * grad, state


class _MakesAnArray(optim.Optimizer):
    """Makes an array with a function that is not elementwise."""

    elementwise = True

    def update(self, xp, value, grad, state, step, lr):
        return value - xp.full_like(value, lr) * grad, state


class _AddsAKey(optim.Optimizer):
    """Returns a state key it was not given."""

    elementwise = True

    def init_state(self, xp, value):
        return {"a": xp.zeros_like(value)}

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * grad, {"a": state["a"] + grad, "b": grad * 2.0}


class _Swaps(optim.Optimizer):
    """Returns each state entry under the other's key."""

    elementwise = True

    def init_state(self, xp, value):
        return {"a": xp.zeros_like(value), "b": xp.ones_like(value)}

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * grad, {"a": state["b"], "b": state["a"]}


@pytest.mark.parametrize("make", [_ReadsANumber, _Branches, _HoldsAnArray, _MakesAnArray, _AddsAKey, _Swaps],
                         ids=lambda c: c.__name__.lstrip("_"))
def test_a_rule_the_recording_cannot_replay_is_reported_and_nothing_is_written(backend, dtype, make):
    out = backend.out_functions()
    if out is None:
        return
    xp = backend.xp
    value, grad = _arrays(backend, dtype)
    opt = make([nnx.Parameter("w", value)], lr=0.1)
    opt.scale = _copy(backend, value)  # an array of the optimizer's own (_HoldsAnArray reads it)
    state = opt.init_state(xp, value)
    before = [_bits(backend, value), *[_bits(backend, arr) for arr in state.values()]]
    assert not RuleReplay(opt, xp, out).apply(value, grad, state, 1, opt.lr)
    after = [_bits(backend, value), *[_bits(backend, arr) for arr in state.values()]]
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_read_only_buffer_is_refused_before_anything_is_written():
    """Also when it replaces a buffer the replay already wrote (the buffers are checked whenever they change)."""
    backend = nnx.get_backend("numpy")
    value, grad = _arrays(backend, "float64")
    grad = np.nan_to_num(grad, posinf=1.0, neginf=-1.0)  # finite here: NaN and inf are the other tests' subject
    opt = optim.Adam([nnx.Parameter("w", value)])
    replayed = RuleReplay(opt, backend.xp, backend.out_functions())
    state = opt.init_state(backend.xp, value)
    assert replayed.apply(value, grad, state, 1, opt.lr)
    state = {k: arr.copy() for k, arr in state.items()}
    state["exp_avg_sq"].flags.writeable = False
    before = [value.copy(), state["exp_avg"].copy()]
    assert not replayed.apply(value, grad, state, 2, opt.lr)
    np.testing.assert_array_equal(value, before[0])
    np.testing.assert_array_equal(state["exp_avg"], before[1])


def test_arrays_that_record_gradients_are_refused_before_anything_is_written():
    """torch refuses out= functions on tensors that require grad: such arrays run the rule plainly."""
    torch = pytest.importorskip("torch")
    backend = nnx.get_backend("torch")
    for recording in ("values", "grads"):
        value, grad = _arrays(backend, "float32")
        grad = torch.nan_to_num(grad, posinf=1.0, neginf=-1.0)
        opt = optim.Adam([nnx.Parameter("w", value)])
        state = opt.init_state(backend.xp, value)
        if recording == "values":
            value = (value * 1.0).requires_grad_()
        else:
            grad = grad.requires_grad_()
        before = value.detach().clone()
        assert not RuleReplay(opt, backend.xp, backend.out_functions()).apply(value, grad, state, 1, opt.lr)
        assert torch.equal(value.detach(), before) and not state["exp_avg"].any()


def test_buffers_of_other_shapes_are_refused():
    backend = nnx.get_backend("numpy")
    value, grad = _arrays(backend, "float64")
    opt = optim.SGD([nnx.Parameter("w", value)], lr=0.1, momentum=0.9)
    state = {"momentum_buffer": np.zeros(())}  # an initial state that broadcasts: the plain call handles it
    assert not RuleReplay(opt, backend.xp, backend.out_functions()).apply(value, grad, state, 1, opt.lr)


@pytest.mark.parametrize("opt_name,kwargs", OPTIMIZERS[3:6] + OPTIMIZERS[-1:],
                         ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", "kw"))
def test_fit_with_the_replayed_rule_gives_the_plain_loops_numbers(backend, dtype, opt_name, kwargs, monkeypatch):
    """Training replays the rule once its parameters reach `MIN_ELEMENTS` (here: any size)."""
    monkeypatch.setattr(replay, "MIN_ELEMENTS", 0)
    fast = _train(backend, dtype, "relu_ce", opt_name, kwargs, True)
    plain = _train(backend, dtype, "relu_ce", opt_name, kwargs, False)
    _assert_same(fast, plain, dtype)


def test_the_flat_update_replays_from_min_elements_on(backend, dtype, monkeypatch):
    from nnx.training.step import TrainStep

    for threshold, replays in ((10**9, False), (0, backend.out_functions() is not None)):
        monkeypatch.setattr(replay, "MIN_ELEMENTS", threshold)
        model = nnx.Sequential(nnx.Dense(4, 3), backend=backend, dtype=dtype, seed=0)
        step = TrainStep(model, model.resolve_loss("mse"), optim.Adam(model.parameters()))
        if step.flat is None:
            assert backend.can_compile  # JAX compiles the step instead
            return
        X = model.prepare_inputs(np.ones((5, 4)))
        y = model.prepare_targets(np.ones((5, 3)), step.loss, 5)
        for _ in range(2):
            value, _ = step.forward_loss(X, y)
            step.backward()
            step.check(value)
            step.update()
        assert (step.flat.replay is not None) == replays


@pytest.mark.parametrize("on_host", [True, False], ids=["host", "device"])
def test_the_replay_slices_in_host_memory_and_runs_at_once_on_a_device(backend, dtype, on_host, monkeypatch):
    """In host memory the rule is replayed over slices of `PIECE_ELEMENTS` (cache-sized); on a device, where each
    slice costs a kernel launch per operation, over all parameters in one call (the device is a stand-in here:
    the backend reports arrays outside host memory)."""
    from nnx.training.step import TrainStep

    if backend.out_functions() is None:
        return  # no replay: the rule is called plainly
    monkeypatch.setattr(replay, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(replay, "PIECE_ELEMENTS", 7)
    monkeypatch.setattr(type(backend), "arrays_on_host", property(lambda self: on_host))
    runs = []
    real_run = RuleReplay._run
    monkeypatch.setattr(RuleReplay, "_run", lambda self, *args: runs.append(len(args[1][0])) or real_run(self, *args))
    model = nnx.Sequential(nnx.Dense(6, 5), backend=backend, dtype=dtype, seed=0)  # 35 parameters
    step = TrainStep(model, model.resolve_loss("mse"), optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                     defer_check=False)
    X = model.prepare_inputs(np.ones((4, 6)))
    y = model.prepare_targets(np.ones((4, 5)), step.loss, 4)
    value, _ = step.forward_loss(X, y)
    step.backward()
    step.check(value)
    step.update()
    step.end_epoch()
    assert runs == ([7, 7, 7, 7, 7] if on_host else [35])


@pytest.mark.parametrize("deferred", [False, True], ids=["checked", "deferred"])
def test_steps_replayed_and_called_plainly_agree_bit_for_bit(backend, dtype, deferred, monkeypatch):
    """The training step with the replay and without it, a refused (NaN) step among them."""
    from nnx.training.step import TrainStep

    monkeypatch.setattr(replay, "MIN_ELEMENTS", 0)
    applied = []  # what each replay reported
    real_apply = RuleReplay.apply
    monkeypatch.setattr(RuleReplay, "apply", lambda self, *args, **kwargs: applied.append(
        real_apply(self, *args, **kwargs)) or applied[-1])
    X = np.random.default_rng(2).standard_normal((16, 6))
    y = np.arange(16) % 3
    runs = []
    for replayed in (True, False):
        model = nnx.Sequential(nnx.Dense(6, 9), nnx.ReLU(), nnx.Dense(9, 3), backend=backend, dtype=dtype, seed=3)
        opt = optim.Adam(model.parameters(), lr=0.01)
        step = TrainStep(model, model.resolve_loss("cross_entropy"), opt, defer_check=deferred)
        if step.flat is None:
            assert backend.can_compile
            return
        if not replayed:
            step.flat.replay = None
        Xd, yd = model.prepare_inputs(X), model.prepare_targets(y, step.loss, len(X))
        for i in range(4):
            value, _ = step.forward_loss(Xd, yd)
            step.backward()
            if i == 2:  # a NaN gradient: the step is refused (read now, or selected on the device if deferred)
                model.parameters()[0].grad = model.parameters()[0].grad * float("nan")
            if step.check(value):
                step.update()
        step.end_epoch()
        runs.append(([_bits(backend, p.value) for p in model.parameters()], opt.state_dict()))
        if replayed:  # replayed where the backend writes in place, and with a deferred verdict where it selects
            out = backend.out_functions() or {}
            calls = (4 if deferred else 3) if out else 0  # the refused step reaches the update only deferred
            assert applied == [not deferred or "where" in out] * calls, applied
    (values_a, state_a), (values_b, state_b) = runs
    for a, b in zip(values_a, values_b, strict=True):
        np.testing.assert_array_equal(a, b)
    for i, entry in state_a["state"].items():
        for key, arr in entry.items():
            np.testing.assert_array_equal(_bits(backend, arr), _bits(backend, state_b["state"][i][key]))
