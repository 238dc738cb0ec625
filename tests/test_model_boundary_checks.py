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


def test_a_layer_holding_another_layers_parameter_is_told_it_is_that_layers(backend: Any) -> None:
    # the refusal said the parameter "is not in model.parameters(): it would never be trained", which is false for
    # another layer's weight: it is trained, as that layer's, and this layer's backward would overwrite its gradient
    X, y = small_data()
    model = nnx.Sequential(nnx.Dense(4, 4), nnx.Dense(4, 4), nnx.Dense(4, 1), backend=backend, seed=0)
    model.layers[1].encoder_weight = model.layers[0].weight
    with pytest.raises(ValueError) as info:
        model.fit(X, y, loss="mse", epochs=1, verbose=0)
    message = str(info.value)
    assert "layer 1 (Dense)" in message and "'encoder_weight'" in message and "'0.weight'" in message
    assert "layer 0" in message.split("'0.weight'", 1)[1]
    assert "never be trained" not in message and "add_parameter" not in message


def test_a_parameter_on_another_device_of_the_same_library_is_still_refused() -> None:
    xp = pytest.importorskip("array_api_strict")
    model = nnx.Sequential(nnx.Dense(4, 1), backend="array_api_strict", seed=0)
    model.parameters()[0].value = xp.asarray(np.zeros((4, 1), "float32"), device=xp.Device("device1"))
    with pytest.raises(TypeError, match=r"'0\.weight' holds an array on device .*device1"):
        model.fit(*small_data(), loss="mse", epochs=1, verbose=0)


class KeptInFloat64Scale(nnx.Layer):
    """Keeps its scale in float64 on purpose and casts it where it meets the activations."""

    def build(self, input_shape: Any) -> None:
        self.scale = self.add_parameter("scale", (input_shape[-1],), "ones")
        self.scale.value = self.xp.astype(self.scale.value, self.xp.float64)

    def forward(self, X: Any, training: bool = False) -> Any:
        return X * self.xp.astype(self.scale.value, X.dtype)

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        return dY * self.xp.astype(self.scale.value, dY.dtype)


def test_a_bad_metrics_entry_is_not_laid_to_a_parameter_kept_in_another_dtype(backend: Any) -> None:
    # evaluate resolved its metrics inside the guard that names a rebound parameter as the likely cause of a failed
    # forward: a metrics entry of the wrong kind was reported as caused by the float64 scale the layer keeps on purpose
    X, y = small_data()
    model = nnx.Sequential(nnx.Dense(4, 4), KeptInFloat64Scale(), nnx.Dense(4, 1), backend=backend, dtype="float32",
                           seed=0)
    assert np.isfinite(model.evaluate(X, y, loss="mse")["loss"])  # the layer itself works
    for given in (X, [(X, y)]):
        with pytest.raises(TypeError) as info:
            model.evaluate(given, y if given is X else None, loss="mse", metrics=[object()])
        assert str(info.value).startswith("metrics entries must be"), str(info.value)


@pytest.mark.parametrize("write", ["save", "to_onnx"])
def test_a_path_ending_in_a_dot_component_is_a_folder_not_a_file_name(write: str, tmp_path: Any) -> None:
    # Path("ck/.") is Path("ck"), as Path("ck/") is: 87ca639 refused the trailing separator, but "ck/." still wrote
    # a file named ck where open("ck/.", "wb") refuses
    if write == "to_onnx":
        pytest.importorskip("onnx")
    model = nnx.Sequential(nnx.Dense(2, 1), seed=0)
    for name in ("ck/.", "ck/sub/.."):
        with pytest.raises(IsADirectoryError, match="is a folder"):
            getattr(model, write)(f"{tmp_path}/{name}")
    assert list(tmp_path.iterdir()) == []


def test_batches_of_traced_arrays_are_refused_by_name_as_a_traced_array_is() -> None:
    # 011cdd4 named a tracer given as X; a list of traced batches (X as an iterable, as a DataLoader's) still failed
    # with JAX's "Argument of type DynamicJaxprTracer is not a valid JAX type"
    jax = pytest.importorskip("jax")
    model = nnx.Sequential(nnx.Dense(4, 1), backend="jax", seed=0)
    X, y = small_data()
    for call in (lambda x: model.predict([x]), lambda x: model.predict((x,)),
                 lambda x: model.evaluate([(x, x[:, :1])], loss="mse")):
        with pytest.raises(TypeError, match="cannot run inside traced code"):
            jax.jit(call)(jax.numpy.asarray(X))
    assert model.predict([X, X]).shape == (32, 1)  # batches of arrays and lists of rows still run
    assert model.predict(X.tolist()).shape == (16, 1)
