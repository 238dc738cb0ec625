"""Initial values: a trained parameter never starts as NaN or inf without a word.

A user's initializer with a bad argument (a negative gain under a square root) draws NaN on
the host without raising; the model then predicted NaN and `fit` blamed the learning rate at
its first step. The parameter is refused where it is created, naming it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from user_code import DoubledWithAFunction

import nnx
from nnx import init


def _negative_gain_init(rng, shape):
    gain = -2.0  # a typo'd sign: NumPy's sqrt gives NaN (a warning), and normal(0, NaN) draws NaN
    with np.errstate(invalid="ignore"):
        return rng.normal(0.0, np.sqrt(gain / shape[0]), size=shape)


class InitScale(nnx.Layer):
    """X * scale, its scale drawn by `init`."""

    def __init__(self, init="ones"):
        super().__init__()
        self.init = init

    def build(self, input_shape):
        self.scale = self.add_parameter("scale", input_shape, init=self.init)

    def forward(self, X, training=False):
        return X * self.scale.value


@pytest.mark.parametrize("init", [float("nan"), math.inf, -math.inf, _negative_gain_init],
                         ids=["nan", "inf", "-inf", "negative-gain"])
def test_non_finite_initial_parameter_is_refused_naming_it(backend, dtype, init):
    with pytest.raises(ValueError, match=r"'0\.scale'.*NaN or inf"):
        nnx.Sequential(InitScale(init), backend=backend, dtype=dtype, seed=0, input_shape=(3,))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_initial_value_beyond_float32_is_refused():
    def huge(rng, shape):
        return np.full(shape, 1e39)  # finite in float64, inf once cast to the model's float32

    with pytest.raises(ValueError, match=r"'0\.scale'.*NaN or inf"):
        nnx.Sequential(InitScale(huge), seed=0, input_shape=(3,))
    model = nnx.Sequential(InitScale(huge), seed=0, input_shape=(3,), dtype="float64")
    assert float(np.asarray(model.layers[0].scale.value)[0]) == 1e39


def test_buffers_may_start_infinite():
    """A buffer is state, not a weight: a running minimum starting at +inf is a sentinel, kept as given."""

    class RunningMin(nnx.Layer):
        def build(self, input_shape):
            self.low = self.add_buffer("low", input_shape, init=math.inf)

        def forward(self, X, training=False):
            return X

    model = nnx.Sequential(RunningMin(), seed=0, input_shape=(2,))
    assert np.all(np.isinf(np.asarray(model.layers[0].low.value)))


def test_finite_initial_values_still_build(backend, dtype):
    model = nnx.Sequential(InitScale(0.5), nnx.Dense(3, 2, init="glorot"), backend=backend, dtype=dtype, seed=0,
                           input_shape=(3,))
    assert np.all(np.asarray(model.backend.to_host(model.layers[0].scale.value)) == 0.5)


def test_dense_takes_nnx_inits_own_functions_and_saves_their_names(tmp_path):
    """Dense(init=nnx.init.he_uniform), as Keras takes an initializer object, was refused as an "unknown init"
    although add_parameter takes the same function; it is saved by its name, so the file loads anywhere."""
    by_function = nnx.Sequential(nnx.Dense(3, 4, init=nnx.init.he_uniform), seed=1, input_shape=(3,))
    by_name = nnx.Sequential(nnx.Dense(3, 4, init="he_uniform"), seed=1, input_shape=(3,))
    assert by_function.layers[0].get_config() == by_name.layers[0].get_config()
    np.testing.assert_array_equal(np.asarray(by_function.layers[0].weight.value),
                                  np.asarray(by_name.layers[0].weight.value))
    by_function.save(tmp_path / "m.npz")
    assert nnx.load(tmp_path / "m.npz").layers[0].init == "he_uniform"
    assert nnx.Dense(3, 4, init="Glorot").init == "Glorot"  # a name is kept as given
    with pytest.raises(ValueError, match=r"add_parameter"):
        nnx.Dense(3, 4, init=lambda rng, shape: rng.normal(size=shape))
    with pytest.raises(ValueError, match=r"unknown init 'glorotx'"):
        nnx.Dense(3, 4, init="glorotx")


def test_a_layer_that_cannot_be_rebuilt_says_why_check_gradients_needs_it():
    """check_gradients checks a float64 copy rebuilt from the configs: a layer constructed with a function was
    refused with a message about saving only (found in review)."""
    model = nnx.Sequential(nnx.Dense(2, 1), DoubledWithAFunction(fn=abs), seed=0, input_shape=(2,))
    X, y = np.ones((3, 2)), np.ones((3, 1))
    with pytest.raises(TypeError, match=r"check_gradients works on a float64 copy.*fn=<built-in function abs>"):
        nnx.check_gradients(model, X, y, loss="mse")


# Initializers against their formulas and torch.nn.init.
# name -> (normal or uniform, std or limit as a function of (fan_in, fan_out))
FORMULAS = {
    "he_normal": ("normal", lambda i, o: math.sqrt(2.0 / i)),
    "he_uniform": ("uniform", lambda i, o: math.sqrt(6.0 / i)),
    "glorot_uniform": ("uniform", lambda i, o: math.sqrt(6.0 / (i + o))),
    "glorot_normal": ("normal", lambda i, o: math.sqrt(2.0 / (i + o))),
    "lecun": ("normal", lambda i, o: math.sqrt(1.0 / i)),
    "normal": ("normal", lambda i, o: 0.01),
    "standard_normal": ("normal", lambda i, o: 1.0),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_each_initializer_draws_its_documented_distribution(name):
    kind, scale = FORMULAS[name]
    fan_in, fan_out = 300, 700
    w = init.get_initializer(name)(np.random.default_rng(0), fan_in, fan_out)
    assert w.shape == (fan_in, fan_out) and w.dtype == np.float64
    expected = scale(fan_in, fan_out)
    assert abs(w.mean()) < 0.01 * expected
    if kind == "normal":
        assert w.std() == pytest.approx(expected, rel=0.01)
        assert np.abs(w).max() > 3.5 * expected  # not truncated: torch's kaiming_normal_ / xavier_normal_
    else:
        assert np.abs(w).max() <= expected and np.abs(w).max() > 0.999 * expected
        assert w.std() == pytest.approx(expected / math.sqrt(3.0), rel=0.01)


@pytest.mark.parametrize(("in_features", "out_features"), [(1000, 10), (10, 1000)])
def test_dense_counts_fan_in_as_its_input_features_as_torch_does(in_features, out_features):
    """torch.nn.init.kaiming_uniform_ on a Linear weight (out, in) takes fan_in = in: nnx's (in, out) must too."""
    model = nnx.Sequential(nnx.Dense(in_features, out_features, init="he_uniform"), seed=0, dtype="float64")
    w = np.asarray(model.state_dict()["0.weight"])
    limit = math.sqrt(6.0 / in_features)
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.99 * limit
    assert not np.any(model.state_dict()["0.bias"])
    he = np.asarray(nnx.Sequential(nnx.Dense(in_features, out_features), seed=0,
                                   dtype="float64").state_dict()["0.weight"])
    assert he.std() == pytest.approx(math.sqrt(2.0 / in_features), rel=0.05)  # the default is He normal


def test_fans_count_as_torch_and_keras_do():
    assert init.fans((3, 5)) == (3, 5)
    assert init.fans((3, 3, 16, 32)) == (3 * 3 * 16, 3 * 3 * 32)  # (kh, kw, in, out)
    assert init.fans((7,)) == (7, 7)
    assert init.fans(()) == (1, 1)


def test_same_seed_same_weights_on_every_backend_and_dtype():
    pytest.importorskip("torch")

    def arrays(**kwargs):
        model = nnx.Sequential(nnx.Dense(3, 4), nnx.ReLU(), nnx.Dense(4, 2, init="glorot"), seed=5, **kwargs)
        return {k: np.asarray(model.backend.to_host(v)) for k, v in model.state_dict().items()}

    base, wide, other = arrays(), arrays(dtype="float64"), arrays(backend="torch")
    for key, value in base.items():
        assert np.array_equal(value, other[key])
        assert np.array_equal(value, wide[key].astype(np.float32))  # float32 is the float64 draw, rounded
