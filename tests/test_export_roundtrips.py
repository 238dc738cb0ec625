"""An ONNX user's and a checkpoint user's round trips: export and serve with onnxruntime, save and load.

Each model exported here is compared with `model.predict` through onnxruntime, in float32 and float64, on
every installed backend; each file written is checked to be whole or absent; each file loaded that is not a
good checkpoint is refused naming what is wrong with it.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest

import nnx
from nnx.io import CheckpointError

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
import nnx.onnx  # noqa: E402  (after the skips)

BACKENDS = [b for b in ("numpy", "torch", "jax", "array_api_strict") if b in nnx.available_backends()]
RTOL = {"float32": 1e-5, "float64": 1e-12}


def run_onnx(path, X, dtype):
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run([nnx.onnx.OUTPUT_NAME], {nnx.onnx.INPUT_NAME: np.asarray(X, dtype=dtype)})[0]


def host(model, Y):
    return np.asarray(model.backend.to_host(Y))


def assert_serves_like_predict(model, path, X):
    expected = host(model, model.predict(X))
    got = run_onnx(path, X, model.dtype)
    assert got.dtype == np.dtype(model.dtype) and got.shape == expected.shape
    scale = float(np.max(np.abs(expected)))
    assert float(np.max(np.abs(got - expected))) <= RTOL[model.dtype] * scale


def block_model(backend, dtype):
    """Every exportable layer kind, a residual block and a nested model among them."""
    return nnx.Sequential(
        nnx.Flatten(), nnx.Dense(6, 8), nnx.BatchNorm(), nnx.ReLU(), nnx.Dropout(0.4),
        nnx.Residual(nnx.Dense(8, 8), nnx.Tanh(), nnx.Dropout(0.2), nnx.LayerNorm()),
        nnx.Sequential(nnx.Dense(8, 8), nnx.LeakyReLU(0.07)),
        nnx.Softplus(), nnx.Dense(8, 8), nnx.Sigmoid(), nnx.Identity(), nnx.Dense(8, 3), nnx.Softmax(),
        input_shape=(2, 3), backend=backend, dtype=dtype, seed=4)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_trained_block_model_serves_as_it_predicts_at_any_batch_size(backend, dtype, tmp_path):
    rng = np.random.default_rng(0)
    X = 1.5 * rng.standard_normal((48, 2, 3)) + 0.3
    model = block_model(backend, dtype)
    model.fit(X, rng.integers(0, 3, 48), loss="cross_entropy", optimizer="adam", lr=0.01, epochs=2,
              batch_size=16, verbose=0)
    path = tmp_path / "block.onnx"
    model.to_onnx(path)
    for n in (1, 5, 48):  # the batch axis is symbolic: any number of rows runs
        assert_serves_like_predict(model, path, X[:n])
    graph = onnx.load(os.fspath(path)).graph
    (inp,), (out,) = graph.input, graph.output
    elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    for value, sample in ((inp, (2, 3)), (out, (3,))):
        dims = value.type.tensor_type.shape.dim
        assert value.type.tensor_type.elem_type == elem
        assert dims[0].dim_param == nnx.onnx.BATCH_DIM and tuple(d.dim_value for d in dims[1:]) == sample
    stored = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}  # constants are stored too
    for name, value in model.state_dict().items():
        assert np.array_equal(stored[name], host(model, value)), name


def test_the_opset_asked_for_is_the_one_declared(tmp_path):
    model = nnx.Sequential(nnx.Dense(3, 2), nnx.LayerNorm(), seed=0)
    for opset in (nnx.onnx.DEFAULT_OPSET, 18):
        model.to_onnx(tmp_path / f"{opset}.onnx", opset=opset)
        proto = onnx.load(os.fspath(tmp_path / f"{opset}.onnx"))
        assert [(o.domain, o.version) for o in proto.opset_import] == [("", opset)]
        assert_serves_like_predict(model, tmp_path / f"{opset}.onnx", np.ones((2, 3)))


class UnexportedDoubling(nnx.Layer):
    """A user's layer with no exporter."""

    def forward(self, X, training=False):
        return 2.0 * X

    def backward(self, dY, need_dX=True):
        return 2.0 * dY


def test_a_users_layer_without_an_exporter_is_named_and_nothing_is_written(tmp_path):
    model = nnx.Sequential(nnx.Dense(3, 3), UnexportedDoubling(), seed=0)
    path = tmp_path / "sub" / "model.onnx"
    with pytest.raises(NotImplementedError, match=r"layer 1 \(UnexportedDoubling\)"):
        model.to_onnx(path)
    assert not path.parent.exists()


def _write_fails(monkeypatch, module_attr):
    """Make the serialiser write part of the file and then fail, as a full disk does."""
    def failing(handle, *args, **kwargs):
        handle.write(b"half a file")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(*module_attr, failing)


@pytest.mark.parametrize("what", ["save", "to_onnx"])
def test_a_write_failing_midway_keeps_the_old_file_and_leaves_no_temporary(what, tmp_path, monkeypatch):
    model = nnx.Sequential(nnx.Dense(3, 2), seed=0)
    path = tmp_path / "model.bin"
    getattr(model, what)(path)
    before = path.read_bytes()
    other = nnx.Sequential(nnx.Dense(3, 2), seed=1)
    if what == "save":
        _write_fails(monkeypatch, (np, "savez"))
    else:  # the proto is serialised first; the failure comes while the bytes go to disk
        real_fsync = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        getattr(other, what)(path)
    if what == "to_onnx":
        monkeypatch.setattr(os, "fsync", real_fsync)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


@pytest.mark.parametrize("what", ["save", "to_onnx"])
def test_a_path_below_a_file_is_refused_naming_the_file(what, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder")
    model = nnx.Sequential(nnx.Dense(3, 2), seed=0)
    with pytest.raises(NotADirectoryError, match="results.*is a file, not a folder"):
        getattr(model, what)(blocker / "run1" / "model.bin")
    assert blocker.read_text() == "a file, not a folder"


@pytest.fixture
def saved(tmp_path):
    rng = np.random.default_rng(1)
    model = nnx.Sequential(nnx.Dense(4, 5), nnx.BatchNorm(), nnx.Tanh(), nnx.Dense(5, 2), seed=2)
    model.fit(rng.standard_normal((32, 4)), rng.standard_normal((32, 2)), loss="mse", optimizer="adam", epochs=2,
              batch_size=8, verbose=0)
    path = tmp_path / "model.npz"
    model.save(path)
    return path


def _with_config(path, change, out):
    entries = dict(np.load(path))
    config = json.loads(entries["__config__"].tobytes().decode("utf-8"))
    change(config)
    entries["__config__"] = np.frombuffer(json.dumps(config).encode("utf-8"), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **entries)
    out.write_bytes(buffer.getvalue())
    return out


@pytest.mark.parametrize("version", [0, -1, None])
def test_a_format_version_no_nnx_wrote_is_refused(saved, tmp_path, version):
    def change(config):
        if version is None:
            del config["format_version"]
        else:
            config["format_version"] = version
    path = _with_config(saved, change, tmp_path / "odd.npz")
    with pytest.raises(CheckpointError, match="format_version"):
        nnx.load(path)


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.99])
def test_a_truncated_checkpoint_is_refused_as_truncated(saved, tmp_path, cut):
    data = saved.read_bytes()
    bad = tmp_path / "cut.npz"
    bad.write_bytes(data[:int(len(data) * cut)])
    with pytest.raises(CheckpointError, match="truncated"):
        nnx.load(bad)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("source", BACKENDS)
def test_weights_and_optimizer_state_cross_backends_bit_for_bit(source, dtype, tmp_path):
    rng = np.random.default_rng(3)
    X, y = rng.standard_normal((24, 4)), rng.standard_normal((24, 2))
    model = nnx.Sequential(nnx.Dense(4, 6), nnx.BatchNorm(), nnx.ReLU(), nnx.Dense(6, 2), backend=source,
                           dtype=dtype, seed=5)
    model.fit(X, y, loss="mse", optimizer="adam", epochs=2, batch_size=8, verbose=0)
    path = tmp_path / "m.npz"
    model.save(path)
    state = {k: host(model, v) for k, v in model.state_dict().items()}
    opt = model.optimizer.state_dict()
    for target in BACKENDS:
        loaded = nnx.load(path, backend=target)
        assert loaded.backend.name == target and loaded.dtype == dtype
        for name, value in loaded.state_dict().items():
            value = host(loaded, value)
            assert value.dtype == np.dtype(dtype) and np.array_equal(value, state[name]), (target, name)
        got = loaded.optimizer.state_dict()
        assert got["step"] == opt["step"] and got["hyperparams"] == opt["hyperparams"]
        for i, entry in opt["state"].items():
            for key, value in entry.items():
                assert np.array_equal(host(loaded, got["state"][i][key]), host(model, value)), (target, i, key)


@pytest.mark.parametrize("what", ["save", "to_onnx"])
def test_a_path_ending_in_a_separator_is_a_folder_not_a_file_name(what, tmp_path):
    # open("exports/", "wb") and torch.save refuse it; writing a file named "exports" would surprise
    model = nnx.Sequential(nnx.Dense(3, 2), seed=0)
    with pytest.raises(IsADirectoryError, match="folder"):
        getattr(model, what)(os.fspath(tmp_path / "exports") + os.sep)
    assert not (tmp_path / "exports").exists()
