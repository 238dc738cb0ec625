"""The checks fit, predict, evaluate, check_gradients and save make at the model's boundary (tied or hand-made arrays,
arrays of another library or device, rebound dtypes): legitimate models pass them, and a refusal names the right
array and the right cause."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import nnx


def small_data(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    X = np.random.default_rng(0).normal(size=(n, 4))
    return X, X[:, :1] * 2


def test_a_torch_device_spelled_with_an_index_is_not_taken_for_another_device(tmp_path: Any) -> None:
    # "torch:cpu:0" (as "torch:cuda" or "torch:mps": a device whose name and its tensors' differ) put every parameter
    # on the model's device, but fit's state check compared the names as written and refused each as elsewhere
    pytest.importorskip("torch")
    X, y = small_data()
    model = nnx.Sequential(nnx.Dense(4, 8), nnx.ReLU(), nnx.Dense(8, 1), backend="torch:cpu:0", seed=0)
    model.fit(X, y, loss="mse", epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    nnx.load(tmp_path / "m.npz", backend="torch:cpu:0").fit(X, y, loss="mse", epochs=1, verbose=0)


def test_a_parameter_on_another_device_of_the_same_library_is_still_refused() -> None:
    xp = pytest.importorskip("array_api_strict")
    model = nnx.Sequential(nnx.Dense(4, 1), backend="array_api_strict", seed=0)
    model.parameters()[0].value = xp.asarray(np.zeros((4, 1), "float32"), device=xp.Device("device1"))
    with pytest.raises(TypeError, match=r"'0\.weight' holds an array on device .*device1"):
        model.fit(*small_data(), loss="mse", epochs=1, verbose=0)
