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
