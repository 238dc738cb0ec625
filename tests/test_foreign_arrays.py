"""Arrays from other libraries and of unusual kinds at nnx's boundaries (fit, predict, losses, metrics, parameters):
the same numbers as a float NumPy array, or an error naming the problem, never a silently wrong result."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import nnx

ALL = nnx.available_backends()


def _model(backend: str, dtype: str = "float64") -> nnx.Sequential:
    return nnx.Sequential(nnx.Dense(3, 4), nnx.Tanh(), nnx.Dense(4, 1), backend=backend, dtype=dtype, seed=0)


def _data(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 3))
    return X, (X @ np.array([1.0, -2.0, 0.5]))[:, None]


@pytest.mark.parametrize("backend", ALL)
def test_unusual_numpy_inputs_predict_as_the_float_array_does(backend: str) -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    X, _ = _data()
    model = _model(backend)
    host = model.backend.to_host
    base = host(model.predict(X))
    readonly = X.copy()
    readonly.flags.writeable = False
    with pytest.warns(PendingDeprecationWarning):
        matrix = np.matrix(X)
    for given in (np.flip(X, 0)[::-1], np.asfortranarray(X), readonly, matrix, np.ma.masked_array(X), X.tolist()):
        np.testing.assert_array_equal(host(model.predict(given)), base)
    for given in (X.astype(np.float16), X.astype(ml_dtypes.bfloat16)):  # cast up exactly, then computed in float64
        np.testing.assert_allclose(host(model.predict(given)), host(model.predict(given.astype(np.float64))))
    assert str(model.predict(X > 0).dtype).endswith("float64")
    with pytest.raises(TypeError, match="real numbers.*complex128"):
        model.predict(X.astype(complex))
    with pytest.raises(ValueError, match=r"2-D.*\(24, 3, 1\)"):
        model.predict(X[..., None])
    with pytest.raises(ValueError, match=r"2-D.*\(3,\)"):
        model.predict(X[0])
    with pytest.raises(ValueError, match="masked entr"):
        model.predict(np.ma.masked_array(X, mask=X > 1))


@pytest.mark.parametrize("backend", ALL)
def test_fit_leaves_the_callers_arrays_as_they_were(backend: str) -> None:
    X, y = _data()
    Xc, yc, w = X.copy(), y.copy(), np.ones(len(y))
    _model(backend).fit(Xc, yc, sample_weight=w, epochs=2, batch_size=5, loss="mse", verbose=0, validation_split=0.25)
    np.testing.assert_array_equal(Xc, X)
    np.testing.assert_array_equal(yc, y)
    np.testing.assert_array_equal(w, np.ones(len(y)))


@pytest.mark.parametrize("backend", ALL)
def test_a_torch_tensor_is_refused_by_name_or_read_without_its_graph(backend: str) -> None:
    torch = pytest.importorskip("torch")
    X, _ = _data()
    model = _model(backend)
    t = torch.tensor(X, requires_grad=True).flip(0)
    if backend != "torch":
        with pytest.raises(TypeError, match=f"torch array but this model runs on the {backend} backend"):
            model.predict(t)
        return
    out = model.predict(t)
    assert not out.requires_grad
    np.testing.assert_array_equal(out.numpy(), model.predict(np.flip(X, 0)).numpy())


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("kind", ["list", "host", "foreign"])
def test_a_parameter_assigned_an_array_of_another_kind_is_named(backend: str, kind: str) -> None:
    """``p.value = np.load(...)`` on a torch model, a list, or a tensor on a NumPy model: fit and predict name the
    parameter and the backend, instead of failing deep in a layer (or, for torch, blaming two equal dtypes)."""
    X, y = _data()
    model = _model(backend)
    p = model.parameters()[0]
    shape = tuple(p.value.shape)
    if kind == "list":
        value = np.zeros(shape).tolist()
    elif kind == "host":
        if backend == "numpy":
            pytest.skip("a NumPy array is the numpy backend's own")
        value = np.zeros(shape)
    else:
        torch = pytest.importorskip("torch")
        if backend == "torch":
            pytest.skip("a tensor is the torch backend's own")
        value = torch.zeros(shape)
    p.value = value
    with pytest.raises(TypeError, match=f"parameter '0.weight' holds .* {backend} backend"):
        model.fit(X, y, epochs=1, loss="mse", verbose=0)
    try:  # NumPy's matmul takes a list: the right numbers, and predict checks no parameter before it runs
        with warnings.catch_warnings():  # torch's X @ a NumPy weight: NumPy's deprecation of torch's __array_wrap__
            warnings.simplefilter("ignore", DeprecationWarning)
            out = model.backend.to_host(model.predict(X))
    except TypeError as exc:
        assert "parameter '0.weight' holds" in str(exc) and f"{backend} backend" in str(exc)
    else:
        same = _model(backend)
        same.parameters()[0].value = same.backend.asarray(np.zeros(shape), dtype=same.dtype)
        np.testing.assert_allclose(out, same.backend.to_host(same.predict(X)))


def test_a_loss_reads_a_masked_prediction_by_name_not_by_its_unmasked_part() -> None:
    """NumPy's masked arithmetic skips masked entries, so MSE of a masked y_pred was the mean of the rest: a silently
    other number. As every input, a masked array with masked entries is refused; one without any is read as is."""
    X, y = _data()
    p = _model("numpy").predict(X)
    mse = nnx.losses.MSE()
    with pytest.raises(ValueError, match="y_pred is a masked array"):
        mse(y, np.ma.masked_array(p, mask=p > 0.5))
    assert float(mse(y, np.ma.masked_array(p))) == float(mse(y, p))


def test_a_loss_refuses_masked_targets_and_reads_a_matrix_prediction_as_an_array() -> None:
    # a masked y_true was never passed through Backend.asarray (it is a NumPy array on y_pred's device): MSE scored
    # the unmasked rows only (0.0225 where the values give 0.1125). An np.matrix y_pred was refused as no array
    # (array_api_compat counts no matrix one), though a0add59 meant to read it as a plain array
    pred = np.array([[0.5], [0.5], [0.5], [0.5]])
    true = np.array([[0.2], [0.8], [0.6], [0.1]])
    masked = np.ma.array(true, mask=[[0], [0], [1], [0]])
    with pytest.raises(ValueError, match="y_true"):
        nnx.losses.MSE()(masked, pred)
    plain = float(nnx.losses.MSE()(true, pred))
    assert float(nnx.losses.MSE()(np.ma.array(true), pred)) == plain  # nothing masked: its values
    with pytest.warns(PendingDeprecationWarning):
        matrices = np.asmatrix(true), np.asmatrix(pred)
    assert float(nnx.losses.MSE()(true, matrices[1])) == plain
    assert float(nnx.losses.MSE()(matrices[0], pred)) == plain


def _aligned_copy(a: np.ndarray, align: int = 64) -> np.ndarray:
    """`a` copied into a buffer aligned to `align` bytes (where JAX's device_put on the CPU shares the memory)."""
    raw = np.empty(a.nbytes + align, np.uint8)
    offset = (-raw.ctypes.data) % align
    out = raw[offset:offset + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def test_a_buffer_refilled_after_predict_or_asarray_returned_changes_nothing(backend) -> None:
    """Found in review: on JAX, device_put of an aligned NumPy array shares its memory on the CPU (or copies it
    later), so a caller refilling its buffer after predict returned changed the prediction it held, in 5 of 5
    calls, and an array made by ``backend.asarray``; the backend now copies what it is handed first."""
    model = _model(backend)
    X = _data()[0]
    reference = np.asarray(model.backend.to_host(model.predict(X.copy())))
    buffer = _aligned_copy(X)
    predicted = model.predict(buffer)
    made = model.backend.asarray(buffer)  # (NumPy's and torch's share a NumPy array's memory, as asarray does)
    buffer[...] = 0.0
    np.testing.assert_array_equal(model.backend.to_host(predicted), reference)
    if model.backend.name == "jax":  # its arrays cannot change
        np.testing.assert_array_equal(model.backend.to_host(made), X)
