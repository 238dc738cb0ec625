"""Where arrays live: NumPy or a namespace under array-API dispatch, moved between host and backends."""

from __future__ import annotations

import numbers
from typing import Any

import array_api_compat
import numpy as np
from sklearn import get_config
from sklearn.utils import check_array

from ..backends import get_backend


def io_of(X: Any) -> tuple[Any, Any] | None:
    """(namespace, device) of X when array-API dispatch is on and X is a non-NumPy array, else None."""
    if not get_config()["array_api_dispatch"] or isinstance(X, np.ndarray):
        return None
    if not array_api_compat.is_array_api_obj(X) or array_api_compat.is_numpy_array(X):
        return None
    return array_api_compat.array_namespace(X), array_api_compat.device(X)


def describe(io: Any) -> str:
    """Where arrays of `io` live, in words, for error messages."""
    return "NumPy or array-like input" if io is None else f"{io[0].__name__} arrays on device {io[1]}"


def host(a: Any) -> Any:
    """A non-NumPy array as NumPy (through its nnx backend); anything else unchanged."""
    if a is None or isinstance(a, np.ndarray) or not array_api_compat.is_array_api_obj(a) \
            or array_api_compat.is_numpy_array(a):
        return a
    return np.asarray(get_backend(a).to_host(a))


def to_namespace(a: Any, io: tuple[Any, Any], dtype: Any) -> Any:
    """`a` (a backend array) as a new array of namespace `io[0]` on device `io[1]`, cast to `dtype` when given."""
    xp, device = io
    if array_api_compat.array_namespace(a) is xp and str(array_api_compat.device(a)) == str(device):
        out = xp.asarray(a, copy=True)
    else:
        out = xp.asarray(host(a), device=device)
    return out if dtype is None or out.dtype == dtype else xp.astype(out, dtype)


def to_host_tree(tree: Any, be: Any) -> Any:
    """A nested dict/list/tuple with every array of backend `be` copied to NumPy."""
    if isinstance(tree, dict):
        return {k: to_host_tree(v, be) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_host_tree(v, be) for v in tree)
    return np.array(be.to_host(tree)) if be.owns(tree) else tree


def dense(X: Any) -> Any:
    """A sparse matrix as a dense array; anything else unchanged."""
    return X.toarray() if hasattr(X, "toarray") else X


def reduction(weighted: bool) -> str:
    """The nnx loss reduction that gives scikit-learn's batch loss, with or without sample weights."""
    # With weights, each batch's loss is its weighted mean, as in scikit-learn. Without, the default
    # reduction gives the same value and keeps the losses that backends' fast paths know.
    return "mean_with_sample_weight" if weighted else "sum_over_batch_size"


def check_sample_weight(sample_weight: Any, n_samples: int) -> np.ndarray:
    """`sample_weight` as a new float64 array of shape (n_samples,), or ValueError naming what is wrong.

    A number weighs every row alike. Weights must be finite and >= 0, and not all zero (there would be
    nothing to fit): the rules of scikit-learn's estimators.
    """
    if isinstance(sample_weight, numbers.Real) and not isinstance(sample_weight, bool):
        sample_weight = np.full(n_samples, float(sample_weight))
    # a copy, so that nothing here can write into the caller's array
    # scikit-learn leaves dtype unannotated: pyright infers `str` from its default "numeric"
    w = check_array(sample_weight, ensure_2d=False, dtype=np.float64, copy=True,  # pyright: ignore[reportArgumentType]
                    input_name="sample_weight")
    if w.ndim != 1:
        raise ValueError(f"sample_weight must be 1-D with one weight per sample, shape ({n_samples},), "
                         f"got a {w.ndim}-D array of shape {w.shape}")
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight has shape {w.shape}, expected ({n_samples},): one weight per sample")
    if np.any(w < 0):
        raise ValueError("sample_weight must be >= 0, got negative weights")
    if not np.any(w):
        raise ValueError("Sample weights must contain at least one non-zero number; all sample_weight are zero.")
    return w
