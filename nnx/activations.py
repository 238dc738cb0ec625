"""Activation functions and their derivatives, written once against the array API.

Every function takes an array of any shape and returns an array of the same
shape, dtype and device. (The one table of activation names is
`nnx.layers.ACTIVATIONS`, name -> layer class; each layer class names its function
and derivative here.) They are arranged to stay finite and accurate for
inputs up to about ±1e4 in float32 and float64 without overflow warnings: no
`exp` ever sees a positive argument, and softmax is shifted by its maximum.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

__all__ = [
    "identity",
    "identity_derivative",
    "leaky_relu",
    "leaky_relu_derivative",
    "log_sigmoid",
    "log_softmax",
    "relu",
    "relu_derivative",
    "sigmoid",
    "sigmoid_derivative",
    "softmax",
    "softmax_vjp",
    "softplus",
    "softplus_derivative",
    "tanh",
    "tanh_derivative",
]


_NAMESPACE_OF_TYPE: dict[type, Any] = {}


def _ns(*arrays: Any) -> Any:
    """The arrays' namespace. One array's namespace follows from its type alone, so that is looked up
    once per type: these functions run several times a training step, where the full lookup costs as
    much as a small array operation."""
    if len(arrays) == 1:
        kind = type(arrays[0])
        xp = _NAMESPACE_OF_TYPE.get(kind)
        if xp is None:
            if _matrix_or_masked(kind):  # never cached: looked at on this path only, at no cost to arrays
                raise TypeError(f"activation functions take plain arrays, got a {kind.__module__}.{kind.__name__}, "
                                "whose operators are not an array's (a matrix's * multiplies matrices, so a "
                                "derivative came out wrong; a masked array's where drops its mask): pass "
                                "np.asarray(x), or x.filled(value) for a masked one")
            xp = _NAMESPACE_OF_TYPE[kind] = array_api_compat.array_namespace(arrays[0])
        return xp
    return array_api_compat.array_namespace(*arrays)


def _matrix_or_masked(kind: type) -> bool:
    """Whether `kind` is (or subclasses) NumPy's matrix or masked array, told without importing NumPy here. Other
    subclasses (a memmap, an array type standing in for another library's) keep an array's operators."""
    return any(base.__module__.startswith("numpy") and base.__name__ in ("matrix", "MaskedArray")
               for base in kind.__mro__)


def sigmoid(x: Any) -> Any:
    """Logistic function 1 / (1 + exp(-x))."""
    xp = _ns(x)
    # exp(-|x|) lies in (0, 1], so neither branch can overflow; each branch is
    # the algebraically exact form on its own half-line.
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_derivative(x: Any) -> Any:
    """Derivative of `sigmoid` w.r.t. its input: s(x) * (1 - s(x))."""
    xp = _ns(x)
    # e / (1 + e)**2 with e = exp(-|x|) is symmetric and keeps full relative
    # precision in the tails, where s * (1 - s) would cancel to 1 - s ~ 0.
    e = xp.exp(-xp.abs(x))
    return e / ((1 + e) * (1 + e))


def tanh(x: Any) -> Any:
    """Hyperbolic tangent."""
    return _ns(x).tanh(x)


def tanh_derivative(x: Any) -> Any:
    """Derivative of `tanh`: 1 - tanh(x)**2 (= sech(x)**2)."""
    xp = _ns(x)
    # sech^2 = 4e / (1 + e)^2 with e = exp(-2|x|): accurate in the tails, where
    # 1 - tanh^2 loses every significant digit.
    e = xp.exp(-2 * xp.abs(x))
    return 4 * e / ((1 + e) * (1 + e))


def relu(x: Any) -> Any:
    """Rectified linear unit max(x, 0); NaN propagates."""
    return _ns(x).maximum(x, 0)


def relu_derivative(x: Any) -> Any:
    """Derivative of `relu`: 0 where x <= 0, else 1 (0 at the kink and 1 at NaN, like PyTorch and `nnx.ReLU`)."""
    xp = _ns(x)
    # not `x > 0`: torch's backward (and nnx.ReLU's) zeroes only where x <= 0, so a NaN input passes the gradient
    return xp.astype(~(x <= 0), x.dtype)


def leaky_relu(x: Any, alpha: float = 0.01) -> Any:
    """Leaky ReLU: x where x > 0, else alpha * x."""
    xp = _ns(x)
    # a Python float: a NumPy float64 slope would promote a float32 x on NumPy and JAX
    return xp.where(x > 0, x, float(alpha) * x)


def leaky_relu_derivative(x: Any, alpha: float = 0.01) -> Any:
    """Derivative of `leaky_relu`: 1 where x > 0, else alpha (alpha at the kink, like PyTorch)."""
    xp = _ns(x)
    return xp.where(x > 0, xp.ones_like(x), xp.full_like(x, float(alpha)))


def softplus(x: Any) -> Any:
    """log(1 + exp(x)), computed as max(x, 0) + log1p(exp(-|x|)) so it never overflows."""
    xp = _ns(x)
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def softplus_derivative(x: Any) -> Any:
    """Derivative of `softplus`: sigmoid(x)."""
    return sigmoid(x)


def log_sigmoid(x: Any) -> Any:
    """log(sigmoid(x)) = -softplus(-x), finite for every finite x."""
    return -softplus(-x)


def identity(x: Any) -> Any:
    """The identity (linear) activation; returns `x` itself."""
    return x


def identity_derivative(x: Any) -> Any:
    """Derivative of `identity`: ones shaped like `x`."""
    return _ns(x).ones_like(x)


def softmax(x: Any, axis: int = -1) -> Any:
    """exp(x) normalised to sum to 1 along `axis`, shifted by the max so exp cannot overflow."""
    xp = _ns(x)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def log_softmax(x: Any, axis: int = -1) -> Any:
    """log(softmax(x)) along `axis`, computed without forming softmax (exact for large logit gaps)."""
    xp = _ns(x)
    z = x - xp.max(x, axis=axis, keepdims=True)
    # The shifted maximum is 0, so the sum is >= 1 and its log is finite.
    return z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))


def softmax_vjp(y: Any, dY: Any, axis: int = -1) -> Any:
    """Backward of `softmax`: the gradient w.r.t. its input, given its output `y` and upstream `dY`."""
    xp = _ns(y, dY)
    return y * (dY - xp.sum(dY * y, axis=axis, keepdims=True))
