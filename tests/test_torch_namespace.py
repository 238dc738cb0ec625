"""The torch adapter's namespace gives array_api_compat's results where it skips compat's wrappers.

`maximum`, `minimum`, `where` and `matmul` go straight to torch where the operands already agree (a
Python number beside a floating tensor, two tensors of one dtype); every result must be the
one compat's own function gives: the same dtype, device and bits (NaN and signed zeros too).
"""

from __future__ import annotations

import math

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
