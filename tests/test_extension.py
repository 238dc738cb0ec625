"""A user's building blocks are first-class: the code of docs/custom_layers.md, run as written, works everywhere.

The layer, regularizer, loss, metric and optimizer here are not copies: they are
the class and function definitions of the guide's code blocks, executed as one
module, so the guide cannot drift from what works.
"""

from __future__ import annotations

import ast
import json
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

import nnx
from nnx.callbacks import GradientAnalyzer
from nnx.io import CheckpointError
from nnx.layers import LAYERS
from nnx.regularizers import REGULARIZERS, get_regularizer

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "custom_layers.md"
MODULE = "nnx_docs_custom_layers"
TRAIN_BACKENDS = ["numpy", "torch", "jax", "array_api_strict"]


def _guide_module() -> types.ModuleType:
    """The imports, classes and functions of every ```python block in the guide, as one module."""
    if MODULE in sys.modules:
        return sys.modules[MODULE]
    text = GUIDE.read_text()
    blocks = [chunk.split("```", 1)[0] for chunk in text.split("```python\n")[1:]]
    keep = (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef)
    body = []
    for block in blocks:
        try:
            tree = ast.parse(block)
        except SyntaxError:
            continue  # a fragment shown inside a class (get_config/from_config override)
        body.extend(node for node in tree.body if isinstance(node, keep) and not _imports_mylib(node))
    module = types.ModuleType(MODULE)
    module.__dict__["nnx"] = nnx
    code = compile(ast.Module(body=body, type_ignores=[]), str(GUIDE), "exec")
    sys.modules[MODULE] = module
    exec(code, module.__dict__)  # noqa: S102 - our own documentation
    return module


def _imports_mylib(node) -> bool:
    """The guide's ``import mylib.layers`` stands for the reader's own package."""
    names = [a.name for a in node.names] if isinstance(node, ast.Import) else [getattr(node, "module", "") or ""]
    return isinstance(node, (ast.Import, ast.ImportFrom)) and any(n.split(".")[0] == "mylib" for n in names)


@pytest.fixture(scope="module")
def guide():
    return _guide_module()


def _model(guide, backend, dtype="float64", seed=0, **kwargs):
    return nnx.Sequential(nnx.Dense(3, 5), guide.CenteredTanh(momentum=0.2), nnx.Dense(5, 2),
                          backend=backend, dtype=dtype, seed=seed, **kwargs)


def _data(n=24):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((n, 3))
    return X, np.tanh(X @ rng.standard_normal((3, 2)))


def _host(model, value):
    return np.array(model.backend.to_host(value))


def _randomize(model, rng):
    for p in model.parameters():
        p.value = model.backend.asarray(rng.standard_normal(p.shape), dtype=model.dtype)


def test_the_guide_defines_what_it_promises(guide):
    assert issubclass(guide.CenteredTanh, nnx.Layer)
    assert LAYERS["CenteredTanh"] is guide.CenteredTanh
    assert LAYERS["GatedResidual"] is guide.GatedResidual
    assert REGULARIZERS["log_penalty"] is guide.LogPenalty
    assert nnx.losses.LOSSES["logcosh"] is guide.LogCosh
    assert nnx.optim.OPTIMIZERS["mylion"] is guide.MyLion
    assert nnx.metrics.METRICS["worst_error"] is guide.worst_error


# -- gradients -----------------------------------------------------------------------------

def test_custom_layer_passes_check_gradients(backend, guide):
    rng = np.random.default_rng(0)
    model = _model(guide, backend)
    _randomize(model, rng)
    X = rng.standard_normal((6, 3))
    err = nnx.check_gradients(model, X, rng.standard_normal((6, 2)), "mse")
    assert err < 1e-6, f"relative error {err:.2e}"


def test_check_gradients_catches_a_wrong_custom_backward(backend, guide, monkeypatch):
    def wrong(self, dY, need_dX=True):
        T, self._cache = self._cache, None
        self.scale.grad = self.xp.sum(dY * T, axis=0)
        return dY * self.scale.value * (1.0 - T * T)  # forgets the batch mean

    monkeypatch.setattr(guide.CenteredTanh, "backward", wrong)
    rng = np.random.default_rng(1)
    model = _model(guide, backend)
    assert nnx.check_gradients(model, rng.standard_normal((6, 3)), rng.standard_normal((6, 2))) > 1e-3


def test_custom_regularizer_loss_and_layer_gradients(backend, guide):
    rng = np.random.default_rng(2)
    model = nnx.Sequential(nnx.Dense(3, 5, regularizer=guide.LogPenalty(0.3)), guide.CenteredTanh(),
                           nnx.Dense(5, 2), backend=backend, dtype="float64", seed=1, regularizer="log_penalty")
    _randomize(model, rng)
    X, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 2))
    assert nnx.check_gradients(model, X, y, "logcosh") < 1e-6
    assert nnx.check_gradients(model, X, y, guide.LogCosh()) < 1e-6


# -- save, load, move ---------------------------------------------------------------------------

def test_custom_layer_survives_save_load_to(backend, guide, tmp_path):
    X, y = _data()
    model = _model(guide, backend)
    model.fit(X, y, optimizer="adam", epochs=3, batch_size=8)
    state = {k: _host(model, v) for k, v in model.state_dict().items()}
    assert "1.running_mean" in state and "1.scale" in state
    assert not np.array_equal(state["1.running_mean"], np.zeros(5))
    pred = _host(model, model.predict(X))
    model.save(tmp_path / "custom.npz")
    loaded = nnx.load(tmp_path / "custom.npz")
    assert isinstance(loaded.layers[1], guide.CenteredTanh) and loaded.layers[1].momentum == 0.2
    np.testing.assert_array_equal(_host(loaded, loaded.predict(X)), pred)
    moved = loaded.to(backend)
    np.testing.assert_array_equal(_host(moved, moved.predict(X)), pred)
    for k, v in moved.state_dict().items():
        np.testing.assert_array_equal(_host(moved, v), state[k], err_msg=k)


def test_custom_layer_moves_across_backends(guide, tmp_path):
    chain = [b for b in TRAIN_BACKENDS if b in nnx.available_backends()]
    X, y = _data()
    model = _model(guide, chain[0])
    model.fit(X, y, optimizer="adam", epochs=2, batch_size=8)
    pred = _host(model, model.predict(X))
    for name in chain[1:]:
        model.save(tmp_path / "m.npz")
        model = nnx.load(tmp_path / "m.npz", backend=name).to(name)
        np.testing.assert_allclose(_host(model, model.predict(X)), pred, rtol=1e-12, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("name", TRAIN_BACKENDS)
def test_custom_blocks_train_with_fit(guide, name):
    if name not in nnx.available_backends():
        pytest.skip(f"{name} is not installed")
    X, y = _data(64)
    model = nnx.Sequential(nnx.Dense(3, 16, regularizer=guide.LogPenalty(1e-4)), guide.CenteredTanh(),
                           nnx.Dense(16, 2), backend=name, dtype="float32", seed=0)
    hist = model.fit(X, y, loss="logcosh", optimizer="adam", lr=0.02, epochs=30, batch_size=16,
                     metrics=["worst_error"])
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert "worst_error" in hist.history
    more = model.fit(X, y, optimizer=guide.MyLion(model.parameters(), lr=1e-3), epochs=2, batch_size=16)
    assert np.all(np.isfinite(more["loss"])) and isinstance(model.optimizer, guide.MyLion)


def test_the_guides_block_trains_checks_saves_moves_and_exports(backend, guide, tmp_path):
    # the module's widths (3 -> 5 -> 2), rows (6 for gradients, 24 in batches of 8) and so its JAX operations
    X, y = _data()
    model = nnx.Sequential(nnx.Dense(3, 5), guide.GatedResidual(5), nnx.Dense(5, 2), backend=backend,
                           dtype="float64", seed=0)
    assert "1.gate.0.weight" in model.state_dict()
    rng = np.random.default_rng(5)
    assert nnx.check_gradients(model, rng.standard_normal((6, 3)), rng.standard_normal((6, 2))) < 1e-6
    hist = model.fit(X, y, optimizer="adam", lr=0.02, epochs=20, batch_size=8)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    pred = _host(model, model.predict(X))
    model.save(tmp_path / "block.npz")
    loaded = nnx.load(tmp_path / "block.npz").to(backend)
    assert isinstance(loaded.layers[1], guide.GatedResidual)
    np.testing.assert_array_equal(_host(loaded, loaded.predict(X)), pred)
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model.to_onnx(tmp_path / "block.onnx")
    session = ort.InferenceSession(str(tmp_path / "block.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": X})[0], pred, rtol=1e-12, atol=1e-12)


def test_custom_regularizer_saved_and_loaded_by_name(guide, tmp_path):
    reg = get_regularizer({"type": "log_penalty", "l": 0.25})
    assert isinstance(reg, guide.LogPenalty) and reg.l == 0.25
    model = nnx.Sequential(nnx.Dense(3, 4, regularizer=guide.LogPenalty(0.5)), nnx.Tanh(), nnx.Dense(4, 1),
                           regularizer=guide.LogPenalty(0.125), dtype="float64", seed=0)
    model.save(tmp_path / "reg.npz")
    loaded = nnx.load(tmp_path / "reg.npz")
    assert isinstance(loaded.regularizer, guide.LogPenalty) and loaded.regularizer.l == 0.125
    assert isinstance(loaded.layers[0].regularizer, guide.LogPenalty) and loaded.layers[0].regularizer.l == 0.5
    assert loaded.backend.to_float(loaded.penalty()) == pytest.approx(model.backend.to_float(model.penalty()))


def test_a_regularizer_subclass_registers_itself():
    class Quartic(nnx.regularizers.Regularizer):
        def penalty(self, W):
            return 0.0

    assert Quartic.name == "Quartic" and REGULARIZERS["quartic"] is Quartic
    REGULARIZERS.remove("Quartic")
    with pytest.raises(ValueError, match=r"unknown regularizer 'quartic'.*registers itself"):
        get_regularizer("quartic")


# -- tools: GradientAnalyzer, plots, summary ------------------------------------------------------

def test_gradient_analyzer_plot_and_summary_see_the_custom_layer(backend, guide):
    X, y = _data()
    model = nnx.Sequential(nnx.Dense(3, 5), guide.CenteredTanh(), nnx.LayerNorm(), nnx.Dense(5, 2),
                           backend=backend, dtype="float64", seed=0)
    analyzer = GradientAnalyzer(warn=False)
    model.fit(X, y, optimizer="adam", epochs=2, batch_size=8, callbacks=[analyzer])
    assert analyzer.layer_names == ["0:Dense(3, 5)", "1:CenteredTanh(5)", "2:LayerNorm(5)", "3:Dense(5, 2)"]
    assert analyzer.parameter_names[1] == ["1.scale"]
    assert analyzer.parameter_names[2] == ["2.weight", "2.bias"]
    hist = analyzer.history()
    assert hist["weight_mean"].shape == (6, 4)
    assert np.all(hist["weight_mean"] > 0)
    np.testing.assert_array_equal(hist["bias_mean"][:, 1], 0.0)  # no bias in CenteredTanh
    assert np.all(hist["bias_mean"][:, [0, 2, 3]] > 0)
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    fig = analyzer.plot()
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert "1:CenteredTanh(5) weight" in labels and "1:CenteredTanh(5) bias" not in labels
    plt.close(fig)
    shown: list[str] = []
    model.summary(print_fn=shown.append)
    summary = "\n".join(shown)
    assert "1: CenteredTanh" in summary and "(batch, 5)" in summary
    assert "trainable parameters: 47; buffers: 5" in summary


def test_gradient_analyzer_combines_several_weight_like_parameters(guide):
    class Bilinear(nnx.Layer):
        def build(self, input_shape):
            self.a = self.add_parameter("a", input_shape, init="ones")
            self.b = self.add_parameter("b", input_shape, init="ones")

        def forward(self, X, training=False):
            if training:
                self._X = X
            return X * self.a.value * self.b.value

        def backward(self, dY, need_dX=True):
            xp = self.xp
            self.a.grad = xp.sum(dY * self._X * self.b.value, axis=0)
            self.b.grad = xp.sum(dY * self._X * self.a.value, axis=0)
            return dY * self.a.value * self.b.value

    try:
        model = nnx.Sequential(nnx.Dense(3, 2), Bilinear(), dtype="float64", seed=0)
        analyzer = GradientAnalyzer(warn=False)
        X, y = _data(8)
        model.fit(X, y, epochs=1, batch_size=8, callbacks=[analyzer])
        grads = np.concatenate([_host(model, p.grad) for p in model.layers[1].parameters()])
        hist = analyzer.history()
        assert analyzer.parameter_names[1] == ["1.a", "1.b"]
        np.testing.assert_allclose(hist["weight_max"][-1, 1], np.abs(grads).max(), rtol=1e-12)
        np.testing.assert_allclose(hist["weight_norm"][-1, 1], np.linalg.norm(grads), rtol=1e-12)
    finally:
        LAYERS.remove("Bilinear")


# -- clear errors --------------------------------------------------------------------------

def test_loading_an_unregistered_layer_names_it_and_the_fix(guide, tmp_path):
    model = _model(guide, "numpy")
    model.save(tmp_path / "m.npz")
    entry = LAYERS.remove("CenteredTanh")
    try:
        with pytest.raises(CheckpointError, match=r"unknown layer 'CenteredTanh'.*import the module that defines it"):
            nnx.load(tmp_path / "m.npz")
    finally:
        LAYERS.add("CenteredTanh", entry)
    assert isinstance(nnx.load(tmp_path / "m.npz").layers[1], guide.CenteredTanh)


def test_a_crafted_file_naming_an_unknown_class_is_refused(tmp_path):
    model = nnx.Sequential(nnx.Dense(2, 2), nnx.Tanh(), dtype="float64", seed=0)
    model.save(tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    config_names = [n for n in entries if "config" in n]
    assert config_names, sorted(entries)
    from io import BytesIO

    raw = np.load(BytesIO(entries[config_names[0]]))
    config = json.loads(bytes(raw).decode() if raw.dtype.kind in "SU" and raw.ndim == 0 else raw.tobytes().decode())
    config["model"]["layers"][1]["type"] = "mylib.Swish"
    data = json.dumps(config).encode()
    buf = BytesIO()
    np.save(buf, np.frombuffer(data, dtype=np.uint8) if raw.dtype == np.uint8 else np.array(data))
    entries[config_names[0]] = buf.getvalue()
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as zf:
        for name, payload in entries.items():
            zf.writestr(name, payload)
    with pytest.raises(CheckpointError, match=r"unknown layer 'mylib.Swish'.*registers itself"):
        nnx.load(tmp_path / "bad.npz")


def test_a_non_json_constructor_argument_fails_at_save_time(tmp_path):
    class Gated(nnx.Layer):
        def __init__(self, gate=np.tanh):
            super().__init__()
            self.gate = gate

        def forward(self, X, training=False):
            return X

        def backward(self, dY, need_dX=True):
            return dY

    try:
        model = nnx.Sequential(nnx.Dense(2, 2), Gated(), seed=0)
        with pytest.raises(TypeError, match=r"Gated: constructor argument gate=.* is not a JSON value.*get_config"):
            model.save(tmp_path / "gated.npz")
        assert not (tmp_path / "gated.npz").exists()
    finally:
        LAYERS.remove("Gated")
