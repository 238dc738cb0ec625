"""What a newcomer reads first says what happened and what to do.

String class labels, labels 0..k-1 given to one sigmoid unit, class indices given to a model whose
loss reads one value per output: each is refused naming what it found and the fix. The progress
lines of a second `fit` number the epochs as the callbacks and their files do.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

import nnx


def _data(n=6):
    return np.random.default_rng(0).standard_normal((n, 3))


def test_string_labels_say_how_to_encode_them(backend, dtype):
    X = _data()
    labels = np.array(["cat", "dog", "cat", "dog", "cat", "bird"])
    model = nnx.Sequential(nnx.Dense(3, 3), backend=backend, dtype=dtype, seed=0)
    hint = r"y must hold numbers, got dtype <U4 \(strings\): .*np\.unique\(labels, return_inverse=True\).*MLPClassifier"
    with pytest.raises(TypeError, match=hint):
        model.fit(X, labels, loss="cross_entropy")
    with pytest.raises(TypeError, match=hint):
        model.fit(X, list(labels), loss="cross_entropy")  # a list of strings, as read from a CSV
    with pytest.raises(TypeError, match=hint.replace("dtype <U4", "dtype object")):
        model.fit(X, labels.astype(object), loss="cross_entropy")  # a pandas column of strings
    with pytest.raises(TypeError, match=r"X must hold numbers, got dtype <U1 \(strings\): .*one-hot"):
        model.fit(np.full((6, 3), "a"), np.arange(6) % 3, loss="cross_entropy")


def test_multiclass_labels_on_one_sigmoid_unit_point_to_cross_entropy(backend, dtype):
    X = _data()
    model = nnx.Sequential(nnx.Dense(3, 1), nnx.Sigmoid(), backend=backend, dtype=dtype, seed=0)
    with pytest.raises(ValueError, match=r"y for binary cross-entropy must lie in \[0, 1\] \(and not be NaN\), "
                                         r"got values in \[0, 2\]; .*3 outputs.*loss=\"cross_entropy\""):
        model.fit(X, np.arange(6) % 3)
    with pytest.raises(ValueError, match=r"validation y for binary cross-entropy .* got values in \[-1, 1\]"):
        model.fit(X, np.arange(6) % 2, validation_data=(X, np.arange(6) % 3 - 1.0))
    with pytest.raises(ValueError, match=r"y for binary cross-entropy must lie in \[0, 1\] \(and not be NaN\), "
                                         r"got NaN"):
        model.fit(X, np.array([0, 1, np.nan, 1, 0, 1]), check_finite=False)


@pytest.mark.parametrize("y, hint", [
    ([0, 1, 2, 3, 1, 0], r'for 4 classes labelled 0\.\.3, give the model 4 outputs and use loss="cross_entropy"'),
    ([-1, 1, 1, -1, 1, -1], r"for labels -1 and 1, give 0 and 1 \(\(y \+ 1\) / 2\)"),
    ([0, 1, 0, 1, 0, 1e6], r"for a regression's targets, end the model without the Sigmoid and use loss=\"mse\""),
    ([0.5, 2.5, 1.0, 0.0, 0.25, 3.75], r"for a regression's targets, end the model without the Sigmoid"),
])
def test_binary_cross_entropy_targets_out_of_range_are_told_what_they_look_like(backend, dtype, y, hint):
    # Found in review: any whole-numbered targets were taken for class labels, so a count of a million asked for
    # "1000001 outputs" (and uint64's largest for 18446744073709551617), and -1/1 labels for 2 classes
    model = nnx.Sequential(nnx.Dense(3, 1), nnx.Sigmoid(), backend=backend, dtype=dtype, seed=0)
    with pytest.raises(ValueError, match=r"y for binary cross-entropy must lie in \[0, 1\] .*; " + hint):
        model.fit(_data(), np.array(y, dtype="float64"))


def test_class_indices_for_a_loss_that_reads_one_value_per_output_point_to_cross_entropy(backend, dtype):
    X = _data()
    model = nnx.Sequential(nnx.Dense(3, 3), backend=backend, dtype=dtype, seed=0)  # three logits
    for labels in (np.arange(6) % 3, (np.arange(6) % 3)[:, None]):
        with pytest.raises(ValueError, match=r"y must have shape \(6, 3\) to match the model's outputs, got "
                                             r"\(6,( 1)?\); for class indices 0\.\.2 use loss=\"cross_entropy\""):
            model.fit(X, labels)  # no loss given: "mse"
    with pytest.raises(ValueError, match=r"got \(6,\)$"):  # not labels: no hint
        model.fit(X, np.linspace(0, 1, 6))


def test_progress_lines_of_a_second_fit_number_epochs_as_the_callbacks_do(tmp_path):
    """A second fit continues the model's epoch count (history.epoch, CSVLogger, ModelCheckpoint's {epoch},
    EarlyStopping's messages); its progress lines said "epoch 1/2" for the file written as epoch 3."""
    X = _data(8)
    y = (X[:, :1] > 0).astype(np.float32)
    model = nnx.Sequential(nnx.Dense(3, 1), nnx.Sigmoid(), seed=0)
    model.fit(X, y, epochs=2)
    out = io.StringIO()
    history = model.fit(X, y, epochs=2, callbacks=[
        nnx.callbacks.ProgressBar(use_tqdm=False, file=out),
        nnx.callbacks.CSVLogger(str(tmp_path / "log.csv")),
        nnx.callbacks.ModelCheckpoint(str(tmp_path / "m{epoch}.npz"), monitor="loss")])
    assert [line.split(" - ")[0] for line in out.getvalue().splitlines()] == ["epoch 3/4", "epoch 4/4"]
    assert [e + 1 for e in history.epoch] == [3, 4]
    assert [row.split(",")[0] for row in (tmp_path / "log.csv").read_text().splitlines()[1:]] == ["3", "4"]
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["m3.npz", "m4.npz"]


def test_a_misspelt_name_is_answered_with_the_closest_valid_one():
    X = _data()
    model = nnx.Sequential(nnx.Dense(3, 1), seed=0)
    with pytest.raises(ValueError, match=r"unknown loss 'mean_squared_eror'; valid names: \[.*\] "
                                         r"\(did you mean 'mean_squared_error'\?\)\. "):
        model.fit(X, X[:, 0], loss="mean_squared_eror")
    with pytest.raises(ValueError, match=r"unknown optimizer 'adm'; valid names: \[.*\] \(did you mean 'Adam'\?\)"):
        model.fit(X, X[:, 0], optimizer="adm")
    for kind, name in (("loss", "hinge"), ("metric", "auc")):  # nothing close ('acc' is not AUC): no guess
        with pytest.raises(ValueError, match=rf"unknown {kind} '{name}'; valid names: \[[^]]*\]\. "):
            model.fit(X, X[:, 0], **{"loss" if kind == "loss" else "metrics": name if kind == "loss" else [name]})
