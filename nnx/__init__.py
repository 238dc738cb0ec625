"""nnx: neural networks written once against the Python array API standard.

The same model code trains on NumPy, CuPy, PyTorch, JAX or array_api_strict;
the backend is chosen per model when it is constructed.
"""

from . import activations, callbacks, init, losses, optim, regularizers, training
from .backend import Backend, BackendUnavailableError, available_backends, get_backend
from .gradcheck import check_gradients
from .layers import Dense, Dropout, Identity, Layer, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from .model import Sequential
from .parameter import Parameter
from .training import History

__version__ = "0.1.0"

__all__ = [
    "Backend", "BackendUnavailableError", "Dense", "Dropout", "History", "Identity", "Layer",
    "LeakyReLU", "Parameter", "ReLU", "Sequential", "Sigmoid", "Softmax", "Tanh",
    "activations", "available_backends", "callbacks", "check_gradients", "get_backend", "init",
    "load", "losses", "optim", "regularizers", "training", "__version__",
]


def load(path, backend=None, dtype=None):
    """Rebuild a model saved with `Sequential.save`, on `backend` (default: the one it was saved from)."""
    from .io import load_model

    return load_model(path, backend=backend, dtype=dtype)
