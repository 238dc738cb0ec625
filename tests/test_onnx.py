"""ONNX export: onnxruntime reproduces `model.predict` for every layer type, dtype and backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
import nnx.onnx  # noqa: E402  (after the skips: it needs nothing, but the tests need both)

# Largest |onnx - nnx| allowed, relative to |nnx| elementwise; an output below 1% of the largest one
# counts as 1% of it, since such values come out of a cancellation (a sum of terms of both signs, a
# feature near its mean) whose rounding depends on the order of the operations, not on the export.
RTOL = {"float32": 1e-5, "float64": 1e-12}
FLOOR = 1e-2
MAX_ERRORS: dict[str, float] = {"float32": 0.0, "float64": 0.0}
NORMWISE: dict[str, float] = {"float32": 0.0, "float64": 0.0}


def run_onnx(path, X, dtype):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return session.run([nnx.onnx.OUTPUT_NAME], {nnx.onnx.INPUT_NAME: np.asarray(X, dtype=dtype)})[0]


def assert_matches(model, path, X):
    """onnxruntime on `path` gives `model.predict(X)` within RTOL[model.dtype]; returns the relative error."""
    expected = np.asarray(model.backend.to_host(model.predict(X)))
    got = run_onnx(path, X, model.dtype)
    assert got.dtype == np.dtype(model.dtype) and got.shape == expected.shape
    rtol = RTOL[model.dtype]
    scale = float(np.max(np.abs(expected)))
    err = float(np.max(np.abs(got - expected) / np.maximum(np.abs(expected), FLOOR * scale)))
    MAX_ERRORS[model.dtype] = max(MAX_ERRORS[model.dtype], err)
    NORMWISE[model.dtype] = max(NORMWISE[model.dtype], float(np.max(np.abs(got - expected))) / scale)
    assert err <= rtol, f"relative error {err:.3g} > {rtol:g} ({model.dtype})"
    return err


def train(model, X, epochs=3, loss="mse", y=None, seed=0, batch_size=16):
    if y is None:
        out = (X.shape[0], *model.output_sample_shape)
        y = np.random.default_rng(seed).uniform(0.0, 1.0, out)
    model.fit(X, y, loss=loss, optimizer="adam", lr=0.01, epochs=epochs, batch_size=batch_size, verbose=0)
    return model


# one model per layer type: (layers, input_shape)
LAYER_CASES = {
    "dense": lambda: ([nnx.Dense(6, 4)], None),
    "sigmoid": lambda: ([nnx.Dense(6, 4), nnx.Sigmoid()], None),
    "tanh": lambda: ([nnx.Dense(6, 4), nnx.Tanh()], None),
    "relu": lambda: ([nnx.Dense(6, 4), nnx.ReLU()], None),
    "leaky_relu": lambda: ([nnx.Dense(6, 4), nnx.LeakyReLU(0.13)], None),
    "softplus": lambda: ([nnx.Dense(6, 4), nnx.Softplus()], None),
    "softmax": lambda: ([nnx.Dense(6, 4), nnx.Softmax()], None),
    "identity": lambda: ([nnx.Dense(6, 4), nnx.Identity()], None),
    "dropout": lambda: ([nnx.Dense(6, 4), nnx.Dropout(0.3)], None),
    "batchnorm": lambda: ([nnx.Dense(6, 4), nnx.BatchNorm(momentum=0.3)], None),
    "layernorm": lambda: ([nnx.Dense(6, 4), nnx.LayerNorm(eps=1e-3)], None),
    "layernorm_2d": lambda: ([nnx.LayerNorm((2, 3)), nnx.Flatten(), nnx.Dense(6, 4)], (2, 3)),
    "flatten": lambda: ([nnx.Flatten(), nnx.Dense(6, 4)], (2, 3)),
}


def mixed_model(backend="numpy", dtype="float32", n_in=6, n_out=3):
    return nnx.Sequential(
        nnx.Dense(n_in, 16), nnx.BatchNorm(), nnx.ReLU(), nnx.Dropout(0.2),
        nnx.Dense(16, 8), nnx.LayerNorm(), nnx.Tanh(), nnx.Dense(8, 8), nnx.LeakyReLU(0.05),
        nnx.Dense(8, 8), nnx.Sigmoid(), nnx.Identity(), nnx.Dense(8, n_out), nnx.Softmax(),
        backend=backend, dtype=dtype, seed=3)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", sorted(LAYER_CASES))
def test_each_layer_type_matches_predict(case, dtype, tmp_path):
    layers, input_shape = LAYER_CASES[case]()
    model = nnx.Sequential(*layers, dtype=dtype, seed=1, input_shape=input_shape)
    rng = np.random.default_rng(7)
    X = 2.0 * rng.standard_normal((40, *model.input_shape)) + 0.5
    train(model, X)  # trained weights, and for BatchNorm running statistics away from 0 and 1
    path = tmp_path / f"{case}.onnx"
    model.to_onnx(path)
    assert_matches(model, path, X)
    assert_matches(model, path, rng.standard_normal((9, *model.input_shape)))


def test_batchnorm_uses_running_statistics(tmp_path):
    model = nnx.Sequential(nnx.BatchNorm(3), dtype="float64", seed=0)
    model.layers[0].running_mean.value = model.backend.asarray(np.array([1.0, -2.0, 0.5]), dtype="float64")
    model.layers[0].running_var.value = model.backend.asarray(np.array([4.0, 0.25, 9.0]), dtype="float64")
    model.to_onnx(tmp_path / "bn.onnx")
    X = np.random.default_rng(0).standard_normal((5, 3))
    assert_matches(model, tmp_path / "bn.onnx", X)
    proto = onnx.load(os.fspath(tmp_path / "bn.onnx"))
    stored = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(stored["0.running_var"], [4.0, 0.25, 9.0])



@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batchnorm_keeps_accuracy_when_the_mean_is_large_next_to_the_spread(dtype, tmp_path):
    """Features around 1000 with unit spread: onnxruntime's BatchNormalization folds the mean into the bias
    (x * s + (b - mean * s)), which cancels digits; the export subtracts the mean first, as forward does."""
    model = nnx.Sequential(nnx.BatchNorm(4), dtype=dtype, seed=0)
    rng = np.random.default_rng(3)
    X = 1000.0 + rng.standard_normal((200, 4))
    layer = model.layers[0]
    layer.running_mean.value = model.backend.asarray(1000.0 + 0.01 * rng.standard_normal(4), dtype=dtype)
    layer.running_var.value = model.backend.asarray(rng.uniform(0.5, 2.0, 4), dtype=dtype)
    model.to_onnx(tmp_path / "bn.onnx")
    assert_matches(model, tmp_path / "bn.onnx", X)

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_activation_tails_keep_relative_accuracy(dtype, tmp_path):
    """Elementwise, with no floor: Softplus's and Sigmoid's tiny outputs at large negative inputs (a rate or
    a probability whose log is taken later) are nnx's to full relative precision, not rounded to 0."""
    lowest = {"float32": -100.0, "float64": -740.0}[dtype]
    x = np.linspace(lowest, 40.0, 801)
    for layer in (nnx.Softplus(), nnx.Sigmoid()):
        model = nnx.Sequential(layer, dtype=dtype, input_shape=(x.size,))
        path = tmp_path / f"{type(layer).__name__}.onnx"
        model.to_onnx(path)
        expected = np.asarray(model.predict(x[None]))
        got = run_onnx(path, x[None], dtype)
        err = np.abs(got - expected) / np.abs(expected)
        assert np.all(expected > 0) and np.max(err) <= RTOL[dtype], \
            f"{type(layer).__name__}: relative error {np.max(err):.3g} at x = {x[np.argmax(err[0])]:.4g}"


def test_slope_set_as_an_int_exports(tmp_path):
    """A LeakyReLU slope set after construction as an int (layer.alpha = 2) is a float attribute in the graph."""
    model = nnx.Sequential(nnx.LeakyReLU(), dtype="float32", input_shape=(3,))
    model.layers[0].alpha = 2
    model.to_onnx(tmp_path / "m.onnx")
    assert_matches(model, tmp_path / "m.onnx", np.array([[-1.5, 0.0, 2.0]]))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trained_classifier_on_real_data(dtype, tmp_path):
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    model = mixed_model(dtype=dtype, n_in=30, n_out=2)
    model.fit(X, y, loss="cross_entropy", optimizer="adam", lr=0.01, epochs=8, batch_size=64, verbose=0)
    path = tmp_path / "cancer.onnx"
    model.to_onnx(path)
    assert_matches(model, path, X)
    accuracy = np.mean(np.argmax(run_onnx(path, X, dtype), axis=1) == y)
    assert accuracy > 0.9


def test_trained_on_each_backend(backend, dtype, tmp_path):
    """Weights come to the host from any backend; the graph is in the model's dtype."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((48, 6))
    model = mixed_model(backend=backend, dtype=dtype)
    train(model, X, epochs=2, batch_size=48)  # two steps: JAX traces each new shape anew
    path = tmp_path / "m.onnx"
    model.to_onnx(path)
    assert_matches(model, path, X)
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    proto = onnx.load(os.fspath(path))
    assert all(t.data_type == elem for t in proto.graph.initializer if t.name.endswith(("weight", "bias")))


def test_dynamic_batch_and_names(tmp_path):
    model = mixed_model(dtype="float32")
    train(model, np.random.default_rng(1).standard_normal((32, 6)))
    path = tmp_path / "m.onnx"
    model.to_onnx(path)
    proto = onnx.load(os.fspath(path))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == ("input", "output")
    in_dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in out.type.tensor_type.shape.dim]
    assert in_dims == ["batch", 6] and out_dims == ["batch", 3]
    rng = np.random.default_rng(2)
    for n in (1, 7):
        assert_matches(model, path, rng.standard_normal((n, 6)))


def test_nested_model_exports_under_its_own_state_dict_names(tmp_path):
    """A model used as a layer exports standalone: initializers named as its state_dict names them."""
    inner = nnx.Sequential(nnx.Dense(5, 3), nnx.BatchNorm(), nnx.Softmax())
    outer = nnx.Sequential(nnx.Dense(4, 5), nnx.Tanh(), inner, seed=0)
    train(outer, np.random.default_rng(0).standard_normal((32, 4)))
    inner.to_onnx(tmp_path / "inner.onnx")
    stored = {t.name for t in onnx.load(os.fspath(tmp_path / "inner.onnx")).graph.initializer}
    assert set(inner.state_dict()) <= stored, sorted(stored)
    assert_matches(inner, tmp_path / "inner.onnx", np.random.default_rng(1).standard_normal((7, 5)))
    outer.to_onnx(tmp_path / "outer.onnx")  # the outer model's own names stay full paths
    assert set(outer.state_dict()) <= {t.name for t in onnx.load(os.fspath(tmp_path / "outer.onnx")).graph.initializer}


def test_opset_choice_and_bad_arguments(tmp_path):
    model = nnx.Sequential(nnx.Dense(4, 5), nnx.LayerNorm(), nnx.Sigmoid(), dtype="float64", seed=0)
    X = np.random.default_rng(0).standard_normal((6, 4))
    model.to_onnx(tmp_path / "m18.onnx", opset=18)  # ReduceMean takes its axes as an input from 18 on
    assert_matches(model, tmp_path / "m18.onnx", X)
    assert onnx.load(os.fspath(tmp_path / "m18.onnx")).opset_import[0].version == 18
    with pytest.raises(ValueError, match="input_shape"):
        nnx.Sequential(nnx.Tanh()).to_onnx(tmp_path / "shapeless.onnx")
    with pytest.raises(ValueError, match="opset"):
        model.to_onnx(tmp_path / "old.onnx", opset=12)
    assert not (tmp_path / "old.onnx").exists()


def test_a_folder_as_the_path_is_named(tmp_path):
    """As `save` does: the rename's own error named only the temporary file beside the folder."""
    model = nnx.Sequential(nnx.Dense(3, 2), seed=0)
    with pytest.raises(IsADirectoryError, match=r"is a folder.*model\.onnx"):
        model.to_onnx(tmp_path)
    assert list(tmp_path.iterdir()) == [] and not any(p.name.endswith(".tmp") for p in tmp_path.parent.iterdir())


class SumOfFeatures(nnx.Layer):
    """A layer that does not declare its output's sample shape (output_shape returns None)."""

    def forward(self, X, training=False):
        return self.xp.sum(X, axis=1, keepdims=True)

    def output_shape(self, input_shape):
        return None

    def to_onnx(self, graph, X):
        return graph.add_node("ReduceSum", [X, graph.add_initializer([1], "axes", dtype="int64")])


def test_an_unknown_output_shape_names_the_layer_not_input_shape(tmp_path):
    """The input's shape is known (Dense(4, 3)): the error said to give input_shape, which cannot help."""
    model = nnx.Sequential(nnx.Dense(4, 3), SumOfFeatures(), seed=0)
    with pytest.raises(ValueError, match=r"output.*layer 1 \(SumOfFeatures\).*output_shape") as info:
        model.to_onnx(tmp_path / "m.onnx")
    assert "input_shape=" not in str(info.value)


GUIDE = Path(__file__).resolve().parent.parent / "docs" / "custom_layers.md"


@pytest.fixture(scope="module")
def guide():
    """The guide's code (its CenteredTanh, and check_onnx_export), as tests/test_extension.py loads it."""
    from test_extension import _guide_module

    return _guide_module()


@pytest.fixture
def guide_exporter(guide, monkeypatch):
    """The guide's `to_onnx` fragment, added to its CenteredTanh as the guide says to."""
    section = GUIDE.read_text(encoding="utf-8").split("## Exporting to ONNX", 1)[1]
    fragment = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = dict(vars(guide))
    exec(textwrap.dedent(fragment), namespace)  # noqa: S102 - our own documentation
    exporter = namespace["ExportableCenteredTanh"].to_onnx  # the guide's subclass that adds the exporter
    monkeypatch.setattr(guide.CenteredTanh, "to_onnx", exporter, raising=False)
    return guide


def test_layer_without_exporter_is_named_and_nothing_is_written(guide, tmp_path):
    model = nnx.Sequential(nnx.Dense(3, 2), guide.CenteredTanh(), seed=0)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous file")
    with pytest.raises(NotImplementedError) as info:
        model.to_onnx(path)
    message = str(info.value)
    assert "layer 1 (CenteredTanh)" in message and "to_onnx" in message and "custom_layers.md" in message
    assert path.read_bytes() == b"previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    with pytest.raises(NotImplementedError, match="CenteredTanh"):
        guide.CenteredTanh().to_onnx(None, "input")


class Doubled(nnx.Dense):
    """A Dense whose forward is not Dense's: the inherited exporter would write plain Dense."""

    def forward(self, X, training=False):
        return 2.0 * super().forward(X, training)


class DoubledWithExporter(Doubled):
    def to_onnx(self, graph, X):
        return graph.add_node("Mul", [super().to_onnx(graph, X), graph.add_initializer(2.0, "two")])


class DoubledModel(nnx.Sequential):
    def forward(self, X, training=False):
        return 2.0 * super().forward(X, training)


def test_subclass_overriding_forward_needs_its_own_exporter(tmp_path):
    """A subclass that changes forward but inherits to_onnx is refused, not exported as its parent's graph."""
    path = tmp_path / "m.onnx"
    model = nnx.Sequential(nnx.Tanh(), nnx.Residual(Doubled(4, 4)), seed=0, input_shape=(4,))
    with pytest.raises(NotImplementedError, match=r"layer 1\.0 \(Doubled: .*overrides forward.*Dense"):
        model.to_onnx(path)
    with pytest.raises(NotImplementedError, match=r"DoubledModel.*overrides forward"):
        DoubledModel(nnx.Dense(4, 4), seed=0).to_onnx(path)
    assert not path.exists()
    model = nnx.Sequential(DoubledWithExporter(4, 2), nnx.Sigmoid(), dtype="float64", seed=0)
    model.to_onnx(path)
    assert_matches(model, path, np.random.default_rng(0).standard_normal((5, 4)))


class HalvedHeadModel(nnx.Sequential):
    def forward_to_head(self, X, n_layers, training, runners=None):
        return 0.5 * super().forward_to_head(X, n_layers, training, runners)


def test_a_model_overriding_forward_to_head_needs_its_own_exporter(tmp_path):
    """predict runs a model's forward_to_head: a subclass that overrides it exported its parent's graph silently."""
    path = tmp_path / "m.onnx"
    X = np.random.default_rng(0).standard_normal((5, 4))
    model = HalvedHeadModel(nnx.Dense(4, 2), dtype="float64", seed=0)
    plain = nnx.Sequential(nnx.Dense(4, 2), dtype="float64", seed=0)
    np.testing.assert_allclose(model.predict(X), 0.5 * plain.predict(X))  # what an export would have to give
    with pytest.raises(NotImplementedError, match=r"HalvedHeadModel.*overrides forward_to_head"):
        model.to_onnx(path)
    assert not path.exists()


def test_forward_replaced_on_the_object_needs_its_own_exporter(tmp_path):
    """A forward set on one layer object (as the kernels honour) is refused, not exported as the class's graph."""
    path = tmp_path / "m.onnx"
    model = nnx.Sequential(nnx.Dense(4, 4), nnx.Tanh(), dtype="float64", seed=0)
    tanh = model.layers[1]
    tanh.forward = lambda X, training=False: 2.0 * nnx.activations.tanh(X)
    with pytest.raises(NotImplementedError, match=r"layer 1 \(Tanh: its forward was replaced on the object"):
        model.to_onnx(path)
    assert not path.exists()
    tanh.to_onnx = lambda graph, X: graph.add_node("Mul", [graph.add_node("Tanh", [X]),
                                                           graph.add_initializer(2.0, "two")])
    model.to_onnx(path)
    assert_matches(model, path, np.random.default_rng(0).standard_normal((5, 4)))


class Doubling:
    """A mixin whose forward doubles the output of the class after it in the MRO."""

    def forward(self, X, training=False):
        return 2.0 * super().forward(X, training)


class DoubledTanh(Doubling, nnx.Tanh):
    """forward from the mixin, to_onnx from Tanh: the exporter would write plain Tanh."""


class TenfoldPredictModel(nnx.Sequential):
    def predict(self, X, *args, **kwargs):
        return 10.0 * super().predict(X, *args, **kwargs)


class HalvedInputModel(nnx.Sequential):
    def prepare_inputs(self, X, argname="X"):
        return 0.5 * super().prepare_inputs(X, argname)


def test_forward_from_a_mixin_needs_its_own_exporter(tmp_path):
    """A forward from a mixin listed before the exporter's class in the MRO was exported as that class's graph."""
    path = tmp_path / "m.onnx"
    model = nnx.Sequential(DoubledTanh(), dtype="float64", input_shape=(4,))
    with pytest.raises(NotImplementedError, match=r"layer 0 \(DoubledTanh: .*forward.*Doubling.*Tanh"):
        model.to_onnx(path)
    assert not path.exists()


@pytest.mark.parametrize("cls", [TenfoldPredictModel, HalvedInputModel])
def test_a_model_overriding_predict_or_prepare_inputs_needs_its_own_exporter(cls, tmp_path):
    """predict (and the input preparation it runs) of a model subclass is what an export must compute."""
    path = tmp_path / "m.onnx"
    model = cls(nnx.Dense(4, 2), dtype="float64", seed=0)
    with pytest.raises(NotImplementedError, match=rf"model \({cls.__name__}: .*overrides"):
        model.to_onnx(path)
    assert not path.exists()




class ContribGelu(nnx.Layer):
    """A layer exported through onnxruntime's contrib domain (add_node's `domain`); only its graph is checked."""

    def forward(self, X, training=False):
        return X

    def to_onnx(self, graph, X):
        return graph.add_node("Gelu", [X], domain="com.microsoft")


def test_node_of_another_domain_exports(tmp_path):
    """A custom layer's op in a non-standard domain (add_node(domain=...)) is written with that domain's opset
    import, rather than failing in the IR version lookup with "Unsupported opset-version"."""
    nnx.Sequential(ContribGelu(), input_shape=(3,)).to_onnx(tmp_path / "m.onnx")
    proto = onnx.load(os.fspath(tmp_path / "m.onnx"))
    assert {(o.domain, o.version) for o in proto.opset_import} == {("", 17), ("com.microsoft", 1)}
    got = run_onnx(tmp_path / "m.onnx", np.array([[-1.0, 0.0, 2.0]]), "float32")
    np.testing.assert_allclose(got, [[-0.15865525, 0.0, 1.9544997]], rtol=1e-5)

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_custom_layer_with_the_guides_exporter_round_trips(guide_exporter, dtype, tmp_path):
    guide = guide_exporter
    model = nnx.Sequential(nnx.Dense(3, 5), guide.CenteredTanh(), nnx.Dense(5, 1), dtype=dtype, seed=0)
    X = np.random.default_rng(4).standard_normal((30, 3))
    train(model, X)
    assert float(np.max(np.abs(model.backend.to_host(model.layers[1].running_mean.value)))) > 0
    model.to_onnx(tmp_path / "c.onnx")
    assert_matches(model, tmp_path / "c.onnx", X)
    names = {t.name for t in onnx.load(os.fspath(tmp_path / "c.onnx")).graph.initializer}
    assert {"1.scale", "1.running_mean"} <= names
    guide.check_onnx_export(model, X, path=os.fspath(tmp_path / "guide.onnx"))  # the guide's own check


def test_import_nnx_does_not_import_onnx():
    code = "import sys, nnx; m = nnx.Sequential(nnx.Dense(2, 1)); assert 'onnx' not in sys.modules, 'onnx imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_report_max_errors():
    """Not a check: prints the largest relative errors seen (run with -s), for the record."""
    print(f"\nonnxruntime vs predict, max relative error: {MAX_ERRORS}; max |diff| / max |output|: {NORMWISE}")
