"""Dtypes end to end, as a PyTorch, Keras or scikit-learn user hands them to nnx.

Each test is one journey: data of one dtype into a model of another, and what comes out (parameters,
optimizer state, buffers, predictions, the numbers `evaluate` and `History` report) must stay in the model's
dtype or be refused by name; never a silent float64 in a float32 model, nor a score of the wrong thing.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import nnx
from nnx import metrics


def _dtypes(backend, tree) -> set[str]:
    """The dtype names of every array in `tree` (a state dict, an optimizer's state dict, lists of them)."""
    found: set[str] = set()
    if isinstance(tree, dict):
        for value in tree.values():
            found |= _dtypes(backend, value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            found |= _dtypes(backend, value)
    elif hasattr(tree, "dtype") and hasattr(tree, "shape"):
        found.add(str(backend.to_host(tree).dtype))
    return found


@pytest.mark.parametrize("spec", ["numpy", "array_api_strict", "torch"])
def test_a_float32_model_stays_float32_whatever_dtypes_the_data_comes_in(spec):
    # uint8 images, int64 targets, float16 validation features beside bool... targets, int sample weights, then
    # float64 and bool X: every one is cast at the boundary, and nothing of float64 reaches the parameters,
    # BatchNorm's running statistics or Adam's moments; the numbers reported are Python floats
    # not JAX: its compiles of these programs take seconds, and the casts are the backends' shared asarray
    if spec not in nnx.available_backends():
        pytest.skip(f"{spec} is not installed")
    backend = nnx.get_backend(spec)
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, size=(24, 3)).astype(np.uint8)
    y = (X[:, :1] // 64).astype(np.int64)
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.BatchNorm(4), nnx.ReLU(), nnx.Dense(4, 1), backend=backend, seed=0)
    history = model.fit(X, y, loss="mse", optimizer="adam", epochs=1, batch_size=8, verbose=0,
                        validation_data=(X.astype(np.float16), y.astype(bool)), sample_weight=np.arange(24) % 3,
                        metrics=["mae"])
    model.fit(X.astype(np.float64) / 255, y.astype(np.float64), epochs=1, batch_size=8, verbose=0)
    assert _dtypes(backend, model.state_dict()) == {"float32"}
    assert _dtypes(backend, model.optimizer.state_dict()) <= {"float32", "int32", "int64"}
    assert "float32" in _dtypes(backend, model.optimizer.state_dict())
    assert str(backend.to_host(model.predict(X > 128)).dtype) == "float32"
    scores = model.evaluate(X, y, metrics=["mae"])
    assert all(type(v) is float for v in scores.values())
    assert all(type(v) is float for values in history.history.values() for v in values)
    json.dumps(history.history)


def test_to_float64_carries_the_optimizer_state_and_a_float32_file_loads_as_float64(tmp_path):
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(16, 3)), rng.normal(size=(16, 1))
    model = nnx.Sequential(nnx.Dense(3, 2), nnx.Tanh(), nnx.Dense(2, 1), backend="numpy", seed=0)
    model.fit(X, y, loss="mse", optimizer="adam", epochs=2, batch_size=8, verbose=0)
    wide = model.to(dtype="float64")
    assert _dtypes(wide.backend, wide.state_dict()) == {"float64"}
    assert "float32" not in _dtypes(wide.backend, wide.optimizer.state_dict())
    wide.fit(X, y, epochs=1, batch_size=8, verbose=0)  # goes on from the moments, in float64
    assert _dtypes(wide.backend, wide.state_dict()) == {"float64"}
    model.save(tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz", dtype="float64")
    assert _dtypes(loaded.backend, loaded.state_dict()) == {"float64"}
    np.testing.assert_array_equal(loaded.predict(X), model.to(dtype="float64").predict(X))


def test_class_weights_given_as_python_ints_weigh_as_floats_do():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(15, 3)), np.arange(15) % 3

    def trained(class_weight):
        model = nnx.Sequential(nnx.Dense(3, 3), backend="numpy", seed=0)
        model.fit(X, y, loss="ce", epochs=2, batch_size=5, verbose=0, class_weight=class_weight)
        return model.predict(X)

    np.testing.assert_array_equal(trained({0: 1, 1: 2, np.int64(2): 3}), trained({0: 1.0, 1: 2.0, 2: 3.0}))
    assert not np.array_equal(trained({0: 1, 1: 2, 2: 3}), trained(None))


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


@pytest.mark.parametrize("name", ["precision", "recall", "f1"])
def test_half_precision_outputs_are_counted_exactly(name):
    # a torch model in float16 (or outputs cast to half to save memory): the counts behind precision, recall and
    # f1 were kept in float16, which holds integers exactly only up to 2048, and were off by 1e-3 at 5001 rows
    rng = np.random.default_rng(3)
    y_true, probs = rng.integers(0, 2, 5001), rng.uniform(size=5001).astype(np.float16)
    hits, predicted, actual = np.sum((probs > 0.5) & (y_true == 1)), np.sum(probs > 0.5), np.sum(y_true == 1)
    want = {"precision": hits / predicted, "recall": hits / actual, "f1": 2 * hits / (predicted + actual)}[name]
    assert float(getattr(metrics, name)(np, y_true, probs)) == pytest.approx(want, rel=1e-6)
    by_label = getattr(metrics, f"label_{name}")(np, y_true[:, None], probs[:, None])
    assert float(by_label) == pytest.approx(want, rel=1e-6)


def test_a_bare_torch_module_as_xp_still_scores_mse_and_refuses_labels_by_dtype():
    # the dtype check on y_pred must not ask the bare module for isdtype, which torch does not have
    torch = pytest.importorskip("torch")
    y_true, y_pred = torch.tensor([[1.0], [2.0]]), torch.tensor([[1.5], [2.0]])
    assert float(metrics.mse(torch, y_true, y_pred)) == pytest.approx(0.125)
    with pytest.raises(TypeError, match="y_pred must have a real floating dtype.*int64"):
        metrics.mse(torch, y_true, torch.tensor([[1], [2]]))
