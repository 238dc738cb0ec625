"""Dtypes end to end, as a PyTorch, Keras or scikit-learn user hands them to nnx.

Each test is one journey: data of one dtype into a model of another, and what comes out (parameters,
optimizer state, buffers, predictions, the numbers `evaluate` and `History` report) must stay in the model's
dtype or be refused by name; never a silent float64 in a float32 model, nor a score of the wrong thing.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnx import metrics


@pytest.mark.parametrize("name", ["accuracy", "precision", "recall", "f1", "mse", "r2"])
@pytest.mark.parametrize("given", ["bool", "int64"])
def test_a_metric_refuses_predicted_labels_for_outputs_by_naming_their_dtype(name, given):
    # sklearn's habit, f1_score(y_true, y_pred_labels): nnx's metrics read the model's outputs (probabilities or
    # logits) instead. Bool labels were counted in bool, and f1 came out 2.0; recall 1.0 for 2/3
    y_true = np.array([0, 1, 1, 0, 1])
    labels = np.array([0, 1, 0, 0, 1]).astype(given)
    with pytest.raises(TypeError, match=rf"y_pred.*floating.*{given}"):
        getattr(metrics, name)(np, y_true, labels)
    # the outputs themselves score as before
    probs = np.array([0.1, 0.9, 0.4, 0.2, 0.8], np.float32)
    assert float(metrics.recall(np, y_true, probs)) == pytest.approx(2 / 3)


@pytest.mark.filterwarnings("error")
def test_float64_values_beyond_float32_are_refused_by_the_value_error_alone():
    # pytest's filterwarnings=error (or python -W error) is common in users' projects: NumPy's "overflow
    # encountered in cast", warned from inside nnx before its own check, was what they got instead of the
    # ValueError that names the argument and the range
    import nnx

    X, y = np.ones((4, 2)), np.ones((4, 1))
    X[0, 0] = 1e300
    model = nnx.Sequential(nnx.Dense(2, 1), backend="numpy", seed=0)
    with pytest.raises(ValueError, match=r"^X has values beyond the range of the model's dtype float32"):
        model.fit(X, y, loss="mse", epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"^X has values beyond the range"):
        model.predict(X)
    state = {k: np.asarray(v, dtype=np.float64) for k, v in model.state_dict().items()}
    state["0.weight"][0, 0] = -1e300
    with pytest.raises(ValueError, match=r"state_dict\['0.weight'\] has values beyond the range"):
        model.load_state_dict(state)
