"""Names: which backend an array belongs to, the canonical name of a dtype, and "a"/"an" for messages.

The table from module names to backend names is filled by `registry.register_backend`
(each adapter says which modules are its library's); it lives here, below `base`, so that
`Backend` can name the library of a foreign array without importing the registry.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

FLOAT_DTYPES = ("float32", "float64")

# longest first, as `dtype_name` matches the end of a dtype's text: "uint8" ends with "int8", "bfloat16" with "float16"
_DTYPE_NAMES = tuple(sorted(("float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8",
                             "uint16", "uint32", "uint64", "bool", "complex64", "complex128"), key=len, reverse=True))

# module name (of a namespace, or the top package of an array type) -> backend name
_MODULES: dict[str, str] = {}


def claim_modules(name: str, module_names: tuple[str, ...]) -> None:
    """Record that arrays and namespaces from `module_names` belong to backend `name`."""
    for module in module_names:
        _MODULES[module] = name


def backend_for_module(module_name: str) -> str | None:
    """The backend that claimed a namespace module's name, or None."""
    return _MODULES.get(module_name)


def backend_name_of(x: Any) -> str | None:
    """Which backend an array belongs to: a registered name, else its library's top module; None for non-arrays."""
    if isinstance(x, (np.ndarray, np.generic)):
        return "numpy"
    module = type(x).__module__.split(".")[0]
    name = _MODULES.get(module)
    if name is not None:
        return name
    if array_api_compat.is_array_api_obj(x):
        return module
    return None


def is_host_subclass(x: Any) -> bool:
    """Whether `x` is a subclass of NumPy's array (a masked array, a matrix), whose operators are not an array's."""
    return isinstance(x, np.ndarray) and type(x) is not np.ndarray


def in_other_byte_order(x: Any) -> bool:
    """Whether `x` is a NumPy array in the other byte order than the machine's (read from a big-endian file):
    arithmetic on it gives arrays in the native order, whose dtype then differs from its own (``>f8`` is not
    ``float64``) though they hold the same kind of number."""
    return isinstance(x, np.ndarray) and not x.dtype.isnative


def is_scipy_sparse(x: Any) -> bool:
    """Whether `x` is a scipy.sparse matrix or array (told by its module: scipy is not imported for it)."""
    return type(x).__module__.startswith("scipy.sparse")


def dtype_name(dtype: Any) -> str:
    """Canonical name (``"float32"``) for a dtype given as a string, NumPy dtype or namespace dtype."""
    if isinstance(dtype, str):
        return dtype
    if dtype is None:  # np.dtype(None) would name NumPy's default, float64: None names no dtype
        return "None"
    text = str(dtype)
    for name in _DTYPE_NAMES:
        if text.endswith(name) or text.endswith(f"'{name}'>") or text == f"dtype('{name}')":
            return name
    try:
        return np.dtype(dtype).name
    except TypeError:
        return text


def article(word: str) -> str:
    """``word`` with its indefinite article, as a message reads it: "an array_api_strict", "a torch"."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
