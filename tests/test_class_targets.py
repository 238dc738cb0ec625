"""Cross-entropy trains, evaluates and scores the same from (n,) labels, (n, 1) labels and one-hot rows."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx import metrics


def _three_forms(rng, n=60, k=3):
    labels = rng.integers(0, k, n)
    return {"(n,)": labels, "(n, 1)": labels.reshape(-1, 1), "one-hot": np.eye(k)[labels]}


def test_fit_and_evaluate_agree_for_every_form_of_class_targets(backend, dtype, rng):
    X = rng.standard_normal((60, 4))
    results = {}
    for form, y in _three_forms(rng).items():
        model = nnx.Sequential(nnx.Dense(4, 5), nnx.Tanh(), nnx.Dense(5, 3), backend=backend, dtype=dtype, seed=0)
        history = model.fit(X, y, loss="cross_entropy", epochs=2, batch_size=16, metrics=["accuracy", "f1"],
                            validation_data=(X[:20], y[:20]))
        scores = model.evaluate(X, y, loss="cross_entropy", metrics=["accuracy", "recall"])
        results[form] = (history.history, scores, [model.backend.to_host(p.value) for p in model.parameters()])
    tol = 1e-5 if dtype == "float32" else 1e-12
    reference = results["(n,)"]
    for form in ("(n, 1)", "one-hot"):
        hist, scores, weights = results[form]
        for key, values in reference[0].items():
            np.testing.assert_allclose(hist[key], values, rtol=tol, err_msg=f"{form}: {key}")
        for key, value in reference[1].items():
            assert scores[key] == pytest.approx(value, rel=tol), f"{form}: {key}"
        for a, b in zip(weights, reference[2], strict=True):
            np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["accuracy", "precision", "recall", "f1"])
def test_class_metrics_read_every_form_of_class_targets(backend, dtype, rng, name):
    xp = backend.xp
    scores = backend.asarray(rng.standard_normal((40, 3)), dtype=dtype)
    fn = metrics.METRICS.lookup(name)
    values = {form: float(backend.to_host(fn(xp, backend.asarray(y), scores, True)))
              for form, y in _three_forms(rng, n=40).items()}
    assert values["(n, 1)"] == pytest.approx(values["(n,)"]) and values["one-hot"] == pytest.approx(values["(n,)"])


@pytest.mark.parametrize("labels, shown", [
    (np.array([0, 1, 2**64 - 1], dtype=np.uint64), r"\[0, 18446744073709551615\]"),
    (np.array([0.0, 1.0, 1e20]), r"\[0, 100000000000000000000\]"),
    (np.array([0.0, -3e19, 2.0]), r"\[-30000000000000000000, 2\]"),
])
def test_class_indices_beyond_int64_are_named_as_given(backend, labels, shown):
    """The cast to int64 came before the range check: a uint64 index beyond int64 was reported as -1, and a
    float one beyond it as whatever the cast made of it (which on some backends may even land in range)."""
    model = nnx.Sequential(nnx.Dense(2, 3), backend=backend, dtype="float64", seed=0)
    with pytest.raises(ValueError, match=rf"y has class indices in {shown} but the model has 3 outputs"):
        model.fit(np.ones((3, 2)), labels, loss="cross_entropy", epochs=1, verbose=0)
