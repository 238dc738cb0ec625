"""The torch adapter's namespace gives array_api_compat's results where it skips compat's wrappers.

`maximum`, `minimum`, `where` and `matmul` go straight to torch where the operands already agree (a
Python number beside a floating tensor, two tensors of one dtype); every result must be the
one compat's own function gives: the same dtype, device and bits (NaN and signed zeros too).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

import nnx

torch = pytest.importorskip("torch")
compat = pytest.importorskip("array_api_compat.torch")

VALUES = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, -2.5, 3.0]


def _xp():
    return nnx.get_backend("torch").xp


def _same(got, want):
    assert got.dtype == want.dtype and got.device == want.device and got.shape == want.shape
    got, want = got.detach().cpu(), want.detach().cpu()
    if got.dtype.is_floating_point:  # bits, so that NaN and the sign of zero count
        bits = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
                torch.float64: torch.int64}[got.dtype]
        assert torch.equal(got.view(bits), want.view(bits))
    else:
        assert torch.equal(got, want)


def _operand_pairs():
    for dtype in (torch.float64, torch.float32, torch.float16):
        a = torch.tensor(VALUES, dtype=dtype)
        for number in (0, 0.0, -0.0, 2, -1.5, math.nan, math.inf):
            yield a, number
            yield number, a
            yield torch.tensor(-0.0, dtype=dtype), number  # a 0-d tensor
        yield a, torch.tensor(VALUES[::-1], dtype=dtype)
    ints = torch.tensor([-3, 0, 4])
    yield ints, 2  # compat's own path: not a floating tensor
    yield ints, 1.5
    yield torch.tensor(VALUES), True  # a bool is not a number here
    yield torch.tensor(VALUES, dtype=torch.float32), torch.tensor(1.0, dtype=torch.float64)  # mixed dtypes


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_and_minimum_give_compats_results(name):
    xp = _xp()
    for x1, x2 in _operand_pairs():
        try:
            want = getattr(compat, name)(x1, x2)
        except (TypeError, RuntimeError) as exc:
            with pytest.raises(type(exc)):
                getattr(xp, name)(x1, x2)
            continue
        _same(getattr(xp, name)(x1, x2), want)


def test_where_gives_compats_results():
    xp = _xp()
    for x1, x2 in _operand_pairs():
        shape = (x1 if isinstance(x1, torch.Tensor) else x2).shape
        condition = torch.arange(math.prod(shape)).reshape(shape) % 3 == 0
        for a, b in ((x1, x2), (x2, x1)):
            try:
                want = compat.where(condition, a, b)
            except (TypeError, RuntimeError) as exc:
                with pytest.raises(type(exc)):
                    xp.where(condition, a, b)
                continue
            _same(xp.where(condition, a, b), want)


def test_a_number_kept_as_a_tensor_serves_autograd_after_inference_mode():
    """`maximum` and `minimum` keep the 0-d tensors they make of Python numbers; one first made under
    `torch.inference_mode` must still be usable where autograd records (an inference tensor is refused there)."""
    xp = _xp()
    with torch.inference_mode():
        xp.maximum(torch.ones(2), 0.375)
    w = torch.tensor([0.0, 1.0], requires_grad=True)
    xp.maximum(w, 0.375).sum().backward()
    assert w.grad.tolist() == [0.0, 1.0]
    assert xp.maximum(torch.tensor([-1.0]), 0.375) is not xp.maximum(torch.tensor([-1.0]), 0.375)  # new results


def test_a_number_met_while_torch_traces_is_not_kept_for_later_calls():
    """`torch.export` runs the namespace on fake tensors: a 0-d tensor made there must not serve later calls."""
    xp = _xp()

    class Clamp(torch.nn.Module):
        def forward(self, x):
            return xp.maximum(x, 0.8125)

    torch.export.export(Clamp(), (torch.zeros(3),))
    out = xp.maximum(torch.zeros(3), 0.8125)
    assert type(out) is torch.Tensor and out.tolist() == [0.8125] * 3


def test_matmul_gives_compats_results():
    xp = _xp()
    gen = torch.Generator().manual_seed(0)
    shapes = [((3, 4), (4, 5)), ((4,), (4, 2)), ((2, 3), (3,)), ((2, 3, 4), (4, 2))]
    for (s1, s2) in shapes:
        for d1, d2 in [(torch.float64, torch.float64), (torch.float32, torch.float32),
                       (torch.float32, torch.float64), (torch.int64, torch.int64)]:
            x1 = (torch.randn(s1, generator=gen) * 4).to(d1)
            x2 = (torch.randn(s2, generator=gen) * 4).to(d2)
            _same(xp.matmul(x1, x2), compat.matmul(x1, x2))


def test_every_other_name_is_compats_own_object():
    xp = _xp()
    assert xp.__name__ == compat.__name__
    mine = {"maximum", "minimum", "matmul", "where"}
    for name, value in vars(compat).items():
        if name not in mine and name not in ("__name__", "__doc__"):
            assert getattr(xp, name) is value, name


@pytest.mark.parametrize("loss, head, classes", [("bce", nnx.Sigmoid, 1), ("cross_entropy", nnx.Softmax, 3),
                                                 ("mse", nnx.Identity, 1), ("mae", nnx.Identity, 1)])
def test_a_fits_first_batch_makes_no_tensor_from_a_python_number(monkeypatch, loss, head, classes):
    """The loss's input-checked path (a fit's first batch) computes with the adapter's namespace too.

    compat's `maximum(x, 0)` makes the 0 a tensor with ``torch.asarray(0, device=...)``: a copy from host
    memory, which torch:cuda waits for at every fit's first step (found on a GPU). On the CPU the same call
    is visible: no `torch.asarray` of a Python number may run while training.
    """
    made = []
    asarray = torch.asarray
    monkeypatch.setattr(torch, "asarray", lambda obj, *a, **k: (made.append(obj) if isinstance(
        obj, (int, float)) else None, asarray(obj, *a, **k))[1])
    X = torch.linspace(-2, 2, 48, dtype=torch.float64).reshape(16, 3)
    y = torch.arange(16) % classes if classes > 1 else (X[:, :1] > 0).to(torch.float64)
    model = nnx.Sequential(nnx.Dense(3, classes), head(), backend="torch", dtype="float64", seed=0)
    model.fit(X, y, loss=loss, optimizer="sgd", epochs=1, batch_size=8, verbose=0)
    assert made == []


# The torch backend as a PyTorch user hands it tensors: autograd inputs, odd layouts and dtypes, torch's global state
# (RNG, default dtype, grad modes), shared weights, and tensor kinds nnx refuses.
RNG = np.random.default_rng(21)


X = RNG.standard_normal((48, 5)).astype(np.float32)


Y_BIN = (X[:, :1] > 0).astype(np.float32)


def _model(backend: str, **kwargs):
    return nnx.Sequential(nnx.Dense(5, 8), nnx.ReLU(), nnx.Dense(8, 1), backend=backend, seed=3, **kwargs)


def _fit(backend: str, X_in, y_in, **kwargs):
    model = _model(backend)
    model.fit(X_in, y_in, loss=nnx.losses.BinaryCrossEntropy(from_logits=True), optimizer="adam", epochs=2,
              batch_size=16, verbose=0, **kwargs)
    return model


def _host(model) -> dict:
    return {k: np.asarray(torch.as_tensor(v).detach().cpu()) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def numpy_weights():
    return _host(_fit("numpy", X, Y_BIN))


def _inputs():
    Xt, yt = torch.tensor(X), torch.tensor(Y_BIN)
    return {
        "requires_grad": (Xt.clone().requires_grad_(), yt.clone().requires_grad_()),
        "transposed_view": (torch.tensor(X.T.copy()).T, yt),
        "strided_view": (torch.tensor(np.repeat(X, 2, axis=1))[:, ::2], yt),
        "float64": (Xt.double(), yt.double()),
        "int64_targets": (Xt, yt.long()),
        "int32_targets": (Xt, yt.int()),
        "uint8_targets": (Xt, yt.to(torch.uint8)),
        "bool_targets": (Xt, yt.bool()),
        "parameter_input": (torch.nn.Parameter(Xt.clone()), yt),
    }


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("case", list(_inputs()))
def test_torch_inputs_of_any_layout_or_kind_train_as_numpy_does(case, shuffle, numpy_weights):
    X_in, y_in = _inputs()[case]
    X_keep, y_keep = X_in.detach().clone(), y_in.detach().clone()
    model = _fit("torch", X_in, y_in, shuffle=shuffle)
    want = numpy_weights if shuffle else _host(_fit("numpy", X, Y_BIN, shuffle=False))
    for name, value in model.state_dict().items():
        assert value.dtype == torch.float32 and not value.requires_grad and value.grad_fn is None
        np.testing.assert_allclose(value.numpy(), want[name], rtol=0, atol=1e-6, err_msg=name)
    assert torch.equal(X_in.detach(), X_keep) and torch.equal(y_in.detach(), y_keep)  # inputs never written


def test_torch_seed_gives_numpy_weights_whatever_torchs_global_rng_and_default_dtype():
    want = _host(_model("numpy"))
    try:
        for seed in (0, 12345):
            torch.manual_seed(seed)
            torch.rand(17)
            torch.set_default_dtype(torch.float64 if seed else torch.float32)
            model = _model("torch")
            for name, value in model.state_dict().items():
                assert value.dtype == torch.float32  # the model's dtype, not torch's default
                np.testing.assert_array_equal(value.numpy(), want[name])
            prediction = model.predict(torch.tensor(X))
            assert prediction.dtype == torch.float32 and prediction.device.type == "cpu"
    finally:
        torch.set_default_dtype(torch.float32)


def test_dropout_masks_come_from_the_models_seed_not_torchs_global_generator():
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = nnx.Sequential(nnx.Dense(5, 8), nnx.ReLU(), nnx.Dropout(0.4), nnx.Dense(8, 1), backend="torch",
                               seed=7)
        model.fit(X, Y_BIN, loss="mse", epochs=1, batch_size=16, verbose=0)
        runs.append(torch.cat([v.flatten() for v in model.state_dict().values()]))
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode", "enable_grad"])
def test_fit_and_predict_under_torch_grad_modes_match_and_leave_ordinary_weights(mode, numpy_weights):
    context = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode, "enable_grad": torch.enable_grad}
    with context[mode]():
        model = _fit("torch", torch.tensor(X), torch.tensor(Y_BIN))
        model.predict(torch.tensor(X))
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value.numpy(), numpy_weights[name], rtol=0, atol=1e-6)
    # trained again outside the mode, where torch refuses in-place updates of the inference tensors made in it
    model.fit(X, Y_BIN, loss="mse", epochs=1, verbose=0)
    assert not any(p.value.is_inference() for p in model.parameters())


def test_a_torch_linear_state_dict_loads_transposed_and_stays_the_users():
    linear = torch.nn.Linear(5, 1)
    model = nnx.Sequential(nnx.Dense(5, 1), backend="torch", seed=0)
    with pytest.raises(ValueError, match="transpose"):
        model.load_state_dict(dict(zip(["0.weight", "0.bias"], linear.state_dict().values(), strict=True)))
    model.load_state_dict({"0.weight": linear.weight.T, "0.bias": linear.bias})
    kept = linear.weight.detach().clone()
    model.fit(X, X[:, :1], loss="mse", optimizer="sgd", epochs=1, verbose=0)
    assert torch.equal(linear.weight.detach(), kept)  # nnx trained its own copy
    assert all(not p.value.requires_grad for p in model.parameters())
    reference = nnx.Sequential(nnx.Dense(5, 1), backend="numpy", seed=0)
    reference.load_state_dict({"0.weight": kept.T.numpy(), "0.bias": linear.bias.detach().numpy()})
    reference.fit(X, X[:, :1], loss="mse", optimizer="sgd", epochs=1, verbose=0)
    np.testing.assert_allclose(model.state_dict()["0.weight"].numpy(), reference.state_dict()["0.weight"], atol=1e-6)


@pytest.mark.parametrize("in_place", [True, False])
def test_a_weight_clip_in_a_callback_trains_as_on_numpy(in_place):
    class ClipWeights(nnx.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            for p in self.model.parameters():
                if not in_place:
                    p.value = p.value * 0.5
                elif isinstance(p.value, np.ndarray):
                    np.clip(p.value, -0.05, 0.05, out=p.value)
                else:
                    p.value.clamp_(-0.05, 0.05)

    weights = []
    for backend in ("numpy", "torch"):
        model = _model(backend)
        model.fit(X, Y_BIN, loss="mse", optimizer="adam", epochs=2, batch_size=16, verbose=0,
                  callbacks=[ClipWeights()])
        weights.append(_host(model))
    for name in weights[0]:
        np.testing.assert_allclose(weights[1][name], weights[0][name], rtol=0, atol=1e-7)


def test_torch_masked_tensors_are_refused_as_numpy_masked_arrays_are():
    data = torch.tensor(X)
    mask = torch.ones(X.shape, dtype=torch.bool)
    mask[0, 0] = False
    model = _model("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch calls MaskedTensor a prototype
        masked = torch.masked.masked_tensor(data, mask)
        unmasked = torch.masked.masked_tensor(data, torch.ones(X.shape, dtype=torch.bool))
        with pytest.raises(ValueError, match=r"X is a masked torch tensor with 1 masked entry"):
            model.predict(masked)
        with pytest.raises(ValueError, match=r"y is a masked torch tensor"):
            model.fit(data, torch.masked.masked_tensor(torch.tensor(Y_BIN), mask[:, :1]), loss="mse", verbose=0)
        # nothing masked: its values are the data, as for a NumPy masked array
        np.testing.assert_array_equal(model.predict(unmasked).numpy(), model.predict(data).numpy())


def test_torch_nested_tensors_are_refused_by_name():
    nested = torch.nested.nested_tensor([torch.randn(2, 5), torch.randn(3, 5)], layout=torch.jagged)
    with pytest.raises(TypeError, match=r"X is a nested torch tensor.*to_padded_tensor"):
        _model("torch").predict(nested)


def test_weights_loaded_from_transposed_torch_views_compute_as_contiguous_ones_bit_for_bit(tmp_path):
    """``linear.weight.T`` (what the shape error advises) is a column-major view: kept so, the model's products
    ran on another layout than after a save and load, and its predictions moved in the last bit (a (4, 5) batch
    through Dense(5, 3))."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(5, 3)
    views = {"0.weight": linear.weight.T, "0.bias": linear.bias}
    data = torch.randn(4, 5)
    models = []
    for state in (views, {k: v.detach().contiguous().clone() for k, v in views.items()}):
        model = nnx.Sequential(nnx.Dense(5, 3), backend="torch", seed=0)
        model.load_state_dict(state)
        models.append(model)
    assert all(p.value.is_contiguous() for p in models[0].parameters())
    models[0].save(tmp_path / "m.npz")
    reloaded = nnx.load(tmp_path / "m.npz", backend="torch")
    for other in (models[1], reloaded):
        assert torch.equal(models[0].predict(data), other.predict(data))
    with torch.no_grad():
        linear.weight.mul_(2)  # the model holds its own copy, not the user's tensor
    assert torch.equal(models[0].predict(data), models[1].predict(data))


@pytest.mark.parametrize("index", [0, 1])
def test_a_parameter_rebound_to_float64_in_a_float32_torch_model_is_named_as_on_numpy(index):
    """NumPy's step names the parameter; torch's matmul said only 'expected m1 and m2 to have the same dtype'."""
    model = _model("torch")
    model.parameters()[index].value = torch.zeros(tuple(model.parameters()[index].value.shape), dtype=torch.float64)
    name = model.parameters()[index].name
    with pytest.raises(TypeError, match=rf"mixes float.*{name!r} float64.*than the model's \(float32\)"
                       if index == 0 else r"mixes float64 and float32.*than the model's \(float32\)"):
        model.fit(X, Y_BIN, loss="mse", epochs=1, verbose=0)


def test_a_users_layer_computing_in_float64_before_a_torch_dense_is_not_blamed_on_the_dense():
    """The Dense's own parameters are float32: the message says the other dtype came in, not that they hold it."""

    class InFloat64(nnx.Layer):
        def forward(self, X, training=False):
            return self.xp.astype(X, self.xp.float64)

        def backward(self, dY, need_dX=True):
            return dY

    model = nnx.Sequential(InFloat64(), nnx.Dense(X.shape[1], 3), nnx.Dense(3, 1), backend="torch", seed=0)
    with pytest.raises(TypeError, match=r"mixes float64 and float32.*parameters are the model's dtype.*came from "
                                        r"an earlier layer"):
        model.fit(X, Y_BIN, loss="mse", epochs=1, verbose=0)
