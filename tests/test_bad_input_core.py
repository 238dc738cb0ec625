"""Bad input to the core (issue 2's list): clear ValueError/TypeError naming the argument and the values."""

from __future__ import annotations

import copy
import importlib.util
import re
import warnings

import numpy as np
import pytest

import nnx

AVAILABLE = nnx.available_backends()
NON_NUMPY = [name for name in AVAILABLE if name != "numpy"]


def _regressor(backend="numpy", dtype="float64", **kwargs):
    return nnx.Sequential(nnx.Dense(3, 4), nnx.ReLU(), nnx.Dense(4, 2), backend=backend, dtype=dtype, seed=0,
                          **kwargs)


def _classifier(backend="numpy", dtype="float64"):
    return nnx.Sequential(nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 3), backend=backend, dtype=dtype, seed=0)


def _data(n=6):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 3)), rng.standard_normal((n, 2))


def _foreign(name, shape):
    return nnx.get_backend(name).asarray(np.ones(shape), dtype="float64")


def _host_state(model):
    return {k: model.backend.to_host(v).copy() for k, v in model.state_dict().items()}


# -- architecture -----------------------------------------------------------------------

def test_layer_sizes_that_do_not_chain():
    with pytest.raises(ValueError, match=r"layer 2: Dense\(5, 1\) expects 5 input features but the layer "
                                         r"before it gives 4"):
        nnx.Sequential(nnx.Dense(3, 4), nnx.ReLU(), nnx.Dense(5, 1))
    with pytest.raises(ValueError, match=r"layer 3: Dense\(2, 2\) expects 2 .* gives 6"):
        nnx.Sequential(nnx.Dense(3, 6), nnx.Tanh(), nnx.Dropout(0.1), nnx.Dense(2, 2))


@pytest.mark.parametrize("args, exc, message", [
    ((0, 3), ValueError, r"in_features must be > 0, got 0"),
    ((3, 0), ValueError, r"out_features must be > 0, got 0"),
    ((-2, 3), ValueError, r"in_features must be > 0, got -2"),
    ((3, -1), ValueError, r"out_features must be > 0, got -1"),
    ((2.0, 3), TypeError, r"in_features must be an int, got float 2.0"),
    ((3, "4"), TypeError, r"out_features must be an int, got str '4'"),
    ((True, 3), TypeError, r"in_features must be an int, got bool True"),
])
def test_dense_sizes(args, exc, message):
    with pytest.raises(exc, match=message):
        nnx.Dense(*args)


@pytest.mark.parametrize("rate", [1.0, 1.5, -0.1, float("nan"), float("inf"), "0.5", None, True])
def test_dropout_rate_outside_unit_interval(rate):
    message = rf"Dropout rate must be a finite number in \[0, 1\), got {re.escape(repr(rate))}"
    with pytest.raises(ValueError, match=message):
        nnx.Dropout(rate)


def test_dropout_rate_edges_accepted():
    assert nnx.Dropout(0.0).rate == 0.0
    assert nnx.Dropout(0.999).rate == 0.999


@pytest.mark.parametrize("alpha", [-0.1, float("nan"), float("inf"), "0.1"])
def test_leaky_relu_alpha(alpha):
    message = rf"LeakyReLU alpha must be a finite number >= 0, got {re.escape(repr(alpha))}"
    with pytest.raises(ValueError, match=message):
        nnx.LeakyReLU(alpha)


@pytest.mark.parametrize("dtype, shown", [("int32", "int32"), ("int64", "int64"), (np.int64, "int64"),
                                          ("float16", "float16"), ("bool", "bool"), ("complex64", "complex64"),
                                          ("float", "float")])
def test_model_dtype_must_be_float32_or_float64(backend, dtype, shown):
    with pytest.raises(ValueError, match=rf"dtype must be one of \('float32', 'float64'\), got '{shown}'"):
        nnx.Sequential(nnx.Dense(2, 2), backend=backend, dtype=dtype)


def test_backend_integer_dtype_object_rejected(backend):
    with pytest.raises(ValueError, match=r"got 'int32'"):
        nnx.Sequential(nnx.Dense(2, 2), backend=backend, dtype=backend.xp.int32)


def test_unknown_backend_name_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'tensorflow'; valid names: \['numpy', "
                                         r"'array_api_strict', 'torch', 'jax', 'cupy'\]"):
        nnx.Sequential(nnx.Dense(2, 2), backend="tensorflow")


def test_unavailable_backend_says_why():
    if "cupy" in AVAILABLE:
        pytest.skip("cupy runs here")
    # CuPy imports without a GPU (the test extra installs it): then the cause is the missing GPU or driver
    why = "cupy is not installed" if importlib.util.find_spec("cupy") is None else "(no NVIDIA driver|driver|GPU)"
    with pytest.raises(nnx.BackendUnavailableError, match=rf"backend 'cupy' cannot run here: {why}"):
        nnx.Sequential(nnx.Dense(2, 2), backend="cupy")


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"init": "zeros"}, ValueError, r"unknown init 'zeros'; valid names: \[.*'glorot'.*'he'"),
    ({"regularizer": "l3"}, ValueError, r"unknown regularizer 'l3'; valid names: \[.*'L1', 'L2'.*\]"),
])
def test_unknown_init_and_regularizer_names(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        nnx.Dense(2, 2, **kwargs)


def test_sequential_construction_errors():
    with pytest.raises(ValueError, match=r"Sequential needs at least one layer"):
        nnx.Sequential()
    with pytest.raises(TypeError, match=r"layer 1 must be an nnx Layer, got str"):
        nnx.Sequential(nnx.Dense(2, 2), "relu")
    with pytest.raises(ValueError, match=r"seed must be a non-negative int or None, got -1"):
        nnx.Sequential(nnx.Dense(2, 2), seed=-1)
    with pytest.raises(ValueError, match=r"seed must be a non-negative int or None, got 1.5"):
        nnx.Sequential(nnx.Dense(2, 2), seed=1.5)


# -- data shapes -------------------------------------------------------------------------------

def test_x_feature_count_vs_model(backend, dtype):
    model = _regressor(backend, dtype)
    X, y = _data()
    bad = np.ones((6, 5))
    with pytest.raises(ValueError, match=r"X has 5 features but the model expects 3"):
        model.predict(bad)
    with pytest.raises(ValueError, match=r"X has 5 features but the model expects 3"):
        model(bad)
    with pytest.raises(ValueError, match=r"X has 5 features but the model expects 3"):
        model.fit(bad, y)
    with pytest.raises(ValueError, match=r"X has 5 features but the model expects 3"):
        model.evaluate(bad, y)
    with pytest.raises(ValueError, match=r"validation X has 5 features but the model expects 3"):
        model.fit(X, y, validation_data=(bad, y))
    with pytest.raises(ValueError, match=r"X must be 2-D \(samples, features\), got shape \(3,\)"):
        model.predict(np.ones(3))
    with pytest.raises(ValueError, match=r"X must be 2-D \(samples, features\), got shape \(2, 2, 3\)"):
        model.predict(np.ones((2, 2, 3)))


def test_x_vs_y_rows(backend, dtype):
    model = _regressor(backend, dtype)
    X, y = _data()
    with pytest.raises(ValueError, match=r"X has 6 samples but y has 5"):
        model.fit(X, y[:5])
    with pytest.raises(ValueError, match=r"X has 6 samples but y has 7"):
        model.evaluate(X, np.ones((7, 2)))
    with pytest.raises(ValueError, match=r"validation X has 4 samples but validation y has 3"):
        model.fit(X, y, validation_data=(X[:4], y[:3]))
    classifier = _classifier(backend, dtype)
    with pytest.raises(ValueError, match=r"X has 6 samples but y has 4"):
        classifier.fit(X, np.array([0, 1, 2, 0]), loss="cross_entropy")


def test_y_width_vs_model_outputs(backend, dtype):
    model = _regressor(backend, dtype)
    X, _ = _data()
    with pytest.raises(ValueError, match=r"y must have shape \(6, 2\) to match the model's outputs, got \(6, 3\)"):
        model.fit(X, np.ones((6, 3)))
    with pytest.raises(ValueError, match=r"y must have shape \(6, 2\) to match the model's outputs, got \(6,\)"):
        model.fit(X, np.ones(6))
    with pytest.raises(ValueError, match=r"y for cross-entropy must be class indices of shape \(6,\) or \(6, 1\), "
                                         r"or one-hot rows of shape \(6, 3\), got \(6, 4\)"):
        _classifier(backend, dtype).fit(X, np.eye(4)[[0, 1, 2, 3, 0, 1]], loss="cross_entropy")


class _Squeeze(nnx.Layer):
    """A user's layer: (batch, 1) -> (batch,), so one sample's output has shape ()."""

    def output_shape(self, input_shape):
        return None if input_shape is None else ()

    def forward(self, X, training=False):
        return self.xp.reshape(X, (X.shape[0],))

    def backward(self, dY, need_dX=True):
        return self.xp.reshape(dY, (dY.shape[0], 1))


class _Unknown(nnx.Layer):
    """A user's layer that does not say its output shape."""

    def output_shape(self, input_shape):
        return None

    def forward(self, X, training=False):
        return X

    def backward(self, dY, need_dX=True):
        return dY


@pytest.mark.parametrize("last", [_Squeeze, _Unknown])
def test_y_for_outputs_of_shape_one_or_unknown(backend, dtype, last):
    """A model whose outputs are (n,) (sample shape ()) or of unknown shape takes y as (n,) or (n, 1), as the
    loss does; a y that cannot match is refused, by shape where the shape is known, else by the loss."""
    X, _ = _data()
    y = np.linspace(-1.0, 1.0, 6)
    model = nnx.Sequential(nnx.Dense(3, 1), last(), backend=backend, dtype=dtype, seed=0)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for target in (y, y[:, None]):
        history = model.fit(X, target, loss="mse", epochs=2, batch_size=4)
        want = model.backend.to_float(nnx.losses.MSE()(y, model.predict(X)))
        assert model.evaluate(X, target)["loss"] == pytest.approx(want, rel=tol)
        assert np.isfinite(history.history["loss"]).all()
    if last is _Squeeze:
        with pytest.raises(ValueError, match=r"y must have shape \(6,\) to match the model's outputs, got \(6, 2\)"):
            model.fit(X, np.ones((6, 2)))
    else:
        with pytest.raises(ValueError, match=r"y_true and y_pred must have the same shape, got y_true \(4, 2\)"):
            model.fit(X, np.ones((6, 2)), batch_size=4)
    with pytest.raises(ValueError, match=r"X has 6 samples but y has 5"):
        model.fit(X, y[:5])


@pytest.mark.parametrize("where, value", [("X", np.nan), ("X", np.inf), ("y", np.nan), ("y", -np.inf)])
def test_non_finite_data_passed_to_fit(backend, dtype, where, value):
    model = _regressor(backend, dtype)
    X, y = _data()
    before = _host_state(model)
    arrays = {"X": X.copy(), "y": y.copy()}
    arrays[where][2, 1] = value
    with pytest.raises(ValueError, match=rf"^{where} contains NaN or inf values"):
        model.fit(arrays["X"], arrays["y"], epochs=1)
    with pytest.raises(ValueError, match=rf"^validation {where} contains NaN or inf values"):
        model.fit(X, y, validation_data=(arrays["X"], arrays["y"]), epochs=1)
    for k, v in _host_state(model).items():
        np.testing.assert_array_equal(v, before[k])  # rejected before any step


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_data_that_overflows_the_models_dtype_says_so(backend):
    """A finite float64 value beyond float32's range becomes inf in the cast to a float32 model: the message
    says that, not that the data holds NaN or inf."""
    model = _regressor(backend, "float32")
    X, y = _data()
    big_X, big_y = X.copy(), y.copy()
    big_X[1, 2], big_y[3, 0] = 1e300, -1e39
    message = r"^{} has values beyond the range of the model's dtype float32 \(\+-3\.403e\+38\)"
    with pytest.raises(ValueError, match=message.format("X")):
        model.fit(big_X, y)
    with pytest.raises(ValueError, match=message.format("y")):
        model.fit(X, big_y)
    with pytest.raises(ValueError, match=message.format("validation X")):
        model.fit(X, y, validation_data=(big_X, y))
    with pytest.raises(ValueError, match=message.format("X of batch 1")):
        model.fit([(big_X, y)])
    with pytest.raises(ValueError, match=message.format("X")):
        model.evaluate(big_X, y)
    with pytest.raises(ValueError, match=message.format("X")):
        model.predict(big_X)
    big_X[1, 2] = np.inf  # an inf given as such is still called that
    with pytest.raises(ValueError, match=r"^X contains NaN or inf values"):
        model.fit(big_X, y)


def test_non_numeric_data(backend, dtype):
    model = _regressor(backend, dtype)
    with pytest.raises(TypeError, match=r"X must hold numbers, got dtype <U1"):
        model.fit(np.full((6, 3), "a"), np.ones((6, 2)))
    with pytest.raises(TypeError, match=r"y must hold numbers, got dtype object"):
        model.fit(np.ones((6, 3)), np.array([[None, 1.0]] * 6, dtype=object))


# -- class indices ------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, message", [
    ([0, 1, 2, 3, 0, 1], r"y has class indices in \[0, 3\] but the model has 3 outputs \(valid: 0\.\.2\)"),
    ([0, 1, -1, 2, 0, 1], r"y has class indices in \[-1, 2\] but the model has 3 outputs \(valid: 0\.\.2\)"),
    ([0, 1, 7, 2, 0, -4], r"y has class indices in \[-4, 7\]"),
])
def test_class_indices_out_of_range(backend, dtype, labels, message):
    model = _classifier(backend, dtype)
    X, _ = _data()
    with pytest.raises(ValueError, match=message):
        model.fit(X, np.array(labels), loss="cross_entropy")
    with pytest.raises(ValueError, match=message):
        model.evaluate(X, np.array(labels), loss="cross_entropy")
    with pytest.raises(ValueError, match=message.replace("y has", "validation y has")):
        model.fit(X, np.array([0, 1, 2, 0, 1, 2]), loss="cross_entropy", validation_data=(X, np.array(labels)))


def test_class_indices_must_be_integers(backend, dtype):
    model = _classifier(backend, dtype)
    X, _ = _data()
    with pytest.raises(ValueError, match=r"y holds class indices but has non-integer values"):
        model.fit(X, np.array([0, 1, 0.5, 2, 0, 1]), loss="cross_entropy")
    for bad in (np.inf, -np.inf, np.nan):  # not an index (inf once printed as -9223372036854775808)
        with pytest.raises(ValueError, match=r"y holds class indices but has NaN or infinite values"):
            model.fit(X, np.array([0, 1, bad, 2, 0, 1]), loss="cross_entropy")


def test_negative_class_probabilities_are_refused_before_training(backend, dtype):
    """One-hot or probability rows with a negative entry make cross-entropy unbounded below (fit would chase
    it): refused like BCE targets outside [0, 1], for arrays, validation data and batches."""
    model = _classifier(backend, dtype)
    X, _ = _data()
    before = _host_state(model)
    Y = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    bad = Y.copy()
    bad[2, 0] = -1.0
    message = r"^y for cross-entropy must be class indices, or one-hot or probability rows with entries >= 0"
    with pytest.raises(ValueError, match=message):
        model.fit(X, bad, loss="cross_entropy")
    with pytest.raises(ValueError, match=message.replace("y for", "validation y for")):
        model.fit(X, Y, loss="cross_entropy", validation_data=(X, bad))
    with pytest.raises(ValueError, match=message):
        model.evaluate(X, bad, loss="cross_entropy")
    for k, v in _host_state(model).items():
        np.testing.assert_array_equal(v, before[k])  # rejected before any step
    with pytest.raises(ValueError, match=message.replace("y for", "y of batch 2 for")):  # batches as they come
        model.fit([(X[:3], Y[:3]), (X[3:], bad[3:] - 2 * Y[3:])], loss="cross_entropy")


# -- names of losses, optimizers, metrics -----------------------------------------------------

def test_unknown_loss_lists_valid_ones():
    X, y = _data()
    with pytest.raises(ValueError, match=r"unknown loss 'hinge'; valid names: \[.*'bce'.*'cross_entropy'.*'MSE'"):
        _regressor().fit(X, y, loss="hinge")
    with pytest.raises(TypeError, match=r"loss must be a Loss, a Loss class, a name or a config dict, got int"):
        _regressor().fit(X, y, loss=3)


def test_unknown_optimizer_lists_valid_ones():
    X, y = _data()
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamx'; valid names: \[.*'Adam'.*'SGD'.*\]"):
        _regressor().fit(X, y, optimizer="adamx")
    with pytest.raises(TypeError, match=r"optimizer must be a name, an Optimizer class or an Optimizer, got int"):
        _regressor().fit(X, y, optimizer=1)


def test_optimizer_from_another_model():
    X, y = _data()
    other = _regressor()
    with pytest.raises(ValueError, match=r"optimizer was built on another model's parameters"):
        _regressor().fit(X, y, optimizer=nnx.optim.SGD(other.parameters(), lr=0.1))


@pytest.mark.parametrize("how", ["another model's", "a copy of its own", "kept by name"])
def test_model_optimizer_from_another_model_is_refused(how):
    """Found in review: set as `model.optimizer` (torch's habit of keeping the optimizer after moving the model:
    `moved.optimizer = model.optimizer`), an optimizer over another model's parameters, or over copies of this
    one's, was stepped by fit without a word: the model fit stayed as it was and the other one moved."""
    X, y = _data()
    a = _regressor()
    a.fit(X, y, optimizer="adam", lr=0.01, epochs=1)
    b = copy.deepcopy(a)
    b.optimizer = copy.deepcopy(b.optimizer) if how == "a copy of its own" else a.optimizer
    before = {k: np.array(v) for k, v in a.state_dict().items()}
    with pytest.raises(ValueError, match=r"model\.optimizer was built on another model's parameters .* build it on "
                                         r"model\.parameters\(\)"):
        b.fit(X, y, epochs=1, **({"optimizer": "adam"} if how == "kept by name" else {}))
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no word of parameters left out: none of these were in it)
        b.fit(X, y, epochs=1, optimizer="sgd")  # a new one made by name is built on its own parameters


def test_unknown_metric_lists_valid_ones():
    X, y = _data()
    with pytest.raises(ValueError, match=r"unknown metric 'auc'; valid names: \[.*'accuracy'.*'mse'"):
        _regressor().fit(X, y, metrics=["auc"])


# -- numbers out of range ------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "adam", "rmsprop", "momentum", "adamw", "adagrad"])
@pytest.mark.parametrize("lr", [0, -0.01, float("nan"), float("inf")])
def test_learning_rate_must_be_positive(optimizer, lr):
    X, y = _data()
    model = _regressor()
    message = rf"lr must be a finite number > 0, got {re.escape(repr(lr))}"
    with pytest.raises(ValueError, match=message):
        model.fit(X, y, optimizer=optimizer, lr=lr)
    cls = nnx.optim.OPTIMIZERS[optimizer]
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0"):
        cls(model.parameters(), lr=lr)


@pytest.mark.parametrize("kwargs, exc, message", [
    ({"epochs": -1}, ValueError, r"epochs must be >= 0, got -1"),
    ({"epochs": 1.5}, TypeError, r"epochs must be an int, got float 1.5"),
    ({"batch_size": 0}, ValueError, r"batch_size must be > 0, got 0"),
    ({"batch_size": -4}, ValueError, r"batch_size must be > 0, got -4"),
    ({"batch_size": 2.0}, TypeError, r"batch_size must be an int, got float 2.0"),
    ({"validation_split": 1.0}, ValueError, r"validation_split must be in \[0, 1\), got 1.0"),
    ({"validation_split": -0.2}, ValueError, r"validation_split must be in \[0, 1\), got -0.2"),
    # as Keras: the first floor(6 * 0.1) rows train, so 0.9 leaves none (and any split under 1 holds one out)
    ({"validation_split": 0.9}, ValueError, r"validation_split=0.9 leaves 0 training and 6 validation samples "
                                            r"out of 6"),
    ({"validation_data": (np.ones((2, 3)),)}, TypeError, r"validation_data must be a pair \(X_val, y_val\)"),
])
def test_fit_argument_ranges(kwargs, exc, message):
    X, y = _data()
    with pytest.raises(exc, match=message):
        _regressor().fit(X, y, **kwargs)


def test_fit_and_evaluate_on_no_samples():
    with pytest.raises(ValueError, match=r"X has 0 samples; fit needs at least one"):
        _regressor().fit(np.ones((0, 3)), np.ones((0, 2)))
    with pytest.raises(ValueError, match=r"cannot evaluate on 0 samples"):
        _regressor().evaluate(np.ones((0, 3)), np.ones((0, 2)))


def test_predict_batch_size():
    with pytest.raises(ValueError, match=r"batch_size must be > 0, got 0"):
        _regressor().predict(np.ones((4, 3)), batch_size=0)


# -- arrays from another backend ----------------------------------------------------------------

@pytest.mark.parametrize("other", NON_NUMPY)
def test_array_from_another_backend_names_both(backend, dtype, other):
    if other == backend.name:
        pytest.skip("same backend")
    model = _regressor(backend, dtype)
    X, y = _data()
    fX, fy = _foreign(other, (6, 3)), _foreign(other, (6, 2))
    both = rf"is an? {other} array but this model runs on the {backend.name} backend"
    with pytest.raises(TypeError, match=rf"^X {both}"):
        model.predict(fX)
    with pytest.raises(TypeError, match=rf"^X {both}"):
        model.forward(fX, training=True)
    with pytest.raises(TypeError, match=rf"^X {both}"):
        model.fit(fX, y)
    with pytest.raises(TypeError, match=rf"^y {both}"):
        model.fit(X, fy)
    with pytest.raises(TypeError, match=rf"^y {both}"):
        model.evaluate(X, fy)
    with pytest.raises(TypeError, match=rf"^validation X {both}"):
        model.fit(X, y, validation_data=(fX, y))
    model.forward(X, training=True)
    with pytest.raises(TypeError, match=rf"^dY {both}"):
        model.backward(_foreign(other, (6, 2)))
    before = _host_state(model)
    state = {k: nnx.get_backend(other).asarray(v) for k, v in before.items()}
    with pytest.raises(TypeError, match=rf"state_dict\['0.weight'\] {both}"):
        model.load_state_dict(state)
    for k, v in _host_state(model).items():
        np.testing.assert_array_equal(v, before[k])


# -- training that blows up ----------------------------------------------------------------------

def _diverging(backend, dtype, **kwargs):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((10, 2)) * 10
    y = rng.standard_normal((10, 1))
    model = nnx.Sequential(nnx.Dense(2, 1), backend=backend, dtype=dtype, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's overflow warnings are expected here
        return model, model.fit(X, y, loss="mse", optimizer="sgd", lr=1.0, epochs=60, batch_size=4, **kwargs)


def test_non_finite_training_loss_raises_naming_epoch_and_batch(backend, dtype):
    with pytest.raises(FloatingPointError, match=r"training loss or gradients became NaN or infinite at epoch \d+, "
                                                 r"batch \d+; .*check_finite=False") as info:
        _diverging(backend, dtype)
    epoch, batch = map(int, re.search(r"epoch (\d+), batch (\d+)", str(info.value)).groups())
    assert 1 < epoch <= 60 and 1 <= batch <= 3  # counted from 1, as people count
    epoch -= 1  # the index of that epoch in the history
    # the same run without the check: the history shows the loss was finite before that epoch
    model, history = _diverging(backend, dtype, check_finite=False)
    assert len(history) == 60
    assert all(np.isfinite(history["loss"][:epoch]))
    assert not np.isfinite(history["loss"][epoch])


def test_non_finite_training_loss_same_place_on_every_backend(backend):
    """Divergence is part of the trajectory, so it happens at the same step as on numpy."""
    messages = []
    for be in ("numpy", backend):
        with pytest.raises(FloatingPointError) as info:
            _diverging(be, "float64")
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_fit_with_check_finite_false_takes_non_finite_data(backend, dtype, tmp_path):
    """docs/training.md: check_finite=False skips the NaN/inf check of the data in fit, evaluate and predict; fit
    still refused X, y and validation data holding NaN (arrays, memmaps, iterables), whatever it was told."""
    X, y = _data()
    X[2, 1] = np.nan
    mm = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=X.dtype, shape=X.shape)
    mm[:] = X
    for args, kwargs in [((X, y), {}), ((mm, y), {}), (([(X, y)],), {}), ((X[3:], y[3:]), {"validation_data": (X, y)}),
                         ((X[3:], y[3:]), {"validation_data": [(X, y)]})]:
        history = _regressor(backend, dtype).fit(*args, epochs=1, batch_size=2, check_finite=False, **kwargs)
        assert not np.isfinite(history["val_loss" if kwargs else "loss"][-1])


# Data as users hand it over (pandas, strings): the hints name what the data holds.
def test_weights_given_as_strings_are_not_told_to_encode_class_labels():
    """The hint for strings is about class labels and categorical features; weights read as text are neither."""
    X, y = np.zeros((4, 3)), np.zeros(4)
    model = nnx.Sequential(nnx.Dense(3, 1), nnx.Sigmoid(), seed=0)
    with pytest.raises(TypeError, match=r"sample_weight must hold numbers, got dtype <U3 \(strings\): pass "
                                        r"the weights as numbers$"):
        model.fit(X, y, sample_weight=np.array(["1.0"] * 4))


def test_a_dataframe_of_nullable_integer_columns_is_named_in_the_hint():
    """Two Int64 columns make NumPy an object array, though no two columns differ in kind: the hint says so."""
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame({c: pd.array([1, 2, 3, 4], dtype="Int64") for c in "abc"})
    model = nnx.Sequential(nnx.Dense(3, 1), seed=0)
    with pytest.raises(TypeError, match=r"to_numpy\(dtype=float\)\), and so do columns of pandas' nullable dtypes"):
        model.predict(X)
    assert np.allclose(model.predict(X.to_numpy(dtype=float)), model.predict(np.arange(1.0, 5.0)[:, None] * [1, 1, 1]))
