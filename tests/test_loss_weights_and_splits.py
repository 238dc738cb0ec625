"""The losses, regularizers and the arguments of fit that shape what is trained on.

Each test compares with what a PyTorch or Keras user expects: torch.nn.functional's losses and autograd
for the numbers, Keras's documented rules for sample_weight, class_weight, validation_split and
steps_per_epoch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nnx
from nnx.callbacks import Callback

torch = pytest.importorskip("torch")
F = torch.nn.functional


def _to_numpy(a):
    try:
        return np.asarray(a)
    except Exception:  # noqa: BLE001 - a device array: through its backend
        return np.asarray(nnx.get_backend(a).to_host(a))


def _same_weights(a, b, tol):
    wa, wb = a.state_dict(), b.state_dict()
    for k in wa:
        np.testing.assert_allclose(_to_numpy(wb[k]), _to_numpy(wa[k]), rtol=0, atol=tol, err_msg=k)


class _SeenRows(Callback):
    """Counts the batches each epoch trained on."""

    def __init__(self):
        self.per_epoch = []

    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch.append(0)

    def on_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


class _Loader:
    """A torch-DataLoader-like re-iterable with a len(): every iter() starts a new pass."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        self.passes += 1
        yield from self.batches


def _binary_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] - 0.5 * X[:, 2] > 0).astype(np.float64)
    return X, y


def _binary_model(backend, dtype):
    return nnx.Sequential(nnx.Dense(4, 6), nnx.Tanh(), nnx.Dense(6, 1), nnx.Sigmoid(),
                          backend=backend, dtype=dtype, seed=7)


@pytest.mark.parametrize("make", [list, _Loader])
def test_steps_per_epoch_over_a_re_iterable_continues_the_pass_as_keras(backend, dtype, make):
    """Keras (tf.data, a torch DataLoader): with steps_per_epoch below the batches a pass holds, the next epoch
    continues where the last one stopped, so every batch is trained on; restarting each epoch trained on the
    first steps_per_epoch batches only and never saw the rest, without a word."""
    X, y = _binary_data()
    batches = [(X[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]  # 8 batches
    whole = _binary_model(backend, dtype)
    whole.fit(X, y, loss="bce", optimizer="sgd", lr=0.1, batch_size=8, shuffle=False, epochs=2)
    parts, seen = _binary_model(backend, dtype), _SeenRows()
    source = make(batches)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a pass that holds whole epochs runs out of nothing
        history = parts.fit(source, loss="bce", optimizer="sgd", lr=0.1, epochs=8, steps_per_epoch=2,
                            callbacks=[seen])
    assert seen.per_epoch == [2] * 8 and len(history["loss"]) == 8
    if isinstance(source, _Loader):
        assert source.passes == 2
    _same_weights(whole, parts, 1e-12 if dtype == "float64" else 1e-5)


def test_steps_per_epoch_not_dividing_a_pass_ends_the_epoch_at_the_pass_end_with_a_warning():
    """A pass of 3 batches at steps_per_epoch=2: epoch 2 gets the third batch alone (and says so, as Keras
    warns), epoch 3 starts a new pass; the batches trained on are the pass's, in order."""
    X, y = _binary_data(24)
    batches = [(X[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)]
    order = []

    class Tagged(_Loader):
        def __iter__(self):
            self.passes += 1
            for i, b in enumerate(self.batches):
                order.append(i)
                yield b

    m, seen = _binary_model("numpy", "float64"), _SeenRows()
    with pytest.warns(UserWarning, match=r"ran out after 1 of the 2 batches steps_per_epoch.*continues the pass"):
        m.fit(Tagged(batches), loss="bce", epochs=3, steps_per_epoch=2, callbacks=[seen], prefetch=False)
    assert seen.per_epoch == [2, 1, 2] and order == [0, 1, 2, 0, 1]


@pytest.mark.parametrize("loss", [nnx.losses.CrossEntropy(from_logits=False), nnx.losses.BinaryCrossEntropy()])
def test_probability_losses_refuse_a_softplus_output_up_front(loss):
    """Softplus's outputs lie in (0, inf), not [0, 1]: a loss reading them as probabilities is refused before
    training, as after a Dense or a ReLU. Looking at the first batch let it through (softplus of small logits
    is about 0.7), and cross-entropy then pushed every output up without bound, its loss falling below 0."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(32, 4)) * 0.1
    outputs = 3 if isinstance(loss, nnx.losses.CrossEntropy) else 1
    y = rng.integers(0, outputs if outputs > 1 else 2, 32).astype(np.float64)
    m = nnx.Sequential(nnx.Dense(4, outputs), nnx.Softplus(), seed=0)
    with pytest.raises(ValueError, match="ends in Softplus, whose outputs are not bounded to"):
        m.fit(X, y, loss=loss, epochs=1)


# -- guards (passed as found) -------------------------------------------------------------------------------------

def _host(backend, a):
    return np.asarray(backend.to_host(a))


@pytest.mark.parametrize("reduction", nnx.losses.REDUCTIONS)
def test_weighted_losses_match_torch_value_and_autograd(backend, reduction):
    """Every built-in loss, weighted with a zero weight among the rows, against torch.nn.functional's
    per-row losses weighted as Keras documents (sum(w l) / n, or / sum(w)) and torch's autograd."""
    rng = np.random.default_rng(1)
    z, t = rng.normal(size=(7, 3)), rng.uniform(size=(7, 3))
    idx, w = rng.integers(0, 3, 7), rng.uniform(0, 4, 7)
    w[2] = 0.0
    L = nnx.losses
    cases = [
        (L.MSE(reduction=reduction), t, z, lambda p, t: F.mse_loss(p, t, reduction="none").mean(1)),
        (L.MAE(reduction=reduction), t, z, lambda p, t: F.l1_loss(p, t, reduction="none").mean(1)),
        (L.BinaryCrossEntropy(from_logits=True, reduction=reduction), t, z,
         lambda p, t: F.binary_cross_entropy_with_logits(p, t, reduction="none").mean(1)),
        (L.BinaryCrossEntropy(reduction=reduction), t, 1 / (1 + np.exp(-z)),
         lambda p, t: F.binary_cross_entropy(p, t, reduction="none").mean(1)),
        (L.CrossEntropy(reduction=reduction), idx, z, lambda p, t: F.cross_entropy(p, t, reduction="none")),
        (L.CrossEntropy(reduction=reduction), t / t.sum(1, keepdims=True), z,
         lambda p, t: F.cross_entropy(p, t, reduction="none")),
        (L.CrossEntropy(from_logits=False, reduction=reduction), idx, np.exp(z) / np.exp(z).sum(1, keepdims=True),
         lambda p, t: F.nll_loss(torch.log(p), t, reduction="none")),
    ]
    for loss, target, pred, rows in cases:
        p, tw = torch.tensor(pred, requires_grad=True), torch.tensor(w)
        expected = (rows(p, torch.tensor(target)) * tw).sum() / (7 if reduction == "sum_over_batch_size" else tw.sum())
        expected.backward()
        value, grad = loss.value_and_grad(backend.asarray(target), backend.asarray(pred), backend.asarray(w))
        assert abs(float(_host(backend, value)) - expected.item()) < 1e-12, loss
        np.testing.assert_allclose(_host(backend, grad), p.grad.numpy(), rtol=0, atol=1e-12, err_msg=repr(loss))


def test_history_and_validation_split_match_keras_rows_and_weights(backend):
    """validation_split holds out the last n - floor(n (1 - split)) rows before shuffling, scored with their
    sample weights and without class_weight; History's loss is sum(w l) / rows over batches of unequal size
    (sum(w l) / sum(w) under mean_with_sample_weight) plus the penalty, its val_ values those of the held-out
    rows. With a negligible learning rate the weights do not move, so torch scores the same model."""
    rng = np.random.default_rng(0)
    n = 23
    X, y = rng.normal(size=(n, 4)), rng.integers(0, 3, n)
    w = rng.uniform(0.1, 3, n)
    class_weight = {0: 1.0, 1: 2.5, 2: 0.5}
    n_train = int(np.floor(n * 0.75))  # 17: six rows held out, not five
    for reduction in nnx.losses.REDUCTIONS:
        m = nnx.Sequential(nnx.Dense(4, 3, regularizer=nnx.regularizers.L2(0.5)), seed=1, backend=backend,
                           dtype="float64")
        h = m.fit(X, y, loss=nnx.losses.CrossEntropy(reduction=reduction), optimizer="sgd", lr=1e-300,
                  batch_size=5, epochs=1, sample_weight=w, class_weight=class_weight, validation_split=0.25,
                  metrics=["accuracy"])
        P = torch.tensor(_host(backend, m.predict(X)))
        W = _host(backend, m.state_dict()["0.weight"])
        penalty = 0.25 * (W ** 2).sum()
        rows = F.cross_entropy(P, torch.tensor(y), reduction="none").numpy()
        wt = w[:n_train] * np.array([class_weight[int(c)] for c in y[:n_train]])
        wv = w[n_train:]
        if reduction == "sum_over_batch_size":
            loss, val = (rows[:n_train] * wt).sum() / n_train, (rows[n_train:] * wv).sum() / (n - n_train)
        else:
            loss, val = (rows[:n_train] * wt).sum() / wt.sum(), (rows[n_train:] * wv).sum() / wv.sum()
        right = P.argmax(1).numpy() == y
        np.testing.assert_allclose(h["loss"], [loss + penalty], rtol=1e-12)
        np.testing.assert_allclose(h["val_loss"], [val + penalty], rtol=1e-12)
        # counts over batches, summed on the device: equal to the rows' mean up to its last bit
        np.testing.assert_allclose(h["accuracy"], [right[:n_train].mean()], rtol=1e-12)
        np.testing.assert_allclose(h["val_accuracy"], [right[n_train:].mean()], rtol=1e-12)


def test_regularizers_and_weighted_partial_batches_follow_torch_sgd(backend):
    """Dense and model-wide penalties (L1 at weights of exactly 0, ElasticNet, L2 as l/2 sum W**2) on weights,
    never biases, with sample weights and a last partial batch: fit's SGD trajectory and History equal torch's
    autograd of the documented formulas."""
    rng = np.random.default_rng(0)
    n = 23
    X, y, w = rng.normal(size=(n, 4)), rng.normal(size=(n, 2)), rng.uniform(0.1, 3, n)
    R = nnx.regularizers
    for reg, model_reg, reduction in [(R.ElasticNet(0.05, 0.3), None, "sum_over_batch_size"),
                                      (R.L1(0.1), R.L2(0.2), "mean_with_sample_weight")]:
        m = nnx.Sequential(nnx.Dense(4, 2, regularizer=reg), seed=1, backend=backend, dtype="float64",
                           regularizer=model_reg)
        if isinstance(reg, R.L1):  # L1's gradient at W = 0 is 0, as torch's abs
            m.load_state_dict({k: np.zeros(_host(backend, v).shape) for k, v in m.state_dict().items()})
        Wt, bt = (torch.tensor(_host(backend, m.state_dict()[k]), requires_grad=True) for k in ("0.weight", "0.bias"))
        h = m.fit(X, y, loss=nnx.losses.MSE(reduction=reduction), optimizer="sgd", lr=0.1, batch_size=5,
                  epochs=2, shuffle=False, sample_weight=w)
        opt, history = torch.optim.SGD([Wt, bt], lr=0.1), []
        for _ in range(2):
            total = 0.0
            for s in range(0, n, 5):
                xb, yb, wb = (torch.tensor(a[s:s + 5]) for a in (X, y, w))
                count = len(xb) if reduction == "sum_over_batch_size" else wb.sum()
                value = (((xb @ Wt + bt - yb) ** 2).mean(1) * wb).sum() / count
                if isinstance(reg, R.L1):
                    value = value + 0.1 * Wt.abs().sum() + 0.1 * (Wt ** 2).sum()
                else:
                    value = value + 0.05 * Wt.abs().sum() + 0.15 * (Wt ** 2).sum()
                opt.zero_grad()
                value.backward()
                opt.step()
                total += value.item() * float(count)
            history.append(total / (n if reduction == "sum_over_batch_size" else w.sum()))
        np.testing.assert_allclose(h["loss"], history, rtol=1e-12)
        np.testing.assert_allclose(_host(backend, m.state_dict()["0.weight"]), Wt.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(_host(backend, m.state_dict()["0.bias"]), bt.detach().numpy(), atol=1e-12)


def test_a_float32_validation_split_holds_out_the_rows_of_the_fraction_it_prints_as():
    """np.float32(0.2) (a split read from a float32 config or array) held out 5 of 20 rows: widened to float64 it
    is 0.20000000298, and floor(20 * 0.79999999702) is 15. It is the fraction 0.2 that it prints as, and Keras,
    computing in float32, holds out 4."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), rng.normal(size=20)
    for split in (0.2, np.float32(0.2), np.float64(0.2)):
        m = nnx.Sequential(nnx.Dense(3, 1), seed=0)
        m.fit(X, y, loss="mse", optimizer="sgd", lr=1e-30, batch_size=None, validation_split=split, epochs=1)
        assert m.history["val_loss"][0] == pytest.approx(m.evaluate(X[16:], y[16:])["loss"], rel=1e-6), split
