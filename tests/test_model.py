"""Sequential on every backend: reproducibility across backends, training, and the model's contract."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import numpy as np
import pytest

import nnx
from nnx.losses import MSE, CrossEntropy
from nnx.regularizers import L1, L2

NUMPY = nnx.get_backend("numpy")


def _host_state(model) -> dict[str, np.ndarray]:
    return {k: model.backend.to_host(v).copy() for k, v in model.state_dict().items()}


def _assert_states_close(a: dict, b: dict, atol: float) -> None:
    assert list(a) == list(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=atol, err_msg=k)


def _small(backend, dtype="float64", seed=0, **kwargs):
    return nnx.Sequential(nnx.Dense(3, 5), nnx.Tanh(), nnx.Dense(5, 2), backend=backend, dtype=dtype,
                          seed=seed, **kwargs)


# -- same seed, same start ------------------------------------------------------------

def _init_model(backend, dtype, seed):
    return nnx.Sequential(nnx.Dense(4, 8, init="he"), nnx.ReLU(), nnx.Dropout(0.1),
                          nnx.Dense(8, 6, init="glorot"), nnx.Sigmoid(), nnx.Dense(6, 3, init="normal"),
                          backend=backend, dtype=dtype, seed=seed)


def test_same_seed_identical_initial_weights_float64(backend):
    ref = _host_state(_init_model(NUMPY, "float64", 42))
    got = _host_state(_init_model(backend, "float64", 42))
    _assert_states_close(got, ref, atol=1e-12)
    for k in ref:
        assert got[k].dtype == np.float64
        np.testing.assert_array_equal(got[k], ref[k])


def test_same_seed_identical_initial_weights_float32(backend):
    ref = _host_state(_init_model(NUMPY, "float64", 42))
    got = _host_state(_init_model(backend, "float32", 42))
    for k in ref:
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], ref[k].astype(np.float32))


def test_different_seeds_differ(backend, dtype):
    a = _host_state(_init_model(backend, dtype, 1))
    b = _host_state(_init_model(backend, dtype, 2))
    for k in a:
        if k.endswith("weight"):
            assert not np.array_equal(a[k], b[k]), k
        else:
            np.testing.assert_array_equal(a[k], 0.0)  # biases start at zero


def test_seed_none_draws_one_and_keeps_it(backend, dtype):
    model = _small(backend, dtype, seed=None)
    assert isinstance(model.seed, int) and model.seed >= 0
    again = _small(backend, dtype, seed=model.seed)
    for k, v in _host_state(model).items():
        np.testing.assert_array_equal(v, _host_state(again)[k])


# -- the same fit on every backend ----------------------------------------------------------

N_FIT = 23  # batch_size 5 does not divide it


def _fit_data():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((N_FIT, 3))
    y_reg = np.stack([np.sin(X[:, 0]) + X[:, 1], X[:, 2] * X[:, 0]], axis=1)
    y_cls = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)
    return X, y_reg, y_cls


N_EVEN = 20  # the first 20 rows: whole batches of 5 or 10


def _even_data():
    """The first `N_EVEN` rows of `_fit_data`, for fits whose short last batch is not what the test checks: on JAX a
    short last batch is a second copy of the step in each epoch program, and one more set of op shapes."""
    return tuple(a[:N_EVEN] for a in _fit_data())


def _fit(backend, optimizer: str, task: str, epochs: int = 4):
    X, y_reg, y_cls = _fit_data()
    if task == "regression":
        model = nnx.Sequential(nnx.Dense(3, 5), nnx.Tanh(), nnx.Dense(5, 2),
                               backend=backend, dtype="float64", seed=21)
        y, loss = y_reg, "mse"
    else:
        model = nnx.Sequential(nnx.Dense(3, 5, regularizer=L1(1e-3)), nnx.Sigmoid(), nnx.Dense(5, 3),
                               nnx.Softmax(), backend=backend, dtype="float64", seed=21, regularizer=L2(1e-2))
        y, loss = y_cls, CrossEntropy(from_logits=False)
    if optimizer == "sgd":
        opt = nnx.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    else:
        opt = nnx.optim.Adam(model.parameters(), lr=0.02)
    history = model.fit(X, y, loss=loss, optimizer=opt, epochs=epochs, batch_size=5, shuffle=True,
                        metrics=["accuracy"] if task == "classification" else ["mae"])
    return model, history


@pytest.mark.parametrize("task", ["regression", "classification"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_same_fit_same_weights_on_every_backend(backend, optimizer, task):
    ref_model, ref_hist = _fit(NUMPY, optimizer, task)
    model, hist = _fit(backend, optimizer, task)
    ref = _host_state(ref_model)
    _assert_states_close(_host_state(model), ref, atol=1e-9)
    # training moved the weights, so the agreement is not the trivial one
    start = _host_state(nnx.Sequential.from_config(ref_model.get_config(), backend="numpy"))
    assert max(np.abs(ref[k] - start[k]).max() for k in ref) > 1e-2
    assert list(hist.history) == list(ref_hist.history)
    for key in ref_hist.history:
        np.testing.assert_allclose(hist[key], ref_hist[key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_same_fit_twice_is_identical(backend):
    a, ha = _fit(backend, "adam", "classification", epochs=3)
    b, hb = _fit(backend, "adam", "classification", epochs=3)
    for k, v in _host_state(a).items():
        np.testing.assert_array_equal(v, _host_state(b)[k])
    assert ha.history == hb.history


def test_fit_with_dropout_is_reproducible_on_one_backend(backend, dtype):
    X, y, _ = _even_data()

    def run():
        model = nnx.Sequential(nnx.Dense(3, 5), nnx.ReLU(), nnx.Dropout(0.3), nnx.Dense(5, 2),
                               backend=backend, dtype=dtype, seed=9)
        model.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=2, batch_size=5)
        return _host_state(model)

    first, second = run(), run()
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])


def test_fit_lr_sets_the_rate_of_an_optimizer_passed_in():
    # lr was ignored beside an optimizer object: the run went on at the object's rate without a word
    X, y, _ = _fit_data()
    by_name, given = _small(NUMPY), _small(NUMPY)
    by_name.fit(X, y, loss="mse", optimizer="sgd", lr=0.05, epochs=1, batch_size=10)
    given.fit(X, y, loss="mse", optimizer=nnx.optim.SGD(given.parameters(), lr=0.5), lr=0.05, epochs=1,
              batch_size=10)
    assert given.optimizer.lr == 0.05
    _assert_states_close(_host_state(given), _host_state(by_name), atol=0)
    with pytest.raises(ValueError, match=r"lr must be a finite number > 0, got 0"):
        given.fit(X, y, optimizer=nnx.optim.SGD(given.parameters()), lr=0)


def test_shuffle_changes_the_trajectory():
    X, y, _ = _fit_data()
    a = _small(NUMPY)
    b = _small(NUMPY)
    a.fit(X, y, loss="mse", optimizer="sgd", lr=0.1, epochs=2, batch_size=5, shuffle=True)
    b.fit(X, y, loss="mse", optimizer="sgd", lr=0.1, epochs=2, batch_size=5, shuffle=False)
    assert any(not np.allclose(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


# -- XOR ---------------------------------------------------------------------------------

def test_xor_learned_on_every_backend(backend, dtype):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    y = np.array([0, 1, 1, 0], dtype=np.float64)
    model = nnx.Sequential(nnx.Dense(2, 8, init="glorot"), nnx.Tanh(), nnx.Dense(8, 1, init="glorot"),
                           nnx.Sigmoid(), backend=backend, dtype=dtype, seed=0)
    history = model.fit(X, y, loss="bce", optimizer="adam", lr=0.05, epochs=100, batch_size=None,
                        metrics=["accuracy"])
    assert history["accuracy"][-1] == 1.0
    assert history["loss"][-1] < 0.1 < history["loss"][0]
    probs = model.backend.to_host(model.predict(X))[:, 0]
    np.testing.assert_array_equal(probs > 0.5, y == 1)
    assert model.evaluate(X, y, metrics=["accuracy"])["accuracy"] == 1.0


# -- forward, predict, backward ---------------------------------------------------------------

def test_predict_equals_forward_inference(backend, dtype):
    model = nnx.Sequential(nnx.Dense(3, 5), nnx.ReLU(), nnx.Dropout(0.5), nnx.Dense(5, 2),
                           backend=backend, dtype=dtype, seed=1)
    X = _fit_data()[0]
    p = model.backend.to_host(model.predict(X))
    np.testing.assert_array_equal(p, model.backend.to_host(model.forward(X, training=False)))
    np.testing.assert_array_equal(p, model.backend.to_host(model(X)))
    np.testing.assert_allclose(p, model.backend.to_host(model.predict(X, batch_size=5)), rtol=1e-6, atol=1e-12)
    # training mode applies dropout, so it differs
    assert not np.array_equal(p, model.backend.to_host(model.forward(X, training=True)))


def test_predictions_on_the_models_backend(backend, dtype):
    model = _small(backend, dtype)
    X = np.random.default_rng(0).standard_normal((4, 3))
    for out in (model.predict(X), model(X), model.predict(backend.asarray(X))):
        assert backend.owns(out)
        assert nnx.get_backend(out) == backend
        assert out.dtype == backend.float_dtype(dtype)
        assert tuple(out.shape) == (4, 2)


def test_default_dtype_float32_and_float64_on_request(backend):
    X = np.random.default_rng(0).standard_normal((4, 3))  # float64 input
    m32 = nnx.Sequential(nnx.Dense(3, 2), backend=backend, seed=0)
    assert m32.dtype == "float32"
    assert all(p.value.dtype == backend.xp.float32 for p in m32.parameters())
    assert m32.predict(X).dtype == backend.xp.float32
    m64 = nnx.Sequential(nnx.Dense(3, 2), backend=backend, dtype="float64", seed=0)
    assert m64.dtype == "float64"
    assert all(p.value.dtype == backend.xp.float64 for p in m64.parameters())
    assert m64.predict(X.astype(np.float32)).dtype == backend.xp.float64
    m = nnx.Sequential(nnx.Dense(3, 2), backend=backend, dtype=np.float64, seed=0)
    assert m.dtype == "float64"
    # training keeps the dtype
    m32.fit(X, np.zeros((4, 2)), loss="mse", epochs=1)
    assert all(p.value.dtype == backend.xp.float32 for p in m32.parameters())


def test_dtype_none_is_the_default_float32_not_numpys_float64(backend):
    """``dtype=None`` (a wrapper passing its own optional argument on) made a float64 model: the name was read
    through ``np.dtype(None)``, NumPy's float64, though nnx's default is float32 and ``None`` means the default
    (or the dtype kept) everywhere else in nnx, as in torch (``model.to(dtype=None)``, ``nnx.load(dtype=None)``)."""
    model = nnx.Sequential(nnx.Dense(3, 2), backend=backend, dtype=None, seed=0)
    assert model.dtype == "float32"
    assert all(p.value.dtype == backend.xp.float32 for p in model.parameters())
    assert model.predict(np.zeros((1, 3))).dtype == backend.xp.float32

def test_backward_fills_grads_including_regularizers(backend):
    """p.grad after model.backward is the gradient of loss + penalty (layer and model regularizers)."""
    from nnx.gradcheck import numerical_gradient

    model = nnx.Sequential(nnx.Dense(3, 5, regularizer=L1(0.05)), nnx.Tanh(), nnx.Dense(5, 2),
                           nnx.Sigmoid(), backend=backend, dtype="float64", seed=2, regularizer=L2(0.3))
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5, 3))
    y = backend.asarray(rng.random((5, 2)), dtype="float64")
    loss = MSE()
    for p in model.parameters():
        assert p.grad is None
    Y = model.forward(X, training=True)
    _, dY = loss.value_and_grad(y, Y)
    dX = model.backward(dY)
    assert tuple(dX.shape) == (5, 3)
    assert backend.owns(dX)

    def objective() -> float:
        return backend.to_float(loss(y, model.forward(X)) + model.penalty())

    analytic = {p.name: backend.to_host(p.grad) for p in model.parameters()}
    for p in model.parameters():
        original = p.value

        def at(w, p=p):
            p.value = backend.asarray(w, dtype="float64")
            return objective()

        numeric = numerical_gradient(at, backend.to_host(original))
        p.value = original
        np.testing.assert_allclose(analytic[p.name], numeric, rtol=1e-6, atol=1e-8, err_msg=p.name)
    # the penalty really is in there: without it the weight gradients differ
    plain = nnx.Sequential(nnx.Dense(3, 5), nnx.Tanh(), nnx.Dense(5, 2), nnx.Sigmoid(),
                           backend=backend, dtype="float64", seed=2)
    plain.backward(loss.gradient(y, plain.forward(X, training=True)))
    assert not np.allclose(backend.to_host(plain.parameters()[0].grad), analytic["0.weight"])
    np.testing.assert_allclose(backend.to_host(plain.parameters()[1].grad), analytic["0.bias"], rtol=1e-12)
    numeric_dX = numerical_gradient(lambda x: backend.to_float(loss(y, model.forward(x))), X)
    np.testing.assert_allclose(backend.to_host(dX), numeric_dX, rtol=1e-6, atol=1e-8)


def test_backward_accepts_numpy_dY(backend, dtype):
    model = _small(backend, dtype)
    model.forward(np.ones((2, 3)), training=True)
    dX = model.backward(np.ones((2, 2)))
    assert backend.owns(dX)
    assert all(backend.owns(p.grad) and tuple(p.grad.shape) == p.shape for p in model.parameters())


def test_backward_need_dX_false_spares_the_first_layers_input_gradient():
    # the argument was ignored: the first layer was always asked for dX, which nobody reads
    asked = []

    class Spy(nnx.Layer):
        def forward(self, X, training=False):
            return X

        def backward(self, dY, need_dX=True):
            asked.append(need_dX)
            return dY if need_dX else None

    model = nnx.Sequential(Spy(), nnx.Dense(3, 2), input_shape=(3,), seed=0)
    model.forward(np.ones((2, 3)), training=True)
    assert model.backward(np.ones((2, 2)), need_dX=False) is None
    assert model.parameters()[0].grad is not None
    model.forward(np.ones((2, 3)), training=True)
    assert model.backward(np.ones((2, 2))) is not None
    assert asked == [False, True]


# -- state_dict, to, save/load -------------------------------------------------------------

def test_parameters_and_state_dict_names(backend, dtype):
    model = nnx.Sequential([nnx.Dense(3, 4), nnx.ReLU(), nnx.Dropout(0.2), nnx.Dense(4, 2), nnx.Softmax()],
                           backend=backend, dtype=dtype, seed=0)
    names = ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert [p.name for p in model.parameters()] == names
    state = model.state_dict()
    assert list(state) == names
    assert [tuple(v.shape) for v in state.values()] == [(3, 4), (4,), (4, 2), (2,)]
    assert all(backend.owns(v) for v in state.values())
    assert model.in_features == 3 and model.out_features == 2
    assert "Dense(in_features=3" in repr(model) and backend.spec in repr(model)


def test_load_state_dict_accepts_numpy_and_backend_arrays(backend, dtype):
    source = _small(NUMPY, "float64", seed=5)
    target = _small(backend, dtype, seed=6)
    target.load_state_dict(_host_state(source))
    for k, v in _host_state(target).items():
        assert v.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(v, _host_state(source)[k].astype(dtype))
    other = _small(backend, dtype, seed=7)
    other.load_state_dict(target.state_dict())
    for k, v in _host_state(other).items():
        np.testing.assert_array_equal(v, _host_state(target)[k])
    X = np.random.default_rng(0).standard_normal((3, 3))
    np.testing.assert_allclose(backend.to_host(target.predict(X)), source.predict(X),
                               rtol=1e-5 if dtype == "float32" else 1e-12, atol=1e-6)


@pytest.mark.parametrize("change, message", [
    (lambda s: s.pop("2.bias"), r"missing \['2.bias'\], unexpected \[\]"),
    (lambda s: s.update({"9.weight": np.zeros((1, 1))}), r"missing \[\], unexpected \['9.weight'\]"),
    (lambda s: s.update({"2.weight": np.zeros((5, 3))}), r"state_dict\['2.weight'\] has shape \(5, 3\), "
                                                         r"the model expects \(5, 2\)"),
    (lambda s: s.update({"0.bias": np.zeros((1, 5))}), r"state_dict\['0.bias'\] has shape \(1, 5\)"),
])
def test_load_state_dict_rejects_bad_dicts_and_leaves_model_unchanged(backend, dtype, change, message):
    model = _small(backend, dtype, seed=1)
    before = _host_state(model)
    state = _host_state(_small(NUMPY, "float64", seed=2))
    change(state)
    with pytest.raises(ValueError, match=message):
        model.load_state_dict(state)
    for k, v in _host_state(model).items():
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_names_values_beyond_the_models_dtype(backend):
    # they were reported as "NaN or inf", which the given float64 array does not hold
    model = _small(backend, "float32", seed=1)
    state = _host_state(_small(NUMPY, "float64", seed=2))
    state["0.weight"][1, 1] = 1e300
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's own note on the overflowing cast
        with pytest.raises(ValueError, match=r"state_dict\['0.weight'\] has values beyond the range of the "
                                             r"model's dtype float32"):
            model.load_state_dict(state)


def test_to_other_backend(backend, dtype):
    X, y, _ = _even_data()
    source = _small(NUMPY, "float64", seed=3)
    source.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=2, batch_size=5)
    before = _host_state(source)
    moved = source.to(backend)
    assert moved is not source
    assert moved.backend == backend and source.backend == NUMPY
    assert moved.dtype == "float64"
    assert all(backend.owns(v) for v in moved.state_dict().values())
    np.testing.assert_allclose(backend.to_host(moved.predict(X)), source.predict(X), rtol=1e-12, atol=1e-12)
    assert moved.epochs_trained == source.epochs_trained == 2
    # training continues identically (optimizer state and shuffle stream moved along) ...
    moved.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=2, batch_size=5)
    # ... while the original stays as it was
    for k, v in _host_state(source).items():
        np.testing.assert_array_equal(v, before[k])
    source.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=2, batch_size=5)
    _assert_states_close(_host_state(moved), _host_state(source), atol=1e-9)
    # and back, in another dtype
    back = moved.to("numpy", dtype=dtype)
    assert back.backend == NUMPY and back.dtype == dtype
    assert moved.backend == backend and moved.dtype == "float64"


def test_a_float32_copy_of_weights_beyond_float32_is_refused(backend, tmp_path):
    # to() and load(dtype=) cast the arrays; a finite float64 weight past float32's range became inf silently
    model = _small(NUMPY, "float64", seed=3)
    state = _host_state(model)
    state["2.weight"][0, 0] = 1e300
    model.load_state_dict(state)
    with pytest.raises(ValueError, match=r"'2.weight' has values up to 1e\+300, beyond the range of float32"):
        model.to(backend, dtype="float32")
    model.save(tmp_path / "wide.npz")
    with pytest.raises(nnx.io.CheckpointError, match=r"'2.weight' has values up to 1e\+300, beyond the range"):
        nnx.load(tmp_path / "wide.npz", backend=backend, dtype="float32")


def test_a_float32_copy_of_optimizer_state_beyond_float32_is_refused(backend):
    # to() refused such weights but cast the optimizer's state as it was: Adam's second moment (the squares of
    # gradients of 1e20) became inf, and every later step of that parameter was m / inf = 0, without a word
    model = _small(NUMPY, "float64", seed=3)
    model.fit(np.ones((4, 3)), np.ones((4, 2)), loss="mse", optimizer="adam", epochs=1, verbose=0)
    model.optimizer.state[0]["exp_avg_sq"][0, 0] = 1e40
    with pytest.raises(ValueError, match=r"optimizer state 'exp_avg_sq' of parameter '0.weight' has values up to "
                                         r"1e\+40, beyond the range of float32"):
        model.to(backend, dtype="float32")
    assert model.to(backend).optimizer is not None  # float64 holds it


def test_to_with_only_a_dtype_keeps_the_backend(backend):
    """``model.to(dtype="float64")``, as torch's ``module.to(dtype=...)`` is written, raised TypeError for the
    missing backend; it converts on the model's own backend, fast-path setting included."""
    be = backend.with_fastpath(False)
    model = nnx.Sequential(nnx.Dense(3, 2), backend=be, dtype="float32", seed=0)
    moved = model.to(dtype="float64")
    assert moved.backend is be and moved.dtype == "float64"
    X = np.ones((2, 3))
    np.testing.assert_array_equal(backend.to_host(moved.predict(X)),
                                  backend.to_host(model.to(be, dtype="float64").predict(X)))


def test_to_the_same_backend_carries_the_dropout_stream(backend, dtype):
    # as a checkpoint does: the copy goes on with the masks the original would draw next, not from the seed again
    # the model, optimizer and batches of the dropout reproducibility test above (on JAX: its epoch program)
    X, y, _ = _even_data()
    source = nnx.Sequential(nnx.Dense(3, 5), nnx.ReLU(), nnx.Dropout(0.3), nnx.Dense(5, 2), backend=backend,
                            dtype=dtype, seed=3)
    source.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=1, batch_size=5)
    copy = source.to(backend)
    source.fit(X, y, epochs=1, batch_size=5)
    copy.fit(X, y, epochs=1, batch_size=5)
    _assert_states_close(_host_state(copy), _host_state(source), atol=0)


def test_deepcopy_gives_an_independent_model_that_trains_the_same(backend, dtype):
    # as torch's copy.deepcopy(model): its own weights, buffers, optimizer state and streams; the backend is shared
    X, y, _ = _even_data()
    source = nnx.Sequential(nnx.Dense(3, 5), nnx.Residual(nnx.Dense(5, 5), nnx.Dropout(0.5)), nnx.BatchNorm(),
                            nnx.Dense(5, 2), backend=backend, dtype=dtype, seed=3)
    source.fit(X, y, loss="mse", optimizer="adam", lr=0.05, epochs=1, batch_size=10)
    copied = copy.deepcopy(source)
    assert copied.backend is source.backend and copied.optimizer.params == copied.parameters()
    before = _host_state(source)
    copied.fit(X, y, epochs=1, batch_size=10)
    _assert_states_close(_host_state(source), before, atol=0)  # training the copy leaves the original alone
    source.fit(X, y, epochs=1, batch_size=10)
    _assert_states_close(_host_state(copied), _host_state(source), atol=0)


def test_save_load_roundtrip(backend, dtype, tmp_path):
    X, y, _ = _even_data()
    model = nnx.Sequential(nnx.Dense(3, 5), nnx.ReLU(), nnx.Dropout(0.2), nnx.Dense(5, 2),
                           backend=backend, dtype=dtype, seed=4, regularizer=L2(1e-3))
    model.fit(X, y, loss="mse", optimizer="adam", lr=0.01, epochs=2, batch_size=5)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = nnx.load(path)
    assert loaded.backend == backend and loaded.dtype == dtype
    assert loaded.epochs_trained == 2
    assert [type(a) for a in loaded.layers] == [type(a) for a in model.layers]
    for k, v in _host_state(loaded).items():
        np.testing.assert_array_equal(v, _host_state(model)[k])
    np.testing.assert_array_equal(backend.to_host(loaded.predict(X)), backend.to_host(model.predict(X)))
    # resuming from the file follows the same trajectory as carrying on in memory
    loaded.fit(X, y, epochs=1, batch_size=5)
    model.fit(X, y, epochs=1, batch_size=5)
    _assert_states_close(_host_state(loaded), _host_state(model), atol=1e-6 if dtype == "float32" else 1e-12)
    # and it loads on another backend
    on_numpy = nnx.load(path, backend="numpy", dtype="float64")
    assert on_numpy.backend == NUMPY and on_numpy.dtype == "float64"


# -- fit: History, validation, labels -----------------------------------------------------------

def _classifier(backend, dtype, seed=0):
    return nnx.Sequential(nnx.Dense(3, 5), nnx.Tanh(), nnx.Dense(5, 3), backend=backend, dtype=dtype, seed=seed)


def test_history_records_loss_metrics_and_validation(backend, dtype):
    X, _, y = _fit_data()
    Xv, yv = X[:5] + 0.1, y[:5]  # one batch's rows: validation and evaluate run the batches' inference shape
    model = _classifier(backend, dtype)
    history = model.fit(X, y, loss="cross_entropy", epochs=3, batch_size=5, metrics=["accuracy", "f1"],
                        validation_data=(Xv, yv))
    assert isinstance(history, nnx.History)
    assert len(history) == 3 and history.epoch == [0, 1, 2]
    assert set(history.history) == {"loss", "accuracy", "f1", "val_loss", "val_accuracy", "val_f1"}
    for key, values in history.history.items():
        assert len(values) == 3 and all(isinstance(v, float) and np.isfinite(v) for v in values), key
    # each epoch's accuracy is a count of right answers over all rows of its batches ...
    assert all(a * len(y) == pytest.approx(round(a * len(y)), abs=1e-4) for a in history["accuracy"])
    # ... and the last validation accuracy is the share of rows the final weights classify right
    right = np.argmax(np.asarray(backend.to_host(model.predict(Xv))), axis=1) == yv
    assert history["val_accuracy"][-1] == pytest.approx(np.mean(right), abs=1e-6 if dtype == "float32" else 1e-12)
    assert history["loss"][-1] < history["loss"][0]
    # validation is measured with the weights at the end of each epoch
    final = model.evaluate(Xv, yv, metrics=["accuracy", "f1"])
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert history["val_loss"][-1] == pytest.approx(final["loss"], rel=tol)
    assert history["val_accuracy"][-1] == pytest.approx(final["accuracy"], rel=tol)
    assert model.history is history
    with pytest.raises(KeyError, match=r"'val_mae' was not recorded"):
        history["val_mae"]
    # a second fit continues the epoch count (with the first's settings: on JAX, its epoch program)
    assert model.fit(X, y, epochs=2, batch_size=5, metrics=["accuracy", "f1"],
                     validation_data=(Xv, yv)).epoch == [3, 4]
    assert model.epochs_trained == 5


def test_validation_split_holds_out_the_end(backend, dtype):
    # 21 samples: 0.25 holds out the last 6, as Keras does (it trains on floor(21 * 0.75) = 15, three whole batches)
    X, y, _ = (a[:21] for a in _fit_data())
    model = _small(backend, dtype, seed=2)
    history = model.fit(X, y, loss="mse", epochs=2, batch_size=5, validation_split=0.25, metrics=["mae"])
    assert set(history.history) == {"loss", "mae", "val_loss", "val_mae"}
    final = model.evaluate(X[-6:], y[-6:], metrics=["mae"])
    tol = 1e-5 if dtype == "float32" else 1e-12
    assert history["val_loss"][-1] == pytest.approx(final["loss"], rel=tol)
    assert history["val_mae"][-1] == pytest.approx(final["mae"], rel=tol)
    # the same as training on the first 15 with validation_data
    other = _small(backend, dtype, seed=2)
    h2 = other.fit(X[:-6], y[:-6], loss="mse", epochs=2, batch_size=5, validation_data=(X[-6:], y[-6:]),
                   metrics=["mae"])
    for key in history.history:
        np.testing.assert_allclose(history[key], h2[key], rtol=tol)


def test_validation_split_keeps_the_held_out_rows_sample_weight(backend, dtype):
    """As in Keras, validation_split splits sample_weight with X and y: the held-out rows are scored with their
    weights (class_weight, a training setting, is not applied to them), as validation_data=(X, y, w) would."""
    X, _, y = (a[:21] for a in _fit_data())  # the last 6 of 21 are held out; 15 rows train, in whole batches
    w = np.linspace(0.0, 3.0, len(X))
    kw = dict(loss="cross_entropy", epochs=2, batch_size=5, metrics=["accuracy"])
    split = _classifier(backend, dtype, seed=2).fit(X, y, sample_weight=w, class_weight={0: 2.0}, validation_split=0.25,
                                                    **kw)
    given = _classifier(backend, dtype, seed=2).fit(X[:-6], y[:-6], sample_weight=w[:-6], class_weight={0: 2.0},
                                                    validation_data=(X[-6:], y[-6:], w[-6:]), **kw)
    unweighted = _classifier(backend, dtype, seed=2).fit(X[:-6], y[:-6], sample_weight=w[:-6], class_weight={0: 2.0},
                                                         validation_data=(X[-6:], y[-6:]), **kw)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for key in given.history:
        np.testing.assert_allclose(split[key], given[key], rtol=tol, err_msg=key)
    assert abs(split["val_loss"][-1] - unweighted["val_loss"][-1]) > 1e-3


def test_cross_entropy_integer_and_one_hot_labels_agree(backend, dtype):
    X, _, y = _even_data()
    one_hot = np.eye(3)[y]
    runs = []
    for labels in (y, one_hot, y.astype(np.float64)):
        model = _classifier(backend, dtype, seed=8)
        history = model.fit(X, labels, loss="cross_entropy", optimizer="sgd", lr=0.1, epochs=3, batch_size=5,
                            metrics=["accuracy"])
        runs.append((history, _host_state(model)))
    tol = 1e-5 if dtype == "float32" else 1e-12
    for history, state in runs[1:]:
        np.testing.assert_allclose(history["loss"], runs[0][0]["loss"], rtol=tol)
        assert history["accuracy"] == runs[0][0]["accuracy"]
        _assert_states_close(state, runs[0][1], atol=tol)


def test_softmax_output_with_cross_entropy_probabilities(backend, dtype):
    X, _, y = _even_data()
    model = nnx.Sequential(nnx.Dense(3, 5), nnx.Tanh(), nnx.Dense(5, 3), nnx.Softmax(),
                           backend=backend, dtype=dtype, seed=0)
    history = model.fit(X, y, epochs=10, batch_size=5, lr=0.05, metrics=["accuracy"])  # loss picked: CE
    assert isinstance(model.loss, CrossEntropy)
    assert history["loss"][-1] < history["loss"][0]
    probs = backend.to_host(model.predict(X))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    ce = -np.mean(np.log(probs[np.arange(len(X)), y]))
    assert model.evaluate(X, y)["loss"] == pytest.approx(ce, rel=1e-4 if dtype == "float32" else 1e-10)


def test_evaluate_includes_penalty(backend, dtype):
    X, y, _ = _fit_data()
    model = _small(backend, dtype, seed=1, regularizer=L2(0.5))
    out = model.evaluate(X, y, loss="mse", metrics=["mse"])
    pred = backend.to_host(model.predict(X))
    mse = float(np.mean((pred - y) ** 2))
    penalty = sum(0.25 * float(np.sum(v ** 2)) for k, v in _host_state(model).items() if k.endswith("weight"))
    rel = 1e-5 if dtype == "float32" else 1e-12
    assert out["mse"] == pytest.approx(mse, rel=rel)
    assert out["loss"] == pytest.approx(mse + penalty, rel=rel)


def test_fit_accepts_backend_arrays_and_1d_targets(backend, dtype):
    X, y, _ = _even_data()
    model = nnx.Sequential(nnx.Dense(3, 5), nnx.ReLU(), nnx.Dense(5, 1), backend=backend, dtype=dtype, seed=0)
    history = model.fit(backend.asarray(X), backend.asarray(y[:, 0]), loss="mae", epochs=2, batch_size=5)
    assert len(history["loss"]) == 2
    reference = nnx.Sequential(nnx.Dense(3, 5), nnx.ReLU(), nnx.Dense(5, 1), backend=backend, dtype=dtype,
                               seed=0)
    reference.fit(X, y[:, :1], loss="mae", epochs=2, batch_size=5)
    for k, v in _host_state(model).items():
        np.testing.assert_array_equal(v, _host_state(reference)[k])


def test_epochs_zero_trains_nothing(backend, dtype):
    X, y, _ = _fit_data()
    model = _small(backend, dtype)
    before = _host_state(model)
    history = model.fit(X, y, loss="mse", epochs=0)
    assert len(history) == 0
    for k, v in _host_state(model).items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("name", ["cross_entropy", "categorical_crossentropy", "sparse_categorical_crossentropy", "ce"])
def test_loss_names_read_a_softmax_output_as_probabilities(backend, dtype, name):
    """Keras's categorical_crossentropy on a Softmax model means probabilities; never apply softmax twice."""
    X, _, y = _even_data()
    model = nnx.Sequential(nnx.Dense(3, 5), nnx.Tanh(), nnx.Dense(5, 3), nnx.Softmax(),
                           backend=backend, dtype=dtype, seed=0)
    probs = backend.to_host(model.predict(X))
    ce = -np.mean(np.log(probs[np.arange(len(X)), y]))
    assert model.evaluate(X, y, loss=name)["loss"] == pytest.approx(ce, rel=1e-4 if dtype == "float32" else 1e-10)
    # the softmax test's fit settings (on JAX, its epoch program)
    model.fit(X, y, loss=name, epochs=1, batch_size=5, metrics=["accuracy"])
    assert isinstance(model.loss, CrossEntropy) and not model.loss.from_logits


@pytest.mark.parametrize("name", ["categorical_crossentropy", "sparse_categorical_crossentropy"])
def test_keras_loss_names_read_probabilities_alone_and_a_models_logits_in_fit(backend, name):
    """Found in a docs review: Keras's names made a loss that read logits, so called on its own on probabilities
    (Keras's default for them) it gave another number without a word. In `fit` a name follows the model: a model
    ending elsewhere than a Softmax gives logits, as "ce" reads them."""
    X, _, y = _even_data()
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    targets = np.array([0, 1]) if name.startswith("sparse") else np.eye(3)[[0, 1]]
    alone = float(backend.to_host(nnx.losses.get_loss(name)(backend.asarray(targets), backend.asarray(probs))))
    assert alone == pytest.approx(-np.mean(np.log([0.7, 0.8])), rel=1e-12)
    histories = []
    for loss in (name, {"type": name}, "ce"):  # a config naming no from_logits is read as the name
        model = nnx.Sequential(nnx.Dense(3, 5), nnx.Tanh(), nnx.Dense(5, 3), backend=backend, dtype="float64", seed=0)
        histories.append(model.fit(X, y, loss=loss, epochs=2, batch_size=5).history["loss"])
        assert isinstance(model.loss, CrossEntropy) and model.loss.from_logits
    assert histories[0] == histories[1] == histories[2]


@pytest.mark.parametrize("name", ["bce", "bce_with_logits"])
def test_loss_names_read_a_sigmoid_output_as_probabilities(backend, dtype, name):
    X, _, y = _fit_data()
    y = (y > 0).astype(np.float64)
    model = nnx.Sequential(nnx.Dense(3, 5), nnx.Tanh(), nnx.Dense(5, 1), nnx.Sigmoid(),
                           backend=backend, dtype=dtype, seed=0)
    p = backend.to_host(model.predict(X))[:, 0].astype(np.float64)
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert model.evaluate(X, y, loss=name)["loss"] == pytest.approx(bce, rel=1e-4 if dtype == "float32" else 1e-10)


def test_explicit_logits_loss_on_probability_output_warns():
    X, _, y = _fit_data()
    model = nnx.Sequential(nnx.Dense(3, 3), nnx.Softmax(), dtype="float64", seed=0)
    with pytest.warns(UserWarning, match=r"treats the outputs as logits, but the model ends in Softmax"):
        model.fit(X, y, loss=CrossEntropy(from_logits=True), epochs=1)
    logits = nnx.Sequential(nnx.Dense(3, 3), dtype="float64", seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logits.fit(X, y, loss="cross_entropy", epochs=1)  # raw outputs with a logits loss: no warning


def test_loaded_and_moved_models_never_write_into_the_callers_arrays(backend, dtype):
    X, y, _ = _even_data()
    model = _small(backend, dtype, seed=0)
    given = {k: np.full(tuple(v.shape), 0.5) for k, v in model.state_dict().items()}
    model.load_state_dict(given)
    model.fit(X, y, loss="mse", epochs=1, batch_size=5)
    for k, v in given.items():
        np.testing.assert_array_equal(v, 0.5, err_msg=k)
    # nor does a copy made with .to() on the same backend share weights with the original
    twin = model.to(backend)
    before = _host_state(model)
    twin.fit(X, y, loss="mse", epochs=1, batch_size=5)
    for k, v in _host_state(model).items():
        np.testing.assert_array_equal(v, before[k])


def test_backward_needs_a_training_forward(backend, dtype):
    model = _small(backend, dtype)
    X = np.ones((4, 3))
    with pytest.raises(RuntimeError, match=r"backward needs a forward\(X, training=True\) first"):
        model.backward(np.ones((4, 2)))
    model.forward(X)  # inference keeps nothing
    with pytest.raises(RuntimeError, match=r"backward needs a forward\(X, training=True\) first"):
        model.backward(np.ones((4, 2)))
    model.forward(X, training=True)
    with pytest.raises(ValueError, match=r"dY has shape \(5, 2\) but the last forward's output has shape \(4, 2\)"):
        model.backward(np.ones((5, 2)))
    model.predict(np.ones((7, 3)))  # inference in between does not disturb the cached pass
    model.backward(np.ones((4, 2)))
    with pytest.raises(RuntimeError, match=r"backpropagated once"):
        model.backward(np.ones((4, 2)))


def test_reported_training_loss_includes_the_penalty(backend):
    X, y, _ = _fit_data()
    model = _small(backend, "float64", seed=1, regularizer=L2(2.0))
    expected = model.evaluate(X, y, loss="mse")["loss"]
    penalty = backend.to_float(model.penalty())
    assert penalty > 0.1 * expected  # large enough to matter
    # a vanishing step leaves the weights as they were, so the epoch's loss is the loss at the start
    history = model.fit(X, y, loss="mse", optimizer="sgd", lr=1e-15, epochs=1, batch_size=5, shuffle=True)
    assert history["loss"][0] == pytest.approx(expected, rel=1e-9)


def test_evaluate_in_batches_matches_whole(backend, dtype):
    X, _, y = _fit_data()
    model = _classifier(backend, dtype, seed=3)
    whole = model.evaluate(X, y, loss="cross_entropy", metrics=["accuracy", "precision"])
    batched = model.evaluate(X, y, loss="cross_entropy", metrics=["accuracy", "precision"], batch_size=5)
    assert set(whole) == {"loss", "accuracy", "precision"}
    for key in whole:
        assert batched[key] == pytest.approx(whole[key], rel=1e-5 if dtype == "float32" else 1e-12)


def test_model_on_a_backend_taken_from_an_array_saves_and_loads_there(tmp_path):
    device1 = nnx.get_backend("array_api_strict:device1")
    x = device1.asarray(np.ones((2, 3)))
    model = nnx.Sequential(nnx.Dense(3, 2), backend=x, seed=0)
    assert model.backend == device1
    model.save(tmp_path / "m.npz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot run here, loading on numpy" fallback
        loaded = nnx.load(tmp_path / "m.npz")
    assert loaded.backend == device1
    np.testing.assert_array_equal(device1.to_host(loaded.predict(np.ones((2, 3)))),
                                  device1.to_host(model.predict(np.ones((2, 3)))))


@pytest.mark.parametrize("last, name", [(nnx.Softmax, "cross_entropy"), (nnx.Sigmoid, "bce_with_logits")])
def test_check_gradients_reads_a_loss_name_as_fit_does(monkeypatch, last, name):
    # a name read as logits after Softmax/Sigmoid checked the activation applied twice, a loss fit never computes
    seen = []
    real = nnx.Sequential.loss_and_grads

    def spy(self, X, y, loss, *args, **kwargs):
        seen.append(loss)
        return real(self, X, y, loss, *args, **kwargs)

    monkeypatch.setattr(nnx.Sequential, "loss_and_grads", spy)
    model = nnx.Sequential(nnx.Dense(3, 2), last(), seed=0)
    X = np.random.default_rng(0).standard_normal((4, 3))
    y = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert nnx.check_gradients(model, X, y, loss=name, inputs=False) < 1e-6
    assert seen and all(loss.get_config() == model.resolve_loss(name).get_config() for loss in seen)
    assert not seen[0].from_logits


def test_summary_counts_only_the_optimizers_parameters_as_trainable():
    # found in review: with an optimizer over the first layer only, summary called all 26 parameters trainable
    model = nnx.Sequential(nnx.Dense(3, 4), nnx.ReLU(), nnx.Dense(4, 2), seed=0)
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    assert "trainable parameters: 26; buffers: 0" in lines[-1]
    X, y = np.ones((4, 3)), np.zeros((4, 2))
    model.fit(X, y, optimizer=nnx.optim.SGD(model.parameters()[:2], lr=0.1), epochs=1)
    model.summary(print_fn=lines.append)
    assert "trainable parameters: 16; not trained (outside the optimizer): 10; buffers: 0" in lines[-1]


def test_to_given_a_torch_dtype_or_device_names_what_it_takes():
    # found in review: model.to(torch.float64) or model.to(torch.device("cpu")) raised AttributeError from
    # deep inside ("'torch.dtype' object has no attribute 'device'")
    torch = pytest.importorskip("torch")
    model = _small("numpy")
    for wrong in (torch.float64, torch.device("cpu")):
        with pytest.raises(TypeError, match=r"backend must be a name, namespace, array or Backend, got (dtype|device)"):
            model.to(wrong)


def test_pickling_a_model_says_how_to_save_and_copy_it():
    # found in review: pickle.dumps(model) failed with "cannot pickle 'module' object", which names neither the
    # model nor the way to keep one
    import pickle

    model = _small("numpy")
    refused = r"on the numpy backend is not pickled: .* model\.save\(path\) and nnx\.load"
    for bound in (model, model.layers[0]):
        with pytest.raises(TypeError, match=refused):
            pickle.dumps(bound)
    layer = pickle.loads(pickle.dumps(nnx.Dense(3, 2)))  # a layer not yet in a model pickles as before
    assert (layer.in_features, layer.out_features) == (3, 2)
    assert copy.copy(model).layers[0] is model.layers[0]  # and a shallow copy shares the layers, as before


# The model's public API outside fit (predict, evaluate, state, copies, summary, gradient checks) as a PyTorch / Keras
# user meets it.
def _host(model: nnx.Sequential, a: Any) -> np.ndarray:
    return np.asarray(model.backend.to_host(a), dtype=np.float64)


class MSEOfSoftplusInput(nnx.losses.MSE):
    """MSE of softplus(z), given z: what a loss folding a final Softplus computes from that layer's inputs."""

    def rows(self, xp: Any, y_true: Any, y_pred: Any) -> tuple[Any, Any]:
        softplus = xp.log1p(xp.exp(y_pred))
        rows, grad = super().rows(xp, y_true, softplus)
        return rows, grad / (1 + xp.exp(-y_pred))


class FoldsSoftplusMSE(nnx.losses.MSE):
    """MSE that folds a final Softplus into itself (`fold_output_layer`, the loss's hook for its output layer)."""

    def fold_output_layer(self, layer: Any) -> Any:
        return MSEOfSoftplusInput() if type(layer) is nnx.Softplus else None


def test_metrics_of_a_loss_that_folds_the_output_layer_score_the_outputs(backend: Any) -> None:
    # A loss may fold the model's last layer (`fold_output_layer`): the loss then reads that layer's inputs, but the
    # metrics must still score the outputs `predict` gives, as they do for a Sigmoid folded into BCE. They scored the
    # inputs of the Softplus instead: mse 1.0 where the outputs' is 0.46, in evaluate and in fit's history alike
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 4))  # batches of 8, whole: batched and whole runs, one batch shape to compile on JAX
    y = np.abs(X[:, :1])
    model = nnx.Sequential(nnx.Dense(4, 1), nnx.Softplus(), backend=backend, dtype="float64", seed=0)
    P = _host(model, model.predict(X))
    mse, mae = float(np.mean((P - y) ** 2)), float(np.mean(np.abs(P - y)))
    for batch_size in (None, 8):
        logs = model.evaluate(X, y, loss=FoldsSoftplusMSE(), metrics=["mse", "mae"], batch_size=batch_size)
        assert logs["loss"] == pytest.approx(mse, rel=1e-9)
        assert logs["mse"] == pytest.approx(mse, rel=1e-9)
        assert logs["mae"] == pytest.approx(mae, rel=1e-9)
    batches = [(X[:8], y[:8]), (X[8:], y[8:])]
    logs = model.evaluate(batches, loss=FoldsSoftplusMSE(), metrics=["mse", "mae"])
    assert logs["mse"] == pytest.approx(mse, rel=1e-9)
    assert logs["mae"] == pytest.approx(mae, rel=1e-9)
    # fit: the metrics of the epoch (weights before and after differ by a step of 1e-300) and of validation
    history = model.fit(X, y, loss=FoldsSoftplusMSE(), optimizer=nnx.optim.SGD(model.parameters(), 1e-300),
                        epochs=1, batch_size=8, metrics=["mae"], validation_data=(X, y), verbose=0)
    assert history.history["mae"][0] == pytest.approx(mae, rel=1e-9)
    assert history.history["val_mae"][0] == pytest.approx(mae, rel=1e-9)


def test_a_parameter_rebound_to_another_dtype_is_named_by_predict(backend: Any) -> None:
    # Weights copied in as torch users do (`layer.weight.data = w`; here `p.value = np.load(...)`, float64 by
    # NumPy's default) into a float32 model: NumPy and JAX then predicted float64 outputs without a word (torch
    # failed in its own matmul, naming no parameter). predict now names the parameter, its dtype and the model's, and
    # says how to assign
    dtype, other = "float32", "float64"
    X = np.random.default_rng(0).normal(size=(6, 4))
    model = nnx.Sequential(nnx.Dense(4, 3), nnx.BatchNorm(3), nnx.Dense(3, 1), backend=backend, dtype=dtype, seed=0)
    for array in (model.layers[0].weight, model.layers[1].running_mean):
        kept = array.value
        array.value = model.backend.asarray(np.ones(kept.shape), dtype=other)
        kind = "parameter" if isinstance(array, nnx.Parameter) else "buffer"
        for batch_size in (None, 4):
            for data in (X, [X[:3], X[3:]]):
                try:
                    out = model.predict(data, batch_size=None if isinstance(data, list) else batch_size)
                except TypeError as exc:  # torch's matmul refuses mixed dtypes in its own words: named here too
                    assert f"{kind} '{array.name}' holds {other} in a {dtype} model" in str(exc)
                    continue
                pytest.fail(f"predict gave {out.dtype} outputs from a {dtype} model")
        if kind == "parameter":  # evaluate names it too where the forward fails (torch); elsewhere it computes
            try:
                model.evaluate(X, X[:, :1], loss="mse")
            except TypeError as exc:
                assert model.backend.spec.startswith("torch")
                assert "evaluate failed (RuntimeError: " in str(exc)
                assert f"a likely cause: {kind} '{array.name}' holds {other} in a {dtype} model" in str(exc)
        array.value = kept
    # the way the message gives is right: the predictions of the weights loaded through load_state_dict
    model.layers[0].weight.value = model.backend.asarray(np.ones((4, 3)), dtype=model.dtype)
    expected = _host(model, model.predict(X))
    state = {k: _host(model, v) for k, v in model.state_dict().items()}
    fresh = nnx.Sequential(nnx.Dense(4, 3), nnx.BatchNorm(3), nnx.Dense(3, 1), backend=backend, dtype=dtype, seed=1)
    fresh.load_state_dict(state)
    np.testing.assert_array_equal(_host(fresh, fresh.predict(X)), expected)


class ForwardDoublingModel(nnx.Sequential):
    """A model subclass overriding forward, as torch users write `nn.Module.forward`."""

    def forward(self, X: Any, training: bool = False) -> Any:
        return 2.0 * super().forward(X, training)


class HeadHalvingModel(nnx.Sequential):
    """A model subclass changing its outputs where predict and fit run them: forward_to_head."""

    def forward_to_head(self, X: Any, n_layers: int, training: bool, runners: Any = None) -> Any:
        return 0.5 * super().forward_to_head(X, n_layers, training, runners)


def test_a_model_whose_forward_is_overridden_is_refused_where_forward_is_not_run(backend: Any) -> None:
    # model(X) ran the subclass's forward (twice the outputs) while predict, evaluate and check_gradients ran the
    # layers through forward_to_head and gave the plain model's numbers without a word. They now refuse it, naming
    # forward_to_head, which they do run (and which a subclass may override: the second model)
    X = np.random.default_rng(0).normal(size=(5, 4))
    y = X[:, :1]
    model = ForwardDoublingModel(nnx.Dense(4, 1), backend=backend, dtype="float64", seed=0)
    for call in (lambda: model.predict(X), lambda: model.evaluate(X, y), lambda: nnx.check_gradients(model, X, y)):
        with pytest.raises(TypeError, match="ForwardDoublingModel overrides forward.*forward_to_head"):
            call()
    plain = nnx.Sequential(nnx.Dense(4, 1), backend=backend, dtype="float64", seed=0)
    plain.layers[0].forward = lambda X, training=False: 3.0 * nnx.Dense.forward(plain.layers[0], X, training)
    np.testing.assert_allclose(_host(plain, plain.predict(X)), _host(plain, plain(X)))  # a layer's own: run
    plain.forward = lambda X, training=False: X  # on the model object itself
    with pytest.raises(TypeError, match="forward was replaced on the object"):
        plain.predict(X)
    halved = HeadHalvingModel(nnx.Dense(4, 1), backend=backend, dtype="float64", seed=0)
    np.testing.assert_allclose(_host(halved, halved.predict(X)), _host(halved, halved(X)))
    assert np.isfinite(halved.evaluate(X, y)["loss"])
    # run as written: its backward is the plain model's, which the check finds (half the outputs, whole gradients)
    assert float(nnx.check_gradients(halved, X, y)) > 0.1


def test_inference_is_in_eval_mode_and_copies_are_independent(backend: Any, dtype: str) -> None:
    # guards (passed as found): predict, model(X) and evaluate, whole or in batches (a partial last one), give the
    # eval-mode numbers computed by hand (BatchNorm's running statistics, dropout off) and leave the running
    # statistics alone; a deep copy trains on its own arrays and optimizer state, and goes on as the original does
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, 4))
    y = (X[:, :1] > 0) * 1.0
    model = nnx.Sequential(nnx.Dense(4, 8), nnx.BatchNorm(8), nnx.ReLU(), nnx.Dropout(0.5), nnx.Dense(8, 1),
                           nnx.Sigmoid(), backend=backend, dtype=dtype, seed=0)
    # the fits' batches divide the 16 rows (no partial batch, one compiled program less on JAX): the partial batches
    # this test is about are predict's and evaluate's
    model.fit(X, y, optimizer="adam", epochs=2, batch_size=8, verbose=0)
    h = lambda a: _host(model, a)  # noqa: E731
    bn = model.layers[1]
    mean, var = h(bn.running_mean.value), h(bn.running_var.value)
    H = X @ h(model.layers[0].weight.value) + h(model.layers[0].bias.value)
    H = np.maximum((H - mean) / np.sqrt(var + bn.eps) * h(bn.weight.value) + h(bn.bias.value), 0)
    P = 1 / (1 + np.exp(-(H @ h(model.layers[4].weight.value) + h(model.layers[4].bias.value))))
    tol = 1e-5 if dtype == "float32" else 1e-12
    # batches of 5 (a partial last one of 1) for predict and evaluate, by batch_size and as lists: two inference
    # shapes besides the whole 16 rows, each compiled once on JAX
    parts = [slice(0, 5), slice(5, 10), slice(10, 15), slice(15, 16)]
    for out in (model.predict(X), model.predict(X, batch_size=5), model(X), model.predict([X[s] for s in parts])):
        np.testing.assert_allclose(h(out), P, rtol=tol, atol=tol)
    bce = float(np.mean(-(y * np.log(P) + (1 - y) * np.log(1 - P))))
    batches = [(X[s], y[s]) for s in parts]
    for logs in (model.evaluate(X, y), model.evaluate(X, y, batch_size=5), model.evaluate(batches)):
        assert logs["loss"] == pytest.approx(bce, rel=10 * tol)
    np.testing.assert_array_equal(h(bn.running_mean.value), mean)
    np.testing.assert_array_equal(h(bn.running_var.value), var)
    twin = copy.deepcopy(model)
    weight = h(model.layers[0].weight.value)
    twin.fit(X, y, epochs=2, batch_size=8, verbose=0)
    np.testing.assert_array_equal(h(model.layers[0].weight.value), weight)  # the original did not move
    assert not np.array_equal(_host(twin, twin.layers[0].weight.value), weight)
    model.fit(X, y, epochs=2, batch_size=8, verbose=0)
    np.testing.assert_array_equal(h(model.predict(X)), _host(twin, twin.predict(X)))


def test_summary_of_a_nested_model_does_not_call_frozen_parameters_trainable() -> None:
    # A model nested in another is trained by its holder's optimizer: with that optimizer built on other layers
    # only, inner.summary() still said "trainable parameters: 16" where none of them is trained
    X = np.random.default_rng(0).normal(size=(8, 4))
    inner = nnx.Sequential(nnx.Dense(3, 3), nnx.Dense(3, 1))
    model = nnx.Sequential(nnx.Dense(4, 3), inner, seed=0)
    model.fit(X, X[:, :1], optimizer=nnx.optim.Adam(model.layers[0].parameters()), epochs=1, verbose=0)
    lines: list[str] = []
    model.summary(print_fn=lines.append)
    assert "trainable parameters: 15; not trained (outside the optimizer): 16;" in lines[-1]
    model.layers[1].summary(print_fn=lines.append)
    last = lines[-1].splitlines()[-1]
    assert "trainable parameters: 16" not in last
    assert last.startswith("parameters: 16 (trained as the model holding this one decides: see its summary)")


class DoublingForwardModel(nnx.Sequential):
    """A model whose forward (as a torch user writes it) doubles the outputs; fit runs forward_to_head."""

    def forward(self, X: Any, training: bool = False) -> Any:
        return 2.0 * super().forward(X, training)


def test_fit_refuses_a_model_whose_forward_it_would_not_run(backend: Any) -> None:
    # predict, evaluate and check_gradients refuse such a model (304c29e); fit trained the plain model's outputs
    # without a word, and its history was the plain model's loss
    X = np.random.default_rng(0).normal(size=(8, 3))
    model = DoublingForwardModel(nnx.Dense(3, 1), backend=backend, dtype="float64", seed=0)
    before = [np.asarray(model.backend.to_host(p.value)) for p in model.parameters()]
    with pytest.raises(TypeError, match="DoublingForwardModel overrides forward, which fit does not run"):
        model.fit(X, X[:, :1], loss="mse", optimizer="sgd", epochs=1)
    for p, old in zip(model.parameters(), before, strict=True):  # refused before any step
        np.testing.assert_array_equal(np.asarray(model.backend.to_host(p.value)), old)


def test_a_gradient_promoted_by_another_parameter_names_that_parameter() -> None:
    # A float64 array assigned to a float32 model's weight promotes every gradient computed with it: the bias's
    # gradient is the first whose dtype differs from its value's, and the error named only the bias
    X = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    model = nnx.Sequential(nnx.Dense(3, 1), backend="numpy", dtype="float32", seed=0)
    weight = model.layers[0].weight
    weight.value = np.asarray(weight.value, dtype=np.float64)
    with pytest.raises(ValueError, match=r"(?s)'0\.bias'.*'0\.weight' holds float64"):
        model.fit(X, X[:, :1], loss="mse", optimizer="sgd", epochs=1)


def test_to_copies_what_callbacks_keep(tmp_path):
    """Found by mutation testing: a to() that dropped `callback_state` went unseen, and with it ModelCheckpoint's
    best so far: the copy's next worse epoch overwrote the best file."""
    X, y = np.random.default_rng(0).normal(size=(20, 3)), np.random.default_rng(1).normal(size=(20, 2))
    model = nnx.Sequential(nnx.Dense(3, 2), dtype="float32", seed=0)
    best = nnx.callbacks.ModelCheckpoint(str(tmp_path / "best"), monitor="loss", save_best_only=True)
    model.fit(X, y, loss="mse", epochs=2, callbacks=[best])
    moved = model.to(dtype="float64")
    assert moved.callback_state == model.callback_state != {}
    moved.callback_state["edited"] = 1  # a copy: the original's stays as it was
    assert "edited" not in model.callback_state


def test_load_state_dict_copies_the_arrays_it_is_given():
    """Found by mutation testing: with the dtype already the model's, the caller's NumPy array itself became the
    weight (no test looked), so editing it later changed the model."""
    model = nnx.Sequential(nnx.Dense(3, 2), dtype="float32", seed=0)
    source = {k: np.ones_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(source)
    source["0.weight"][:] = 7.0
    assert not np.shares_memory(model.layers[0].weight.value, source["0.weight"])
    np.testing.assert_array_equal(model.state_dict()["0.weight"], np.ones((3, 2), np.float32))

