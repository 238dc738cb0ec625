"""nnx: neural networks written once against the Python array API standard.

The same model code trains on NumPy, CuPy, PyTorch, JAX or array_api_strict;
the backend is chosen per model when it is constructed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import activations, callbacks, init, losses, metrics, optim, regularizers, training
from ._version import __version__
from .backends import Backend, BackendUnavailableError, available_backends, get_backend
from .gradcheck import check_gradients
from .io import load_model
from .layers import (
    BatchNorm,
    Buffer,
    Dense,
    Dropout,
    Flatten,
    Identity,
    Layer,
    LayerNorm,
    LeakyReLU,
    Parameter,
    ReLU,
    Residual,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
)
from .model import Sequential
from .training import History
from .training.callbacks import GradientAnalyzer

if TYPE_CHECKING:
    import os

__all__ = [
    "Backend", "BackendUnavailableError", "BatchNorm", "Buffer", "Dense", "Dropout", "Flatten", "GradientAnalyzer",
    "History", "Identity", "Layer", "LayerNorm", "LeakyReLU", "Parameter", "ReLU", "Residual", "Sequential", "Sigmoid",
    "Softmax", "Softplus", "Tanh", "activations", "available_backends", "callbacks", "check_gradients", "get_backend",
    "init", "load", "losses", "metrics", "optim", "regularizers", "training", "__version__",
]


def load(path: str | os.PathLike[str], backend: str | Backend | None = None,
         dtype: str | None = None) -> Sequential:
    """Rebuild a model saved with `Sequential.save`, with its optimizer (if saved), random streams and counters.

    `backend` defaults to the one it was saved from; where that one cannot run here (saved on
    ``"torch:cuda"``, loaded without a GPU) it loads, with a warning naming both, on the same library's
    default device (``"torch"``), or on numpy where that library cannot run either (CuPy);
    `dtype` (``"float32"`` or ``"float64"``) casts it, else it keeps the saved dtype.
    A damaged or foreign file raises `nnx.io.CheckpointError`; nothing in it is unpickled.
    """
    return load_model(path, Sequential.from_config, backend=backend, dtype=dtype)
