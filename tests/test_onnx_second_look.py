"""ONNX export, a second look: nested containers, non-default and live settings, frozen layers, the output head,
opset and path edge cases, and user layers without an exporter deep in containers.

tests/test_onnx.py checks each layer type, dtype and backend, and tests/test_export_roundtrips.py a trained block
model and the file writes; this file takes the cases between them. onnxruntime is compared with `model.predict`
normwise: the largest difference over the largest output, at most 1e-6 in float32 and 1e-12 in float64.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import nnx

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
import nnx.onnx  # noqa: E402  (after the skips)

TOL = {"float32": 1e-6, "float64": 1e-12}


def run_onnx(path, X, dtype):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    return session.run([nnx.onnx.OUTPUT_NAME], {nnx.onnx.INPUT_NAME: np.asarray(X, dtype=dtype)})[0]


def host(model, Y):
    return np.asarray(model.backend.to_host(Y))


def assert_serves_as_predicted(model, path, X):
    """onnxruntime on `path` gives `model.predict(X)`: same shape and dtype, normwise within TOL; returns it."""
    expected = host(model, model.predict(X))
    got = run_onnx(path, X, model.dtype)
    assert got.dtype == np.dtype(model.dtype) and got.shape == expected.shape
    scale = max(float(np.max(np.abs(expected))), np.finfo(model.dtype).tiny)
    err = float(np.max(np.abs(got - expected))) / scale
    assert err <= TOL[model.dtype], f"normwise error {err:.3g} > {TOL[model.dtype]:g} ({model.dtype})"
    return got


def stored(path):
    return {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(os.fspath(path)).graph.initializer}


def deeply_nested(dtype):
    """A Sequential in a Sequential in a Sequential, a Residual in a Residual, and every setting off its default."""
    return nnx.Sequential(
        nnx.Sequential(nnx.Dense(5, 8), nnx.Sequential(nnx.LeakyReLU(0.37), nnx.BatchNorm(8, momentum=0.7, eps=0.3))),
        nnx.Residual(nnx.Residual(nnx.Dense(8, 8), nnx.Tanh()), nnx.LayerNorm(8, eps=0.5), nnx.Dropout(0.6)),
        nnx.Residual(nnx.Sequential(nnx.Dense(8, 8), nnx.Softplus(), nnx.Dropout(0.3))),
        nnx.Dense(8, 3), nnx.LeakyReLU(2.5),
        dtype=dtype, seed=1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_trained_nested_containers_with_non_default_settings_serve_as_predicted(dtype, tmp_path):
    rng = np.random.default_rng(0)
    X = 3.0 * rng.standard_normal((48, 5)) + 1.0
    model = deeply_nested(dtype)
    model.fit(X, rng.standard_normal((48, 3)), loss="mse", optimizer="adam", lr=0.01, epochs=2, batch_size=16,
              verbose=0)
    bn = model.layers[0].layers[1].layers[1]
    assert np.min(np.abs(host(model, bn.running_var.value) - 1.0)) > 0.1  # running statistics moved far
    path = tmp_path / "nested.onnx"
    model.to_onnx(path)
    for n in (1, 7, 48):  # the batch axis is symbolic
        assert_serves_as_predicted(model, path, X[:n])
    arrays = stored(path)
    for name, value in model.state_dict().items():  # under the model's own paths, as trained
        np.testing.assert_array_equal(arrays[name], host(model, value), err_msg=name)


def test_settings_changed_after_training_and_a_predict_are_the_ones_exported(tmp_path):
    """The live slope (set through torch's name), eps, dropout rate and running statistics, not the constructor's."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((7, 4))
    model = nnx.Sequential(nnx.Dense(4, 4), nnx.Residual(nnx.Sequential(nnx.Dense(4, 4), nnx.LeakyReLU(0.1)),
                                                         nnx.BatchNorm(4), nnx.Dropout(0.2)),
                           nnx.Dense(4, 2), dtype="float64", seed=0)
    before = host(model, model.predict(X))
    inner, bn, dropout = model.layers[1].layers
    inner.layers[1].negative_slope = 0.9
    bn.eps = 2.0
    bn.running_mean.value = model.backend.asarray(np.array([3.0, -1.0, 0.5, 2.0]), dtype="float64")
    dropout.p = 0.9
    path = tmp_path / "live.onnx"
    model.to_onnx(path)
    got = assert_serves_as_predicted(model, path, X)
    assert np.max(np.abs(got - before)) > 0.1  # the changes matter, and the file has them


def test_frozen_layers_export_their_untrained_weights(tmp_path):
    """A layer frozen the nnx way (its parameters left out of the optimizer) exports the values it computes with."""
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((32, 4)), rng.standard_normal((32, 2))
    model = nnx.Sequential(nnx.Dense(4, 6), nnx.LeakyReLU(0.2), nnx.Dense(6, 2), seed=3)
    frozen = model.layers[0]
    initial = {name: host(model, value).copy() for name, value in model.state_dict().items()}
    trained = [p for p in model.parameters() if all(p is not q for q in frozen.parameters())]
    model.fit(X, y, loss="mse", optimizer=nnx.optim.Adam(trained, lr=0.05), epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "frozen.onnx"
    model.to_onnx(path)
    assert_serves_as_predicted(model, path, X)
    arrays = stored(path)
    np.testing.assert_array_equal(arrays["0.weight"], initial["0.weight"])
    assert not np.array_equal(arrays["2.weight"], initial["2.weight"])


@pytest.mark.parametrize("last, loss", [(nnx.Sigmoid, "bce"), (nnx.Softmax, "cross_entropy")])
def test_a_final_activation_folded_into_the_loss_in_training_is_in_the_graph(last, loss, tmp_path):
    """fit folds a final Sigmoid (Softmax) into BCE (cross-entropy) from logits; predict and the graph apply it."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((40, 3))
    n_out = 1 if last is nnx.Sigmoid else 3
    y = (X[:, :1] > 0).astype(np.float64) if n_out == 1 else rng.integers(0, 3, 40)
    model = nnx.Sequential(nnx.Dense(3, 5), nnx.Tanh(), nnx.Dense(5, n_out), last(), dtype="float64", seed=0)
    model.fit(X, y, loss=loss, optimizer="adam", lr=0.05, epochs=2, batch_size=8, verbose=0)
    assert model.output_head(model.loss)[0] == len(model.layers) - 1  # training stopped before the last layer
    path = tmp_path / "probabilities.onnx"
    model.to_onnx(path)
    got = assert_serves_as_predicted(model, path, X)
    assert np.all((got > 0) & (got < 1))  # probabilities, not logits
    if n_out > 1:
        np.testing.assert_allclose(np.sum(got, axis=1), 1.0, rtol=1e-12)


def test_a_model_trained_on_logits_exports_logits_as_predict_gives_them(tmp_path):
    rng = np.random.default_rng(5)
    X = 3.0 * rng.standard_normal((40, 3))
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.ReLU(), nnx.Dense(4, 1), dtype="float64", seed=0)
    model.fit(X, (X[:, :1] > 0).astype(np.float64), loss=nnx.losses.BinaryCrossEntropy(from_logits=True),
              optimizer="adam", lr=0.05, epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "logits.onnx"
    model.to_onnx(path)
    got = assert_serves_as_predicted(model, path, X)
    assert np.min(got) < 0 and np.max(got) > 1  # no sigmoid added on the way out


@pytest.mark.parametrize("opset", [18.0, "18", True, None, 16, "newest + 1"])
def test_an_opset_refused_keeps_the_existing_file(opset, tmp_path):
    model = nnx.Sequential(nnx.Dense(3, 2), nnx.LayerNorm(), seed=0)
    if opset == "newest + 1":
        opset = onnx.defs.onnx_opset_version() + 1
    path = tmp_path / "m.onnx"
    path.write_bytes(b"the previous export")
    with pytest.raises(ValueError, match=r"opset must be an int from 17"):
        model.to_onnx(path, opset=opset)
    assert path.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_an_opset_as_a_numpy_integer_is_written_as_that_opset(tmp_path):
    model = nnx.Sequential(nnx.Dense(3, 2), nnx.LayerNorm(), dtype="float64", seed=0)
    path = tmp_path / "m.onnx"
    model.to_onnx(path, opset=np.int64(18))  # ReduceMean takes its axes as an input from opset 18 on
    assert [(o.domain, o.version) for o in onnx.load(os.fspath(path)).opset_import] == [("", 18)]
    assert_serves_as_predicted(model, path, np.random.default_rng(0).standard_normal((5, 3)))


@pytest.mark.parametrize("spelling", [str, os.fsencode, lambda p: __import__("pathlib").Path(p)])
def test_a_path_under_the_home_folder_is_expanded(spelling, tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", os.fspath(home))
    monkeypatch.chdir(cwd)
    model = nnx.Sequential(nnx.Dense(3, 2), seed=0)
    model.to_onnx(spelling("~/exports/m.onnx"))
    assert (home / "exports" / "m.onnx").is_file() and list(cwd.iterdir()) == []
    assert_serves_as_predicted(model, home / "exports" / "m.onnx", np.ones((2, 3)))


class OnnxLookNoExporter(nnx.Layer):
    """A user's layer with a forward and backward but no to_onnx."""

    def forward(self, X, training=False):
        return 3.0 * X

    def backward(self, dY, need_dX=True):
        return 3.0 * dY


def test_layers_without_an_exporter_deep_in_containers_are_all_named_by_path(tmp_path):
    model = nnx.Sequential(
        nnx.Dense(2, 2),
        nnx.Sequential(nnx.Tanh(), nnx.Residual(nnx.Sequential(nnx.Dense(2, 2), OnnxLookNoExporter()))),
        OnnxLookNoExporter(), seed=0)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"the previous export")
    with pytest.raises(NotImplementedError) as info:
        model.to_onnx(path)
    message = str(info.value)
    assert "1.1.0.1 (OnnxLookNoExporter)" in message and "2 (OnnxLookNoExporter)" in message, message
    assert "to_onnx" in message and "custom_layers.md" in message
    assert path.read_bytes() == b"the previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


class OnnxLookSumOfFeatures(nnx.Layer):
    """Sums each sample's features, (batch, n) -> (batch, 1), but leaves `output_shape` as Layer's (shape kept)."""

    def forward(self, X, training=False):
        return self.xp.sum(X, axis=1, keepdims=True)

    def backward(self, dY, need_dX=True):
        return dY * self.xp.ones((1, 3), dtype=dY.dtype)

    def to_onnx(self, graph, X):
        return graph.add_node("ReduceSum", [X, graph.add_initializer([1], "axes", dtype="int64")])


def test_a_layer_whose_output_shape_is_not_what_it_computes_is_named(tmp_path):
    """The graph's declared output shape comes from the layers' output_shape: a layer that forgot it made onnx's
    shape inference fail naming only the graph's last node ("Identity ... output ... (1) vs (3)")."""
    model = nnx.Sequential(nnx.Dense(4, 3), nnx.Sequential(nnx.Tanh(), OnnxLookSumOfFeatures()), seed=0)
    assert host(model, model.predict(np.ones((2, 4)))).shape == (2, 1)  # what it computes; it declares (3,)
    path = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=r"layer 1\.1 \(OnnxLookSumOfFeatures\).*\(3,\).*output_shape.*\(1,\)"):
        model.to_onnx(path)
    assert not path.exists()
