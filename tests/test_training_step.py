"""The training step's stages, tested through `fit` on every backend (numpy with its fast path on and off).

* A divergence loses nothing: FloatingPointError names the epoch and batch and is raised before
  that step is applied; weights and optimizer state are those of the last finite step; every
  callback's ``on_train_end`` ran; `fit` continues at a lower learning rate.
* ``on_train_end`` runs on every way out of `fit`.
* Clipping equals torch's ``clip_grad_norm_`` / ``clip_grad_value_``; ``accumulate=k`` equals a
  batch k times larger; the ``on_gradients`` hook sees the gradients before the update and can
  replace them.
* Sample and class weights have Keras's meaning: sum(w_i * l_i) / rows.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import nnx
from nnx.callbacks import Callback, CSVLogger
from nnx.training import ClipByNorm, ClipByValue

TOL = 1e-10

# the poisoned and diverging runs overflow on purpose
pytestmark = pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")


@pytest.fixture(params=["fast", "portable"])
def be(request, backend):
    """Each backend; those with a fast path (numpy, cupy) once with it and once without."""
    if request.param == "fast":
        if not backend.fastpath_enabled:
            pytest.skip(f"{backend.spec} has no fast path here")
        return backend
    return backend.with_fastpath(False)


def _data(n: int = 40, d: int = 4, seed: int = 0):
    gen = np.random.default_rng(seed)
    X = gen.normal(size=(n, d))
    y = X @ gen.normal(size=(d,)) + 0.1 * gen.normal(size=n)
    return X, y


def _model(backend, dtype: str = "float64", seed: int = 3, out: int = 1, head=None) -> nnx.Sequential:
    layers = [nnx.Dense(4, 6), nnx.Tanh(), nnx.Dense(6, out)]
    if head is not None:
        layers.append(head())
    return nnx.Sequential(*layers, backend=backend, dtype=dtype, seed=seed)


def _host(be, x):
    return np.array(be.to_host(x), copy=True)


def _weights(model) -> dict[str, np.ndarray]:
    return {k: _host(model.backend, v) for k, v in model.state_dict().items()}


def _opt_state(model) -> dict:
    sd = model.optimizer.state_dict()
    return {"step": sd["step"], "param_steps": list(sd["param_steps"]),
            "state": {i: {k: _host(model.backend, v) for k, v in entry.items()} for i, entry in sd["state"].items()}}


def _assert_weights(a: dict, b: dict, tol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=tol, err_msg=name)


def _assert_opt_state(a: dict, b: dict, tol: float = 0.0) -> None:
    assert a["step"] == b["step"] and a["param_steps"] == b["param_steps"]
    assert a["state"].keys() == b["state"].keys()
    for i in a["state"]:
        assert a["state"][i].keys() == b["state"][i].keys()
        for k in a["state"][i]:
            np.testing.assert_allclose(a["state"][i][k], b["state"][i][k], rtol=0, atol=tol, err_msg=f"{i}.{k}")


class Snapshots(Callback):
    """Host copies of the weights and optimizer state at the start and after every batch."""

    def __init__(self) -> None:
        self.weights: list[dict] = []
        self.opt: list[dict | None] = []

    def _take(self) -> None:
        self.weights.append(_weights(self.model))
        self.opt.append(None if self.model.optimizer is None else _opt_state(self.model))

    def on_train_begin(self, logs=None):
        self._take()

    def on_batch_end(self, batch, logs=None):
        self._take()


class Ends(Callback):
    """Counts on_train_end calls; optionally raises from one hook."""

    def __init__(self, raise_in: str | None = None, exc: BaseException | None = None, at: int = 1) -> None:
        self.ends = 0
        self.raise_in, self.exc, self.at, self.batches = raise_in, exc, at, 0

    def on_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.raise_in == "on_batch_end" and self.batches == self.at:
            raise self.exc

    def on_epoch_end(self, epoch, logs=None):
        if self.raise_in == "on_epoch_end":
            raise self.exc

    def on_train_end(self, logs=None):
        self.ends += 1
        if self.raise_in == "on_train_end":
            raise self.exc


# -- a divergence loses nothing ----------------------------------------------------------------

def _huge(dtype: str) -> float:
    return 1e30 if dtype == "float32" else 1e200  # finite in the dtype; its square is not


def _check_is_deferred(model) -> bool:
    """Whether fit's finite check is the deferred one (see tests/test_deferred_check.py): the verdict stays
    on the device (arrays not in host memory, or a compiled step such as JAX's), later updates of the epoch
    are masked, and fit raises at the end of the epoch naming the first bad batch."""
    be = model.backend
    return not be.arrays_on_host or (be.can_compile and be.fastpath_enabled)


DIVERGENCES = [("poison_batch", "sgd"), ("poison_batch", "adam"), ("lr", "sgd"), ("lr", "sgd_momentum")]


@pytest.mark.parametrize(("how", "optimizer"), DIVERGENCES)
def test_divergence_keeps_the_last_finite_step(be, dtype, tmp_path, how, optimizer):
    X, y = _data()
    model = _model(be, dtype)
    opt = nnx.optim.SGD(model.parameters(), lr=0.01, momentum=0.9) if optimizer == "sgd_momentum" else optimizer
    model.fit(X, y, loss="mse", optimizer=opt, lr=0.01, epochs=2, batch_size=8)
    good = model.evaluate(X, y)["loss"]
    snaps, ends, csv = Snapshots(), Ends(), CSVLogger(tmp_path / "log.csv")
    deferred = _check_is_deferred(model)
    if how == "poison_batch":
        bad = y.copy()
        bad[21] = _huge(dtype)  # row 21 is in batch 2 (batch_size 8, no shuffle)
        with pytest.raises(FloatingPointError, match=r"epoch 3, batch 3\b") as info:
            model.fit(X, bad, epochs=1, batch_size=8, shuffle=False, callbacks=[snaps, ends, csv])
        if not deferred:
            assert len(snaps.weights) == 3  # the start, and batches 0 and 1
    else:
        # lr=1000 on badly scaled targets: the weights grow geometrically until a step overflows (after about 40
        # steps in float64 and 5 in float32; lr=10 took twice the steps, each with its snapshot, to the same end)
        with pytest.raises(FloatingPointError, match=r"epoch \d+, batch \d+") as info:
            model.fit(X, y * 1e3, lr=1000.0, epochs=500, batch_size=8, callbacks=[snaps, ends, csv])
    epoch, batch = map(int, re.search(r"epoch (\d+), batch (\d+)", str(info.value)).groups())
    epoch, batch = epoch - 1, batch - 1  # the message counts from 1, the arithmetic below from 0
    # snaps.weights[0] is the start (epoch 2 after the first fit); the snapshot after batch b of epoch e
    # is at (e - 2) * 5 + b + 1 (5 batches an epoch), so the last finite step's is at (e - 2) * 5 + b.
    last = (epoch - 2) * 5 + batch
    if deferred:
        # The verdict stays on the device until the epoch ends: on_batch_end still ran for the rest of
        # that epoch, with the updates masked (the weights frozen at the last finite step).
        assert len(snaps.weights) == (epoch - 2) * 5 + 5 + 1, "on_batch_end ran to the end of the epoch"
        for later in snaps.weights[last + 1:]:
            _assert_weights(later, snaps.weights[last])
    else:
        assert last + 1 == len(snaps.weights), "the message names the failing step"
    if how == "lr":
        assert last + 1 > 2, "it diverged over several steps"
    # Nothing of the failing step was applied: weights and optimizer state are the last finite step's.
    _assert_weights(_weights(model), snaps.weights[last])
    _assert_opt_state(_opt_state(model), snaps.opt[last])
    assert all(np.isfinite(w).all() for w in snaps.weights[last].values())
    assert ends.ends == 1 and csv._file is None, "every callback's on_train_end ran (the CSV file is closed)"
    # fit continues from there at a lower learning rate, with the same optimizer and its state.
    steps = model.optimizer.step_count
    cont = Snapshots()
    if how == "poison_batch":
        hist = model.fit(X, y, lr=1e-3, epochs=2, batch_size=8, callbacks=[cont])
        assert np.isfinite(hist["loss"]).all() and hist["loss"][-1] < 2 * good + 1.0
        assert all(np.isfinite(w).all() for w in _weights(model).values())
    else:
        # The last finite step of a geometric divergence sits at the edge of overflow (the next batch's
        # loss overflows at any lr), so only check that the next fit starts there with the same optimizer.
        model.fit(X, y * 1e3, lr=1e-6, epochs=1, batch_size=8, callbacks=[cont], check_finite=False)
    _assert_weights(cont.weights[0], snaps.weights[last])
    _assert_opt_state(cont.opt[0], snaps.opt[last])
    assert model.optimizer.step_count == steps + len(cont.weights) - 1


def test_check_finite_false_keeps_going(be, dtype):
    X, y = _data()
    model = _model(be, dtype)
    model.fit(X, y, loss="mse", optimizer="sgd", lr=0.01, epochs=1, batch_size=8)
    bad = y.copy()
    bad[3] = _huge(dtype)
    hist = model.fit(X, bad, epochs=2, batch_size=8, check_finite=False)
    assert model.epochs_trained == 3 and len(hist["loss"]) == 2
    assert not np.isfinite(hist["loss"]).all()


def test_nonfinite_step_with_accumulation_drops_the_held_back_batches(be, dtype):
    X, y = _data()
    model = _model(be, dtype)
    model.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=1, batch_size=8)
    snaps = Snapshots()
    bad = y.copy()
    bad[26] = _huge(dtype)  # batch 3: the second of an accumulation group of 2
    with pytest.raises(FloatingPointError, match=r"epoch 2, batch 4\b"):
        model.fit(X, bad, epochs=1, batch_size=8, accumulate=2, shuffle=False, callbacks=[snaps])
    _assert_weights(_weights(model), snaps.weights[2])  # after batch 1: the one completed update
    _assert_opt_state(_opt_state(model), snaps.opt[2])
    assert model.optimizer.step_count == 5 + 1
    hist = model.fit(X, y, lr=1e-3, epochs=1, batch_size=8, accumulate=2)
    assert np.isfinite(hist["loss"]).all() and model.optimizer.step_count == 6 + 3


# -- on_train_end on every exit ----------------------------------------------------------------

EXITS = {
    "normal": (None, None, None),
    "callback_error": ("on_batch_end", RuntimeError("boom"), RuntimeError),
    "epoch_end_error": ("on_epoch_end", ValueError("bad epoch"), ValueError),
    "keyboard_interrupt": ("on_batch_end", KeyboardInterrupt(), None),
    "nonfinite": (None, None, FloatingPointError),
}


@pytest.mark.parametrize("exit_kind", sorted(EXITS))
def test_on_train_end_runs_on_every_exit(be, dtype, tmp_path, exit_kind):
    raise_in, exc, expected = EXITS[exit_kind]
    X, y = _data()
    if exit_kind == "nonfinite":
        y = y.copy()
        y[10] = _huge(dtype)
    model = _model(be, dtype)
    first, raiser, last = Ends(), Ends(raise_in, exc, at=3), Ends()
    csv = CSVLogger(tmp_path / "log.csv")
    kwargs = dict(loss="mse", epochs=2, batch_size=8, shuffle=False, callbacks=[first, raiser, csv, last])
    if expected is None:
        hist = model.fit(X, y, **kwargs)
        assert hist.interrupted == (exit_kind == "keyboard_interrupt")
    else:
        with pytest.raises(expected):
            model.fit(X, y, **kwargs)
    assert (first.ends, raiser.ends, last.ends) == (1, 1, 1)
    assert csv._file is None


@pytest.mark.parametrize("during", ["normal", "nonfinite"])
def test_a_failing_on_train_end_does_not_skip_the_others(be, dtype, tmp_path, during):
    X, y = _data()
    if during == "nonfinite":
        y = y.copy()
        y[10] = _huge(dtype)
    model = _model(be, dtype)
    first, raiser, last = Ends(), Ends("on_train_end", OSError("cannot close")), Ends()
    csv = CSVLogger(tmp_path / "log.csv")
    fit = lambda: model.fit(X, y, loss="mse", epochs=1, batch_size=8, callbacks=[first, raiser, csv, last])  # noqa: E731
    if during == "normal":
        with pytest.raises(OSError, match="cannot close"):
            fit()
    else:
        # fit's own error wins; the callback's is reported beside it as a warning
        with pytest.raises(FloatingPointError), \
                pytest.warns(RuntimeWarning, match=r"on_train_end failed while fit was stopping .*cannot close"):
            fit()
    assert (first.ends, raiser.ends, last.ends) == (1, 1, 1)
    assert csv._file is None


# -- clipping ----------------------------------------------------------------------------------

def _one_sgd_step(be, clip: dict):
    """(weights before, gradients, weights after one full-batch SGD step of fit with `clip`)."""
    X, y = _data()
    model = _model(be, "float64")
    loss = model.resolve_loss("mse")
    model.loss_and_grads(model.prepare_inputs(X), model.prepare_targets(y, loss, len(X)), loss)
    grads = {p.name: _host(be, p.grad) for p in model.parameters()}
    before = _weights(model)
    model.fit(X, y, loss="mse", optimizer=nnx.optim.SGD(model.parameters(), lr=0.5), epochs=1, batch_size=None,
              **clip)
    return before, grads, _weights(model)


@pytest.mark.parametrize("max_norm", [0.05, 1e6])
def test_clip_norm_equals_torch_clip_grad_norm(be, max_norm):
    torch = pytest.importorskip("torch")
    before, grads, after = _one_sgd_step(be, {"clip_norm": max_norm})
    tensors = [torch.tensor(g) for g in grads.values()]
    for t in tensors:
        t.grad = t.clone()
    torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    expected = {name: before[name] - 0.5 * t.grad.numpy() for name, t in zip(grads, tensors, strict=True)}
    _assert_weights(after, expected, 1e-12)
    if max_norm > 1e3:  # unclipped: the plain step
        _assert_weights(after, {k: before[k] - 0.5 * grads[k] for k in grads}, 1e-12)


@pytest.mark.parametrize("clip_value", [0.01, 1e6])
def test_clip_value_equals_torch_clip_grad_value(be, clip_value):
    torch = pytest.importorskip("torch")
    before, grads, after = _one_sgd_step(be, {"clip_value": clip_value})
    tensors = [torch.tensor(g) for g in grads.values()]
    for t in tensors:
        t.grad = t.clone()
    torch.nn.utils.clip_grad_value_(tensors, clip_value)
    expected = {name: before[name] - 0.5 * t.grad.numpy() for name, t in zip(grads, tensors, strict=True)}
    _assert_weights(after, expected, 1e-12)


def test_clip_transforms_directly(backend, dtype):
    """The transforms on hand-made gradients (float32 too: no promotion to float64)."""
    torch = pytest.importorskip("torch")
    model = _model(backend, dtype)
    gen = np.random.default_rng(1)
    host = [gen.normal(size=p.shape) * 3 for p in model.parameters()]
    for clip, ref in ((ClipByNorm(0.7), lambda ts: torch.nn.utils.clip_grad_norm_(ts, 0.7)),
                      (ClipByValue(0.2), lambda ts: torch.nn.utils.clip_grad_value_(ts, 0.2))):
        for p, g in zip(model.parameters(), host, strict=True):
            p.grad = backend.asarray(g, dtype=model.dtype)
        assert clip.apply(model.parameters(), 8) is True
        tensors = [torch.tensor(g) for g in host]
        for t in tensors:
            t.grad = t.clone()
        ref(tensors)
        tol = 1e-6 if dtype == "float32" else 1e-12
        for p, t in zip(model.parameters(), tensors, strict=True):
            assert p.grad.dtype == p.value.dtype, type(clip).__name__
            np.testing.assert_allclose(_host(backend, p.grad), t.grad.numpy(), rtol=tol, atol=tol)
    with pytest.raises(ValueError, match="max_norm"):
        ClipByNorm(0)
    with pytest.raises(ValueError, match="clip_value"):
        ClipByValue(float("nan"))


# -- accumulation ------------------------------------------------------------------------------

OPTS = {
    "sgd_momentum": lambda ps: nnx.optim.SGD(ps, lr=0.05, momentum=0.9),
    "adam": lambda ps: nnx.optim.Adam(ps, lr=0.01),
}


@pytest.fixture(scope="module")
def larger_batch():
    """``larger_batch(key, fit)``: (weights, optimizer state, epoch losses) after ``fit(model)`` on a NumPy `_model`,
    fitted once per module for each key. An accumulated run on any backend is held to this one larger-batch run: the
    same seed gives every backend the same initial weights, and the larger batch is not compiled again on each."""
    runs: dict = {}

    def run(key: tuple, fit) -> tuple[dict, dict, list]:
        if key not in runs:
            model = _model("numpy")
            history = fit(model)
            runs[key] = (_weights(model), _opt_state(model), history["loss"])
        return runs[key]

    return run


# each layout (groups that divide the epoch, a short last group, a partial last batch in a last group of mixed
# sizes) with an optimizer with state of one kind (momentum) or two (Adam); the partial last batch with both.
# Batches of 4 throughout, as in the test below, over the module's 40 rows where the layout allows: on JAX each
# new batch or data shape compiles the ops (and the epoch program) anew. Groups of 2 divide the 40 rows' 10
# batches. The larger batch is fitted on NumPy (`larger_batch`).
@pytest.mark.parametrize(("opt", "n", "b", "k"), [("sgd_momentum", 40, 4, 2), ("adam", 40, 4, 3), ("adam", 45, 4, 3),
                                                  ("sgd_momentum", 45, 4, 3)])
def test_accumulate_equals_a_larger_batch(be, opt, n, b, k, larger_batch):
    X, y = _data(n=n)
    small = _model(be)
    # two epochs: the optimizer's state carries over an epoch's end, and the group restarts there
    h_small = small.fit(X, y, loss="mse", optimizer=OPTS[opt](small.parameters()), epochs=2, batch_size=b,
                        accumulate=k)
    weights, opt_state, losses = larger_batch(
        (opt, n, k * b), lambda large: large.fit(X, y, loss="mse", optimizer=OPTS[opt](large.parameters()), epochs=2,
                                                 batch_size=k * b))
    _assert_weights(_weights(small), weights, TOL)
    _assert_opt_state(_opt_state(small), opt_state, TOL)
    assert small.optimizer.step_count == 2 * -(-n // (k * b))
    np.testing.assert_allclose(h_small["loss"], losses, rtol=TOL)


@pytest.mark.parametrize("extra", [{"clip_norm": 0.05}, {"clip_value": 0.02}, {"weighted": True}])
def test_accumulate_equals_a_larger_batch_with_clipping_and_weights(be, extra, larger_batch):
    X, y = _data(n=45)
    kwargs = dict(extra)
    if kwargs.pop("weighted", False):
        kwargs["sample_weight"] = np.random.default_rng(5).uniform(0, 3, size=45)
    small = _model(be)
    small.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=2, batch_size=4, accumulate=3, **kwargs)
    weights, opt_state, _ = larger_batch(
        tuple(extra), lambda large: large.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=2, batch_size=12,
                                              **kwargs))
    _assert_weights(_weights(small), weights, TOL)
    _assert_opt_state(_opt_state(small), opt_state, TOL)


def test_mean_with_sample_weight_over_batches_equals_one_call_over_the_rows(be):
    """Under reduction="mean_with_sample_weight" each batch's loss is divided by its own sum of weights, so
    batches combine weighted by those sums: evaluate over batches equals one call over all the rows,
    accumulate=k equals the k-times-larger batch (a group whose weights are all 0 included), and fit's epoch
    loss at a vanishing step is the one call's value."""
    X, y = _data()  # the module's 40 rows and batches of 8 (groups of 2: 16), whose shapes JAX compiled already
    w = np.array([0.0] * 16 + [5.0] * 8 + [1e-3] * 16)
    loss = nnx.losses.MSE(reduction="mean_with_sample_weight")
    model = _model(be)
    one_call = be.to_float(loss(y, model.predict(X), sample_weight=w))
    assert model.evaluate(X, y, loss=loss, sample_weight=w)["loss"] == pytest.approx(one_call, rel=1e-12)
    batches = [(X[i:i + 8], y[i:i + 8], w[i:i + 8]) for i in range(0, 40, 8)]
    assert model.evaluate(batches, loss=loss)["loss"] == pytest.approx(one_call, rel=1e-12)
    # arrays, in the unshuffled batches of 16 of `large` below (the first batch's weights all 0; on JAX its compiled
    # epoch), and the batches of 8 read one by one (chunks of them under JAX)
    for data, how in (((X, y), dict(sample_weight=w, batch_size=16, shuffle=False)),
                      ((batches, None), dict(batch_size=8))):
        history = _model(be).fit(*data, loss=loss, optimizer="sgd", lr=1e-15, **how)
        assert history["loss"][0] == pytest.approx(one_call, rel=1e-9)
    small, large = _model(be), _model(be)
    h_small = small.fit(X, y, loss=loss, sample_weight=w, optimizer="sgd", lr=0.05, epochs=2, batch_size=8,
                        accumulate=2, shuffle=False)
    h_large = large.fit(X, y, loss=loss, sample_weight=w, optimizer="sgd", lr=0.05, epochs=2, batch_size=16,
                        shuffle=False)
    _assert_weights(_weights(small), _weights(large), TOL)
    np.testing.assert_allclose(h_small["loss"], h_large["loss"], rtol=1e-9)



@pytest.mark.parametrize("scale", [1e39, 1e38, 1e-44])
def test_mean_with_sample_weight_beyond_float32_range_keeps_its_meaning(backend, scale):
    """Only the weights' ratios count under "mean_with_sample_weight"; found in review: in a float32 model weights
    of 1e39 were refused as not finite, 1e38 gave an epoch loss of NaN (a batch's sum of weights overflowed) and
    1e-44 a loss of 0 under JAX (its CPU flushes float32 subnormals to 0)."""
    X, y = _data(n=20)
    w = np.linspace(0.5, 1.5, 20) * scale
    loss = nnx.losses.MSE(reduction="mean_with_sample_weight")
    model = _model(backend, "float32")
    rows = (_host(backend, model.predict(X))[:, 0].astype(np.float64) - y) ** 2
    expected = float(np.sum(w / w.max() * rows) / np.sum(w / w.max()))
    assert model.evaluate(X, y, loss=loss, sample_weight=w)["loss"] == pytest.approx(expected, rel=1e-5)
    history = model.fit(X, y, loss=loss, sample_weight=w, optimizer="sgd", lr=1e-30, batch_size=5)
    assert history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_weights_beyond_float32_range_are_named_as_such(backend):
    # found in review: finite float64 weights of 1e39 were refused as "must be finite" in a float32 model
    X, y = _data(n=20)
    with pytest.raises(ValueError, match="beyond the range of the model's dtype float32"):
        _model(backend, "float32").fit(X, y, loss="mse", sample_weight=np.full(20, 1e39))

def test_weights_below_float32_range_are_named_not_trained_on_as_zeros(backend):
    # found in review: weights of 1e-320 became 0 in a float32 model, the loss 0.0 and nothing trained, without a
    # word (weights given as 0 stay Keras's: a loss of 0)
    X, y = _data(n=20)
    model = _model(backend, "float32")
    before = {k: _host(backend, v) for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"sample_weight became 0 in the model's dtype float32: its weights \(up "
                                         r"to 1e-320\) lie below its range .*mean_with_sample_weight"):
        model.fit(X, y, loss="mse", sample_weight=np.full(20, 1e-320))
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(_host(backend, v), before[k])
    assert model.fit(X, y, loss="mse", sample_weight=np.zeros(20), epochs=1)["loss"] == [0.0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_subnormal_weights_of_which_only_the_ratios_count_train_as_their_ratios(backend, dtype):
    # found in review: scaling weights of 1e-320 up overflowed math.ldexp (2**1063 is no double), and JAX's CPU
    # flushed them to 0 before the scaling
    X, y = _data(n=20)
    w = np.where(np.arange(20) < 5, 2e-320, 1e-320)
    loss = nnx.losses.MSE(reduction="mean_with_sample_weight")
    tiny = _model(backend, dtype).fit(X, y, loss=loss, sample_weight=w, epochs=2, optimizer="sgd")["loss"]
    scaled = w * 2.0**1000 * 2.0**60  # the same ratios, exactly
    ratios = _model(backend, dtype).fit(X, y, loss=loss, sample_weight=scaled, epochs=2, optimizer="sgd")["loss"]
    assert tiny == ratios


# -- the on_gradients hook ---------------------------------------------------------------------

class GradSpy(Callback):
    def __init__(self, replace=None) -> None:
        self.replace = replace
        self.seen: list[dict] = []
        self.weights_then: list[dict] = []
        self.weights_before: list[dict] = []

    def on_batch_begin(self, batch, logs=None):
        self.weights_before.append(_weights(self.model))

    def on_gradients(self, grads):
        self.seen.append({k: _host(self.model.backend, g) for k, g in grads.items()})
        self.weights_then.append(_weights(self.model))
        return None if self.replace is None else self.replace(grads)


def test_on_gradients_sees_gradients_before_the_update(be, dtype):
    X, y = _data()
    model = _model(be, dtype)
    spy = GradSpy()
    model.fit(X, y, loss="mse", optimizer=nnx.optim.SGD(model.parameters(), lr=0.1), epochs=1, batch_size=16,
              callbacks=[spy])
    assert len(spy.seen) == 3
    tol = 1e-6 if dtype == "float32" else 1e-12
    for i in range(3):
        _assert_weights(spy.weights_then[i], spy.weights_before[i])  # not yet updated
        after = spy.weights_before[i + 1] if i < 2 else _weights(model)
        names = list(spy.seen[i])
        assert set(names) == set(after)
        for name in names:  # and the update used exactly these gradients
            np.testing.assert_allclose(after[name], spy.weights_before[i][name] - 0.1 * spy.seen[i][name],
                                       rtol=0, atol=tol)


def test_on_gradients_can_replace_them(be, dtype):
    X, y = _data()
    model = _model(be, dtype)
    model.fit(X, y, loss="mse", optimizer="sgd", lr=0.1, epochs=1, batch_size=8)  # the module's compiled SGD epoch
    before = _weights(model)
    xp = model.xp
    spy = GradSpy(replace=lambda grads: {k: xp.zeros_like(g) for k, g in grads.items()})
    model.fit(X, y, epochs=2, batch_size=16, callbacks=[spy])
    _assert_weights(_weights(model), before)
    assert len(spy.seen) == 6


def test_on_gradients_sees_clipped_gradients_and_rejects_bad_shapes(be, dtype):
    X, y = _data()
    model = _model(be, dtype)
    spy = GradSpy()
    model.fit(X, y, loss="mse", epochs=1, batch_size=16, clip_value=1e-3, callbacks=[spy])
    assert all(np.abs(g).max() <= 1e-3 for seen in spy.seen for g in seen.values())
    bad = GradSpy(replace=lambda grads: {"0.weight": grads["0.weight"][:2, :2]})
    with pytest.raises(ValueError, match="0.weight"):
        model.fit(X, y, epochs=1, batch_size=16, callbacks=[bad])


# -- sample and class weights ------------------------------------------------------------------

def test_sample_weight_of_ones_is_no_weights(be):
    X, y = _data()
    a, b = _model(be), _model(be)
    ha = a.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=2, batch_size=8, sample_weight=np.ones(40))
    hb = b.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=2, batch_size=8)
    _assert_weights(_weights(a), _weights(b), 1e-12)
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-12)


def test_weight_two_is_a_duplicated_row_rescaled_by_rows(be):
    """Keras: loss = sum(w_i l_i) / n. Weight 2 on row 0 vs row 0 twice (n + 1 rows): the same
    numerator, so with full batches the weighted loss and gradient are (n + 1) / n times the duplicated
    ones, and SGD at lr equals SGD at lr * (n + 1) / n on the duplicated data."""
    X, y = _data()  # the module's 40 rows: one full batch of them is compiled already
    n = len(X)
    w = np.ones(n)
    w[0] = 2
    Xd, yd = np.concatenate([X, X[:1]]), np.concatenate([y, y[:1]])
    # the duplicated rows on NumPy (the same seed gives every backend the same initial weights): a backend compiles
    # no program for their 41 rows
    a, b = _model(be), _model("numpy")
    ratio = (n + 1) / n
    assert a.evaluate(X, y, loss="mse", sample_weight=w)["loss"] == pytest.approx(
        b.evaluate(Xd, yd, loss="mse")["loss"] * ratio, rel=1e-12)
    ha = a.fit(X, y, loss="mse", optimizer="sgd", lr=0.05, epochs=3, batch_size=None, sample_weight=w)
    hb = b.fit(Xd, yd, loss="mse", optimizer="sgd", lr=0.05 * ratio, epochs=3, batch_size=None)
    _assert_weights(_weights(a), _weights(b), 1e-12)
    np.testing.assert_allclose(ha["loss"], np.asarray(hb["loss"]) * ratio, rtol=1e-12)


@pytest.mark.parametrize("task", ["binary", "multiclass"])
def test_class_weight_equals_the_matching_sample_weight(be, task):
    X, _ = _data()
    if task == "binary":
        y = (X[:, 0] > 0).astype(float)
        cw, head, out, loss = {0: 1, 1: 3}, nnx.Sigmoid, 1, "bce"
        sw = np.where(y == 1, 3.0, 1.0)
    else:
        y = np.argmax(X[:, :3], axis=1)
        cw, head, out, loss = {0: 1, 1: 3, 2: 0.5}, nnx.Softmax, 3, "cross_entropy"
        sw = np.array([cw[int(c)] for c in y], dtype=float)
    a, b = _model(be, out=out, head=head), _model(be, out=out, head=head)
    ha = a.fit(X, y, loss=loss, optimizer="adam", lr=0.01, epochs=2, batch_size=8, class_weight=cw)
    hb = b.fit(X, y, loss=loss, optimizer="adam", lr=0.01, epochs=2, batch_size=8, sample_weight=sw)
    _assert_weights(_weights(a), _weights(b), 1e-12)
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-12)


@pytest.mark.parametrize("weight", [float("inf"), float("nan")])
def test_a_class_weight_that_is_not_finite_is_refused_up_front(be, weight):
    """inf passed the ">= 0" check and surfaced as a non-finite step that blamed the learning rate."""
    X, _ = _data()
    y = (X[:, 0] > 0).astype(float)
    model = _model(be, out=1, head=nnx.Sigmoid)
    with pytest.raises(ValueError, match=r"class_weight\[1\] must be a finite number >= 0"):
        model.fit(X, y, loss="bce", epochs=1, class_weight={0: 1.0, 1: weight})
    assert model.epochs_trained == 0


def test_a_class_weight_beyond_a_float32_models_range_is_refused_up_front(backend):
    """A finite class weight of 1e39 passed the check, turned inf in the cast to the float32 model, and surfaced
    as a non-finite step that blamed the learning rate (a sample_weight of 1e39 is refused, naming the range)."""
    X, _ = _data()
    y = (X[:, 0] > 0).astype(float)
    model = nnx.Sequential(nnx.Dense(X.shape[1], 1), nnx.Sigmoid(), backend=backend, seed=0)
    with pytest.raises(ValueError, match=r"class_weight\[1\] \(1e\+39\) lies beyond the range of the model's "
                                         r"dtype float32"):
        model.fit(X, y, loss="bce", epochs=1, verbose=0, class_weight={0: 1.0, 1: 1e39})
    assert model.epochs_trained == 0
    # float64 holds it (the model and fit of test_class_weight_equals_the_matching_sample_weight: on JAX its
    # compiled epoch already)
    wide = _model(backend, "float64", out=1, head=nnx.Sigmoid)
    wide.fit(X, y, loss="bce", optimizer="adam", lr=0.01, epochs=1, batch_size=8, class_weight={0: 1.0, 1: 1e39})

def test_class_weight_on_targets_without_one_class_per_row_is_refused(backend):
    """Found in review: class_weight took the argmax of each target row, so multi-label 0/1 rows (a BCE loss on
    several outputs) were weighed by their first label (a row of no labels as class 0), and regression
    targets by their largest column or by whether they exceed 0.5, all without a word."""
    X, _ = _data()
    rng = np.random.default_rng(4)
    labels = (rng.random((40, 3)) < 0.5).astype(float)
    cases = [(3, nnx.Sigmoid, "bce", labels, "each output is a label of its own"),
             (3, None, "mse", rng.normal(size=(40, 3)), "one-hot rows"),
             (1, None, "mae", rng.normal(size=40), "0/1 labels")]
    for out, head, loss, y, match in cases:
        model = _model(backend, out=out, head=head)
        with pytest.raises(ValueError, match=f"class_weight.*{match}"):
            model.fit(X, y, loss=loss, epochs=1, class_weight={0: 2.0})
        assert model.epochs_trained == 0
    # class targets under a loss that is no cross-entropy keep their class weights
    one_hot = np.eye(3)[rng.integers(0, 3, 40)]
    a, b = _model(backend, out=3), _model(backend, out=3)
    ha = a.fit(X, one_hot, loss="mse", epochs=1, batch_size=8, class_weight={1: 3.0})
    hb = b.fit(X, one_hot, loss="mse", epochs=1, batch_size=8, sample_weight=np.where(one_hot[:, 1] == 1, 3.0, 1.0))
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-12)


@pytest.mark.parametrize("rows", ["multi-hot", "all zero"])
def test_class_weight_on_zero_one_rows_without_exactly_one_class_is_refused(backend, rows):
    """Found by mutation testing: rows of 0s and 1s were taken as one-hot without counting their 1s, so multi-label
    rows (weighed by their first label) or rows of no label (weighed as class 0) trained under an MSE loss on three
    outputs without a word."""
    X, _ = _data()
    pair = {"multi-hot": [[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]], "all zero": [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]}[rows]
    y = np.tile(np.array(pair), (20, 1))  # 0/1 rows, half of them without exactly one 1
    model = _model(backend, out=3)
    with pytest.raises(ValueError, match="class_weight.*not one-hot rows"):
        model.fit(X, y, loss="mse", epochs=1, batch_size=8, class_weight={0: 1.0, 1: 5.0})
    assert model.epochs_trained == 0


# -- TrainStep.check itself ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_sees_a_bad_element_of_any_gradient(be, dtype, bad):
    """Each gradient (first, middle, last; fast path: views of one flat buffer) and the loss."""
    from nnx.training import TrainStep

    X, y = _data()  # the module's 40 rows: on JAX the ops of a full batch of them are compiled already
    model = _model(be, dtype)
    loss = model.resolve_loss("mse")
    step = TrainStep(model, loss, nnx.optim.SGD(model.parameters(), lr=0.1))
    Xd, yd = model.prepare_inputs(X), model.prepare_targets(y, loss, 40)
    xp = model.xp
    for where in ["loss", *range(len(model.parameters()))]:
        value, _ = step.forward_loss(Xd, yd)
        step.backward()
        assert step.check(value) is True
        if where == "loss":
            value = value + bad
        else:
            p = model.parameters()[where]
            host = _host(be, p.grad)
            host.reshape(-1)[host.size // 2] = bad
            if isinstance(p.grad, np.ndarray) and p.grad.flags.writeable:
                p.grad[...] = host  # in place: on the fast path, into the flat buffer
            else:
                p.grad = be.asarray(host, dtype=model.dtype)
        assert step.check(value) is False, where
    # Finite gradients whose sum overflows are not refused.
    value, _ = step.forward_loss(Xd, yd)
    step.backward()
    big = 1e38 if dtype == "float32" else 1e308
    for p in model.parameters():
        p.grad = xp.full(p.grad.shape, big, dtype=p.grad.dtype, device=be.device)
    assert step.check(value) is True
    step.check_finite = False
    assert step.check(value + float("nan")) is True


def test_on_gradients_replacements_are_moved_to_the_model(be, dtype):
    """A hook may hand back NumPy float64 arrays: they are moved and cast, the weights keep their dtype."""
    X, y = _data()
    model = _model(be, dtype)
    model.fit(X, y, loss="mse", optimizer="sgd", lr=0.1, epochs=1, batch_size=8)  # the module's compiled SGD epoch
    before = _weights(model)
    spy = GradSpy(replace=lambda grads: {k: np.ones(tuple(g.shape)) for k, g in grads.items()})
    model.fit(X, y, epochs=1, batch_size=40, callbacks=[spy])
    tol = 1e-6 if dtype == "float32" else 1e-12
    _assert_weights(_weights(model), {k: v - 0.1 for k, v in before.items()}, tol)
    assert all(p.value.dtype == model.parameters()[0].value.dtype for p in model.parameters())
    assert str(_host(be, model.parameters()[0].value).dtype) == dtype


class _EveryOtherStep(nnx.Layer):
    """Scales its input by a trained factor, and gives the factor a gradient on every other backward only."""

    def build(self, input_shape):
        self.factor = self.add_parameter("factor", (1,), "ones")
        self.calls = 0

    def forward(self, X, training=False):
        if training:
            self._X = X
        return X * self.factor.value

    def backward(self, dY, need_dX=True):
        self.calls += 1
        if self.calls % 2 == 1:
            self.factor.grad = self.xp.reshape(self.xp.sum(dY * self._X), (1,))
        return dY * self.factor.value


def test_a_parameter_the_backward_leaves_alone_keeps_its_value(be, dtype):
    """Each backward starts from no gradients (as torch's zero_grad): last step's is not applied again."""
    X, y = _data()
    layer = _EveryOtherStep()
    model = nnx.Sequential(nnx.Dense(4, 1), layer, backend=be, dtype=dtype, seed=0)
    seen = []

    class Record(Callback):
        def on_batch_end(self, batch, logs=None):
            seen.append((float(be.to_host(layer.factor.value)[0]), layer.factor.grad is None))

    model.fit(X, y, loss="mse", optimizer="sgd", lr=0.01, batch_size=10, epochs=1, shuffle=False,
              callbacks=[Record()])
    assert [none for _, none in seen] == [False, True, False, True]
    values = [value for value, _ in seen]
    assert values[1] == values[0] and values[3] == values[2] and values[1] != values[2]


def test_a_layer_that_keeps_python_state_trains_alike_everywhere(backend):
    """A compiled program would run the counter's code once, when traced: such a step runs plainly instead,
    with the whole epoch or batch by batch, and gives NumPy's numbers."""
    X, y = _data()
    finals = {}
    for be, callbacks in (("numpy", []), (backend, []), (backend, [Callback()])):
        layer = _EveryOtherStep()
        model = nnx.Sequential(nnx.Dense(4, 1), layer, backend=be, dtype="float64", seed=0)
        history = model.fit(X, y, loss="mse", optimizer="sgd", lr=0.01, batch_size=10, epochs=2, shuffle=False,
                            callbacks=callbacks)
        finals[(str(be), len(callbacks))] = float(np.asarray(model.backend.to_host(layer.factor.value))[0])
        assert layer.calls == 8  # every batch's backward ran once, none in a trace
        if model.backend.can_compile:
            assert history.execution == "plain" and "'calls'" in history.execution_reason, history.execution_reason
    reference = finals.pop(("numpy", 0))
    assert all(abs(v - reference) <= 1e-12 for v in finals.values()), finals
