"""Session 21, the lead's follow-ups of the reviews: fit refuses a model whose overridden forward it would not run,
and a gradient of another dtype names the parameter that promoted it."""

from __future__ import annotations

import sys
import types
from typing import Any

import numpy as np
import pytest

import nnx


class Session21LeadDoubled(nnx.Sequential):
    """A model whose forward (as a torch user writes it) doubles the outputs; fit runs forward_to_head."""

    def forward(self, X: Any, training: bool = False) -> Any:
        return 2.0 * super().forward(X, training)


def test_fit_refuses_a_model_whose_forward_it_would_not_run(backend: Any) -> None:
    # predict, evaluate and check_gradients refuse such a model (304c29e); fit trained the plain model's outputs
    # without a word, and its history was the plain model's loss
    X = np.random.default_rng(0).normal(size=(8, 3))
    model = Session21LeadDoubled(nnx.Dense(3, 1), backend=backend, dtype="float64", seed=0)
    before = [np.asarray(model.backend.to_host(p.value)) for p in model.parameters()]
    with pytest.raises(TypeError, match="Session21LeadDoubled overrides forward, which fit does not run"):
        model.fit(X, X[:, :1], loss="mse", optimizer="sgd", epochs=1)
    for p, old in zip(model.parameters(), before, strict=True):  # refused before any step
        np.testing.assert_array_equal(np.asarray(model.backend.to_host(p.value)), old)


def test_a_gradient_promoted_by_another_parameter_names_that_parameter() -> None:
    # A float64 array assigned to a float32 model's weight promotes every gradient computed with it: the bias's
    # gradient is the first whose dtype differs from its value's, and the error named only the bias
    X = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    model = nnx.Sequential(nnx.Dense(3, 1), backend="numpy", dtype="float32", seed=0)
    weight = model.layers[0].weight
    weight.value = np.asarray(weight.value, dtype=np.float64)
    with pytest.raises(ValueError, match=r"(?s)'0\.bias'.*'0\.weight' holds float64"):
        model.fit(X, X[:, :1], loss="mse", optimizer="sgd", epochs=1)


def test_the_abort_hook_is_left_to_the_mpi4py_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under ``python -m mpi4py`` the runner aborts the job itself, at exit, after the traceback was printed; the
    # hook of e850873 (for plain ``python script.py``) ran first there and aborted at once, and a CI run lost the
    # failing rank's traceback (tests/test_distributed.py's three-rank fault job): it is not installed there
    from nnx.distributed.mpi import abort_on_uncaught

    class FakeMPI:
        Is_initialized = staticmethod(lambda: True)
        Is_finalized = staticmethod(lambda: False)

    class FakeComm:
        def Abort(self, code: int) -> None:
            raise AssertionError("aborted")

    def printing(*args: Any) -> None:
        pass

    monkeypatch.setattr(sys, "excepthook", printing)
    monkeypatch.setitem(sys.modules, "mpi4py.run", types.ModuleType("mpi4py.run"))
    abort_on_uncaught(FakeMPI, FakeComm())
    assert sys.excepthook is printing


@pytest.mark.parametrize("name", ["accuracy", "precision", "recall", "f1", "label_accuracy", "label_f1", "mse", "mae"])
def test_metrics_of_no_rows_are_nan_without_a_warning(backend: Any, name: str) -> None:
    # NaN on no rows is the answer asked for (60ca4ca), but the means of nothing also warned "Mean of empty slice"
    # and "invalid value encountered" on NumPy and array_api_strict: the suite, which ends with no warnings,
    # printed eight
    import warnings

    from nnx import metrics

    fn = getattr(metrics, name)
    width = 1 if name in ("mse", "mae") else 3
    y_pred = backend.asarray(np.zeros((0, width)), dtype="float64")
    y_true = backend.asarray(np.zeros((0,) if name in ("accuracy", "precision", "recall", "f1") else (0, width)),
                             dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = float(backend.to_host(fn(backend.xp, y_true, y_pred)))
    assert np.isnan(got)
