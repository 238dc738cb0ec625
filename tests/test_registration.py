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


def test_a_loss_subclass_is_known_by_its_lower_case_name():
    assert isinstance(get_loss("halfmse"), HalfMSE)
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
        METRICS._entries.pop("max_error")


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
    entry = LOSSES._entries.pop("halfmse")
    try:
        with pytest.raises(CheckpointError, match=r"unknown loss 'halfmse'.*registers itself"):
            nnx.load(tmp_path / "m.npz")
    finally:
        LOSSES._entries["halfmse"] = entry


def test_an_unknown_layer_type_in_a_file_is_named(tmp_path):
    nnx.Sequential(nnx.Dense(3, 1), seed=0).save(tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    raw = np.load(tmp_path / "m.npz")["__config__"]
    config = json.loads(raw.tobytes().decode())
    config["model"]["layers"][0]["type"] = "mylib.Conv9d"
    blob = np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as zf:
        for name, data in entries.items():
            if name != "__config__.npy":
                zf.writestr(name, data)
        with zf.open("__config__.npy", "w") as handle:
            np.lib.format.write_array(handle, blob)
    with pytest.raises(CheckpointError, match=r"unknown layer 'mylib\.Conv9d'.*import the module that defines it"):
        nnx.load(tmp_path / "bad.npz")


def test_two_different_classes_cannot_share_a_name():
    with pytest.raises(ValueError, match="already registered"):
        class Dense(nnx.Layer):  # noqa: F811 - the clash is the point
            pass
    with pytest.raises(UnknownNameError):
        LOSSES.lookup("no_such_loss")
