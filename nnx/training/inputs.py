"""Input checks at the model's boundary: `X` on its backend in its dtype and sample shape, and no NaN or inf."""

from __future__ import annotations

from typing import Any


def all_true(model: Any, condition: Any) -> bool:
    """Whether every element of a boolean array on the model's backend is true (one host read)."""
    return bool(model.backend.to_host(model.xp.all(condition)))


def prepare_inputs(model: Any, X: Any, argname: str = "X") -> Any:
    """`X` on the model's backend in its dtype, checked against the model's sample shape."""
    X = model.backend.asarray(X, dtype=model.dtype, argname=argname)
    flat = model.input_shape is not None and len(model.input_shape) == 1
    if X.ndim < 2 or (flat and X.ndim != 2):
        want = "2-D (samples, features)" if flat or model.input_shape is None \
            else f"shaped (samples, {', '.join(map(str, model.input_shape))})"
        raise ValueError(f"{argname} must be {want}, got shape {tuple(X.shape)}")
    if model.input_shape is not None and tuple(X.shape[1:]) != model.input_shape:
        if len(model.input_shape) == 1 and X.ndim == 2:
            raise ValueError(f"{argname} has {X.shape[1]} features but the model expects {model.input_shape[0]}")
        raise ValueError(f"{argname} has samples of shape {tuple(X.shape[1:])} but the model expects "
                         f"{model.input_shape}")
    return X


def require_finite(model: Any, arr: Any, argname: str) -> None:
    """Raise ValueError naming `argname` when a float array holds NaN or inf."""
    xp = model.xp
    if xp.isdtype(arr.dtype, "real floating") and not all_true(model, xp.isfinite(arr)):
        raise ValueError(f"{argname} contains NaN or inf values")
