"""Every built-in loss against torch.nn.functional and torch's autograd in float64, value and gradient to 1e-12:
a seeded fuzz over shapes (one row, one output, many outputs), logit scales up to 1e3, soft and hard labels,
sample weights (integer, zero, all zero, far from 1) under both reductions, probabilities of exactly 0 and 1,
class_weight through fit, and a user loss written through the public `rows` / `prepare` API.

NumPy backend only: the arithmetic is the same array-API code on every backend (tests/test_losses.py runs
the backend matrix); these tests are about the numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import losses as L

torch = pytest.importorskip("torch")
F = torch.nn.functional

TOL = 1e-12


def _row_mean(x):
    return x.reshape(x.shape[0], -1).mean(dim=1)


# (name, nnx loss factory, torch per-row loss of (target tensor, prediction tensor), kind of data)
_ELEMENTWISE = [
    ("mse", lambda r: L.MSE(reduction=r), lambda t, p: _row_mean(F.mse_loss(p, t, reduction="none")), "real"),
    ("mae", lambda r: L.MAE(reduction=r), lambda t, p: _row_mean(F.l1_loss(p, t, reduction="none")), "real"),
    ("bce_logits", lambda r: L.BinaryCrossEntropy(from_logits=True, reduction=r),
     lambda t, p: _row_mean(F.binary_cross_entropy_with_logits(p, t, reduction="none")), "logits"),
    ("bce_probs", lambda r: L.BinaryCrossEntropy(reduction=r),
     lambda t, p: _row_mean(F.binary_cross_entropy(p, t, reduction="none")), "probs"),
]


def _reference(rows_fn, y_true, y_pred, w, reduction):
    """(value, gradient) of torch's row losses reduced as Keras documents: sum(w l) / n, or / sum(w) (0 when
    every weight is 0, Keras's divide_no_nan)."""
    p = torch.tensor(y_pred, requires_grad=True)
    rows = rows_fn(torch.as_tensor(y_true), p)
    n = y_pred.shape[0]
    if w is None:
        value = rows.sum() / n
    else:
        tw = torch.tensor(np.asarray(w, dtype=np.float64))
        total = tw.sum() if reduction == "mean_with_sample_weight" else torch.tensor(float(n), dtype=torch.float64)
        value = (rows * tw).sum() / (total if total > 0 else 1.0)
    value.backward()
    return value.item(), p.grad.numpy()


def _assert_matches(loss, y_true, y_pred, rows_fn, w=None, reduction="sum_over_batch_size", what="", same=()):
    """nnx's value and gradient for y_true, and for each of `same` (other forms of the same targets), equal
    torch's to TOL, relative to the largest of each."""
    want_value, want_grad = _reference(rows_fn, y_true, y_pred, w, reduction)
    scale = max(1.0, float(np.abs(want_grad).max()))
    for target in (y_true, *same):
        value, grad = loss.value_and_grad(target, y_pred, w)
        assert abs(float(value) - want_value) <= TOL * max(1.0, abs(want_value)), (what, float(value), want_value)
        np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=0, atol=TOL * scale, err_msg=what)
        # the value alone and the gradient alone are the same numbers
        assert float(loss(target, y_pred, w)) == float(value)
        np.testing.assert_array_equal(np.asarray(loss.gradient(target, y_pred, w)), np.asarray(grad))


def _weights(rng, n):
    return [None, rng.integers(0, 4, size=n), np.zeros(n), rng.uniform(0, 1e3, size=n),
            (rng.uniform(size=n) > 0.5)]


def test_elementwise_losses_fuzz_against_torch():
    """MSE, MAE and BCE (logits and probabilities, soft and hard labels) average over every element, weights
    scale whole rows: one row, one output, many outputs, and exact ties for MAE (torch's subgradient 0)."""
    rng = np.random.default_rng(20240601)
    for trial in range(10):
        shape = [(1, 1), (1, 6), (5, 1), (4, 3), (3, 2, 2)][trial % 5]
        n = shape[0]
        for name, make, rows_fn, kind in _ELEMENTWISE:
            for reduction in L.REDUCTIONS:
                w = _weights(rng, n)[(trial + trial // 5) % 5]  # every shape meets two weight forms
                if kind == "real":
                    y_true = rng.normal(size=shape)
                    y_pred = rng.normal(size=shape)
                    ties = rng.uniform(size=shape) < 0.3
                    y_pred[ties] = y_true[ties]  # the difference is exactly 0 there
                elif kind == "logits":
                    y_true = rng.uniform(size=shape) if trial % 2 else (rng.uniform(size=shape) > 0.5) * 1.0
                    y_pred = rng.normal(size=shape) * [1.0, 30.0, 1e3][trial % 3]
                else:
                    y_true = rng.uniform(size=shape) if trial % 2 else (rng.uniform(size=shape) > 0.5) * 1.0
                    y_pred = rng.uniform(1e-3, 1 - 1e-3, size=shape)
                _assert_matches(make(reduction), y_true, y_pred, rows_fn, w, reduction,
                                f"{name} {shape} w={w} {reduction}")


def test_cross_entropy_fuzz_against_torch():
    """CrossEntropy averages over rows: class indices (n,) and (n, 1), integer or whole floats, one-hot rows,
    soft probability rows (torch accepts those as targets), from logits up to +-1e3 and from probabilities."""
    by_index = lambda t, p: F.cross_entropy(p, t.reshape(-1).long(), reduction="none")  # noqa: E731
    by_rows = lambda t, p: F.cross_entropy(p, t.double(), reduction="none")  # noqa: E731
    nll = lambda t, p: F.nll_loss(p.log(), t.reshape(-1).long(), reduction="none")  # noqa: E731
    rows_of_probs = lambda t, p: -(t.double() * p.log()).sum(dim=1)  # noqa: E731
    rng = np.random.default_rng(7)
    for trial in range(6):
        n, c = [(1, 2), (1, 7), (6, 2), (5, 4), (3, 10), (8, 3)][trial]
        labels = rng.integers(0, c, size=n)
        logits = rng.normal(size=(n, c)) * [1.0, 30.0, 1e3][trial % 3]
        probs = rng.dirichlet(np.ones(c) * 2, size=n)
        soft = rng.dirichlet(np.ones(c), size=n)
        w = _weights(rng, n)[trial % 5]
        reduction = L.REDUCTIONS[trial % 2]
        logit_loss = L.CrossEntropy(reduction=reduction)
        prob_loss = L.CrossEntropy(from_logits=False, reduction=reduction)
        # class indices as (n,), a column (n, 1), whole floats, a narrow integer column, and one-hot rows
        one_hot = np.eye(c)[labels]
        forms = (labels[:, None], labels.astype(np.float64), labels.astype(np.int32)[:, None], one_hot,
                 one_hot.astype(np.int64))
        _assert_matches(logit_loss, labels, logits, by_index, w, reduction, f"ce {trial}", forms)
        _assert_matches(prob_loss, labels, probs, nll, w, reduction, f"ce probs {trial}", forms)
        _assert_matches(logit_loss, soft, logits, by_rows, w, reduction, f"ce soft {trial}")
        _assert_matches(prob_loss, soft, probs, rows_of_probs, w, reduction, f"ce soft probs {trial}")


def test_probabilities_of_exactly_0_and_1_are_clipped_as_documented():
    """from_logits=False: p is clipped to [eps, 1 - eps] (eps 1e-15 in float64, as the docstring says); the
    value is the formula at the clipped p and the gradient that formula's derivative there (torch's autograd
    of the formula on the clipped p), so a saturated wrong prediction is still pushed back."""
    eps = 1e-15
    p = np.array([[0.0, 1.0, 0.0, 1.0, 0.3], [1e-300, 1 - 1e-17, 0.5, 0.0, 1.0]])
    t = np.array([[0.0, 1.0, 1.0, 0.0, 0.5], [1.0, 0.0, 0.25, 0.5, 0.75]])

    def clipped_formula(t, q):
        return _row_mean(-(t * q.log() + (1 - t) * torch.log(1 - q)))

    for reduction in L.REDUCTIONS:
        loss = L.BinaryCrossEntropy(reduction=reduction)
        value, grad = loss.value_and_grad(t, p, np.array([2.0, 0.5]))
        want_value, want_grad = _reference(clipped_formula, t, np.clip(p, eps, 1 - eps), np.array([2.0, 0.5]),
                                           reduction)
        assert abs(float(value) - want_value) <= TOL * want_value
        np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-12)
        assert np.all(np.isfinite(np.asarray(grad)))
    # a wrong certain prediction costs -log(eps), about 34.5 (torch's clamped log: 100)
    assert float(L.BinaryCrossEntropy()(np.array([[1.0]]), np.array([[0.0]]))) == pytest.approx(-np.log(eps),
                                                                                                    rel=1e-12)
    # cross-entropy on probabilities clips below only, with the formula's gradient at eps
    ce = L.CrossEntropy(from_logits=False)
    value, grad = ce.value_and_grad(np.array([0, 1]), np.array([[0.0, 1.0], [0.5, 0.5]]))
    assert float(value) == pytest.approx((-np.log(eps) - np.log(0.5)) / 2, rel=1e-12)
    np.testing.assert_allclose(np.asarray(grad), [[-1 / (2 * eps), 0.0], [0.0, -1.0]], rtol=1e-12)


def test_soft_bce_labels_match_torch_and_labels_outside_the_unit_interval_are_refused():
    """Soft labels are valid BCE targets (torch's formula holds for any t in [0, 1]); 1.5 or -0.1 are not."""
    rng = np.random.default_rng(3)
    t = np.array([[0.0, 0.25, 0.5, 0.75, 1.0]])
    z = rng.normal(size=t.shape) * 4
    _assert_matches(L.BinaryCrossEntropy(from_logits=True), t, z,
                    lambda t, p: _row_mean(F.binary_cross_entropy_with_logits(p, t, reduction="none")))
    _assert_matches(L.BinaryCrossEntropy(), t, 1 / (1 + np.exp(-z)),
                    lambda t, p: _row_mean(F.binary_cross_entropy(p, t, reduction="none")))
    for bad in (1.5, -0.1, np.nan):
        for from_logits in (True, False):
            with pytest.raises(ValueError, match=r"\[0, 1\]"):
                L.BinaryCrossEntropy(from_logits=from_logits)(np.array([[bad]]), np.array([[0.5]]))


@pytest.mark.parametrize("labels", [[0, -1], [0, 3], [[2], [-3]], [0.0, 3.0], [0.0, -1.0]])
def test_cross_entropy_indices_out_of_range_are_refused_by_name(labels):
    for from_logits in (True, False):
        with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
            L.CrossEntropy(from_logits=from_logits)(np.array(labels), np.full((2, 3), 1 / 3))


def test_sample_weight_shapes_and_dtypes():
    """Integer, bool and float weights are the same weights; all-zero weights give 0 under both reductions
    (Keras's divide_no_nan); a column of weights (n, 1) is refused by name, not broadcast into (n, n)."""
    rng = np.random.default_rng(5)
    y, p = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    for reduction in L.REDUCTIONS:
        loss = L.MSE(reduction=reduction)
        as_float = loss.value_and_grad(y, p, np.array([1.0, 0.0, 3.0, 2.0]))
        as_int = loss.value_and_grad(y, p, np.array([1, 0, 3, 2], dtype=np.int8))
        assert float(as_int[0]) == float(as_float[0])
        np.testing.assert_array_equal(np.asarray(as_int[1]), np.asarray(as_float[1]))
        zero_value, zero_grad = loss.value_and_grad(y, p, np.zeros(4, dtype=np.int64))
        assert float(zero_value) == 0.0
        assert not np.any(np.asarray(zero_grad))
        with pytest.raises(ValueError, match=r"sample_weight must have shape \(4,\)"):
            loss(y, p, np.ones((4, 1)))
    # mean_with_sample_weight reads only the ratios: any common scale gives the same number
    loss = L.MSE(reduction="mean_with_sample_weight")
    base = float(loss(y, p, np.array([1.0, 2.0, 3.0, 4.0])))
    for scale in (1e-200, 1e-3, 7.0, 1e200):
        assert float(loss(y, p, scale * np.array([1.0, 2.0, 3.0, 4.0]))) == pytest.approx(base, rel=1e-14)


# -- class_weight through fit ------------------------------------------------------

def _torch_sgd_epochs(model, X, y_index, w, row_loss, lr, batch_size, epochs, reduction="sum_over_batch_size"):
    """Plain SGD with torch's autograd on a copy of the model's single Dense layer: per batch sum(w l) / n_batch,
    or / sum(w) (0 where that is 0); History's loss is the batches' mean weighted by what each divided by."""
    state = model.state_dict()
    W = torch.tensor(np.asarray(state["0.weight"]), requires_grad=True)
    b = torch.tensor(np.asarray(state["0.bias"]), requires_grad=True)
    history = []
    for _ in range(epochs):
        total = 0.0
        for s in range(0, len(X), batch_size):
            xb, yb, wb = (torch.tensor(a[s:s + batch_size]) for a in (X, y_index, w))
            count = float(len(xb)) if reduction == "sum_over_batch_size" else wb.sum().item()
            value = (row_loss(xb @ W + b, yb) * wb).sum() / (count or 1.0)
            gW, gb = torch.autograd.grad(value, (W, b))
            with torch.no_grad():  # torch.optim.SGD's plain step (its first construction costs seconds)
                W -= lr * gW
                b -= lr * gb
            total += value.item() * count
        history.append(total / (len(X) if reduction == "sum_over_batch_size" else float(w.sum())))
    return W.detach().numpy(), b.detach().numpy(), history


def test_class_weight_through_fit_matches_torch_for_every_target_form():
    """class_weight times sample_weight weighs each row by its class, whether the classes come as indices (n,),
    a column (n, 1), whole floats, one-hot rows, or 0/1 labels of a one-output BCE model; the trajectory is
    torch's SGD on the same weighted rows (a last partial batch included)."""
    rng = np.random.default_rng(11)
    n = 11
    X = rng.normal(size=(n, 3))
    labels = rng.integers(0, 3, size=n)
    labels[:3] = [0, 1, 2]
    labels[4:8] = 2  # a batch whose rows all weigh 0: under mean_with_sample_weight it adds nothing
    sw = rng.uniform(0.2, 3.0, size=n)
    cw = {0: 0.5, 1: 4.0, 2: 0.0}
    row_w = sw * np.array([cw[k] for k in labels])
    ce_rows = lambda z, t: F.cross_entropy(z, t.long(), reduction="none")  # noqa: E731
    forms = [(labels, "sum_over_batch_size"), (labels[:, None], "mean_with_sample_weight"),
             (labels.astype(np.float64), "sum_over_batch_size"), (np.eye(3)[labels], "mean_with_sample_weight")]
    for target, reduction in forms:
        m = nnx.Sequential(nnx.Dense(3, 3), seed=2, dtype="float64")
        want_W, want_b, want_h = _torch_sgd_epochs(m, X, labels, row_w, ce_rows, 0.3, 4, 2, reduction)
        h = m.fit(X, target, loss=L.CrossEntropy(reduction=reduction), optimizer="sgd", lr=0.3, batch_size=4,
                  epochs=2, shuffle=False, sample_weight=sw, class_weight=cw, verbose=0)
        np.testing.assert_allclose(h["loss"], want_h, rtol=1e-12, err_msg=f"{target.shape} {reduction}")
        np.testing.assert_allclose(np.asarray(m.state_dict()["0.weight"]), want_W, rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(m.state_dict()["0.bias"]), want_b, rtol=0, atol=1e-12)
    binary = (labels > 0).astype(np.float64)
    bcw = {0: 3.0, 1: 0.25}
    row_w = sw * np.array([bcw[int(k)] for k in binary])
    bce_rows = lambda z, t: F.binary_cross_entropy_with_logits(z[:, 0], t, reduction="none")  # noqa: E731
    for target in (binary, binary[:, None]):
        m = nnx.Sequential(nnx.Dense(3, 1), seed=4, dtype="float64")
        want_W, want_b, want_h = _torch_sgd_epochs(m, X, binary, row_w, bce_rows, 0.3, 4, 2)
        h = m.fit(X, target, loss="bce_with_logits", optimizer="sgd", lr=0.3, batch_size=4, epochs=2,
                  shuffle=False, sample_weight=sw, class_weight=bcw, verbose=0)
        np.testing.assert_allclose(h["loss"], want_h, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(m.state_dict()["0.weight"]), want_W, rtol=0, atol=1e-12)


# -- a user loss through the public API ------------------------------------------------

class LossFuzzSquared(L.Loss):
    """MSE written through `rows` alone, as DESIGN's "Losses" tells a user to."""

    def rows(self, xp, y_true, y_pred):
        diff = y_pred - y_true
        size = 1
        for d in y_pred.shape:
            size *= d
        return L.row_mean(xp, diff * diff), diff * (2 / size)


class LossFuzzSignedHinge(L.Loss):
    """A hinge loss on 0/1 labels, which `prepare` maps to -1/+1 (and checks)."""

    def prepare(self, xp, y_true, y_pred, check):
        y_true = super().prepare(xp, y_true, y_pred, check)
        if check and not bool(xp.all((y_true == 0) | (y_true == 1))):
            raise ValueError("LossFuzzSignedHinge needs 0/1 labels")
        return 2 * y_true - 1

    def rows(self, xp, y_true, y_pred):
        margin = 1 - y_true * y_pred
        active = xp.astype(margin > 0, y_pred.dtype)
        size = 1
        for d in y_pred.shape:
            size *= d
        return L.row_mean(xp, xp.maximum(margin, 0.0)), -y_true * active / size


def test_a_user_loss_gets_the_built_ins_sample_weight_handling():
    """A loss written with `rows` (and `prepare`) gets every weight form and both reductions exactly as a
    built-in: the same numbers as MSE bit for bit, and torch's for the hinge."""
    rng = np.random.default_rng(13)
    for shape in [(1, 1), (5, 1), (4, 3), (6,)]:
        y, p = rng.normal(size=shape), rng.normal(size=shape)
        for reduction in L.REDUCTIONS:
            mine, builtin = LossFuzzSquared(reduction=reduction), L.MSE(reduction=reduction)
            for w in _weights(rng, shape[0]):
                got, want = mine.value_and_grad(y, p, w), builtin.value_and_grad(y, p, w)
                assert float(got[0]) == float(want[0])
                np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
                np.testing.assert_array_equal(mine.per_sample(y, p), builtin.per_sample(y, p))
            with pytest.raises(ValueError, match="sample_weight must have shape"):
                mine(y, p, np.ones((shape[0], 2)))
            with pytest.raises(ValueError, match="non-negative"):
                mine(y, p, -np.ones(shape[0]))
            labels = (rng.uniform(size=shape) > 0.5) * 1.0
            hinge_rows = lambda t, z: _row_mean(torch.clamp(1 - (2 * t - 1) * z, min=0))  # noqa: E731
            for w in _weights(rng, shape[0]):
                _assert_matches(LossFuzzSignedHinge(reduction=reduction), labels, p, hinge_rows, w, reduction)
    with pytest.raises(ValueError, match="0/1 labels"):
        LossFuzzSignedHinge()(np.array([[0.5]]), np.array([[0.1]]))


def test_a_user_loss_in_fit_trains_as_the_built_in_with_weights():
    rng = np.random.default_rng(17)
    X, y, w = rng.normal(size=(9, 3)), rng.normal(size=(9, 2)), rng.integers(0, 3, size=9)
    for reduction in L.REDUCTIONS:
        runs = []
        for loss in (LossFuzzSquared(reduction=reduction), L.MSE(reduction=reduction)):
            m = nnx.Sequential(nnx.Dense(3, 2), seed=3, dtype="float64")
            h = m.fit(X, y, loss=loss, optimizer="sgd", lr=0.1, batch_size=4, epochs=2, shuffle=False,
                      sample_weight=w, verbose=0)
            runs.append((h["loss"], np.asarray(m.state_dict()["0.weight"])))
        assert runs[0][0] == runs[1][0]
        np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_a_user_loss_with_its_own_prepare_takes_class_weight_in_fit_as_torch():
    """Targets reach a user `prepare` as given (0/1 labels here, mapped to -1/+1), and class_weight still weighs
    each row by its label: the trajectory is torch's SGD on the weighted hinge rows."""
    rng = np.random.default_rng(19)
    X = rng.normal(size=(10, 3))
    labels = (X[:, 0] + 0.3 * rng.normal(size=10) > 0).astype(np.float64)
    sw, cw = rng.uniform(0.5, 2.0, size=10), {0: 2.5, 1: 0.5}
    row_w = sw * np.where(labels > 0, 0.5, 2.5)
    hinge = lambda z, t: torch.clamp(1 - (2 * t - 1) * z[:, 0], min=0)  # noqa: E731
    for target in (labels, labels[:, None]):
        m = nnx.Sequential(nnx.Dense(3, 1), seed=5, dtype="float64")
        want_W, want_b, want_h = _torch_sgd_epochs(m, X, labels, row_w, hinge, 0.2, 4, 2)
        h = m.fit(X, target, loss=LossFuzzSignedHinge(), optimizer="sgd", lr=0.2, batch_size=4, epochs=2,
                  shuffle=False, sample_weight=sw, class_weight=cw, verbose=0)
        np.testing.assert_allclose(h["loss"], want_h, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(m.state_dict()["0.weight"]), want_W, rtol=0, atol=1e-12)
        np.testing.assert_allclose(np.asarray(m.state_dict()["0.bias"]), want_b, rtol=0, atol=1e-12)
