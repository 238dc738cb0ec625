"""The NumPy adapter: the host itself is the device."""

from __future__ import annotations

import importlib
import math
import types
from typing import Any

import numpy as np

from .base import Backend, namespace_with
from .recording import Tape

# A rule's temporaries over a slice this size stay under glibc's mmap threshold (128 KiB), so the
# allocator reuses them instead of mapping fresh pages: 6x faster for Adam over 235k parameters.
UPDATE_PIECE_BYTES = 96 * 1024


def sum(x: Any, /, *, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Any:  # noqa: A001
    """The array API's ``sum`` as NumPy's ufunc reduction: `np.sum`'s Python wrapper costs about 2 us a
    call, more than the sums of a small network's step themselves (five a step). Same results and dtypes."""
    return np.add.reduce(x, axis=axis, dtype=dtype, keepdims=keepdims)


# From this many elements a select between a float array and zero is a bitwise AND with a mask: two passes
# that NumPy runs 2-3x faster than its `where` (ReLU's backward at 128 x 256 float32: 10-22 against 33-49 us);
# below it `where` wins (4.7 against 6.6 us at 32 x 16).
BITWISE_SELECT_MIN = 4096
# the signed integer of a float's width: -True is all ones in it
MASK_INTS = {"f": np.int32, "d": np.int64}


def where(condition: Any, x1: Any, x2: Any, /) -> Any:
    """The array API's ``where``; a select between a float32/float64 array and zero, ``where(c, x, 0)`` or
    ``where(c, 0, x)`` (ReLU's backward), is done bitwise: the same bits, NaN payloads and signed zeros included."""
    selected = _select_against_zero(condition, x1, x2)
    return np.where(condition, x1, x2) if selected is None else selected


def _is_plain_zero(x: Any) -> bool:
    return type(x) in (int, float) and x == 0 and math.copysign(1.0, x) > 0  # not bool, not -0.0


def _select_against_zero(condition: Any, x1: Any, x2: Any) -> Any:
    """``where(condition, x1, x2)`` as ``x & mask`` where one of x1, x2 is +0 and the other an array of the
    condition's shape; None where that does not apply (or does not pay)."""
    if type(condition) is not np.ndarray or condition.dtype != np.bool_ or condition.size < BITWISE_SELECT_MIN:
        return None
    if _is_plain_zero(x2):
        x, kept_where = x1, True
    elif _is_plain_zero(x1):
        x, kept_where = x2, False
    else:
        return None
    ints = MASK_INTS.get(x.dtype.char) if type(x) is np.ndarray else None
    if ints is None or x.shape != condition.shape:
        return None
    # all ones where x is kept, zeros where the result is +0; the casts read any nonzero byte as True
    mask = np.negative(condition, dtype=ints) if kept_where else np.subtract(condition, 1, dtype=ints)
    np.bitwise_and(mask, x.view(ints), out=mask)
    return mask.view(x.dtype)


def plain_where(condition: Any) -> bool:
    """Whether `where` above is ``np.where`` itself for a condition laid out as `condition` (a small one)."""
    return type(condition) is not np.ndarray or condition.size < BITWISE_SELECT_MIN


# the ufunc each Python operator on an ndarray calls
OPERATOR_UFUNCS = {"+": "add", "-": "subtract", "*": "multiply", "/": "divide", ">": "greater",
                   ">=": "greater_equal", "<": "less", "<=": "less_equal", "==": "equal", "!=": "not_equal",
                   "neg": "negative", "abs": "absolute"}


def namespace() -> types.ModuleType:
    """NumPy's namespace with `sum` and `where` above; every other name is NumPy's own object."""
    return namespace_with(np, sum=sum, where=where)


class NumpyBackend(Backend):
    """NumPy on the CPU (``"numpy"``); its arrays are the host arrays every backend accepts."""

    name = "numpy"
    distributions = ("numpy",)

    @classmethod
    def load(cls, label: str | None) -> NumpyBackend:
        if label not in (None, "cpu"):
            raise ValueError(f"numpy has only the 'cpu' device, got {label!r}")
        # NumPy 2 is an array-API namespace itself; older releases need array_api_compat's wrapper
        xp = namespace() if hasattr(np, "__array_api_version__") else importlib.import_module("array_api_compat.numpy")
        return cls(xp, "cpu")

    @classmethod
    def devices(cls) -> list[str]:
        return ["cpu"]

    def owns(self, x: Any) -> bool:
        return isinstance(x, (np.ndarray, np.generic))

    def from_host(self, host: np.ndarray) -> np.ndarray:
        return host

    def _to_host(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def concat_flat(self, arrays: list[Any]) -> np.ndarray:
        # NumPy flattens each (in C order) itself: 1.7 against 2.1 us with a reshape each, for six small arrays
        return np.concatenate(arrays, axis=None)

    def finite_probe(self, x: Any) -> Any:
        # x's dot product with itself, which BLAS runs in SIMD, where NumPy's float32 sum is a pairwise loop (8
        # against 38 us for a medium network's 235k gradients); a square overflows where a sum would not (|x| over
        # 1.8e19 in float32), which the caller's element-by-element confirmation then tells from NaN and inf.
        # `np.vdot`, not `x.dot`: the same BLAS product, but `dot` reports that overflow as a floating-point error
        # (a warning every step of a fit with large finite gradients, and under np.errstate(over="raise") a bare
        # FloatingPointError on a step that is applied); vdot reports none, for 0.15 us more a call
        if x.ndim == 1 and x.dtype in (np.float32, np.float64):
            return np.vdot(x, x)
        return np.sum(x)

    def update_piece(self, dtype: Any) -> int:
        return UPDATE_PIECE_BYTES // np.dtype(dtype).itemsize

    def out_functions(self) -> dict[str, Any]:
        ufuncs = {name: fn for name, fn in vars(np).items() if isinstance(fn, np.ufunc) and fn.nout == 1}
        return {**ufuncs, **{op: getattr(np, name) for op, name in OPERATOR_UFUNCS.items()}}

    def tape(self) -> Tape:
        # np.where is replayed as the namespace's where, which the recorded code called (equal, faster when large),
        # or as np.where itself where the condition is too small for the bitwise select
        return Tape(where=self.xp.where, where_is_plain=plain_where)
