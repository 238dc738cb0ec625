"""Data that stays on the host until a batch is needed: memmaps and other array-likes, read row by row.

The training data sources use these to tell such data from arrays that go to
the device whole, and to gather a batch's rows in a given order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..protocols import Model
from .names import backend_name_of, is_scipy_sparse


def is_out_of_core(data: Any) -> bool:
    """Whether `data` is read batch by batch on the host: a `np.memmap`, or an array-like that is no library's array.

    NumPy arrays in memory, lists, and arrays of a backend library are not; an
    object with ``shape`` and ``__getitem__`` (an h5py or zarr dataset) is. A pandas
    object indexes columns with ``[]``, so it is read whole, as before; so is a scipy.sparse matrix,
    which `Backend.asarray` refuses by name.
    """
    if isinstance(data, np.memmap):
        return True
    if data is None or isinstance(data, (np.ndarray, np.generic, list, tuple, str, bytes, int, float)):
        return False
    if backend_name_of(data) is not None or hasattr(data, "iloc") or is_scipy_sparse(data):
        return False
    return hasattr(data, "shape") and hasattr(data, "__getitem__")


def gather_rows(data: Any, rows: Any) -> np.ndarray:
    """Rows of a host array-like as a NumPy array: a slice, or an index array taken in exactly its order.

    Array-likes such as h5py datasets only read increasing indices, so those are read
    sorted and put back in the permutation's order: the batch is the same either way.
    """
    if isinstance(rows, slice):
        return _rows_read(data[rows])
    if isinstance(data, np.ndarray):
        # indexing, not np.take: take copies a memmap that is not C-ordered whole (the file read for one batch)
        return _rows_read(data[rows, ...])
    order = np.argsort(rows, kind="stable")
    block = _rows_read(data[rows[order]])
    out = np.empty_like(block)
    out[order] = block
    return out


def _rows_read(block: Any) -> np.ndarray:
    """Rows read from a host array-like as a NumPy array; a masked array (netCDF4 gives them) keeps its mask,
    so that `Backend.asarray` can refuse the values under it."""
    return block if isinstance(block, np.ma.MaskedArray) else np.asarray(block)


def host_companion(model: Model, data: Any, argname: str) -> Any:
    """y or sample_weight next to a host X: kept as a host array-like (a backend's own array is brought to the host)."""
    if data is None or isinstance(data, np.ndarray) or is_out_of_core(data):
        return data
    if model.backend.owns(data):
        return model.backend.to_host(data)
    return np.asarray(model.backend.to_host(model.backend.asarray(data, argname=argname)))


def may_share_memory(prepared: Any, given: Any) -> bool:
    """Whether `prepared` (`Backend.asarray` of `given`) may share memory with `given`: the same object, host
    memory whose bounds overlap (a NumPy array, a CPU tensor), or two arrays that are not in host memory (a
    device array and a view of it). Cheap: a bounds check, no element is read."""
    if prepared is given:
        return True
    if not hasattr(given, "__dlpack__") and not hasattr(given, "__array__"):
        return False  # a list or a scalar: asarray made new memory
    a, b = _host_view(prepared), _host_view(given)
    if a is None or b is None:
        return a is None and b is None
    return bool(np.may_share_memory(a, b))


def _host_view(x: Any) -> np.ndarray | None:
    """`x`'s memory as a NumPy array without copying it, or None where it is not in host memory (or cannot say)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "__dlpack__"):  # a library's array: NumPy views it on the CPU, refuses it on a device
        try:
            return np.from_dlpack(x)
        except (BufferError, RuntimeError, TypeError, ValueError):
            return None
    if hasattr(x, "__array__"):  # a pandas object, an array-like viewing its own buffer
        try:
            return np.asarray(x)
        except (TypeError, ValueError):
            return None
    return None
