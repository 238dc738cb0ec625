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


class TiedDecoder(nnx.Layer):
    """torch-style tying by reference: ``H @ encoder.weight.T + bias``, adding its share of the encoder's gradient."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.encoder = encoder

    def output_shape(self, input_shape: Any) -> tuple[int, ...]:
        return (self.encoder.in_features,)

    def build(self, input_shape: Any) -> None:
        self.bias = self.add_parameter("bias", (self.encoder.in_features,))

    def forward(self, H: Any, training: bool = False) -> Any:
        if training:
            self.H = H
        return H @ self.xp.matrix_transpose(self.encoder.weight.value) + self.bias.value

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        W = self.encoder.weight
        self.bias.grad = self.xp.sum(dY, axis=0)
        share = self.xp.matrix_transpose(dY) @ self.H
        W.grad = share if W.grad is None else W.grad + share
        return dY @ W.value


@pytest.mark.parametrize("kept", ["layer", "parameter in a list", "layer in a dict", "the model"])
def test_a_layer_holding_another_part_of_the_model_by_reference_is_refused(backend: Any, kept: str,
                                                                           tmp_path: Any) -> None:
    # Only a parameter kept directly was refused. A decoder computing with `self.encoder.weight` (torch's tying)
    # trained without a word, 0.2 off torch's weights after 3 epochs: the encoder's backward, which runs after the
    # decoder's, sets the weight's gradient and drops the decoder's share. A parameter in a list did the same, and
    # a layer in a dict that was not part of the model was never trained or saved.
    X, y = small_data()
    if kept == "layer":
        encoder = nnx.Dense(4, 3)
        model = nnx.Sequential(encoder, nnx.Tanh(), TiedDecoder(encoder), backend=backend, dtype="float64", seed=0,
                               input_shape=(4,))
        expected = r"layer 2 \(TiedDecoder\): attribute 'encoder' holds layer 0 \(Dense\), another part of the model"
        y = X
    elif kept == "parameter in a list":
        model = nnx.Sequential(nnx.Dense(4, 4), nnx.Dense(4, 1), backend=backend, seed=0)
        model.layers[1].tied = [model.layers[0].weight]
        expected = r"layer 1 \(Dense\): attribute 'tied\[0\]' holds the parameter '0\.weight'.* layer 0 \(Dense\)'s"
    elif kept == "layer in a dict":
        model = nnx.Sequential(nnx.Dense(4, 4), nnx.Dense(4, 1), backend=backend, seed=0)
        model.layers[1].helpers = {"f": nnx.Sequential(nnx.Dense(4, 4), backend=backend, seed=0, input_shape=(4,))}
        expected = r"attribute \"helpers\['f'\]\" holds a Sequential that is not part of the model .*self\.add_layer"
    else:  # (it said "a Sequential that is not part of the model")
        model = nnx.Sequential(nnx.Dense(4, 4), nnx.Dense(4, 1), backend=backend, seed=0)
        model.layers[1].owner = model
        expected = r"layer 1 \(Dense\): attribute 'owner' holds the model itself"
    before = {k: model.backend.to_host(v) for k, v in model.state_dict().items()}
    for refused in (lambda: model.fit(X, y, loss="mse", epochs=1, verbose=0),
                    lambda: nnx.check_gradients(model, X[:4], y[:4], loss="mse"),
                    lambda: model.save(tmp_path / "m.npz")):
        with pytest.raises(ValueError, match=expected):
            refused()
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(model.backend.to_host(value), before[key], err_msg=key)
    assert not (tmp_path / "m.npz").exists()


class Pair(nnx.Layer):
    """A block applying two Dense layers it holds, kept in a tuple and a dict besides (its own: no refusal)."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = self.add_layer("first", nnx.Dense(4, 4)), self.add_layer("second", nnx.Dense(4, 4))
        self.order = (self.first, self.second)
        self.by_name: dict[str, Any] = {"first": self.first}

    def build(self, input_shape: Any) -> None:
        self.by_name["weight"] = self.first.weight  # (built before this block's build)

    def forward(self, X: Any, training: bool = False) -> Any:
        for layer in self.order:
            X = layer.forward(X, training)
        return X

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        for layer in reversed(self.order):
            dY = layer.backward(dY)
        return dY


def test_a_block_keeping_its_own_sub_layers_and_their_arrays_in_containers_trains(backend: Any,
                                                                                   tmp_path: Any) -> None:
    X, y = small_data()
    model = nnx.Sequential(Pair(), nnx.Dense(4, 1), backend=backend, seed=0)
    model.fit(X, y, loss="mse", epochs=1, verbose=0)
    nnx.check_gradients(model, X[:4], y[:4], loss="mse")
    model.save(tmp_path / "m.npz")


def test_a_layer_keeping_a_layer_without_arrays_by_reference_trains(backend: Any) -> None:
    # an activation of the model kept to read (no parameter a gradient could miss) is no tie; found in review
    X, y = small_data()
    act = nnx.Tanh()
    model = nnx.Sequential(nnx.Dense(4, 4), act, nnx.Dense(4, 1), backend=backend, seed=0)
    model.layers[2].activation_before = act
    model.fit(X, y, loss="mse", epochs=1, verbose=0)


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
