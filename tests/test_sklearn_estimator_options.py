"""nnx.sklearn against scikit-learn's MLP on what a scikit-learn user does around `fit`: interrupting it,
mixing fit / partial_fit / warm starts, reading the bookkeeping attributes, and the errors for bad inputs.

Each test runs the same calls on `sklearn.neural_network`'s estimator and compares what the user sees.
"""

from __future__ import annotations

import os
import signal
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.datasets import make_blobs  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLPClassifier  # noqa: E402

from nnx.sklearn import MLPClassifier  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _blobs():
    return make_blobs(n_samples=60, n_features=4, centers=3, random_state=0)


def _same_fit(ours, ref, rtol=1e-6):
    assert ours.n_iter_ == ref.n_iter_ and ours.t_ == ref.t_
    np.testing.assert_allclose(ours.loss_curve_, ref.loss_curve_, rtol=rtol)
    for a, b in zip(ours.coefs_ + ours.intercepts_, ref.coefs_ + ref.intercepts_, strict=True):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-12)


def _interrupt_at(monkeypatch, cls, epoch, how):
    """Make `cls`'s fit see Ctrl-C at the end of epoch `epoch` (where both estimators score the epoch)."""
    original = cls._update_no_improvement_count

    def interrupted(self, *args):
        if self.n_iter_ == epoch:
            how()
        return original(self, *args)

    monkeypatch.setattr(cls, "_update_no_improvement_count", interrupted)


def _raise_keyboard_interrupt():
    raise KeyboardInterrupt


@pytest.mark.parametrize("early_stopping", [False, True])
def test_ctrl_c_in_fit_returns_the_model_so_far_as_sklearn_does(monkeypatch, early_stopping):
    # scikit-learn catches KeyboardInterrupt in its epoch loop, warns "Training interrupted by user.", restores
    # the best validation weights and returns the estimator; nnx let the interrupt escape fit, leaving the
    # last epoch's weights rather than the best ones
    X, y = _blobs()
    params = dict(hidden_layer_sizes=(5,), max_iter=40, early_stopping=early_stopping, n_iter_no_change=100,
                  learning_rate_init=0.05, random_state=0)
    fitted = []
    for cls in (MLPClassifier, SkMLPClassifier):
        _interrupt_at(monkeypatch, cls, 6, _raise_keyboard_interrupt)
        with pytest.warns(UserWarning, match="Training interrupted by user"):
            fitted.append(cls(**params).fit(X, y))
    ours, ref = fitted
    assert ours.n_iter_ == 6
    _same_fit(ours, ref)
    if early_stopping:
        np.testing.assert_allclose(ours.validation_scores_, ref.validation_scores_, rtol=1e-6)
        assert ours.best_validation_score_ == pytest.approx(ref.best_validation_score_)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), rtol=1e-6)


@pytest.fixture
def ctrl_c_raises_keyboard_interrupt():
    """Python's own Ctrl-C handling, as in an interactive run: a suite started in the background by a
    non-interactive shell (CI's) inherits SIGINT ignored, and the SIGINT the test sends would never arrive."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name == "nt", reason="needs POSIX signals")
def test_a_real_sigint_in_fit_is_caught_and_the_handler_given_back(monkeypatch, ctrl_c_raises_keyboard_interrupt):
    X, y = _blobs()
    before = signal.getsignal(signal.SIGINT)
    _interrupt_at(monkeypatch, MLPClassifier, 3, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.warns(UserWarning, match="Training interrupted by user"):
        clf = MLPClassifier(hidden_layer_sizes=(4,), max_iter=20, random_state=0).fit(X, y)
    assert clf.n_iter_ == 3 and len(clf.loss_curve_) == 3
    assert signal.getsignal(signal.SIGINT) is before
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clf.partial_fit(X, y)  # the estimator goes on as after any fit
    assert clf.t_ == 4 * X.shape[0]


def test_ctrl_c_in_partial_fit_keeps_the_estimator_as_sklearn_does(monkeypatch):
    X, y = _blobs()
    params = dict(hidden_layer_sizes=(4,), solver="sgd", learning_rate_init=0.05, random_state=0)
    fitted = []
    for cls in (MLPClassifier, SkMLPClassifier):
        est = cls(**params).partial_fit(X, y, classes=[0, 1, 2])
        _interrupt_at(monkeypatch, cls, 1, _raise_keyboard_interrupt)
        with pytest.warns(UserWarning, match="Training interrupted by user"):
            est.partial_fit(X, y)
        monkeypatch.undo()
        est.partial_fit(X, y)  # and it goes on from there, the optimizer's state kept
        fitted.append(est)
    _same_fit(*fitted)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_a_torch_tensor_of_bfloat16_or_with_gradients_is_read_as_its_backend_reads_it():
    """Found in review: without array-API dispatch, scikit-learn's own conversion of a bfloat16 tensor failed with
    torch's "Got unsupported ScalarType BFloat16" (and one that records gradients could not become NumPy), where the
    docs say nnx casts bfloat16 torch arrays. X is now read on the host as its nnx backend reads it."""
    torch = pytest.importorskip("torch")
    X, y = make_blobs(n_samples=40, centers=2, n_features=3, random_state=0)
    X = X.astype(np.float32)
    as_bf16 = torch.tensor(X).bfloat16()
    want = MLPClassifier(max_iter=5, random_state=0).fit(as_bf16.float().numpy(), y)
    for given in (as_bf16, torch.tensor(as_bf16.float().numpy(), requires_grad=True)):
        got = MLPClassifier(max_iter=5, random_state=0).fit(given, y)
        np.testing.assert_array_equal(got.predict_proba(given), want.predict_proba(as_bf16.float().numpy()))
