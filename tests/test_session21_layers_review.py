"""Session 21 review of the layers other than Dense and of the callbacks, as a PyTorch / Keras user meets them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import nnx


def _data(n: int = 32) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    return X, (X[:, :1] > 0).astype(float)


@pytest.mark.parametrize(("metric", "monitor", "recorded"), [
    ("acc", "val_acc", "val_accuracy"), ("Accuracy", "val_Accuracy", "val_accuracy"), ("acc", "acc", "accuracy")])
def test_monitor_of_a_metric_recorded_under_another_name_says_that_name(metric: str, monitor: str,
                                                                        recorded: str, tmp_path: Any) -> None:
    # Keras logs metrics=["acc"] as "acc", so Keras code monitors "val_acc"; nnx records it as "accuracy". The
    # error said "add 'acc' to fit's metrics", which the user had done: it must name what is recorded instead
    X, y = _data()
    for callback in (nnx.callbacks.EarlyStopping(monitor, mode="max"),
                     nnx.callbacks.ModelCheckpoint(str(tmp_path / "m.npz"), monitor=monitor, save_best_only=True,
                                                   mode="max")):
        model = nnx.Sequential(nnx.Dense(3, 1), nnx.Sigmoid(), seed=0)
        with pytest.raises(ValueError, match=f"is recorded as .*: monitor '{recorded}'") as info:
            model.fit(X, y, loss="bce", epochs=1, metrics=[metric], validation_split=0.25, callbacks=[callback])
        assert "add '" not in str(info.value)
