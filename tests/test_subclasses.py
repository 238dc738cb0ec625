"""A subclass of a built-in is saved, loaded and moved as itself, never as its base class."""

from __future__ import annotations

import numpy as np
import pytest

import nnx


class ScaledDense(nnx.Dense):
    """A Dense whose output is doubled: loaded as a plain Dense it would predict half as much."""

    def forward(self, X, training=False):
        return 2.0 * super().forward(X, training)

    def backward(self, dY, need_dX=True):
        return super().backward(2.0 * dY, need_dX)


class WiderModel(nnx.Sequential):
    """A user's model class: `nnx.load` and `to()` must give it back, not a plain Sequential."""


# each built-in layer, a subclass of it that changes nothing but its name, and where it fits in a model
BUILT_INS = {
    "Dense": (nnx.Dense, (4, 4)),
    "Dropout": (nnx.Dropout, (0.25,)),
    "LeakyReLU": (nnx.LeakyReLU, (0.2,)),
    "ReLU": (nnx.ReLU, ()),
    "Sigmoid": (nnx.Sigmoid, ()),
    "Softplus": (nnx.Softplus, ()),
    "Tanh": (nnx.Tanh, ()),
    "Softmax": (nnx.Softmax, ()),
    "Identity": (nnx.Identity, ()),
    "BatchNorm": (nnx.BatchNorm, (4,)),
    "LayerNorm": (nnx.LayerNorm, (4,)),
    "Flatten": (nnx.Flatten, ()),
    "Residual": (nnx.Residual, None),
    "Sequential": (nnx.Sequential, None),
}
SUBCLASSES = {name: type(f"Subclassed{name}", (base,), {"__doc__": f"A subclass of {name}."})
              for name, (base, _) in BUILT_INS.items()}


def _instance(name):
    cls = SUBCLASSES[name]
    args = BUILT_INS[name][1]
    if args is None:  # containers take layers
        return cls(nnx.Dense(4, 4), nnx.Tanh())
    return cls(*args)


def _host(model, value):
    return np.array(model.backend.to_host(value))


@pytest.mark.parametrize("name", list(BUILT_INS))
def test_a_subclass_of_each_built_in_layer_keeps_its_class(backend, dtype, name, tmp_path):
    layer = _instance(name)
    assert layer.get_config()["type"] == f"Subclassed{name}"
    model = nnx.Sequential(nnx.Dense(3, 4), layer, nnx.Dense(4, 2), backend=backend, dtype=dtype, seed=0)
    X = np.random.default_rng(0).standard_normal((8, 3))
    model.fit(X, np.zeros((8, 2)), loss="mse", epochs=1, batch_size=4)
    pred = _host(model, model.predict(X))
    model.save(tmp_path / "m.npz")
    loaded = nnx.load(tmp_path / "m.npz")
    moved = loaded.to(backend)
    for other in (loaded, moved):
        assert type(other.layers[1]) is SUBCLASSES[name]
        np.testing.assert_array_equal(_host(other, other.predict(X)), pred)


def test_scaled_dense_predicts_the_same_after_save_load_and_to(backend, dtype, tmp_path):
    model = nnx.Sequential(ScaledDense(3, 1), nnx.Sigmoid(), backend=backend, dtype=dtype, seed=0)
    X = np.random.default_rng(1).standard_normal((5, 3))
    pred = _host(model, model.predict(X))
    model.save(tmp_path / "scaled.npz")
    loaded = nnx.load(tmp_path / "scaled.npz")
    assert type(loaded.layers[0]) is ScaledDense
    np.testing.assert_array_equal(_host(loaded, loaded.predict(X)), pred)
    for target in ("numpy", "torch"):
        if target not in nnx.available_backends():
            continue
        moved = model.to(target)
        assert type(moved.layers[0]) is ScaledDense
        np.testing.assert_allclose(_host(moved, moved.predict(X)), pred, rtol=1e-6, atol=1e-7)


def test_scaled_dense_passes_check_gradients(backend):
    model = nnx.Sequential(ScaledDense(3, 2), nnx.Tanh(), backend=backend, dtype="float64", seed=0)
    rng = np.random.default_rng(2)
    assert nnx.check_gradients(model, rng.standard_normal((4, 3)), rng.standard_normal((4, 2))) < 1e-6


def test_a_sequential_subclass_comes_back_as_itself(backend, dtype, tmp_path):
    model = WiderModel(nnx.Dense(3, 2), backend=backend, dtype=dtype, seed=0)
    model.save(tmp_path / "wider.npz")
    assert type(nnx.load(tmp_path / "wider.npz")) is WiderModel
    assert type(model.to(backend)) is WiderModel


def test_loss_regularizer_and_optimizer_subclasses_keep_their_class(tmp_path):
    class SubclassHalfMSE(nnx.losses.MSE):
        """MSE under another name."""

    class StrongL2(nnx.regularizers.L2):
        """L2 under another name."""

    class SlowAdam(nnx.optim.Adam):
        """Adam under another name."""

    model = nnx.Sequential(nnx.Dense(3, 2, regularizer=StrongL2(1e-3)), seed=0, regularizer=StrongL2(1e-2))
    X = np.random.default_rng(3).standard_normal((8, 3))
    model.fit(X, np.zeros((8, 2)), loss=SubclassHalfMSE(), optimizer=SlowAdam(model.parameters()), epochs=1)
    model.save(tmp_path / "m.npz")
    for other in (nnx.load(tmp_path / "m.npz"), model.to("numpy")):
        assert type(other.loss) is SubclassHalfMSE
        assert type(other.optimizer) is SlowAdam
        assert type(other.regularizer) is StrongL2 and type(other.layers[0].regularizer) is StrongL2
