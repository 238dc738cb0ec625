"""Layers that hold layers: nested Sequential, Residual and a user's block built with `add_layer`.

On every backend each of them trains with `fit`, passes `check_gradients` (which also
catches a backward bug planted inside a block), survives save -> load -> `to()` with the
same predictions, and exports to ONNX with the outputs of `predict`.
"""

from __future__ import annotations

import json
import types
import warnings
import zipfile

import numpy as np
import pytest

import nnx
from nnx.callbacks import GradientAnalyzer
from nnx.io import CONFIG_KEY


class GatedSkip(nnx.Layer):
    """``X + tanh(X W1 + b1) * sigmoid(X W2 + b2)``: a block of two built-in stacks held with `add_layer`."""

    def __init__(self, features: int, planted_bug: bool = False) -> None:
        super().__init__()
        self.features = features
        self.planted_bug = planted_bug
        self.value = self.add_layer("value", nnx.Sequential(nnx.Dense(features, features), nnx.Tanh()))
        self.gate = self.add_layer("gate", nnx.Sequential(nnx.Dense(features, features), nnx.Sigmoid()))
        self._cache = None

    def expected_input_shape(self):
        return (self.features,)

    def forward(self, X, training=False):
        V, G = self.value.forward(X, training), self.gate.forward(X, training)
        if training:
            self._cache = (V, G)
        return X + V * G

    def backward(self, dY, need_dX=True):
        V, G = self._cache
        self._cache = None
        dG = dY * V * (0.5 if self.planted_bug else 1.0)
        dX = self.value.backward(dY * G) + self.gate.backward(dG)
        return dY + dX if need_dX else None

    def to_onnx(self, graph, X):
        product = graph.add_node("Mul", [self.value.to_onnx(graph, X), self.gate.to_onnx(graph, X)])
        return graph.add_node("Add", [X, product])


# Every builder's hidden layers are 5 wide (3 features in, 2 out): few parameters for check_gradients to perturb
# one by one, and one set of shapes for JAX to compile its ops for across the file's tests.
def residual_mlp(backend, dtype, depth=3, seed=0, **kwargs):
    blocks = [nnx.Residual(nnx.Dense(5, 5), nnx.Tanh()) for _ in range(depth)]
    return nnx.Sequential(nnx.Dense(3, 5), *blocks, nnx.Dense(5, 2), backend=backend, dtype=dtype, seed=seed,
                          **kwargs)


def nested_sequential(backend, dtype, seed=0, **kwargs):
    inner = nnx.Sequential(nnx.Dense(5, 5), nnx.Tanh(), nnx.Sequential(nnx.Dense(5, 5), nnx.Tanh()))
    return nnx.Sequential(nnx.Dense(3, 5), nnx.Tanh(), inner, nnx.Dense(5, 2), backend=backend, dtype=dtype,
                          seed=seed, **kwargs)


def gated_blocks(backend, dtype, seed=0, planted_bug=False, **kwargs):
    return nnx.Sequential(nnx.Dense(3, 5), GatedSkip(5, planted_bug=planted_bug), nnx.Dense(5, 2),
                          backend=backend, dtype=dtype, seed=seed, **kwargs)


BUILDERS = {"residual_mlp": residual_mlp, "nested_sequential": nested_sequential, "user_block": gated_blocks}


def _data(n=48, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 3))
    return X, np.tanh(X @ rng.standard_normal((3, 2)))


def _host(model, value):
    return np.array(model.backend.to_host(value))


def _randomize(model, rng, scale=0.5):
    for p in model.parameters():
        p.value = model.backend.asarray(scale * rng.standard_normal(p.shape), dtype=model.dtype)


# -- names, structure -----------------------------------------------------------------------------

def test_arrays_are_named_by_path():
    assert list(residual_mlp("numpy", "float64", depth=2).state_dict()) == [
        "0.weight", "0.bias", "1.0.weight", "1.0.bias", "2.0.weight", "2.0.bias", "3.weight", "3.bias"]
    assert list(nested_sequential("numpy", "float64").state_dict()) == [
        "0.weight", "0.bias", "2.0.weight", "2.0.bias", "2.2.0.weight", "2.2.0.bias", "3.weight", "3.bias"]
    assert list(gated_blocks("numpy", "float64").state_dict()) == [
        "0.weight", "0.bias", "1.value.0.weight", "1.value.0.bias", "1.gate.0.weight", "1.gate.0.bias",
        "2.weight", "2.bias"]


def test_sequential_and_residual_are_layers_and_walk_their_tree():
    model = nested_sequential("numpy", "float64")
    assert isinstance(model, nnx.Layer) and isinstance(nnx.Residual(nnx.Tanh()), nnx.Layer)
    paths = [path for path, _ in model.named_layers()]
    assert paths == ["0", "1", "2", "2.0", "2.1", "2.2", "2.2.0", "2.2.1", "3"]
    assert [path for path, _ in model.named_layers(recurse=False)] == ["0", "1", "2", "3"]
    inner = model.layers[2]
    assert inner.nested and inner.backend is model.backend and inner.dtype == "float64"
    assert [p.name for p in inner.parameters()] == ["2.0.weight", "2.0.bias", "2.2.0.weight", "2.2.0.bias"]


def test_nested_initial_weights_follow_the_outer_seed():
    a, b = nested_sequential("numpy", "float64", seed=5), nested_sequential("numpy", "float64", seed=5)
    for name, value in a.state_dict().items():
        np.testing.assert_array_equal(value, b.state_dict()[name])


def test_summary_shows_each_sub_layer_by_path():
    lines: list[str] = []
    residual_mlp("numpy", "float32", depth=1).summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "1: Residual" in text and "  1.0: Dense" in text and "  1.1: Tanh" in text
    assert "trainable parameters: 62;" in text  # 3*5+5 + 5*5+5 + 5*2+2


# -- shape checks and misuse -------------------------------------------------------------------------

def test_residual_checks_the_shapes_when_built():
    with pytest.raises(ValueError, match=r"Residual .* input \(4,\) gives output \(3,\)"):
        nnx.Sequential(nnx.Dense(2, 4), nnx.Residual(nnx.Dense(4, 3)))


def test_residual_checks_the_shapes_at_run_time_when_unknown():
    model = nnx.Sequential(nnx.Residual(nnx.Flatten()), seed=0)  # sample shape unknown until data arrives
    with pytest.raises(ValueError, match=r"input shape \(4, 2, 3\) gives output shape \(4, 6\)"):
        model.predict(np.zeros((4, 2, 3)))


def test_a_trained_model_cannot_be_nested():
    inner = nnx.Sequential(nnx.Dense(3, 2), seed=0)
    X, y = _data(8)
    inner.fit(X, y, epochs=1)
    with pytest.raises(ValueError, match=r"a trained Sequential cannot be placed inside another model"):
        nnx.Sequential(inner)


def test_a_model_with_loaded_weights_cannot_be_nested(tmp_path):
    """Nesting rebuilds a model with new weights: pretrained ones, loaded but never fit, were silently replaced."""
    pretrained = nnx.Sequential(nnx.Dense(3, 2), seed=0)
    encoder = nnx.Sequential(nnx.Dense(3, 2), seed=1)
    encoder.load_state_dict(pretrained.state_dict())
    pretrained.save(tmp_path / "encoder.npz")
    for loaded in (encoder, nnx.load(tmp_path / "encoder.npz"), pretrained.to("numpy")):
        with pytest.raises(ValueError, match=r"weights were loaded .* cannot be placed inside another model"):
            nnx.Sequential(loaded, nnx.Dense(2, 1))
    model = nnx.Sequential(nnx.Sequential(nnx.Dense(3, 2)), nnx.Dense(2, 1), seed=2)
    model.layers[0].load_state_dict(pretrained.state_dict())  # the way the message points to
    np.testing.assert_array_equal(model.state_dict()["0.0.weight"], pretrained.state_dict()["0.weight"])


def test_add_layer_refuses_bad_names_and_objects():
    block = nnx.Layer()
    dense = nnx.Dense(2, 2)
    block.add_layer("a", dense)
    with pytest.raises(ValueError, match=r"already has a sub-layer or array named 'a'"):
        block.add_layer("a", nnx.Dense(2, 2))
    with pytest.raises(ValueError, match=r"already held here"):
        block.add_layer("b", dense)
    with pytest.raises(ValueError, match=r"without dots, got 'x.y'"):
        block.add_layer("x.y", nnx.Dense(2, 2))
    with pytest.raises(TypeError, match=r"expected an nnx Layer, got str"):
        block.add_layer("c", "relu")


def test_one_layer_object_in_two_places_is_refused():
    dense = nnx.Dense(4, 4)
    with pytest.raises(ValueError, match=r"already belongs to a model"):
        nnx.Sequential(nnx.Residual(dense), nnx.Residual(dense))


def test_a_nested_model_cannot_join_a_second_place():
    """A model placed inside another belongs to it: a second place would share or re-initialise its weights."""
    X = np.ones((2, 3))
    inner = nnx.Sequential(nnx.Dense(3, 3))
    first = nnx.Sequential(inner, seed=0)
    before = first.predict(X)
    with pytest.raises(ValueError, match=r"already belongs to a model"):
        nnx.Sequential(inner, seed=1)
    np.testing.assert_array_equal(first.predict(X), before)  # the first model keeps its weights
    assert [p.name for p in first.parameters()] == ["0.0.weight", "0.0.bias"]
    twice = nnx.Sequential(nnx.Dense(3, 3))
    with pytest.raises(ValueError, match=r"already belongs to a model"):
        nnx.Sequential(nnx.Residual(twice), nnx.Residual(twice))



def test_a_model_that_fails_to_build_leaves_its_layers_free():
    # found in review: the layers built before the failing one stayed bound to the model that was never made,
    # so building again from them said "already belongs to a model"
    dense = nnx.Dense(4, 4)
    with pytest.raises(ValueError, match=r"already held here"):
        nnx.Sequential(dense, dense)
    trained = nnx.Sequential(nnx.Dense(4, 2), seed=0)
    trained.fit(np.ones((2, 4)), np.ones((2, 2)), epochs=1)
    with pytest.raises(ValueError, match=r"a trained Sequential cannot be placed"):
        nnx.Sequential(dense, nnx.Residual(nnx.Dense(4, 4)), trained)
    model = nnx.Sequential(dense, nnx.Dense(4, 2), seed=0)
    assert [p.name for p in model.parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias"]

def test_a_containers_layers_cannot_be_changed_after_it_is_built(tmp_path):
    """Found in review: `model.layers.pop()` (Keras's `model.pop()`) ran one layer fewer while the popped layer's
    weights stayed in parameters(), state_dict() and the saved file, which then did not load; the model kept the
    old output shape. The held layers are fixed when the container is built."""
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.ReLU(), nnx.Residual(nnx.Dense(4, 4)), nnx.Dense(4, 4), seed=0)
    for container in (model, model.layers[2]):
        with pytest.raises((AttributeError, TypeError)):
            container.layers.pop()
        with pytest.raises((AttributeError, TypeError)):
            container.layers.append(nnx.Dense(4, 4))
        with pytest.raises(TypeError):
            container.layers[-1] = nnx.Dense(4, 4)
        with pytest.raises(TypeError):
            del container.layers[-1]
    assert len(model.layers) == 4 and len(model.layers[2].layers) == 1
    model.fit(np.ones((5, 3)), np.zeros((5, 4)), loss="mse", epochs=1)
    model.save(tmp_path / "m.npz")
    assert list(nnx.load(tmp_path / "m.npz").state_dict()) == list(model.state_dict())


# -- every backend: fit, gradients, save/load/to, ONNX ------------------------------------------------

@pytest.mark.parametrize("kind", list(BUILDERS))
def test_containers_train_with_fit(backend, dtype, kind):
    X, y = _data()
    model = BUILDERS[kind](backend, dtype)
    first = model.evaluate(X, y, loss="mse")["loss"]
    history = model.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=15, batch_size=16)
    assert history.history["loss"][-1] < 0.5 * first


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_containers_pass_check_gradients(backend, kind):
    rng = np.random.default_rng(0)
    # two residual blocks in a row nest as three do, at 92 parameters for 122: each one costs two forward passes
    depth = {"depth": 2} if kind == "residual_mlp" else {}
    model = BUILDERS[kind](backend, "float64", regularizer=nnx.regularizers.L2(0.1), **depth)
    _randomize(model, rng)
    X = rng.standard_normal((5, 3))
    assert nnx.check_gradients(model, X, rng.standard_normal((5, 2)), "mse") < 1e-6


def test_a_nested_models_regularizer_counts_in_loss_and_gradient(backend):
    rng = np.random.default_rng(1)
    inner = nnx.Sequential(nnx.Dense(5, 5, regularizer="l1"), nnx.Tanh(), regularizer=nnx.regularizers.L2(0.3))
    model = nnx.Sequential(nnx.Dense(3, 5), inner, nnx.Dense(5, 2), backend=backend, dtype="float64", seed=0)
    _randomize(model, rng)
    W = _host(model, model.layers[1].layers[0].weight.value)
    expected = 0.3 / 2 * np.sum(W**2) + 1e-4 * np.sum(np.abs(W))
    assert float(model.backend.to_float(model.penalty())) == pytest.approx(expected, rel=1e-12)
    assert nnx.check_gradients(model, rng.standard_normal((5, 3)), rng.standard_normal((5, 2))) < 1e-6


def test_check_gradients_catches_a_bug_planted_in_a_users_block(backend):
    rng = np.random.default_rng(2)
    model = gated_blocks(backend, "float64", planted_bug=True)
    _randomize(model, rng)
    assert nnx.check_gradients(model, rng.standard_normal((5, 3)), rng.standard_normal((5, 2))) > 1e-3


def test_check_gradients_catches_a_bug_planted_in_a_residual(backend, monkeypatch):
    def drops_the_skip(self, dY, need_dX=True):
        return nnx.layers.containers._Chain.backward(self, dY, need_dX)

    monkeypatch.setattr(nnx.Residual, "backward", drops_the_skip)
    rng = np.random.default_rng(3)
    model = residual_mlp(backend, "float64", depth=1)
    _randomize(model, rng)
    assert nnx.check_gradients(model, rng.standard_normal((5, 3)), rng.standard_normal((5, 2))) > 1e-3


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_containers_survive_save_load_to(backend, dtype, kind, tmp_path):
    X, y = _data()
    model = BUILDERS[kind](backend, dtype)
    model.fit(X, y, loss="mse", epochs=2, batch_size=16)
    pred = _host(model, model.predict(X))
    model.save(tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz", backend=backend)
    assert [type(layer) for _, layer in loaded.named_layers()] == [type(layer) for _, layer in model.named_layers()]
    np.testing.assert_array_equal(_host(loaded, loaded.predict(X)), pred)
    moved = loaded.to(backend)
    np.testing.assert_array_equal(_host(moved, moved.predict(X)), pred)
    on_numpy = moved.to("numpy")
    np.testing.assert_allclose(np.asarray(on_numpy.predict(X)), pred, rtol=1e-5, atol=1e-6)
    # training continues identically from the loaded optimizer state and shuffle stream (the settings of the fit
    # above: on JAX its epoch program, where shuffle=False would compile one more)
    model.fit(X, y, epochs=1, batch_size=16)
    loaded.fit(X, y, epochs=1, batch_size=16)
    np.testing.assert_allclose(_host(loaded, loaded.predict(X)), _host(model, model.predict(X)), rtol=1e-6,
                               atol=1e-7)


def test_a_nested_model_saves_moves_and_copies_its_weights_on_its_own(backend, tmp_path):
    """As torch's ``model[2].state_dict()``: a nested model's arrays are named within it, so it round-trips alone."""
    X = np.tile(_data()[0], 2)[:, :5]  # five features, as the nested model takes
    model = nested_sequential(backend, "float64")
    inner = model.layers[2]
    pred = _host(inner, inner.predict(X))
    names = ["0.weight", "0.bias", "2.0.weight", "2.0.bias"]
    assert list(inner.state_dict()) == names
    fresh = nnx.Sequential(nnx.Dense(5, 5), nnx.Tanh(), nnx.Sequential(nnx.Dense(5, 5), nnx.Tanh()),
                           backend=backend, dtype="float64")
    fresh.load_state_dict(inner.state_dict())
    inner.save(tmp_path / "inner.npz")  # it wrote a file that no load could read
    for alone in (fresh, inner.to(backend), nnx.load(tmp_path / "inner.npz")):
        assert not alone.nested and alone.dtype == "float64"
        np.testing.assert_array_equal(_host(alone, alone.predict(X)), pred)
    inner.fit(X, np.zeros_like(X), loss="mse", optimizer="adam", epochs=1)
    assert [p.name for p in inner.to(backend).optimizer.params] == names
    inner.load_state_dict(fresh.state_dict())  # and back into the model that holds it
    np.testing.assert_array_equal(_host(model, model.state_dict()["2.0.weight"]),
                                  _host(fresh, fresh.state_dict()["0.weight"]))

def test_calling_a_nested_model_prepares_its_input_as_a_standalone_one_does(backend):
    """``model.layers[2](X)``, as torch's ``model[2](x)``: X moved to the backend and cast to the model's dtype."""
    model = nested_sequential(backend, "float32")
    inner = model.layers[2]
    X = np.tile(_data(4)[0], 2)[:, :5]  # float64 NumPy data: a float32 model gave float64, and torch failed in matmul
    out = inner(X)
    assert out.dtype == inner.predict(X).dtype == model.backend.float_dtype("float32")
    if backend.can_compile:
        # the call runs op by op, predict one compiled program, which may fuse a product and an add into one
        # rounding (1 ulp apart under jaxlib 0.11's CPU code generator): float32's compiled-against-op-by-op tolerance
        np.testing.assert_allclose(_host(inner, out), _host(inner, inner.predict(X)), rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_array_equal(_host(inner, out), _host(inner, inner.predict(X)))
    with pytest.raises(ValueError, match=r"X has 3 features but the model expects 5"):
        inner(X[:, :3])


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_containers_export_to_onnx(backend, dtype, kind, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    X, y = _data()
    model = BUILDERS[kind](backend, dtype)
    model.fit(X, y, loss="mse", epochs=1, batch_size=16)
    model.to_onnx(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": X.astype(model.dtype)})
    tol = {"rtol": 1e-5, "atol": 1e-6} if model.dtype == "float32" else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(out, _host(model, model.predict(X)), **tol)


def test_onnx_names_a_missing_exporter_by_path(tmp_path):
    pytest.importorskip("onnx")

    class NoExport(nnx.Layer):
        def forward(self, X, training=False):
            return X

    model = nnx.Sequential(nnx.Dense(2, 2), nnx.Residual(nnx.Tanh(), NoExport()), seed=0)
    with pytest.raises(NotImplementedError, match=r"layer 1.1 \(NoExport\) has no ONNX exporter"):
        model.to_onnx(tmp_path / "m.onnx")


# -- files written before containers -------------------------------------------------------------------

def test_a_flat_file_without_a_model_type_still_loads(tmp_path):
    X, _ = _data(6)
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.ReLU(), nnx.Dense(4, 2), seed=0)
    model.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as npz:
        arrays = dict(npz)
    config = json.loads(arrays[CONFIG_KEY].tobytes())
    del config["model"]["type"]  # as files from before containers were written
    arrays[CONFIG_KEY] = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)
    np.savez(tmp_path / "old.npz", **arrays)
    with zipfile.ZipFile(tmp_path / "old.npz") as zf:
        assert "param/0.weight.npy" in zf.namelist()
    old = nnx.load(tmp_path / "old.npz")
    assert type(old) is nnx.Sequential
    np.testing.assert_array_equal(old.predict(X), model.predict(X))


# -- callbacks and plots walk the tree ----------------------------------------------------------------------

def test_gradient_analyzer_and_its_plot_see_layers_inside_containers():
    X, y = _data()
    model = gated_blocks("numpy", "float64")
    analyzer = GradientAnalyzer(warn=False)
    model.fit(X, y, loss="mse", epochs=2, batch_size=16, callbacks=[analyzer])
    assert analyzer.layer_names == ["0:Dense(3, 5)", "1.value.0:Dense(5, 5)", "1.gate.0:Dense(5, 5)",
                                    "2:Dense(5, 2)"]
    assert analyzer.parameter_names[1] == ["1.value.0.weight", "1.value.0.bias"]
    assert analyzer.history()["weight_mean"].shape == (6, 4)
    assert np.all(analyzer.history()["weight_mean"] > 0)
    pytest.importorskip("matplotlib")
    fig = analyzer.plot()
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "1.gate.0:Dense(5, 5) weight" in labels


def test_the_output_layer_is_found_inside_a_nested_model():
    model = nnx.Sequential(nnx.Dense(2, 4), nnx.Sequential(nnx.Dense(4, 1), nnx.Sigmoid()), seed=0)
    assert type(model.output_layer()) is nnx.Sigmoid
    assert model.resolve_loss(None).get_config() == nnx.losses.BinaryCrossEntropy().get_config()
    with pytest.warns(UserWarning, match=r"treats the outputs as logits, but the model ends in Sigmoid"):
        model.resolve_loss(nnx.losses.BinaryCrossEntropy(from_logits=True))
    residual_last = nnx.Sequential(nnx.Dense(2, 2), nnx.Residual(nnx.Dense(2, 2), nnx.Sigmoid()), seed=0)
    assert type(residual_last.output_layer()) is nnx.Residual  # X + sigmoid(.) is not a probability


# -- one layer object used twice in a forward ------------------------------------------------------------

class DenseTwice(nnx.Layer):
    """``d(tanh(d(X)))`` with one `Dense` object `d`: a shared layer, as Keras and PyTorch allow."""

    def __init__(self, features: int, twice: bool = True) -> None:
        super().__init__()
        self.features = features
        self.twice = twice
        self.d = self.add_layer("d", nnx.Dense(features, features))
        self.act = self.add_layer("act", nnx.Tanh())

    def expected_input_shape(self):
        return (self.features,)

    def forward(self, X, training=False):
        H = self.act.forward(self.d.forward(X, training), training)
        return self.d.forward(H, training) if self.twice else H

    def backward(self, dY, need_dX=True):
        if self.twice:
            dY = self.d.backward(dY)
        return self.d.backward(self.act.backward(dY), need_dX)


def test_a_layer_used_twice_in_one_training_forward_is_refused_by_name(backend):
    """Each layer keeps one call's input for its backward, so a second use would give a wrong gradient (or a
    bare AttributeError): the second training call is refused, naming the layer, on every execution path."""
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 1))
    model = nnx.Sequential(DenseTwice(3), nnx.Dense(3, 1), backend=backend, seed=0)
    before = [_host(model, p.value) for p in model.parameters()]
    model.predict(X)  # inference keeps nothing: a layer may run any number of times
    message = r"Dense '0\.d' was called a second time with training=True in one forward pass"
    with pytest.raises(ValueError, match=message):
        model.fit(X, y, loss="mse", epochs=1, batch_size=4, verbose=0)
    for p, old in zip(model.parameters(), before, strict=True):
        np.testing.assert_array_equal(_host(model, p.value), old)
    with pytest.raises(ValueError, match=message):
        nnx.check_gradients(model, X[:4], y[:4], loss="mse")
    model.layers[0].twice = False  # one use per layer: the same model trains, nothing left over from the refusal
    model.fit(X, y, loss="mse", epochs=1, batch_size=4, verbose=0)
    once = nnx.Sequential(DenseTwice(3, twice=False), nnx.Dense(3, 1), backend=backend, seed=0)
    assert nnx.check_gradients(once, X[:4], y[:4], loss="mse") < 1e-6


class Reapply(nnx.Layer):
    """Applies a layer it was handed (not one it holds): the model's own first Dense, a second time. It keeps the
    layer in an attribute, or out of fit's sight, in an object of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.other = None
        self.kept = types.SimpleNamespace(layer=None)

    def forward(self, X, training=False):
        return (self.other or self.kept.layer).forward(X, training)

    def backward(self, dY, need_dX=True):
        return (self.other or self.kept.layer).backward(dY, need_dX)


@pytest.mark.parametrize("kept", ["attribute", "object"])
@pytest.mark.parametrize("first", [lambda: nnx.Dense(3, 3), nnx.Tanh], ids=["Dense", "Tanh"])
def test_a_layer_of_the_model_applied_again_by_another_is_refused_where_the_step_runs_it(backend, first, kept):
    """On NumPy and torch fit runs a top-level Dense through its kernel, and an undeclared layer (Tanh) through
    its class's plain passes: that call counts as the layer's, and a second use is refused all the same. A layer
    with parameters kept in an attribute is refused before any step, as another part of the model."""
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    model = nnx.Sequential(first(), Reapply(), nnx.Dense(3, 3), backend=backend, seed=0)
    name = type(model.layers[0]).__name__
    message = rf"{name} '0' was called a second time with training=True"
    if kept == "attribute":
        model.layers[1].other = model.layers[0]
        if name == "Dense":
            message = r"attribute 'other' holds layer 0 \(Dense\), another part of the model"
    else:
        model.layers[1].kept.layer = model.layers[0]
    with pytest.raises(ValueError, match=message):
        model.fit(X, y, loss="mse", optimizer="sgd", epochs=1, batch_size=4)


def test_torchs_training_flag_is_refused_not_ignored():
    """Found in review: `bn.training = False` (torch's `.eval()`) was a plain attribute nnx never read, so fit ran
    the BatchNorm in training mode and its running statistics moved without a word. Setting it now says how nnx
    chooses the mode, and reading it finds no such attribute; momentum 0.0 keeps the statistics as they are."""
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.BatchNorm(4), nnx.Dense(4, 1), dtype="float64", seed=0)
    bn = model.layers[1]
    for obj in (bn, model):
        for value in (False, True):
            with pytest.raises(ValueError, match=r"training = (False|True) sets no mode .*momentum to 0\.0"):
                obj.training = value
        with pytest.raises(AttributeError, match="has no training attribute: fit runs"):
            obj.training  # noqa: B018 - reading it is the test
        assert not hasattr(obj, "training")
    X = np.random.default_rng(0).standard_normal((32, 3)) * 3 + 2
    before = np.array(bn.running_mean.value)
    bn.momentum = 0.0
    model.fit(X, X[:, :1], loss="mse", epochs=2, batch_size=8)
    np.testing.assert_array_equal(bn.running_mean.value, before)


def test_a_new_optimizer_by_name_after_a_frozen_subset_says_it_trains_them():
    """Found in review: after fitting with an optimizer on a subset (a frozen layer), fit(optimizer="adam",
    lr=<another rate>), a rate lowered for fine-tuning, made a new Adam over every parameter: the frozen layer
    trained on without a word. It is said now; the same name and rate keep the optimizer, subset and all."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((32, 3)), rng.standard_normal((32, 2))
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.Dense(4, 2), dtype="float64", seed=0)
    model.fit(X, y, loss="mse", optimizer=nnx.optim.Adam(model.layers[1].parameters(), lr=1e-2), epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(X, y, optimizer="adam", lr=1e-2, epochs=1)  # kept: nothing to say
    assert len(model.optimizer.params) == 2
    with pytest.warns(UserWarning, match=r"new optimizer over all .* left 2 of them out \(0\.weight, 0\.bias\): "
                                         r"they train from now on"):
        model.fit(X, y, optimizer="adam", lr=1e-3, epochs=1)
    assert len(model.optimizer.params) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(X, y, optimizer="sgd", epochs=1)  # the last one held them all


def test_freezing_a_layer_keras_style_is_refused_and_the_optimizer_subset_freezes_it():
    """Found in review: `layer.trainable = False` (Keras) was a plain attribute nnx never read, so the "frozen"
    layer, nested or not, trained on. nnx trains what its optimizer holds: setting False now says so, and an
    optimizer built on a subset leaves the rest, inside containers too, unchanged."""
    model = nested_sequential("numpy", "float64")
    for layer in (model.layers[0], model.layers[2], model.layers[2].layers[0]):
        assert layer.trainable
        layer.trainable = True  # what every layer is: allowed
        with pytest.raises(ValueError, match=r"trainable = False .* optimizer"):
            layer.trainable = False
    frozen = model.layers[2]
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    opt = nnx.optim.Adam([p for p in model.parameters() if all(p is not q for q in frozen.parameters())], lr=0.01)
    X, y = _data()
    model.fit(X, y, loss="mse", optimizer=opt, epochs=2)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) == k.startswith("2.") for k in before)


class ScaledWrapper(nnx.Layer):
    """A wrapper of a layer it is given (as Keras's TimeDistributed is): ``scale * inner(X)``."""

    def __init__(self, inner, scale=2.0):
        super().__init__()
        self.inner = self.add_layer("inner", inner)
        self.scale = scale

    def forward(self, X, training=False):
        return self.inner.forward(X, training) * self.scale

    def backward(self, dY, need_dX=True):
        return self.inner.backward(dY * self.scale, need_dX)

    def output_shape(self, input_shape):
        return self.inner.output_shape(input_shape)


class Summed(nnx.Layer):
    """The sum of the branches it is given as a list."""

    def __init__(self, branches):
        super().__init__()
        self.branches = [self.add_layer(f"b{i}", b) for i, b in enumerate(branches)]

    def forward(self, X, training=False):
        return sum(b.forward(X, training) for b in self.branches)

    def backward(self, dY, need_dX=True):
        dXs = [b.backward(dY, need_dX) for b in self.branches]
        return sum(dXs) if need_dX else None

    def output_shape(self, input_shape):
        return self.branches[0].output_shape(input_shape)


def test_a_layer_given_to_a_blocks_constructor_saves_moves_and_is_checked_like_any(backend, tmp_path):
    # found in review: a wrapper taking the layer it wraps (ScaledWrapper(nnx.Dense(4, 2))) could not be saved, moved
    # with to() or gradient-checked (which copies the model): its argument was a layer, not a JSON value
    # five wide, as gated_blocks' layers, and check_gradients on five rows, as the gradient tests above: on JAX the
    # same op shapes, none of its own to compile
    model = nnx.Sequential(nnx.Dense(3, 5), ScaledWrapper(nnx.Sequential(nnx.Dense(5, 5), nnx.Tanh()), scale=0.5),
                           Summed([nnx.Dense(5, 2), ScaledWrapper(nnx.Dense(5, 2))]), backend=backend, dtype="float64",
                           seed=0)
    X, y = _data()
    model.fit(X, y, loss="mse", epochs=1, batch_size=16, verbose=0)
    want = _host(model, model.predict(X))
    path = tmp_path / "block.npz"
    model.save(path)
    loaded = nnx.load(path)
    assert [type(layer).__name__ for layer in loaded.layers] == ["Dense", "ScaledWrapper", "Summed"]
    np.testing.assert_array_equal(_host(loaded, loaded.predict(X)), want)
    moved = model.to("array_api_strict" if model.backend.name == "numpy" else "numpy")
    np.testing.assert_allclose(_host(moved, moved.predict(X)), want, rtol=1e-12, atol=1e-12)
    assert nnx.check_gradients(model, X[:5], np.ones((5, 2)), loss="mse") < 1e-6


class Reuses(nnx.Layer):
    """Refers to a layer of the model without holding it."""

    def __init__(self, other):
        super().__init__()
        self.other = other

    def forward(self, X, training=False):
        return X

    def backward(self, dY, need_dX=True):
        return dY

    def output_shape(self, input_shape):
        return input_shape


def test_a_layer_argument_the_block_does_not_hold_is_not_saved_as_a_copy(tmp_path):
    """A copy built from its config would be a second layer with weights of its own: refused, as before. Saving
    refuses the reference itself first (a layer computing with another part of the model is not trained as torch
    trains it), and the config, asked directly, still says why it cannot hold the layer."""
    first = nnx.Dense(3, 3)
    model = nnx.Sequential(first, Reuses(first), backend="numpy", seed=0)
    with pytest.raises(ValueError, match=r"attribute 'other' holds layer 0 \(Dense\), another part of the model"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
    with pytest.raises(TypeError, match=r"constructor argument other=.* is not a JSON value"):
        model.get_config()
    # found in review: the message only said to override get_config, not that a layer held with add_layer is saved
    with pytest.raises(TypeError, match=r"a layer Reuses does not hold.*self\.add_layer\(name, layer\)"):
        model.layers[1].get_config()


class _PerBatch(nnx.callbacks.Callback):
    """A per-batch hook: the per-step path on every backend."""

    def on_batch_end(self, batch, logs=None):
        pass


def test_a_nested_sequential_with_dropout_compiles_its_jax_step_once_per_batch_shape():
    """Found in review: the inner Sequential holds its model's dropout stream, which was read as one of its
    settings; each draw changed it, so the per-step path traced and compiled the step again at every step."""
    ok, why = nnx.backends.backend_status("jax")
    if not ok:
        pytest.skip(f"jax not available: {why}")
    from nnx.training.compiled import compiled_step_of

    model = nnx.Sequential(nnx.Dense(4, 6), nnx.Sequential(nnx.Dense(6, 5), nnx.Tanh(), nnx.Dropout(0.2)),
                           nnx.Dense(5, 1), backend="jax", dtype="float64", seed=0)
    X = np.random.default_rng(0).standard_normal((48, 4))
    model.fit(X, X[:, :1], loss="mse", optimizer="sgd", epochs=2, batch_size=16, callbacks=[_PerBatch()], verbose=0)
    step = compiled_step_of(model)
    assert step is not None and step.traces == 1, "one batch shape, one trace"
