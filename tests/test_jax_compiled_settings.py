"""JAX's compiled training (whole epochs or steps as programs) against the plain loop.

The same seed gives the same batches on every backend, so a fit on JAX (each epoch one compiled
program where no callback needs the host between batches) must leave the weights, buffers and
History that NumPy's plain loop leaves, to float rounding: with callbacks that change settings
between epochs or batches, weights, accumulation, clipping, a partial last batch, two fits in a
row with a setting changed between them, and predict after fit. Dropout draws from each backend's
own generator, so a model with Dropout is compared with JAX's own plain loop
(``with_fastpath(False)``).
"""

from __future__ import annotations

import collections
import io
import threading

import numpy as np
import pytest
from user_code import CallCounting

import nnx
from nnx.backends import backend_status
from nnx.callbacks import Callback, EarlyStopping, LearningRateScheduler, ProgressBar

ok, why = backend_status("jax")


pytestmark = pytest.mark.skipif(not ok, reason=f"jax not available: {why}")


N = 48  # three batches of 16: one batch shape to compile, where the partial batch is not what a test is about
PARTIAL = 45  # batches of 16: two full ones and a partial one of 13


def _data(seed: int = 0, n: int = N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.float64)


def _mlp() -> list:
    return [nnx.Dense(5, 8), nnx.ReLU(), nnx.Dense(8, 1), nnx.Sigmoid()]


def _bn() -> list:
    return [nnx.Dense(5, 8), nnx.BatchNorm(), nnx.ReLU(), nnx.Dense(8, 1), nnx.Sigmoid()]


def _dropout() -> list:
    return [nnx.Dense(5, 8), nnx.ReLU(), nnx.Dropout(0.3), nnx.Dense(8, 1), nnx.Sigmoid()]


def _backend(name: str):
    if name == "jax-plain":
        return nnx.get_backend("jax").with_fastpath(False)
    return nnx.get_backend(name)


def _fit_both(layers, fit, base: str = "numpy", dtype: str = "float64", between=None, second=None, n: int = N):
    """Fit a model of `layers` on `base` and on JAX with ``fit(model)``'s arguments (then, with `second`,
    `between(model)` and a second fit) on `n` rows; returns ((model, history) on base, (model, history) on JAX)."""
    X, y = _data(n=n)
    out = []
    for name in (base, "jax"):
        model = nnx.Sequential(*layers(), backend=_backend(name), dtype=dtype, seed=7)
        history = model.fit(X, y, verbose=0, **fit(model))
        if second is not None:
            if between is not None:
                between(model)
            history = model.fit(X, y, verbose=0, **second(model))
        out.append((model, history))
    return out[0], out[1]


def _assert_same(a, b, dtype: str = "float64") -> None:
    (m0, h0), (m1, h1) = a, b
    tol = 1e-10 if dtype == "float64" else 1e-5
    for p, q in zip(m0.parameters() + m0.buffers(), m1.parameters() + m1.buffers(), strict=True):
        np.testing.assert_allclose(np.asarray(q.value), np.asarray(p.value), rtol=tol, atol=tol, err_msg=p.name)
    assert h0.history.keys() == h1.history.keys()
    for key, values in h0.history.items():
        np.testing.assert_allclose(h1.history[key], values, rtol=10 * tol, atol=10 * tol, err_msg=key)
    X, _ = _data()
    np.testing.assert_allclose(np.asarray(m1.predict(X)), np.asarray(m0.predict(X)), rtol=10 * tol, atol=10 * tol)


BASE = {"loss": "bce", "optimizer": "adam", "lr": 0.01, "epochs": 3, "batch_size": 16, "metrics": ["accuracy"]}


class JaxFitWarmupBar(ProgressBar):
    """A progress bar that also warms the rate up batch by batch (on_batch_begin)."""

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        self.model.optimizer.lr = 0.05 * (batch + 1)


class JaxFitDecayBar(ProgressBar):
    """A progress bar that also decays the rate after each batch (on_batch_end, after drawing)."""

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        super().on_batch_end(batch, logs)
        self.model.optimizer.lr = 0.1 / (batch + 2)


@pytest.mark.parametrize("bar", [JaxFitWarmupBar, JaxFitDecayBar])
def test_progress_bar_subclass_with_its_own_batch_hook_runs_between_batches(bar):
    # ProgressBar declares that its per-batch hook only draws, so an epoch program hands it the batches
    # afterwards. A subclass inherited the flag, and its own hook (setting the rate) ran after the epoch (or,
    # for on_batch_begin, never): JAX trained every batch of the epoch at the epoch's first rate.
    def fit(model):
        return {**BASE, "optimizer": "sgd", "lr": 0.1, "callbacks": [bar(use_tqdm=False, file=io.StringIO())]}

    a, b = _fit_both(_mlp, fit)
    _assert_same(a, b)
    assert b[1].execution_mode == "step"


def test_progress_bar_itself_still_runs_whole_epochs():
    def fit(model):
        return {**BASE, "callbacks": [ProgressBar(use_tqdm=False, file=io.StringIO())]}

    a, b = _fit_both(_mlp, fit)
    _assert_same(a, b)
    assert b[1].execution_mode == "epoch"


class JaxFitMomentum(Callback):
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.layers[1].momentum = 0.1 + 0.3 * epoch
        self.model.optimizer.betas = (0.5 + 0.2 * epoch, 0.99)


class JaxFitRate(Callback):
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.layers[2].rate = (0.3, 0.0, 0.6)[epoch]


class JaxFitScaledSGD(nnx.optim.Optimizer):
    """A user's pure rule with a plain attribute a callback anneals."""

    elementwise = True

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, lr)
        self.scale = 1.0

    def init_state(self, xp, value):
        return {}

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * self.scale * grad, state


class JaxFitScale(Callback):
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.optimizer.scale = (1.0, 0.1, 3.0, 0.5)[epoch]


def test_batchnorm_momentum_and_betas_set_each_epoch():
    a, b = _fit_both(_bn, lambda m: {**BASE, "optimizer": "sgd", "lr": 0.1, "callbacks": [JaxFitMomentum()]})
    _assert_same(a, b)
    assert b[1].execution_mode == "epoch"


def test_dropout_rate_set_each_epoch_matches_jax_plain_loop():
    a, b = _fit_both(_dropout, lambda m: {**BASE, "callbacks": [JaxFitRate()], "accumulate": 2}, base="jax-plain")
    _assert_same(a, b)
    assert a[0].dropout_rng.counter == b[0].dropout_rng.counter


def test_user_rule_attribute_annealed_weights_schedule_and_early_stopping():
    def fit(model):
        return {**BASE, "epochs": 4, "optimizer": JaxFitScaledSGD(model.parameters()), "shuffle": False,
                "sample_weight": np.linspace(0.1, 2.0, N), "class_weight": {0: 0.3, 1: 2.0}, "clip_norm": 0.2,
                "validation_data": _data(1),
                "callbacks": [JaxFitScale(), LearningRateScheduler(lambda e: 0.3 * 0.5 ** e),
                              EarlyStopping(patience=1, restore_best_weights=True)]}

    a, b = _fit_both(_mlp, fit)
    _assert_same(a, b)
    assert b[1].execution_mode == "epoch"


def test_second_fit_with_changed_settings_traces_again():
    def reg():
        return [nnx.Dense(5, 8, regularizer=nnx.regularizers.L2(0.1)), nnx.LeakyReLU(0.1), nnx.Dense(8, 1),
                nnx.Sigmoid()]

    def between(model):
        model.layers[0].regularizer.l = 1.0
        model.layers[1].alpha = 0.9

    a, b = _fit_both(reg, lambda m: {**BASE, "clip_value": 1.0}, between=between,
                     second=lambda m: {**BASE, "clip_value": 0.01, "accumulate": 3, "batch_size": 10})
    _assert_same(a, b)


def test_float32_accumulate_partial_batch_and_class_weight():
    a, b = _fit_both(_bn, lambda m: {**BASE, "optimizer": "sgd", "lr": 0.1, "accumulate": 2,
                                     "class_weight": {0: 0.5, 1: 2.0}}, dtype="float32", n=PARTIAL)
    _assert_same(a, b, dtype="float32")


class JaxFitModelPenalty(Callback):
    """Turns the model-wide penalty on after a first epoch without it, then changes it."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.regularizer = (None, nnx.regularizers.L1(0.1), nnx.regularizers.L2(0.3))[epoch]


class JaxFitLayerPenalty(Callback):
    """The same through the first layer's own regularizer."""

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.layers[0].regularizer = (None, nnx.regularizers.L1(0.1), nnx.regularizers.L2(0.3))[epoch]


@pytest.mark.parametrize("callback", [JaxFitModelPenalty, JaxFitLayerPenalty])
def test_regularizer_added_by_a_callback_is_in_the_reported_loss(callback):
    # The plain loop decided once per fit whether any penalty applies: one added by a callback after the first
    # epoch trained the weights (its gradient is in the backward) but was left out of History's loss, which
    # JAX's epoch program reported with it (0.69 where it was 2.64)
    a, b = _fit_both(_mlp, lambda m: {**BASE, "optimizer": "sgd", "lr": 0.1, "callbacks": [callback()],
                                      "validation_data": _data(2)})
    _assert_same(a, b)


class JaxFitBatchSizes(nnx.Layer):
    """Logs the size of every training batch it sees in a list."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def forward(self, X, training: bool = False):
        if training:
            self.sizes.append(int(X.shape[0]))
        return X

    def backward(self, dY, need_dX: bool = True):
        return dY


def test_layer_state_kept_in_a_dict_or_list_changes_every_step():
    # Only plain attributes (numbers, flags) were looked at around a trace: a dict or list changed in place
    # changed once per trace inside the program (on 45 rows: {"calls": 2} after 9 steps, sizes [16, 13, 16, 13, ...])
    # and the weights of the counting layer went their own way. Such a layer now runs the plain stages.
    def layers():
        return [nnx.Dense(5, 8), CallCounting(), JaxFitBatchSizes(), nnx.ReLU(), nnx.Dense(8, 1), nnx.Sigmoid()]

    a, b = _fit_both(layers, lambda m: {**BASE, "optimizer": "sgd", "lr": 0.1})
    _assert_same(a, b)
    for model, _ in (a, b):
        assert model.layers[1].stats == {"calls": 9}
        assert model.layers[2].sizes == [16, 16, 16] * 3
    assert "stats" in b[1].execution_reason


class JaxFitCurriculumLoss(nnx.losses.Loss):
    """A squared error whose weight falls with the number of batches it has scored (Python state of a loss)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def rows(self, xp, y_true, y_pred):
        self.calls += 1
        scale = 1.0 / self.calls
        d = y_pred - y_true
        return scale * xp.sum(d * d, axis=1), 2.0 * scale * d


def test_loss_that_keeps_python_state_runs_every_step():
    # A loss's code ran only when the program was traced: its count read 6 after 9 batches where NumPy's read 9,
    # and the steps it scales went their own way
    X, _ = _data()
    y = X[:, :2] @ np.array([[1.0, -0.5], [0.3, 2.0]])
    out = []
    for name in ("numpy", "jax"):
        model = nnx.Sequential(nnx.Dense(5, 8), nnx.ReLU(), nnx.Dense(8, 2), backend=name, dtype="float64", seed=7)
        loss = JaxFitCurriculumLoss()
        history = model.fit(X, y, loss=loss, optimizer="sgd", lr=0.01, epochs=3, batch_size=16, verbose=0)
        assert loss.calls == 9
        out.append((model, history))
    _assert_same(*out)
    assert "the loss changed its attribute 'calls'" in out[1][1].execution_reason


class JaxFitSlotsSGD(JaxFitScaledSGD):
    """The same rule with its setting in a slot, where `vars` does not show it."""

    __slots__ = ("scale",)


class JaxFitListSGD(JaxFitScaledSGD):
    """A user's pure rule whose setting is an array held in a list, replaced or written in place between epochs."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, lr)
        self.scales = [np.array(1.0)]

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * float(self.scales[0]) * grad, state


class JaxFitListScale(Callback):
    def __init__(self, in_place: bool) -> None:
        super().__init__()
        self.in_place = in_place

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        scale = (1.0, 0.1, 3.0)[epoch]
        if self.in_place:
            self.model.optimizer.scales[0][...] = scale
        else:
            self.model.optimizer.scales[0] = np.array(scale)


@pytest.mark.parametrize("setting", ["slot", "list item replaced", "list item written in place"])
def test_a_rule_setting_out_of_vars_plain_sight_changed_between_epochs_traces_again(setting):
    # Both were constants of the program that no change was seen in: the first epoch's scale trained all three
    def fit(model):
        if setting == "slot":
            return {**BASE, "optimizer": JaxFitSlotsSGD(model.parameters()), "callbacks": [JaxFitScale()]}
        return {**BASE, "optimizer": JaxFitListSGD(model.parameters()),
                "callbacks": [JaxFitListScale(in_place=setting.endswith("in place"))]}

    a, b = _fit_both(_mlp, fit)
    _assert_same(a, b)
    assert b[1].execution_mode == "epoch"


class JaxFitCountingSGD(JaxFitScaledSGD):
    """A user's rule that keeps the last update count and a count of its calls on the optimizer."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, lr)
        self.calls, self.last = 0, None

    def update(self, xp, value, grad, state, step, lr):
        self.calls += 1
        self.last = step
        return super().update(xp, value, grad, state, step, lr)


def test_a_rule_that_changes_its_optimizer_runs_every_step_and_leaves_no_traced_value():
    # Traced once, it counted one call and left a tracer in `last`, where the plain loop counts one per parameter
    # and step (9 steps, 4 parameters)
    a, b = _fit_both(_mlp, lambda m: {**BASE, "optimizer": JaxFitCountingSGD(m.parameters())}, base="jax-plain")
    _assert_same(a, b)
    (m0, _), (m1, h1) = a, b
    assert m1.optimizer.calls == m0.optimizer.calls == 36 and m1.optimizer.last == m0.optimizer.last == 9
    assert "changes what the optimizer holds" in h1.execution_reason


class JaxFitLockedSGD(JaxFitScaledSGD):
    """A user's pure rule whose optimizer holds what cannot be deep-copied (a lock) and a table it reads, and whose
    ``__copy__`` gives the object itself."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, lr)
        self.lock = threading.Lock()
        self.table = np.array([1.0])

    def __copy__(self):
        return self

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * float(self.table[0]) * grad, state


def test_a_rule_traced_on_a_copy_keeps_the_optimizers_own_objects_and_compiles_with_a_lock_among_them():
    # the lock's deep copy raised, and the whole fit ran step by step; a __copy__ returning the object itself had the
    # trace's copies written into it, so the user's table was no longer the optimizer's
    made, tables = [], []

    def fit(model):
        made.append(JaxFitLockedSGD(model.parameters()))
        tables.append(made[-1].table)  # as the optimizer is made, before its fit
        return {**BASE, "optimizer": made[-1]}

    a, b = _fit_both(_mlp, fit)
    _assert_same(a, b)
    model, history = b
    assert history.execution_mode == "epoch", history.execution_reason
    assert model.optimizer is made[-1] and model.optimizer.table is tables[-1]


class JaxFitHeldSGD(JaxFitScaledSGD):
    """A user's pure rule scaled by the first item of a container it keeps (`held`)."""

    def __init__(self, params, held, lr: float = 0.1) -> None:
        super().__init__(params, lr)
        self.held = held

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * self.held[0] * grad, state


class JaxFitSetHeld(Callback):
    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.model.optimizer.held[0] = (1.0, 0.1, 3.0)[epoch]


@pytest.mark.parametrize("held", [lambda: [1.0, np.ones(1)], lambda: collections.deque([1.0])],
                         ids=["beside an array", "deque"])
def test_an_optimizer_setting_in_a_container_changed_in_place_traces_again(held):
    # told by the container's identity (and the array in it), or not at all (a deque): the first value trained on
    a, b = _fit_both(_mlp, lambda m: {**BASE, "optimizer": JaxFitHeldSGD(m.parameters(), held()),
                                      "callbacks": [JaxFitSetHeld()]})
    _assert_same(a, b)


class JaxFitLockedCount:
    """What cannot be deep-copied (a lock), with a count the rule keeps in it."""

    def __init__(self) -> None:
        self.lock, self.n = threading.Lock(), 0


class JaxFitLockCountingSGD(JaxFitScaledSGD):
    """A user's rule that counts its calls in a setting that cannot be deep-copied."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, lr)
        self.stats = JaxFitLockedCount()

    def update(self, xp, value, grad, state, step, lr):
        self.stats.n += 1
        return super().update(xp, value, grad, state, step, lr)


def test_a_rule_counting_in_a_setting_it_shares_with_the_trace_counts_as_the_plain_loop_does():
    # the setting cannot be copied, so the trace runs on it: its count went up by the traces too
    a, b = _fit_both(_mlp, lambda m: {**BASE, "optimizer": JaxFitLockCountingSGD(m.parameters())}, base="jax-plain")
    _assert_same(a, b)
    assert b[0].optimizer.stats.n == a[0].optimizer.stats.n == 36


def test_adam_steps_per_parameter_loaded_between_fits_are_used():
    """Found by mutation testing: after ``load_state_dict`` gave one parameter more updates than the others (a resumed
    optimizer), the compiled step dropped the parameters' step offsets from the first one's, so Adam's bias correction
    differed from the plain loop's."""
    def fit(model):
        return {**BASE, "epochs": 1, "optimizer": nnx.optim.Adam(model.parameters(), lr=0.01)}

    def between(model):
        state = model.optimizer.state_dict()
        state["param_steps"] = [s + (6 if i == 0 else 0) for i, s in enumerate(state["param_steps"])]
        model.optimizer.load_state_dict(state)

    a, b = _fit_both(_mlp, fit, between=between, second=lambda m: {**BASE, "epochs": 1, "optimizer": m.optimizer})
    _assert_same(a, b)
    assert a[0].optimizer.state_dict()["param_steps"] == b[0].optimizer.state_dict()["param_steps"]


class Mut4LoggingSGD(JaxFitScaledSGD):
    """A user's rule that notes each call in a list in a dict it keeps, and divides its step by how many it noted."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, lr)
        self.log = {"steps": []}

    def update(self, xp, value, grad, state, step, lr):
        self.log["steps"].append(1)
        return super().update(xp, value, grad, state, step, lr / len(self.log["steps"]))


class Mut4ListCount:
    """What cannot be deep-copied (a lock), with a count the rule keeps in a list in it (same length, item replaced)."""

    def __init__(self) -> None:
        self.lock, self.n = threading.Lock(), [0]


class Mut4ListCountingSGD(JaxFitScaledSGD):
    """A user's rule that counts its calls in a list of a setting that cannot be deep-copied, and divides by it."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, lr)
        self.box = Mut4ListCount()

    def update(self, xp, value, grad, state, step, lr):
        self.box.n[0] += 1
        return super().update(xp, value, grad, state, step, lr / self.box.n[0])


@pytest.mark.parametrize("rule", [Mut4LoggingSGD, Mut4ListCountingSGD], ids=["log in a dict", "count in a held list"])
def test_a_rule_counting_in_a_list_it_holds_counts_as_the_plain_loop_does(rule):
    """Found by mutation testing: a rule appending to a list in a dict its optimizer keeps, or replacing the item of a
    list in an object shared with the trace (it cannot be copied), was not seen to change what the optimizer holds:
    the compiled step ran the rule's Python once per trace, and its count and its steps left the plain loop's."""
    a, b = _fit_both(_mlp, lambda m: {**BASE, "optimizer": rule(m.parameters())}, base="jax-plain")
    _assert_same(a, b)
    counts = [len(m.optimizer.log["steps"]) if rule is Mut4LoggingSGD else m.optimizer.box.n[0] for m, _ in (a, b)]
    assert counts == [36, 36]
