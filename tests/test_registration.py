"""A user's loss, optimizer and metric are known by name once defined, and an unknown name says how to fix it."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import nnx
from nnx.io import CheckpointError
from nnx.losses import LOSSES, MSE, get_loss
from nnx.metrics import METRICS, register_metric
from nnx.optim import OPTIMIZERS, SGD
from nnx.registry import UnknownNameError


class HalfMSE(MSE):
    """Half the mean squared error (scikit-learn's scale), defined outside nnx."""

    def rows(self, xp, y_true, y_pred):
        rows, dZ = super().rows(xp, y_true, y_pred)
        return rows * 0.5, dZ * 0.5


class SignSGD(SGD):
    """Steps by the sign of the gradient: a user's rule, known by name like a built-in."""

    def init_state(self, xp, value):
        return {}

    def update(self, xp, value, grad, state, step, lr):
        return value - lr * xp.sign(grad), state


def test_a_loss_subclass_is_known_by_its_class_name_in_any_case():
    assert isinstance(get_loss("halfmse"), HalfMSE) and isinstance(get_loss("HalfMSE"), HalfMSE)
    assert HalfMSE().get_config() == {"type": "HalfMSE"}
    assert isinstance(get_loss(HalfMSE().get_config()), HalfMSE)


def test_an_optimizer_subclass_is_known_by_name_and_trains(rng):
    assert OPTIMIZERS["signsgd"] is SignSGD
    model = nnx.Sequential(nnx.Dense(3, 1), dtype="float64", seed=0)
    before = model.parameters()[0].value.copy()
    model.fit(rng.standard_normal((16, 3)), rng.standard_normal((16, 1)), optimizer="signsgd", lr=0.01, epochs=1,
              batch_size=16)
    np.testing.assert_allclose(np.abs(model.parameters()[0].value - before), 0.01)


def test_a_registered_metric_is_usable_by_name(rng):
    @register_metric("max_error")
    def max_error(xp, y_true, y_pred, from_logits=False):
        return xp.max(xp.abs(xp.reshape(y_true, y_pred.shape) - y_pred))

    try:
        model = nnx.Sequential(nnx.Dense(3, 1), dtype="float64", seed=0)
        X, y = rng.standard_normal((10, 3)), rng.standard_normal((10, 1))
        result = model.evaluate(X, y, metrics=["max_error"])
        assert result["max_error"] == pytest.approx(float(np.max(np.abs(y - model.predict(X)))))
    finally:
        METRICS.remove("max_error")


def test_a_saved_custom_loss_and_optimizer_load_by_name(tmp_path, rng):
    model = nnx.Sequential(nnx.Dense(3, 1), dtype="float64", seed=0)
    model.fit(rng.standard_normal((16, 3)), rng.standard_normal((16, 1)), loss=HalfMSE(), optimizer="signsgd",
              lr=0.01, epochs=1)
    model.save(tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz")
    assert isinstance(loaded.loss, HalfMSE) and isinstance(loaded.optimizer, SignSGD)


def test_an_unregistered_name_in_a_file_is_named_with_the_fix(tmp_path, rng):
    model = nnx.Sequential(nnx.Dense(3, 1), dtype="float64", seed=0)
    model.fit(rng.standard_normal((16, 3)), rng.standard_normal((16, 1)), loss=HalfMSE(), epochs=1)
    model.save(tmp_path / "m.npz")
    entry = LOSSES.remove("HalfMSE")
    try:
        with pytest.raises(CheckpointError, match=r"unknown loss 'HalfMSE'.*registers itself"):
            nnx.load(tmp_path / "m.npz")
    finally:
        LOSSES.add("HalfMSE", entry)


def _config(path):
    return json.loads(np.load(path)["__config__"].tobytes().decode())


def _rewrite_config(source, target, config):
    """Copy the checkpoint `source` to `target` with its JSON config replaced by `config`."""
    with zipfile.ZipFile(source) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    blob = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)
    with zipfile.ZipFile(target, "w") as zf:
        for name, data in entries.items():
            if name != "__config__.npy":
                zf.writestr(name, data)
        with zf.open("__config__.npy", "w") as handle:
            np.lib.format.write_array(handle, blob)


def test_an_unknown_layer_type_in_a_file_is_named(tmp_path):
    nnx.Sequential(nnx.Dense(3, 1), seed=0).save(tmp_path / "m.npz")
    config = _config(tmp_path / "m.npz")
    config["model"]["layers"][0]["type"] = "mylib.Conv9d"
    _rewrite_config(tmp_path / "m.npz", tmp_path / "bad.npz", config)
    with pytest.raises(CheckpointError, match=r"unknown layer 'mylib\.Conv9d'.*import the module that defines it"):
        nnx.load(tmp_path / "bad.npz")


def test_two_different_classes_cannot_share_a_name():
    with pytest.raises(ValueError, match="already registered"):
        class Dense(nnx.Layer):  # noqa: F811 - the clash is the point
            pass
    with pytest.raises(UnknownNameError):
        LOSSES.lookup("no_such_loss")


@pytest.mark.parametrize("name", ["", "   ", 3, None])
def test_a_metric_name_must_be_a_non_empty_string(name):
    """An empty name was registered (and found by "  "); a number failed with AttributeError: 'int' ... 'strip'."""
    with pytest.raises(TypeError, match="metric name must be a non-empty string"):
        nnx.metrics.register_metric(name)(lambda xp, y_true, y_pred, from_logits: xp.mean(y_pred))
    assert "" not in nnx.metrics.METRICS


def test_a_name_clash_reads_as_english_for_every_kind():
    with pytest.raises(ValueError, match="an optimizer named 'Adam' is already registered"):
        class Adam(nnx.optim.Optimizer):  # noqa: F811 - the clash is the point
            pass


# -- one naming rule: "type" and the class name for every kind; files from before still load -----------------

def test_every_kind_saves_its_class_name_under_type():
    reg = nnx.regularizers.L2(0.5)
    assert nnx.Dense(2, 3, regularizer=reg).get_config()["type"] == "Dense"
    assert nnx.losses.BinaryCrossEntropy().get_config() == {"type": "BinaryCrossEntropy", "from_logits": False}
    assert reg.get_config() == {"type": "L2", "l": 0.5}
    opt = nnx.optim.Adam(nnx.Sequential(nnx.Dense(2, 1), seed=0).parameters())
    assert opt.state_dict()["type"] == "Adam"
    for registry, name in [(nnx.layers.LAYERS, "dense"), (LOSSES, "mse"), (OPTIMIZERS, "ADAM"),
                           (nnx.regularizers.REGULARIZERS, "l2"), (METRICS, "Accuracy")]:
        assert name in registry and registry[name] is registry[name.upper()]


def test_a_file_in_the_old_format_still_loads(tmp_path, rng):
    """Before one rule, losses and regularizers were saved as {"name": lower-case name}; layers and optimizers
    as {"type": class name}. The test writes such a file itself and loads it."""
    X, y = rng.standard_normal((16, 3)), rng.standard_normal((16, 1))
    model = nnx.Sequential(nnx.Dense(3, 4, regularizer=nnx.regularizers.L1(0.01)), nnx.Tanh(), nnx.Dense(4, 1),
                           regularizer=nnx.regularizers.ElasticNet(0.02, 0.03), dtype="float64", seed=0)
    model.fit(X, y, loss=nnx.losses.MAE(reduction="mean_with_sample_weight"), optimizer="adam", epochs=2,
              batch_size=8)
    model.save(tmp_path / "new.npz")
    old = _config(tmp_path / "new.npz")
    assert old["training"]["loss"] == {"type": "MAE", "reduction": "mean_with_sample_weight"}
    old["training"]["loss"] = {"name": "mae", "reduction": "mean_with_sample_weight"}
    assert old["model"]["regularizer"] == {"type": "ElasticNet", "l1": 0.02, "l2": 0.03}
    old["model"]["regularizer"] = {"name": "elasticnet", "l1": 0.02, "l2": 0.03}
    assert old["model"]["layers"][0]["regularizer"] == {"type": "L1", "l": 0.01}
    old["model"]["layers"][0]["regularizer"] = {"name": "l1", "l": 0.01}
    assert [layer["type"] for layer in old["model"]["layers"]] == ["Dense", "Tanh", "Dense"]  # as before
    assert old["training"]["optimizer"]["type"] == "Adam"  # as before
    _rewrite_config(tmp_path / "new.npz", tmp_path / "old.npz", old)

    loaded = nnx.load(tmp_path / "old.npz")
    assert isinstance(loaded.loss, nnx.losses.MAE) and loaded.loss.reduction == "mean_with_sample_weight"
    assert isinstance(loaded.regularizer, nnx.regularizers.ElasticNet) and loaded.regularizer.l2 == 0.03
    assert isinstance(loaded.layers[0].regularizer, nnx.regularizers.L1) and loaded.layers[0].regularizer.l == 0.01
    assert isinstance(loaded.optimizer, nnx.optim.Adam) and loaded.optimizer.step_count == model.optimizer.step_count
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    assert loaded.evaluate(X, y, metrics=["ACCURACY", "Mae"]).keys() >= {"accuracy", "mae"}  # metrics by any case


def test_an_old_optimizer_state_dict_and_configs_load():
    params = nnx.Sequential(nnx.Dense(2, 1), seed=0).parameters()
    state = nnx.optim.RMSprop(params).state_dict()
    state["type"] = "rmsprop"  # any case names the same class
    nnx.optim.RMSprop(params).load_state_dict(state)
    assert get_loss({"name": "bce", "from_logits": True}).from_logits is True
    assert type(nnx.regularizers.get_regularizer({"name": "l2", "l": 0.1})) is nnx.regularizers.L2
    with pytest.raises(ValueError, match="state_dict is for a Adam optimizer, not a RMSprop"):
        nnx.optim.RMSprop(params).load_state_dict({**state, "type": "Adam"})
