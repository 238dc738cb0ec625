"""Dense on NumPy: ``ndarray.dot`` for the layer's products, gradients written where offered.

For two-dimensional float32 or float64 operands that BLAS reads as they lie (each C- or
F-contiguous), ``@`` and ``dot`` call the same GEMM and give the same bits, but ``@`` goes
through the matmul ufunc's machinery first: about 1.0-1.7 us a call on a small network's
matrices against 0.4-0.8 us. Anything else (other dtypes or strides, more dimensions)
takes ``@`` as the layer does, and so does a product over an inner dimension of one (one
input feature, one output's ``dY @ W.T``, a one-row batch's ``X.T @ dY``): ``dot`` makes
that an outer product or a scaling by a 1 x 1 operand with BLAS routines that skip a zero
factor, so NaN * 0 came out 0 (and -0 as 0), where ``@`` multiplies every pair. See
`nnx.kernels.dense` for the offered gradients.
"""

from __future__ import annotations

from typing import Any

from ..layers.dense import check_input
from .dense import DenseKernel

# float32 and float64, by `dtype.char` (`dtype.name` builds a string: 2 us, as much as a small product)
BLAS_TYPECODES = "fd"


def _blas_ready(a: Any, b: Any) -> bool:
    """Whether ``a @ b`` is one GEMM on the arrays as they lie, so that ``a.dot(b)`` gives its bits."""
    if a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype or a.dtype.char not in BLAS_TYPECODES or a.shape[1] == 1:
        return False
    flags_a, flags_b = a.flags, b.flags
    return (flags_a.c_contiguous or flags_a.f_contiguous) and (flags_b.c_contiguous or flags_b.f_contiguous)


class NumpyDenseKernel(DenseKernel):
    """Runs one `nnx.Dense` in a training step on NumPy (see the module docstring)."""

    def forward(self, X: Any, training: bool = False) -> Any:
        layer = self.layer
        W, bias = layer.weight.value, layer.bias.value
        if _blas_ready(X, W) and X.shape[1] == W.shape[0]:
            Y = X.dot(W)  # the input check's conditions hold: two dimensions, in_features columns
        else:
            check_input(layer, X)
            Y = X @ W
        if training:
            self._X = X
        if Y.dtype != bias.dtype or Y.shape[-1:] != bias.shape:
            return Y + bias
        Y += bias  # the product is this call's own array, of the sum's dtype and shape: no second array
        return Y

    def product(self, a: Any, b: Any, out: Any = None) -> Any:
        if not _blas_ready(a, b):
            return a @ b
        if out is None or out.dtype != a.dtype or not out.flags.c_contiguous:
            return a.dot(b)
        return a.dot(b, out=out)

    def column_sum(self, dY: Any, out: Any = None) -> Any:
        # the layer's xp.sum(dY, axis=0) is NumPy's add.reduce, which ndarray.sum calls
        if out is None or out.dtype != dY.dtype:
            return dY.sum(axis=0)
        return dY.sum(axis=0, out=out)
