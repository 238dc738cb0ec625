"""Each declared layer kernel gives its layer's own numbers, NaN and inf included, and runs only where declared."""

from __future__ import annotations

import numpy as np
import pytest

import nnx
from nnx.kernels import OwnPasses, head_runner, layer_runners

torch = pytest.importorskip("torch")

SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-300, -1e-300, 2.5, -2.5]


@pytest.fixture
def torch_backend(backend_case):
    """Each torch device the suite runs on (``NNX_TEST_BACKEND=torch:cuda`` for a GPU); the kernels here are torch's."""
    be, _ = backend_case
    if be.name != "torch":
        pytest.skip("the kernels tested here are declared for torch")
    return be


def _layer(cls, backend):
    layer = cls()
    nnx.Sequential(nnx.Dense(3, 3), layer, backend=backend, dtype="float64")  # builds and binds it
    return layer


def _same(got, want):
    got, want = (np.asarray(x.cpu() if hasattr(x, "cpu") else x) for x in (got, want))
    np.testing.assert_array_equal(got, want)  # NaN where NaN, inf where inf
    numbers = ~np.isnan(want)  # a NaN's sign bit means nothing
    np.testing.assert_array_equal(np.signbit(got[numbers]), np.signbit(want[numbers]))  # each zero's sign


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_relu_kernel_gives_the_layers_numbers_bit_for_bit(torch_backend, dtype):
    layer = _layer(nnx.ReLU, torch_backend)
    (kernel,) = layer_runners([layer], torch_backend)
    assert kernel is not layer
    gen = np.random.default_rng(0)
    n = len(SPECIAL)
    X, dY = gen.normal(size=(n * n, 3)) * 3, gen.normal(size=(n * n, 3))
    X[:, 0], dY[:, 0] = np.repeat(SPECIAL, n), np.tile(SPECIAL, n)  # every special input meets every gradient
    X_t, dY_t = (torch.tensor(a, dtype=getattr(torch, dtype), device=torch_backend.device) for a in (X, dY))
    _same(kernel.forward(X_t, training=True), layer.forward(X_t, training=True))
    _same(kernel.backward(dY_t), layer.backward(dY_t))
    _same(kernel.forward(X_t), layer.forward(X_t))  # inference keeps nothing


def test_a_kernels_backward_needs_a_training_forward():
    (kernel,) = layer_runners([_layer(nnx.ReLU, "torch")], nnx.get_backend("torch"))
    kernel.forward(torch.ones(2, 3))  # inference: nothing kept
    with pytest.raises(RuntimeError, match="needs a forward"):
        kernel.backward(torch.ones(2, 3))


class MyReLU(nnx.ReLU):
    """A subclass may change the math: it is not covered until declared itself."""


def test_kernels_run_only_where_declared():
    """An undeclared layer runs its class's own passes (past `Layer`'s wrappers); one whose passes were replaced
    on the object runs as written, wrappers included."""
    torch_be = nnx.get_backend("torch")
    plain = [_layer(nnx.ReLU, "numpy"), _layer(MyReLU, "torch"), _layer(nnx.Tanh, "torch")]
    replaced = _layer(nnx.ReLU, "torch")
    replaced.forward = lambda X, training=False: X  # a user's hook on this object runs as written
    for layer in plain:
        (runner,) = layer_runners([layer], layer.backend)
        assert isinstance(runner, OwnPasses) and runner.layer is layer
        own = nnx.ReLU if isinstance(layer, nnx.ReLU) else nnx.Tanh  # MyReLU inherits ReLU's passes
        assert runner.forward.__func__ is own.forward.__wrapped__  # the class's code, past `Layer`'s wrapper
    assert layer_runners([replaced], torch_be) == [replaced]


@pytest.mark.parametrize("method", ["forward", "backward"])
def test_an_undeclared_layers_pass_patched_on_its_class_runs_as_written(method, monkeypatch):
    """A patch on a class without a kernel (here Tanh) is what fit runs, not the class's pass as first made."""
    calls = []
    original = getattr(nnx.Tanh, method)

    def counted(self, *args, **kwargs):
        calls.append(method)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nnx.Tanh, method, counted)
    model = nnx.Sequential(nnx.Dense(3, 2), nnx.Tanh(), backend="numpy", seed=0)
    assert layer_runners(model.layers[1:], model.backend) == list(model.layers[1:])
    gen = np.random.default_rng(0)
    model.fit(gen.normal(size=(8, 3)), gen.normal(size=(8, 2)), loss="mse", optimizer="sgd", epochs=1,
              batch_size=4, verbose=0)
    assert calls == [method] * 2


@pytest.mark.parametrize("method", ["forward", "backward"])
@pytest.mark.parametrize("backend_name", ["numpy", "torch"])
def test_a_method_replaced_on_the_class_runs_as_written(backend_name, method, monkeypatch):
    """A hook on `nnx.Dense` itself (a debugging patch) is what fit runs, as on the backends without kernels."""
    original = getattr(nnx.Dense, method)

    def frozen_weights(self, *args, **kwargs):  # the patched Dense trains nothing
        out = original(self, *args, **kwargs)
        if method == "backward":
            self.weight.grad, self.bias.grad = self.weight.grad * 0.0, self.bias.grad * 0.0
        return out

    monkeypatch.setattr(nnx.Dense, method, frozen_weights)
    model = nnx.Sequential(nnx.Dense(3, 2), nnx.ReLU(), backend=backend_name, seed=0)
    assert layer_runners(model.layers[:1], model.backend) == list(model.layers[:1])
    if method == "backward":
        before = np.array(model.backend.to_host(model.layers[0].weight.value))
        gen = np.random.default_rng(0)
        model.fit(gen.normal(size=(8, 3)), gen.normal(size=(8, 2)), loss="mse", optimizer="sgd", epochs=1, verbose=0)
        np.testing.assert_array_equal(model.backend.to_host(model.layers[0].weight.value), before)


def test_a_torch_fit_runs_the_kernel_and_gives_the_plain_loops_numbers(torch_backend):
    gen = np.random.default_rng(1)
    X, y = gen.normal(size=(64, 5)), gen.integers(0, 3, 64)
    X[:8] *= 1e3  # large activations, many exact zeros after the ReLU

    def fit(backend):
        model = nnx.Sequential(nnx.Dense(5, 16), nnx.ReLU(), nnx.Dense(16, 3), backend=backend, dtype="float64",
                               seed=3)
        history = model.fit(X, y, loss="cross_entropy", optimizer=nnx.optim.SGD(model.parameters(), lr=1e-4,
                                                                                 momentum=0.9),
                            epochs=3, batch_size=16, verbose=0)
        return model, history

    be = torch_backend
    derived, history = fit(be)
    plain, _ = fit(be.with_fastpath(False))
    assert history.execution == "flat"
    for a, b in zip(derived.parameters(), plain.parameters(), strict=True):
        np.testing.assert_allclose(be.to_host(a.value), be.to_host(b.value), rtol=1e-12, atol=1e-14)


@pytest.fixture
def dense_backend(backend_case):
    """The backends a Dense kernel is declared for (numpy, torch), on each device the suite runs."""
    be, _ = backend_case
    if be.name not in ("numpy", "torch"):
        pytest.skip("Dense kernels are declared for numpy and torch")
    return be


def _host_bits(be, x):
    return np.array(be.to_host(x), copy=True)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf - inf in the products
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("regularizer", [None, "l2"])
@pytest.mark.parametrize("bias_at", [None, 16, 13], ids=["new-arrays", "offered-aligned", "offered-unaligned"])
def test_dense_kernels_give_the_layers_numbers_bit_for_bit(dense_backend, dtype, regularizer, bias_at):
    """Bit for bit with the layer, whether the gradients are new arrays or land in offered views.

    The weight's view starts the buffer; the bias's starts 16 elements in (64 bytes or more past
    it) or 13 (off every 64-byte boundary, where torch's products would not give a new tensor's bits).
    """
    be = dense_backend
    layer = nnx.Dense(4, 3, regularizer=regularizer)
    nnx.Sequential(layer, backend=be, dtype=dtype, seed=0)
    (kernel,) = layer_runners([layer], be)
    assert kernel is not layer
    gen = np.random.default_rng(0)
    n = len(SPECIAL)
    X, dY = gen.normal(size=(n, 4)) * 3, gen.normal(size=(n, 3))
    X[:, 0], dY[:, 1] = SPECIAL, SPECIAL[::-1]  # NaN, inf and signed zeros in the input and the gradient
    X, dY = be.asarray(X, dtype=dtype), be.asarray(dY, dtype=dtype)
    want_Y = layer.forward(X, training=True)
    want_dX = layer.backward(dY)
    want = [_host_bits(be, p.grad) for p in (layer.weight, layer.bias)]
    buffer = None
    if bias_at is not None:
        xp = be.xp
        buffer = xp.full((bias_at + 3,), 7.0, dtype=be.float_dtype(dtype), device=be.device)
        kernel.destinations = {layer.weight: xp.reshape(buffer[:12], (4, 3)), layer.bias: buffer[bias_at:]}
    _same(kernel.forward(X, training=True), want_Y)
    _same(kernel.backward(dY), want_dX)
    for p, w in zip((layer.weight, layer.bias), want, strict=True):
        np.testing.assert_array_equal(_host_bits(be, p.grad), w)
    if bias_at is not None:
        # written where offered, except a weight gradient that a regularizer's term makes a new array, and on
        # torch a bias off the allocator's alignment
        got = _host_bits(be, buffer)
        unwritten = be.name == "torch" and bias_at == 13
        want_bias = np.full(3, 7.0, dtype=got.dtype) if unwritten else want[1]
        np.testing.assert_array_equal(got[bias_at:], want_bias)
        if regularizer is None:
            np.testing.assert_array_equal(got[:12], want[0].reshape(-1))
    assert kernel.destinations is None  # an offer holds for one step
    _same(kernel.forward(X), layer.forward(X))  # inference keeps nothing


def test_a_gradient_kept_from_an_earlier_step_is_never_written(dense_backend, monkeypatch):
    """With the offered buffers in use (any size here), each step's gradients land in a new buffer."""
    from nnx.training import replay

    monkeypatch.setattr(replay, "MIN_ELEMENTS", 0)
    gen = np.random.default_rng(2)
    X, y = gen.normal(size=(32, 5)), gen.normal(size=(32, 1))
    model = nnx.Sequential(nnx.Dense(5, 8), nnx.ReLU(), nnx.Dense(8, 1), backend=dense_backend, dtype="float64",
                           seed=1)
    kept = []

    class Keep(nnx.callbacks.Callback):
        def on_batch_end(self, batch, logs=None):
            kept.append([(p.grad, _host_bits(dense_backend, p.grad)) for p in model.parameters()])

    history = model.fit(X, y, loss="mse", optimizer="adam", epochs=2, batch_size=8, callbacks=[Keep()])
    assert history.execution == "flat"
    for step in kept:
        for grad, copy in step:
            np.testing.assert_array_equal(_host_bits(dense_backend, grad), copy)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape", [(1, 1, 3), (4, 1, 1), (1, 4, 3), (4, 3, 1)], ids=str)
def test_dense_kernels_keep_nan_where_a_product_has_an_inner_dimension_of_one(dense_backend, dtype, shape):
    """A batch of one row, one input feature or one output makes a product an outer product or a scaling,
    for which NumPy's ``dot`` calls BLAS routines that skip a zero factor (NaN * 0 came out 0)."""
    be = dense_backend
    rows, k, m = shape
    layer = nnx.Dense(k, m)
    nnx.Sequential(layer, backend=be, dtype=dtype, seed=0)
    (kernel,) = layer_runners([layer], be)
    gen = np.random.default_rng(3)
    for _ in range(10):
        X, dY, W = (gen.choice(SPECIAL, size=s) for s in ((rows, k), (rows, m), (k, m)))
        layer.weight.value = be.asarray(W, dtype=dtype)
        X, dY = be.asarray(X, dtype=dtype), be.asarray(dY, dtype=dtype)
        want = [layer.forward(X, training=True), layer.backward(dY), layer.weight.grad, layer.bias.grad]
        got = [kernel.forward(X, training=True), kernel.backward(dY), layer.weight.grad, layer.bias.grad]
        for g, w in zip(got, want, strict=True):
            _same(_host_bits(be, g), _host_bits(be, w))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("outputs", [1, 3])
def test_torch_bce_head_kernel_gives_the_loss_value_and_gradient_bit_for_bit(torch_backend, dtype, outputs):
    loss = nnx.losses.BinaryCrossEntropy(from_logits=True)
    kernel = head_runner(loss, torch_backend)
    assert kernel is not loss
    gen = np.random.default_rng(2)
    n = len(SPECIAL)
    Z = gen.normal(size=(n * 3, outputs)) * 4
    Z[:n, 0] = SPECIAL  # every special logit against a hard 0, a hard 1 and a soft label
    Y = gen.uniform(size=Z.shape)
    Y[:, 0] = np.repeat([0.0, 1.0, 0.3], n)
    for rows in (slice(None), slice(n, None)):  # with the special logits (a NaN value), and all finite
        z, y = (torch.tensor(a[rows], dtype=getattr(torch, dtype), device=torch_backend.device) for a in (Z, Y))
        value, grad = kernel.value_and_grad_prepared(torch_backend.xp, y, z)
        want_value, want_grad = loss.value_and_grad_prepared(torch_backend.xp, y, z)
        _same(value, want_value)
        _same(grad, want_grad)  # (an ulp off was 0.05 off after a fit: the fit test below)
    weights = torch.ones(z.shape[0], dtype=z.dtype, device=z.device)  # a weighted batch runs the loss's own code
    _same(kernel.value_and_grad_prepared(torch_backend.xp, y, z, weights)[1],
          loss.value_and_grad_prepared(torch_backend.xp, y, z, weights)[1])


def test_the_bce_head_kernel_runs_only_for_the_declared_class_and_unpatched_methods(monkeypatch):
    be = nnx.get_backend("torch")
    loss = nnx.losses.BinaryCrossEntropy(from_logits=True)
    assert head_runner(loss, nnx.get_backend("numpy")) is loss  # declared for torch alone
    mse = nnx.losses.get_loss("mse")
    assert head_runner(mse, be) is mse  # undeclared

    class MyBCE(nnx.losses.BinaryCrossEntropy, name="my_bce_for_the_kernel_test"):
        pass

    assert head_runner(MyBCE(from_logits=True), be).__class__ is MyBCE  # a subclass may change the math
    own = nnx.losses.BinaryCrossEntropy(from_logits=True)
    own.rows = lambda xp, y_true, y_pred: nnx.losses.BinaryCrossEntropy.rows(own, xp, y_true, y_pred)
    assert head_runner(own, be) is own  # replaced on the object
    monkeypatch.setattr(nnx.losses.BinaryCrossEntropy, "prepare", nnx.losses.BinaryCrossEntropy.prepare)
    assert head_runner(loss, be) is not loss  # the same function put back is the declared code
    monkeypatch.setattr(nnx.losses.BinaryCrossEntropy, "rows", lambda self, xp, y_true, y_pred: None)
    assert head_runner(loss, be) is loss  # replaced on the class since the declaration


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_torch_fit_with_the_bce_head_kernel_gives_the_plain_loops_numbers_bit_for_bit(torch_backend, dtype):
    """A Dense before a BatchNorm has a bias whose true gradient is 0: what is left is rounding, which Adam scales
    up to its rate. A head gradient an ulp off the loss's (torch.sigmoid's) left that bias 0.05 off the plain
    loop's after this float32 fit."""
    gen = np.random.default_rng(4)
    X, y = gen.normal(size=(64, 5)), gen.integers(0, 2, 64)

    def fit(backend):
        model = nnx.Sequential(nnx.Dense(5, 8), nnx.BatchNorm(8), nnx.ReLU(), nnx.Dense(8, 1), nnx.Sigmoid(),
                               backend=backend, dtype=dtype, seed=5)
        history = model.fit(X, y, loss="bce", optimizer="adamw", lr=0.01, epochs=3, batch_size=16, verbose=0)
        return model, history

    be = torch_backend
    derived, history = fit(be)
    plain, plain_history = fit(be.with_fastpath(False))
    assert history["loss"] == plain_history["loss"]
    for a, b in zip(derived.parameters() + derived.buffers(), plain.parameters() + plain.buffers(), strict=True):
        _same(a.value, b.value)
