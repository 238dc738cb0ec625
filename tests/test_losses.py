"""Losses: values and gradients against torch, finite-difference gradient checks on every
backend, exact results at extreme logits, and the input checks."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import array_api_compat
import numpy as np
import pytest

from nnx import losses as L
from nnx.gradcheck import numerical_gradient, relative_error

N, C = 4, 3


def _case_data(case, rng):
    """(loss, y_true on the host, y_pred on the host, torch loss of (torch.nn.functional, y_true, y_pred tensor))."""
    reg_true, reg_pred = rng.normal(size=(N, 2)), rng.normal(size=(N, 2))
    bin_true = rng.uniform(size=(N, 2))  # soft targets exercise the general formula
    probs = rng.uniform(0.1, 0.9, size=(N, 2))
    logits = rng.normal(scale=2.0, size=(N, C))
    labels = np.array([0, 2, 1, 2])
    one_hot = np.eye(C)[labels]
    soft = rng.dirichlet(np.ones(C), size=N)
    row_probs = rng.dirichlet(np.ones(C) * 3, size=N)

    def torch_ce_probs(F, t, p):
        return -(t * p.log()).sum(dim=1).mean()

    cases = {
        "mse": (L.MSE(), reg_true, reg_pred, lambda F, t, p: F.mse_loss(p, t)),
        "mae": (L.MAE(), reg_true, reg_pred, lambda F, t, p: F.l1_loss(p, t)),
        "bce_probs": (L.BinaryCrossEntropy(), bin_true, probs, lambda F, t, p: F.binary_cross_entropy(p, t)),
        "bce_logits": (L.BinaryCrossEntropy(from_logits=True), bin_true, reg_pred,
                       lambda F, t, p: F.binary_cross_entropy_with_logits(p, t)),
        "ce_logits_int": (L.CrossEntropy(), labels, logits, lambda F, t, p: F.cross_entropy(p, t)),
        "ce_logits_onehot": (L.CrossEntropy(), one_hot, logits, lambda F, t, p: F.cross_entropy(p, t)),
        "ce_logits_soft": (L.CrossEntropy(), soft, logits, lambda F, t, p: F.cross_entropy(p, t)),
        # rows that do not sum to 1 (e.g. sample weights folded into the targets)
        "ce_logits_unnormalized": (L.CrossEntropy(), soft * rng.uniform(0.5, 2.0, size=(N, 1)), logits,
                                   lambda F, t, p: F.cross_entropy(p, t)),
        "ce_probs_int": (L.CrossEntropy(from_logits=False), labels, row_probs,
                         lambda F, t, p: F.nll_loss(p.log(), t)),
        "ce_probs_onehot": (L.CrossEntropy(from_logits=False), one_hot, row_probs, torch_ce_probs),
    }
    return cases[case]


def _torch():
    """(torch, torch.nn.functional) for a test that compares with torch; skips it where torch is missing."""
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


CASES = ["mse", "mae", "bce_probs", "bce_logits", "ce_logits_int", "ce_logits_onehot", "ce_logits_soft",
         "ce_logits_unnormalized", "ce_probs_int", "ce_probs_onehot"]


def _true_on(backend, y_true):
    """Targets on the backend: integer labels keep an integer dtype, the rest become float64."""
    if y_true.dtype.kind in "iu":
        return backend.asarray(y_true)
    return backend.asarray(y_true, dtype="float64")


def _quietly(fn, *args):
    """fn(*args) with every warning and every NumPy overflow/invalid/divide-by-zero turned into an error."""
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        return fn(*args)


# -- against torch ---------------------------------------------------------------

@pytest.mark.parametrize("case", CASES)
def test_value_and_gradient_match_torch(backend, rng, case):
    torch, F = _torch()
    loss, y_true, y_pred, torch_loss = _case_data(case, rng)
    t_pred = torch.from_numpy(y_pred).requires_grad_(True)
    want = torch_loss(F, torch.from_numpy(y_true), t_pred)
    want.backward()

    yt, yp = _true_on(backend, y_true), backend.asarray(y_pred, dtype="float64")
    value = loss(yt, yp)
    assert tuple(value.shape) == ()
    np.testing.assert_allclose(backend.to_float(value), want.item(), rtol=1e-12)
    grad = backend.to_host(loss.gradient(yt, yp))
    np.testing.assert_allclose(grad, t_pred.grad.numpy(), rtol=1e-10, atol=1e-15)

    v2, g2 = loss.value_and_grad(yt, yp)
    assert backend.to_float(v2) == backend.to_float(value)
    np.testing.assert_array_equal(backend.to_host(g2), grad)
    v3, g3 = loss.value_and_grad(yt, yp, check=False)
    assert backend.to_float(v3) == backend.to_float(value)
    np.testing.assert_array_equal(backend.to_host(g3), grad)


@pytest.mark.parametrize("case", CASES)
def test_gradcheck(backend, rng, case):
    loss, y_true, y_pred, _ = _case_data(case, rng)
    if case == "mae":
        # Keep every difference away from MAE's kink at 0.
        y_pred = y_true + np.where(rng.uniform(size=y_true.shape) < 0.5, -1.0, 1.0) * rng.uniform(0.1, 1.0,
                                                                                                     y_true.shape)
    yt = _true_on(backend, y_true)

    def scalar(pred_host):
        return backend.to_float(loss(yt, backend.asarray(pred_host, dtype="float64"), check=False))

    numeric = numerical_gradient(scalar, y_pred)
    analytic = backend.to_host(loss.gradient(yt, backend.asarray(y_pred, dtype="float64")))
    assert analytic.shape == y_pred.shape
    assert relative_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("case", CASES)
def test_dtype_and_device_follow_y_pred(backend, dtype, rng, case):
    loss, y_true, y_pred, _ = _case_data(case, rng)
    # float64 (or integer) targets must not promote float32 predictions.
    yt, yp = _true_on(backend, y_true), backend.asarray(y_pred, dtype=dtype)
    value, grad = loss.value_and_grad(yt, yp)
    assert value.dtype == yp.dtype and grad.dtype == yp.dtype
    assert tuple(grad.shape) == tuple(yp.shape)
    assert str(array_api_compat.device(grad)) == str(backend.device)
    assert str(array_api_compat.device(value)) == str(backend.device)


def test_numpy_targets_are_moved_to_the_backend(backend, dtype, rng):
    torch, F = _torch()
    y_pred = rng.normal(size=(N, C))
    labels = np.array([0, 2, 1, 2])
    got = L.CrossEntropy()(labels, backend.asarray(y_pred, dtype=dtype))
    want = F.cross_entropy(torch.from_numpy(y_pred), torch.from_numpy(labels)).item()
    assert backend.owns(got)
    np.testing.assert_allclose(backend.to_float(got), want, rtol=1e-5)
    got = L.MSE()([[1.0], [2.0]], backend.asarray(np.array([[1.0], [4.0]]), dtype=dtype))
    assert backend.to_float(got) == 2.0


def test_mae_gradient_sign_zero(backend):
    y = backend.asarray(np.array([1.0, 2.0, 3.0, 4.0]), dtype="float64")
    p = backend.asarray(np.array([1.0, 3.0, 2.0, 4.0]), dtype="float64")
    np.testing.assert_array_equal(backend.to_host(L.MAE().gradient(y, p)), [0.0, 0.25, -0.25, 0.0])


def test_column_targets_are_reshaped_not_broadcast(backend, dtype, rng):
    # N rows, as test_rows_of_1d_and_3d_predictions: JAX compiles each operation once per shape
    y = rng.uniform(size=(N,))
    p = rng.uniform(0.1, 0.9, size=(N, 1))
    for loss in (L.MSE(), L.MAE(), L.BinaryCrossEntropy(), L.BinaryCrossEntropy(from_logits=True)):
        flat_v, flat_g = loss.value_and_grad(backend.asarray(y, dtype=dtype), backend.asarray(p, dtype=dtype))
        col_v, col_g = loss.value_and_grad(backend.asarray(y[:, None], dtype=dtype), backend.asarray(p, dtype=dtype))
        assert tuple(flat_g.shape) == (N, 1)
        assert backend.to_float(flat_v) == backend.to_float(col_v)
        np.testing.assert_array_equal(backend.to_host(flat_g), backend.to_host(col_g))
        # and the other way round: (n, 1) targets against (n,) predictions
        v, g = loss.value_and_grad(backend.asarray(y[:, None], dtype=dtype), backend.asarray(p[:, 0], dtype=dtype))
        assert tuple(g.shape) == (N,)
        assert backend.to_float(v) == backend.to_float(col_v)


def test_a_one_row_batch_is_reshaped_like_any_other(backend):
    """(1,) targets against (1, 1) predictions (and the other way round) are the (n,) / (n, 1) case with n = 1."""
    for t_shape, p_shape in (((1,), (1, 1)), ((1, 1), (1,))):
        for loss in (L.MSE(), L.MAE(), L.BinaryCrossEntropy(from_logits=True)):
            value, grad = loss.value_and_grad(backend.asarray(np.ones(t_shape), dtype="float64"),
                                              backend.asarray(np.full(p_shape, 3.0), dtype="float64"))
            assert tuple(grad.shape) == p_shape
            one = loss.value_and_grad(backend.asarray(np.ones(p_shape), dtype="float64"),
                                      backend.asarray(np.full(p_shape, 3.0), dtype="float64"))
            assert backend.to_float(value) == backend.to_float(one[0])
    with pytest.raises(ValueError, match=r"y_true \(1,\) and y_pred \(2, 1\)"):
        L.MSE()(backend.asarray(np.zeros(1), dtype="float64"), backend.asarray(np.zeros((2, 1)), dtype="float64"))


def test_ce_column_of_labels(backend, rng):
    logits = backend.asarray(rng.normal(size=(N, C)), dtype="float64")
    labels = np.array([0, 2, 1, 2])
    flat = L.CrossEntropy()(backend.asarray(labels), logits)
    col = L.CrossEntropy()(backend.asarray(labels[:, None]), logits)
    assert backend.to_float(flat) == backend.to_float(col)


def test_ce_float_labels_holding_integers(backend, rng):
    logits = backend.asarray(rng.normal(size=(N, C)), dtype="float64")
    labels = np.array([0, 2, 1, 2])
    as_int = L.CrossEntropy().value_and_grad(backend.asarray(labels), logits)
    as_float = L.CrossEntropy().value_and_grad(backend.asarray(labels, dtype="float64"), logits)
    assert backend.to_float(as_int[0]) == backend.to_float(as_float[0])
    np.testing.assert_array_equal(backend.to_host(as_int[1]), backend.to_host(as_float[1]))


def test_ce_on_probabilities_reads_scaled_ones_as_they_are(backend):
    """A Softmax followed by Dropout gives, in training, probabilities scaled by 1/(1-rate) (some above 1) or
    zeroed: the loss is -sum(t log p) of exactly those (only p below eps is clipped), with its exact gradient."""
    # (N, C), as the cross-entropy cases: JAX compiles the loss's operations once for both
    p = np.array([[1.25, 0.0, 0.5], [0.2, 1.6, 0.0], [0.0, 0.4, 1.1], [0.3, 0.0, 0.9]])
    t = np.array([[0.7, 0.1, 0.2], [0.0, 1.0, 0.0], [0.2, 0.3, 0.5], [0.4, 0.0, 0.6]])
    loss = L.CrossEntropy(from_logits=False)
    yt, yp = backend.asarray(t, dtype="float64"), backend.asarray(p, dtype="float64")
    expected = -(t * np.log(np.maximum(p, 1e-15))).sum(axis=1).mean()
    assert backend.to_float(loss(yt, yp)) == pytest.approx(expected, rel=1e-13)

    def scalar(pred_host):
        return backend.to_float(loss(yt, backend.asarray(pred_host, dtype="float64"), check=False))

    analytic = backend.to_host(loss.gradient(yt, yp))
    above = p > 0.1  # away from the clipped zeros, where the finite difference would step across eps
    assert relative_error(analytic[above], numerical_gradient(scalar, p)[above]) < 1e-7


# -- extremes ----------------------------------------------------------------------

@pytest.mark.parametrize("test_dtype", ["float32", "float64"])
def test_bce_from_logits_exact_at_extreme_logits(backend, test_dtype):
    loss = L.BinaryCrossEntropy(from_logits=True)
    # (N, 2), the bce_logits case's shape: JAX compiles the loss's operations once for both
    z = np.array([[1000.0, -1000.0], [1e4, -1e4], [1000.0, -1000.0], [1e4, -1e4]])
    y = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    value, grad = _quietly(loss.value_and_grad, backend.asarray(y, dtype=test_dtype),
                           backend.asarray(z, dtype=test_dtype))
    # Per element: 1000, 1000, 1e4, 1e4, then four right predictions of 0 (to rounding).
    np.testing.assert_allclose(backend.to_float(value), (2000.0 + 2e4) / 8, rtol=1e-6 if test_dtype == "float32"
                               else 1e-14)
    np.testing.assert_allclose(backend.to_host(grad), np.array([[1, -1], [1, -1], [0, 0], [0, 0]]) / 8, rtol=1e-6,
                               atol=0)

    single = loss(backend.asarray(np.array([0.0]), dtype=test_dtype), backend.asarray(np.array([1000.0]),
                                                                                      dtype=test_dtype))
    assert backend.to_float(single) == 1000.0
    single = loss(backend.asarray(np.array([1.0]), dtype=test_dtype), backend.asarray(np.array([-1000.0]),
                                                                                      dtype=test_dtype))
    assert backend.to_float(single) == 1000.0


@pytest.mark.parametrize("test_dtype", ["float32", "float64"])
def test_bce_from_logits_keeps_relative_precision_on_right_confident_predictions(backend, test_dtype):
    """A right prediction's loss is log1p(exp(-|z|)) to a few ulps: max(z, 0) - y z + log1p(..) added the small term
    to z and took z off again for a label of 1, which left its rounding (0 or 1e-6 for 3e-7 at z = 15 in float32,
    0 at z = 100 in float64; torch's is exact there)."""
    z = np.array([5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 100.0, 700.0])
    z, y = np.concatenate([z, -z]), np.concatenate([np.ones_like(z), np.zeros_like(z)])
    # N at a time, the (N,) of the column tests: JAX compiles the loss's operations once for both
    loss = L.BinaryCrossEntropy(from_logits=True)
    got = np.concatenate([backend.to_host(loss.per_sample(backend.asarray(y_part, dtype=test_dtype),
                                                          backend.asarray(z_part, dtype=test_dtype)))
                          for y_part, z_part in zip(y.reshape(-1, N), z.reshape(-1, N), strict=True)])
    want = np.log1p(np.exp(-np.abs(z)))  # in float64, to 1 ulp
    tiny = float(np.finfo(test_dtype).smallest_normal)
    normal = want > tiny  # below the normal numbers a flushing backend (JAX) may give 0
    np.testing.assert_allclose(got[normal], want[normal], rtol=4 * float(np.finfo(test_dtype).eps))
    assert np.all(got[~normal] <= tiny) and np.all(got >= 0)


@pytest.mark.parametrize("test_dtype", ["float32", "float64"])
def test_ce_from_logits_exact_at_large_gaps(backend, test_dtype):
    logits = np.array([[1000.0, 0.0, 0.0], [0.0, 1000.0, -1000.0], [1e4, -1e4, 0.0], [-1e4, 0.0, 1e4]])
    labels = np.array([1, 1, 1, 2])
    # Per row: log(e^1000 + 2) - 0 = 1000, 0, 2e4, 0.
    want = (1000.0 + 0.0 + 2e4 + 0.0) / 4
    for y_true in (backend.asarray(labels), backend.asarray(np.eye(3)[labels], dtype=test_dtype)):
        value, grad = _quietly(L.CrossEntropy().value_and_grad, y_true, backend.asarray(logits, dtype=test_dtype))
        assert backend.to_float(value) == want
        g = backend.to_host(grad)
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g[0], [0.25, -0.25, 0.0], atol=1e-7)
        np.testing.assert_allclose(g[1], [0.0, 0.0, 0.0], atol=1e-7)


@pytest.mark.parametrize("test_dtype", ["float32", "float64"])
def test_ce_from_logits_with_masked_classes(backend, test_dtype):
    """A logit of -inf masks a class (action masks, padded vocabularies): its probability is 0 and, where its
    target is 0, it adds nothing, as in torch's cross_entropy with class indices. 0 * -inf made the value NaN
    (while the gradient stayed finite), so fit stopped on a loss that is finite; a target on it costs inf."""
    torch, F = _torch()
    inf = np.inf
    # (N, C) and N labels, as the cross-entropy cases: JAX compiles the loss's operations once for both
    logits = np.array([[0.0, -inf, 1.0], [2.0, 0.0, -inf], [-inf, 3.0, 0.5], [1.0, 1.0, 1.0]])
    labels = np.array([0, 1, 1, 2])
    z = torch.tensor(logits, requires_grad=True)
    expected = F.cross_entropy(z, torch.tensor(labels))
    expected_grad, = torch.autograd.grad(expected, z)
    tol = 1e-6 if test_dtype == "float32" else 1e-13
    for y_true in (backend.asarray(labels), backend.asarray(np.eye(3)[labels], dtype=test_dtype)):
        value, grad = _quietly(L.CrossEntropy().value_and_grad, y_true, backend.asarray(logits, dtype=test_dtype))
        assert backend.to_float(value) == pytest.approx(expected.item(), rel=tol)
        np.testing.assert_allclose(backend.to_host(grad), expected_grad.numpy(), rtol=tol, atol=tol)
    on_masked = _quietly(L.CrossEntropy(), backend.asarray(np.array([1, 1, 1, 2])),  # the first row's target
                         backend.asarray(logits, dtype=test_dtype))
    assert backend.to_float(on_masked) == inf
    with_nan = logits.copy()
    with_nan[0] = [np.nan, 0.0, 1.0]
    nan_row = _quietly(L.CrossEntropy(), backend.asarray(labels), backend.asarray(with_nan, dtype=test_dtype))
    assert np.isnan(backend.to_float(nan_row))


@pytest.mark.parametrize("test_dtype", ["float32", "float64"])
def test_bce_on_exact_zero_and_one_probabilities(backend, test_dtype):
    p = np.array([0.0, 1.0, 0.0, 1.0])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    loss = L.BinaryCrossEntropy()
    value, grad = _quietly(loss.value_and_grad, backend.asarray(y, dtype=test_dtype),
                           backend.asarray(p, dtype=test_dtype))
    v, g = backend.to_float(value), backend.to_host(grad)
    assert np.isfinite(v) and np.all(np.isfinite(g))
    # Wrong saturated predictions cost -log(eps)/n each, right ones almost nothing.
    assert 2 * 15 / 4 < v < 2 * 40 / 4
    assert g[0] < 0 < g[1]
    assert abs(g[2]) < 1 and abs(g[3]) < 1


@pytest.mark.parametrize("test_dtype", ["float32", "float64"])
def test_ce_on_zero_probabilities_finite(backend, test_dtype):
    # (N, C) and N labels, as the cross-entropy cases: JAX compiles the loss's operations once for both
    p = np.array([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.25, 0.0, 0.75]])
    value, grad = _quietly(L.CrossEntropy(from_logits=False).value_and_grad, backend.asarray(np.array([0, 1, 2, 1])),
                           backend.asarray(p, dtype=test_dtype))
    assert np.isfinite(backend.to_float(value)) and np.all(np.isfinite(backend.to_host(grad)))


@pytest.mark.parametrize("test_dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", ["mse", "mae", "bce_logits", "ce_logits_int", "ce_logits_onehot"])
def test_huge_inputs_finite_no_warnings(backend, rng, test_dtype, case):
    loss, y_true, y_pred, _ = _case_data(case, rng)
    y_pred = np.sign(y_pred) * 1e4
    if case in ("mse", "mae"):
        y_true = -y_true * 1e4
    yt = backend.asarray(y_true) if y_true.dtype.kind in "iu" else backend.asarray(y_true, dtype=test_dtype)
    value, grad = _quietly(loss.value_and_grad, yt, backend.asarray(y_pred, dtype=test_dtype))
    assert np.isfinite(backend.to_float(value)) and np.all(np.isfinite(backend.to_host(grad)))


# -- input checks ----------------------------------------------------------------------

def test_shape_mismatch_names_both_shapes(backend):
    yp = backend.asarray(np.zeros((4, 2)), dtype="float64")
    for loss in (L.MSE(), L.MAE(), L.BinaryCrossEntropy(), L.BinaryCrossEntropy(from_logits=True)):
        for bad in (np.zeros((4,)), np.zeros((2, 4)), np.zeros((4, 2, 1))):
            with pytest.raises(ValueError, match=r"y_true .*\(.*\).*y_pred \(4, 2\)"):
                loss(backend.asarray(bad, dtype="float64"), yp)
            with pytest.raises(ValueError, match=r"y_true .*y_pred"):
                loss.gradient(backend.asarray(bad, dtype="float64"), yp, check=False)
    with pytest.raises(ValueError, match=r"y_true \(3,\) and y_pred \(4, 1\)"):
        L.MSE()(backend.asarray(np.zeros(3), dtype="float64"), backend.asarray(np.zeros((4, 1)), dtype="float64"))


def test_ce_shape_mismatch(backend):
    logits = backend.asarray(np.zeros((4, 3)), dtype="float64")
    for bad in (np.zeros(5, dtype=np.int64), np.zeros((4, 2)), np.zeros((3, 3))):
        with pytest.raises(ValueError, match=r"y_true .*y_pred \(4, 3\)"):
            L.CrossEntropy()(backend.asarray(bad), logits)
    with pytest.raises(ValueError, match=r"y_pred .*2-D.*\(4,\)"):
        L.CrossEntropy()(backend.asarray(np.zeros(4, dtype=np.int64)),
                         backend.asarray(np.zeros(4), dtype="float64"))


@pytest.mark.parametrize("from_logits", [True, False])
def test_ce_class_index_out_of_range(backend, from_logits):
    logits = backend.asarray(np.full((N, C), 1 / 3), dtype="float64")  # (N, C) as the cases: one compile on JAX
    loss = L.CrossEntropy(from_logits=from_logits)
    for bad in ([0, 1, 3, 2], [0, -1, 2, 1]):
        with pytest.raises(ValueError, match=r"class indices must lie in \[0, 3\)"):
            loss(backend.asarray(np.array(bad)), logits)
        with pytest.raises(ValueError, match=r"\[0, 3\)"):
            loss.value_and_grad(backend.asarray(np.array(bad)), logits)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        loss.gradient(backend.asarray(np.array([0.0, 1.0, 3.0, 2.0]), dtype="float64"), logits)


def test_ce_nan_class_targets_are_named_nan(backend):
    # found in review: NaN class indices were refused as "must lie in [0, 3)", which sends a user looking for
    # an out-of-range label instead of the missing one
    logits = backend.asarray(np.zeros((N, C)), dtype="float64")
    with pytest.raises(ValueError, match="class indices hold NaN"):
        L.CrossEntropy()(backend.asarray(np.array([0.0, np.nan, 2.0, 1.0]), dtype="float64"), logits)


def test_ce_non_integer_class_targets(backend):
    logits = backend.asarray(np.zeros((N, C)), dtype="float64")
    with pytest.raises(ValueError, match="must be integers, got non-integer values"):
        L.CrossEntropy()(backend.asarray(np.array([0.0, 1.5, 2.0, 1.0]), dtype="float64"), logits)
    with pytest.raises(ValueError, match="must be integers, got dtype"):
        L.CrossEntropy()(backend.asarray(np.array([True, False, True, False])), logits)


@pytest.mark.parametrize("from_logits", [True, False])
def test_ce_narrow_integer_class_targets(backend, rng, from_logits):
    """uint8 class indices (as image labels come) against more than 256 classes: one-hot by comparison with an
    arange in the targets' dtype wrapped class 261 onto 5 (NumPy: a second 1 in the row, a wrong loss) or
    refused valid indices as out of range (torch, JAX, array_api_strict)."""
    torch, F = _torch()
    logits = rng.normal(size=(3, 300))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([5, 10, 255], dtype=np.uint8)
    y_pred = logits if from_logits else probs
    loss = L.CrossEntropy(from_logits=from_logits)
    expected = F.nll_loss(torch.log_softmax(torch.tensor(logits), dim=1), torch.tensor(labels.astype(np.int64)))
    for check in (True, False):
        value = loss(backend.asarray(labels), backend.asarray(y_pred, dtype="float64"), check=check)
        assert abs(float(backend.to_host(value)) - float(expected)) < 1e-10


@pytest.mark.parametrize("from_logits", [True, False])
def test_bce_targets_outside_unit_interval(backend, from_logits):
    loss = L.BinaryCrossEntropy(from_logits=from_logits)
    yp = backend.asarray(np.full((N, 1), 0.5), dtype="float64")  # (N, 1) as the column-target tests
    for bad in ([0.0, 1.5, 1.0, 0.5], [0.0, -0.1, 1.0, 0.5], [0.0, np.nan, 1.0, 0.5]):
        yt = backend.asarray(np.array(bad)[:, None], dtype="float64")
        with pytest.raises(ValueError, match=r"y_true .*\[0, 1\]"):
            loss(yt, yp)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            loss.gradient(yt, yp)
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            loss.value_and_grad(yt, yp)


def test_probability_predictions_outside_their_range(backend):
    """BCE on probabilities clipped a prediction of 1.5, -0.1 or inf into [eps, 1 - eps] and returned a finite
    loss (torch's binary_cross_entropy refuses such inputs); cross-entropy on probabilities did the same with a
    negative one (above 1 stays accepted: Dropout after Softmax). Refused when checking; NaN propagates."""
    bce, ce = L.BinaryCrossEntropy(), L.CrossEntropy(from_logits=False)
    # (N, 1) and (N, C), shapes the other tests use: JAX compiles the checks' operations once
    yt = backend.asarray(np.array([[0.0], [1.0], [1.0], [0.0]]), dtype="float64")
    for bad in (1.5, -0.1, np.inf, -np.inf):
        yp = backend.asarray(np.array([[0.5], [bad], [0.9], [0.2]]), dtype="float64")
        for call in (bce, bce.gradient, bce.value_and_grad):
            with pytest.raises(ValueError, match=r"^y_pred for binary cross-entropy .* \[0, 1\]"):
                call(yt, yp)
        assert np.isfinite(float(backend.to_host(bce(yt, yp, check=False))))  # the unchecked path reads no values
    nan = backend.asarray(np.array([[0.5], [np.nan], [0.9], [0.2]]), dtype="float64")
    assert np.isnan(float(backend.to_host(bce(yt, nan))))
    labels = backend.asarray(np.array([0, 1, 2, 2]))
    rest = [[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]
    for bad in (-0.1, -np.inf):
        yp = backend.asarray(np.array([[0.5, 0.25, 0.25], [bad, 1.1, 0.0], *rest]), dtype="float64")
        for call in (ce, ce.gradient, ce.value_and_grad):
            with pytest.raises(ValueError, match=r"^y_pred for cross-entropy .* >= 0"):
                call(labels, yp)
    ce(labels, backend.asarray(np.array([[0.5, 0.25, 0.25], [0.0, 1.25, 0.0], *rest]), dtype="float64"))


@pytest.mark.parametrize("from_logits", [True, False])
def test_ce_target_rows_with_negative_entries(backend, from_logits):
    """A row like [-1, 1, 0] makes cross-entropy unbounded below; such rows (and NaN) are refused where BCE
    refuses targets outside [0, 1]. Rows that do not sum to 1 (weights folded in) stay accepted."""
    loss = L.CrossEntropy(from_logits=from_logits)
    yp = backend.asarray(np.full((N, C), 1 / 3), dtype="float64")  # (N, C) as the cases: one compile on JAX
    rest = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    for bad in ([[-1.0, 1.0, 0.0], [0.0, 0.0, 1.0], *rest], [[0.0, 1.0, 0.0], [np.nan, 0.0, 1.0], *rest]):
        yt = backend.asarray(np.array(bad), dtype="float64")
        for call in (loss, loss.gradient, loss.value_and_grad):
            with pytest.raises(ValueError, match=r"^y_true for cross-entropy must be .* entries >= 0 \(and not NaN\)"):
                call(yt, yp)
        loss(yt, yp, check=False)  # the unchecked path reads no values
    loss(backend.asarray(np.array([[0.0, 2.0, 0.5], [0.0, 0.0, 1.0], *rest]), dtype="float64"), yp)


def test_check_false_skips_value_checks(backend):
    # The unchecked path reads no values (no device sync), so bad values pass silently.
    yp = backend.asarray(np.full((N, 1), 0.5), dtype="float64")
    L.BinaryCrossEntropy().value_and_grad(backend.asarray(np.array([[2.0], [0.0], [0.5], [1.0]]), dtype="float64"), yp,
                                          check=False)


def test_non_floating_predictions_raise_type_error(backend):
    ints = backend.asarray(np.array([[1, 0], [0, 1]]))
    for loss in (L.MSE(), L.MAE(), L.BinaryCrossEntropy(), L.CrossEntropy()):
        with pytest.raises(TypeError, match="y_pred must have a real floating dtype"):
            loss(ints, ints)
        with pytest.raises(TypeError, match="y_pred"):
            loss.value_and_grad(ints, ints, check=False)
    with pytest.raises(TypeError, match="y_pred must be an array"):
        L.MSE()([1.0], [1.0])


# -- registry and config -----------------------------------------------------------

@pytest.mark.parametrize(("name", "cls", "from_logits"), [
    ("mse", L.MSE, None), ("mean_squared_error", L.MSE, None),
    ("mae", L.MAE, None), ("MEAN_ABSOLUTE_ERROR", L.MAE, None),
    ("bce", L.BinaryCrossEntropy, False), ("binary_crossentropy", L.BinaryCrossEntropy, False),
    ("Binary_Cross_Entropy", L.BinaryCrossEntropy, False), ("bce_with_logits", L.BinaryCrossEntropy, True),
    ("cross_entropy", L.CrossEntropy, True), ("CE", L.CrossEntropy, True),
    ("categorical_crossentropy", L.CrossEntropy, False), ("sparse_categorical_crossentropy", L.CrossEntropy, False),
])
def test_get_loss_by_name(name, cls, from_logits):
    loss = L.get_loss(name)
    assert type(loss) is cls
    if from_logits is not None:
        assert loss.from_logits is from_logits
    assert name.lower() in L.LOSSES


def test_get_loss_instances_classes_and_configs():
    loss = L.BinaryCrossEntropy(from_logits=True)
    assert L.get_loss(loss) is loss
    assert type(L.get_loss(L.MAE)) is L.MAE
    for original in (L.MSE(), L.MAE(), L.BinaryCrossEntropy(), L.BinaryCrossEntropy(from_logits=True),
                     L.CrossEntropy(), L.CrossEntropy(from_logits=False)):
        config = json.loads(json.dumps(original.get_config()))
        rebuilt = L.get_loss(config)
        assert type(rebuilt) is type(original)
        assert rebuilt.get_config() == original.get_config()
        assert isinstance(original.name, str)
        assert type(original).__name__ in repr(original)


def test_get_loss_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'.*'bce'.*'MSE'"):
        L.get_loss("hinge")
    with pytest.raises(TypeError, match="loss must be"):
        L.get_loss(3)


# -- sample weights (Keras's meaning: sum_i w_i l_i / n) ------------------------------------

_TORCH_ROWS = {
    "mse": lambda F, t, p: F.mse_loss(p, t, reduction="none").mean(dim=1),
    "mae": lambda F, t, p: F.l1_loss(p, t, reduction="none").mean(dim=1),
    "bce_probs": lambda F, t, p: F.binary_cross_entropy(p, t, reduction="none").mean(dim=1),
    "bce_logits": lambda F, t, p: F.binary_cross_entropy_with_logits(p, t, reduction="none").mean(dim=1),
    "ce_logits_int": lambda F, t, p: F.cross_entropy(p, t, reduction="none"),
    "ce_logits_onehot": lambda F, t, p: F.cross_entropy(p, t, reduction="none"),
    "ce_logits_soft": lambda F, t, p: F.cross_entropy(p, t, reduction="none"),
    "ce_logits_unnormalized": lambda F, t, p: F.cross_entropy(p, t, reduction="none"),
    "ce_probs_int": lambda F, t, p: F.nll_loss(p.log(), t, reduction="none"),
    "ce_probs_onehot": lambda F, t, p: -(t * p.log()).sum(dim=1),
}


def _weights(rng):
    w = rng.uniform(0.0, 3.0, size=N)
    w[1] = 0.0  # a zero weight must remove its row's contribution, gradient included
    return w


def _with_reduction(loss, reduction):
    """A copy of `loss` with another reduction, built from its config as a user would."""
    return L.get_loss({**loss.get_config(), "reduction": reduction})


@pytest.mark.parametrize("reduction", L.REDUCTIONS)
@pytest.mark.parametrize("case", CASES)
def test_weighted_value_gradient_and_per_sample_match_torch(backend, rng, case, reduction):
    torch, F = _torch()
    loss, y_true, y_pred, _ = _case_data(case, rng)
    loss = _with_reduction(loss, reduction)
    w = _weights(rng)
    t_pred = torch.from_numpy(y_pred).requires_grad_(True)
    rows = _TORCH_ROWS[case](F, torch.from_numpy(y_true), t_pred)
    # Keras's sum_over_batch_size divides by the rows, mean_with_sample_weight by the weights
    want = (torch.from_numpy(w) * rows).sum() / (N if reduction == "sum_over_batch_size" else w.sum())
    want.backward()

    yt, yp = _true_on(backend, y_true), backend.asarray(y_pred, dtype="float64")
    per_sample = loss.per_sample(yt, yp)
    assert tuple(per_sample.shape) == (N,)
    np.testing.assert_allclose(backend.to_host(per_sample), rows.detach().numpy(), rtol=1e-12)
    # the unweighted loss is the mean of the per-sample losses
    np.testing.assert_allclose(backend.to_host(per_sample).mean(), backend.to_float(loss(yt, yp)), rtol=1e-12)

    for sw in (w, backend.asarray(w, dtype="float64")):  # NumPy or backend weights
        value = loss(yt, yp, sample_weight=sw)
        assert tuple(value.shape) == ()
        np.testing.assert_allclose(backend.to_float(value), want.item(), rtol=1e-12)
        grad = backend.to_host(loss.gradient(yt, yp, sample_weight=sw))
        np.testing.assert_allclose(grad, t_pred.grad.numpy(), rtol=1e-10, atol=1e-15)
        assert np.all(grad[1] == 0)
        v2, g2 = loss.value_and_grad(yt, yp, sw, check=False)
        assert backend.to_float(v2) == backend.to_float(value)
        np.testing.assert_array_equal(backend.to_host(g2), grad)


@pytest.mark.parametrize("reduction", L.REDUCTIONS)
@pytest.mark.parametrize("case", CASES)
def test_weighted_gradcheck(backend, rng, case, reduction):
    loss, y_true, y_pred, _ = _case_data(case, rng)
    loss = _with_reduction(loss, reduction)
    if case == "mae":
        y_pred = y_true + np.where(rng.uniform(size=y_true.shape) < 0.5, -1.0, 1.0) * rng.uniform(0.1, 1.0,
                                                                                                     y_true.shape)
    yt = _true_on(backend, y_true)
    w = backend.asarray(_weights(rng), dtype="float64")

    def scalar(pred_host):
        return backend.to_float(loss(yt, backend.asarray(pred_host, dtype="float64"), w, check=False))

    numeric = numerical_gradient(scalar, y_pred)
    analytic = backend.to_host(loss.gradient(yt, backend.asarray(y_pred, dtype="float64"), w))
    assert analytic.shape == y_pred.shape
    assert relative_error(analytic, numeric) < 1e-6


@pytest.mark.parametrize("case", CASES)
def test_weights_keep_dtype_and_device_of_y_pred(backend, dtype, rng, case):
    loss, y_true, y_pred, _ = _case_data(case, rng)
    yt, yp = _true_on(backend, y_true), backend.asarray(y_pred, dtype=dtype)
    for sw in (_weights(rng), np.arange(N), backend.asarray(_weights(rng), dtype="float64")):
        value, grad = loss.value_and_grad(yt, yp, sample_weight=sw)
        assert value.dtype == yp.dtype and grad.dtype == yp.dtype and tuple(grad.shape) == tuple(yp.shape)
        assert str(array_api_compat.device(value)) == str(backend.device)
        assert str(array_api_compat.device(grad)) == str(backend.device)
        per_sample = loss.per_sample(yt, yp)
        assert per_sample.dtype == yp.dtype and str(array_api_compat.device(per_sample)) == str(backend.device)


def test_unit_weights_equal_the_unweighted_loss(backend, rng):
    for case in CASES:
        loss, y_true, y_pred, _ = _case_data(case, rng)
        yt, yp = _true_on(backend, y_true), backend.asarray(y_pred, dtype="float64")
        v, g = loss.value_and_grad(yt, yp)
        vw, gw = loss.value_and_grad(yt, yp, sample_weight=np.ones(N))
        np.testing.assert_allclose(backend.to_float(vw), backend.to_float(v), rtol=1e-14)
        np.testing.assert_array_equal(backend.to_host(gw), backend.to_host(g))  # times 1.0 is exact


def test_rows_of_1d_and_3d_predictions(backend, rng):
    w = np.array([1.0, 0.0, 2.0, 0.5])
    for shape in ((N,), (N, 1), (N, 2, 4)):
        y, p = rng.normal(size=shape), rng.normal(size=shape)
        for loss in (L.MSE(), L.MAE(), L.BinaryCrossEntropy(from_logits=True)):
            yb = backend.asarray(np.clip(y, 0, 1) if isinstance(loss, L.BinaryCrossEntropy) else y, dtype="float64")
            pb = backend.asarray(p, dtype="float64")
            rows = backend.to_host(loss.per_sample(yb, pb))
            assert rows.shape == (N,)
            np.testing.assert_allclose(rows.mean(), backend.to_float(loss(yb, pb)), rtol=1e-13)
            np.testing.assert_allclose(backend.to_float(loss(yb, pb, w)), (w * rows).sum() / N, rtol=1e-13)
    # (n,) targets against (n, 1) predictions: one weight per row, not per element of a broadcast
    y, p = rng.normal(size=(N,)), rng.normal(size=(N, 1))
    g = backend.to_host(L.MSE().gradient(backend.asarray(y, dtype="float64"), backend.asarray(p, dtype="float64"), w))
    np.testing.assert_allclose(g[:, 0], 2 * w * (p[:, 0] - y) / N, rtol=1e-13)


def test_bad_sample_weights_name_the_argument(backend):
    loss = L.MSE()
    y = backend.asarray(np.zeros((4, 2)), dtype="float64")
    for bad in (np.ones(3), np.ones((4, 1)), np.ones((4, 2)), np.ones(()), [1.0] * 5):
        with pytest.raises(ValueError, match=r"sample_weight must have shape \(4,\).*got shape"):
            loss(y, y, sample_weight=bad)
        with pytest.raises(ValueError, match="sample_weight"):
            loss.value_and_grad(y, y, bad, check=False)  # shapes are metadata: always checked
    for bad, match in (([1.0, -1.0, 1.0, 1.0], "non-negative"), ([1.0, np.nan, 1.0, 1.0], "finite"),
                       ([1.0, np.inf, 1.0, 1.0], "finite")):
        for method in (loss, loss.gradient, loss.value_and_grad):
            with pytest.raises(ValueError, match=f"sample_weight must be {match}"):
                method(y, y, sample_weight=np.array(bad))
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # inf * 0 = nan: garbage in, garbage out
            loss.value_and_grad(y, y, np.array(bad), check=False)  # values are read only when check=True
    for bad in (False, True, "balanced"):
        with pytest.raises(TypeError, match="sample_weight .*keyword-only"):
            loss(y, y, bad)
    with pytest.raises(TypeError, match="sample_weight must hold"):
        loss(y, y, sample_weight=np.array(["a", "b", "c", "d"]))
    with pytest.raises(ValueError, match="0-d y_pred"):
        loss(backend.asarray(np.array(1.0), dtype="float64"), backend.asarray(np.array(1.0), dtype="float64"),
             sample_weight=np.ones(1))


def test_a_loss_written_with_the_removed_private_hooks_is_refused_naming_the_fix():
    # nnx 0.2's hooks (_prepare, _compute, _rows) are no longer called: a subclass still defining one
    # would silently compute its base's loss, so making it raises instead.
    class Cube(L.Loss):
        def _prepare(self, xp, y_true, y_pred, check):
            return y_true

        def _compute(self, xp, y_true, y_pred, grad):
            d = y_pred - y_true
            return xp.mean(d ** 3), (3 * d ** 2 / d.size if grad else None)

    with pytest.raises(TypeError, match=r"Cube defines _prepare, _compute, which nnx no longer calls: write the "
                                        r"loss as rows\(xp, y_true, y_pred\)"):
        Cube()

    class ThirdMSE(L.MSE):
        def _rows(self, xp, y_true, y_pred, grad):
            raise AssertionError("never called")

    with pytest.raises(TypeError, match=r"ThirdMSE defines _rows.*prepare\(xp, y_true, y_pred, check\)"):
        ThirdMSE()


def test_a_bool_mask_weighs_rows_as_zero_one_weights(backend):
    """A boolean mask is accepted as sample_weight (fit accepts it too) and weighs its rows 1 or 0."""
    loss = L.MSE()
    y = backend.asarray(np.arange(8.0).reshape(4, 2), dtype="float64")
    p = backend.asarray(np.ones((4, 2)), dtype="float64")
    mask = np.array([True, False, True, True])
    value, grad = loss.value_and_grad(y, p, mask)
    value01, grad01 = loss.value_and_grad(y, p, mask.astype(float))
    assert float(backend.to_host(value)) == float(backend.to_host(value01))
    np.testing.assert_array_equal(backend.to_host(grad), backend.to_host(grad01))


def test_mean_with_sample_weight(backend, rng):
    y, p = rng.normal(size=(N, 2)), rng.normal(size=(N, 2))
    yb, pb = backend.asarray(y, dtype="float64"), backend.asarray(p, dtype="float64")
    loss = L.MSE(reduction="mean_with_sample_weight")
    assert loss.get_config() == {"type": "MSE", "reduction": "mean_with_sample_weight"}
    assert "reduction" not in L.MSE().get_config()  # the default is not written: old configs stay valid
    # without weights both reductions are the plain mean, bit for bit
    v, g = loss.value_and_grad(yb, pb)
    v0, g0 = L.MSE().value_and_grad(yb, pb)
    assert backend.to_float(v) == backend.to_float(v0)
    np.testing.assert_array_equal(backend.to_host(g), backend.to_host(g0))
    # a weight of 2 is the row repeated, and scaling all weights changes nothing
    w = np.array([2.0, 1.0, 0.0, 1.0])
    repeated = L.MSE()(backend.asarray(np.repeat(y, [2, 1, 0, 1], axis=0), dtype="float64"),
                       backend.asarray(np.repeat(p, [2, 1, 0, 1], axis=0), dtype="float64"))
    np.testing.assert_allclose(backend.to_float(loss(yb, pb, w)), backend.to_float(repeated), rtol=1e-14)
    np.testing.assert_allclose(backend.to_float(loss(yb, pb, 7.5 * w)), backend.to_float(repeated), rtol=1e-14)
    # all-zero weights: 0, not 0/0 (as Keras)
    v, g = loss.value_and_grad(yb, pb, np.zeros(N))
    assert backend.to_float(v) == 0.0 and np.all(backend.to_host(g) == 0.0)
    with pytest.raises(ValueError, match=r"reduction must be one of \['sum_over_batch_size', 'mean_with_sample"):
        L.CrossEntropy(reduction="mean")
    with pytest.raises(ValueError, match="reduction must be one of"):
        L.get_loss({"type": "mae", "reduction": "sum"})


@pytest.mark.parametrize("test_dtype", ["float32", "float64"])
def test_mean_with_sample_weight_of_extreme_weights(backend, test_dtype, rng):
    """Equal weights give the plain mean however large (their sum overflows) or small (subnormal) they are."""
    y, p = rng.normal(size=(N, 2)), rng.normal(size=(N, 2))  # the mse case's shape: one compile on JAX
    yb, pb = backend.asarray(y, dtype=test_dtype), backend.asarray(p, dtype=test_dtype)
    loss = L.MSE(reduction="mean_with_sample_weight")
    plain_v, plain_g = (backend.to_host(a) for a in loss.value_and_grad(yb, pb))
    finfo = np.finfo(test_dtype)
    for weight in (float(finfo.max) / 2, float(finfo.smallest_subnormal) * 2):
        w = backend.asarray(np.full(N, weight), dtype=test_dtype)
        if not np.all(backend.to_host(w / w) == 1):
            continue  # the backend's arithmetic cannot say w / w = 1 (XLA on a CPU flushes subnormals to 0)
        v, g = _quietly(loss.value_and_grad, yb, pb, w)
        np.testing.assert_allclose(backend.to_host(v), plain_v, rtol=4 * finfo.eps)
        np.testing.assert_allclose(backend.to_host(g), plain_g, rtol=4 * finfo.eps)


def test_a_loss_called_on_jax_arrays_leaves_jax_as_it_was():
    """A loss computes with the namespace of a backend already loaded, array_api_compat's otherwise:
    loading nnx's JAX backend turns on JAX's 64-bit mode, which computing a loss must not do. (Its value
    checks, ``check=True`` on BCE and cross-entropy, read their verdict through the backend.)"""
    pytest.importorskip("jax")
    code = ("import jax, jax.numpy as jnp, nnx\n"
            "y, p = jnp.zeros((3, 1)), jnp.ones((3, 1))\n"
            "values = [nnx.losses.MSE()(y, p), nnx.losses.MAE()(y, p),\n"
            "          nnx.losses.BinaryCrossEntropy(from_logits=True)(y, p, check=False)]\n"
            "assert not jax.config.jax_enable_x64, 'a loss call turned on 64-bit mode'\n"
            "assert all(v.dtype == jnp.float32 for v in values) and jnp.ones(2).dtype == jnp.float32\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_ce_class_indices_give_the_one_hot_rows_numbers_bit_for_bit(backend, dtype):
    # class indices run a shorter formula than one-hot rows (fewer operations a step): the same bits, NaN where
    # NaN, inf where inf, a -inf logit of another class never read, and a certain row's loss -0.0 as torch's
    rng = np.random.default_rng(3)
    logits = rng.normal(scale=30.0, size=(12, C))
    logits[1, 2] = logits[2, 2] = -np.inf
    logits[3, 1], logits[4, 2] = np.inf, np.nan
    logits[5] = [0.0, -500.0, -600.0]
    labels = np.array([0, 2, 0, 1, 2, 0, 1, 2, 1, 0, 1, 2])
    loss = L.CrossEntropy()

    def rows_and_gradient(one_hot: bool) -> list[np.ndarray]:
        # N rows at a time: the (N, C) of the cross-entropy cases, whose operations JAX compiled already
        losses, grads = [], []
        for rows in np.split(np.arange(12), 12 // N):
            y_true = backend.asarray(np.eye(C)[labels[rows]], dtype=dtype) if one_hot else backend.asarray(labels[rows])
            z = backend.asarray(logits[rows], dtype=dtype)
            losses.append(np.asarray(backend.to_host(loss.per_sample(y_true, z, check=False))))
            grads.append(np.asarray(backend.to_host(loss.gradient(y_true, z, check=False))))
        return [np.concatenate(losses), np.concatenate(grads)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got, want = rows_and_gradient(one_hot=False), rows_and_gradient(one_hot=True)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
        numbers = ~np.isnan(w)
        np.testing.assert_array_equal(np.signbit(g[numbers]), np.signbit(w[numbers]))
    rows = got[0]
    assert rows[1] == np.inf and np.isfinite(rows[2]) and np.signbit(rows[5]) and rows[5] == 0
