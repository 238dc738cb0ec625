"""Unusual but legitimate user layers, written from docs/custom_layers.md alone: copied, saved and moved."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import nnx


class KeepsItsInput(nnx.Layer):
    """``X * scale`` that keeps its last training input and mask in attributes it never clears, as a user may."""

    def build(self, input_shape):
        self.scale = self.add_parameter("scale", tuple(input_shape), init=1.5)

    def forward(self, X, training=False):
        if training:
            self.X, self.positive = X, X > 0  # left there after backward: the guide does not ask to clear them
        return X * self.scale.value

    def backward(self, dY, need_dX=True):
        self.scale.grad = self.xp.sum(dY * self.X, axis=0)
        return dY * self.scale.value


def test_a_layer_keeping_its_training_arrays_copies_after_a_compiled_fit(backend, dtype):
    """JAX's compiled step left the traced arrays a user's forward kept (`self.X`) in the layer: `copy.deepcopy` of
    the trained model raised UnexpectedTracerError, and the attribute held a value that exists only in a program."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((24, 3)), rng.standard_normal((24, 1))
    model = nnx.Sequential(nnx.Dense(3, 4), KeepsItsInput(), nnx.Dense(4, 1), backend=backend, dtype=dtype, seed=0)
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    model.predict(X)
    twin = copy.deepcopy(model)
    np.testing.assert_array_equal(backend.to_host(twin.predict(X)), backend.to_host(model.predict(X)))
    kept = getattr(model.layers[1], "X", None)  # the plain loop's last batch, or as before the program
    assert kept is None or kept.shape == (8, 4) and np.all(np.isfinite(backend.to_host(kept)))


class StepCounter(nnx.Layer):
    """The identity that counts its training steps in an integer buffer it rebinds."""

    def build(self, input_shape):
        self.steps = self.add_buffer("steps", (), init="zeros")

    def forward(self, X, training=False):
        if training:
            self.steps.value = self.xp.astype(self.steps.value, self.xp.int64) + 1
        return X

    def backward(self, dY, need_dX=True):
        return dY


def test_a_buffer_rebound_to_integers_is_refused_by_save_and_to(backend, tmp_path):
    """A buffer rebound to an integer array was written to the file, which `nnx.load` then refused (the trained
    model could not be read back), and `to()` turned it into floats without a word."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 1))
    # the plain loop keeps the integers (JAX's compiled step makes them floats, as its program's buffers are)
    model = nnx.Sequential(nnx.Dense(3, 1), StepCounter(), backend=backend.with_fastpath(False), dtype="float64",
                           seed=0)
    model.fit(X, y, epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "m.npz"
    with pytest.raises(TypeError, match=r"buffer '1\.steps' holds int64.*float64"):
        model.save(path)
    assert not path.exists()
    with pytest.raises(TypeError, match=r"buffer '1\.steps' holds int64"):
        model.to("numpy")


class LazyScale(nnx.Layer):
    """``X * scale`` that makes its parameter at the first call, where it sees X, as a Keras layer's lazy build."""

    def forward(self, X, training=False):
        if not hasattr(self, "scale"):
            self.scale = self.add_parameter("scale", (X.shape[1],), init=1.5)
        if training:
            self.X = X
        return X * self.scale.value

    def backward(self, dY, need_dX=True):
        self.scale.grad = self.xp.sum(dY * self.X, axis=0)
        return dY * self.scale.value


class LateBlock(nnx.Layer):
    """A block adding its sub-layer at the first call."""

    def forward(self, X, training=False):
        if not hasattr(self, "inner"):
            self.inner = self.add_layer("inner", nnx.Dense(3, 3))
        return self.inner.forward(X, training)

    def backward(self, dY, need_dX=True):
        return self.inner.backward(dY, need_dX)


@pytest.mark.parametrize("layer", [LazyScale, LateBlock])
def test_arrays_made_after_the_layer_was_built_are_refused_by_name(backend, layer):
    """A parameter made in forward joined the model after its optimizer: fit trained every other one and left it at
    its initial value without a word (and JAX's compiled step failed on it with an AttributeError)."""
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    model = nnx.Sequential(nnx.Dense(3, 3), layer(), backend=backend, seed=0)
    with pytest.raises(RuntimeError, match=rf"{layer.__name__}\.add_(parameter|layer)\('(scale|inner)'\) after the "
                                           r"layer was built: .* in build\(\)"):
        model.fit(X, y, loss="mse", optimizer="sgd", epochs=1)


class InitByFunction(nnx.Layer):
    """A weight drawn by one of `nnx.init`'s functions, passed as the function rather than its name."""

    def build(self, input_shape):
        self.weight = self.add_parameter("weight", (input_shape[0], 4), init=nnx.init.glorot_uniform)

    def forward(self, X, training=False):
        return X @ self.weight.value


def test_an_nnx_init_function_passed_as_init_draws_as_its_name_does():
    # found in review: add_parameter called it as init(rng, shape), the signature of a user's function, so
    # nnx.init.glorot_uniform failed with "missing 1 required positional argument: 'fan_out'"
    by_function = nnx.Sequential(nnx.Dense(2, 3), InitByFunction(), seed=4)
    by_name = nnx.Sequential(nnx.Dense(2, 3), nnx.Dense(3, 4, init="glorot"), seed=4)
    np.testing.assert_array_equal(by_function.state_dict()["1.weight"], by_name.state_dict()["1.weight"])


class ScaledBlock(nnx.Layer):
    """A block with a parameter of its own beside a sub-layer (made first in its constructor)."""

    def __init__(self):
        super().__init__()
        self.inner = self.add_layer("inner", nnx.Dense(3, 3))

    def build(self, input_shape):
        self.gain = self.add_parameter("gain", (3,), "ones")

    def forward(self, X, training=False):
        return self.inner.forward(X, training) * self.gain.value

    def backward(self, dY, need_dX=True):
        raise NotImplementedError  # (only the listing is looked at)


def test_a_blocks_own_parameters_are_listed_before_its_sub_layers_as_torch_lists_them():
    """Found by mutation testing: the order parameters() lists a block's own parameters and its sub-layers' in
    (torch's named_parameters: the module's own first) had no test."""
    model = nnx.Sequential(ScaledBlock(), input_shape=(3,), seed=0)
    assert [p.name for p in model.parameters()] == ["0.gain", "0.inner.weight", "0.inner.bias"]

