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
