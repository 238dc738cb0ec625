"""Layers: the `Layer` base class and its public extension API, and the built-in layers."""

from .activation import ACTIVATIONS, Identity, LeakyReLU, ReLU, Sigmoid, Softmax, Softplus, Tanh
from .base import LAYERS, BuildContext, ExportGraph, Layer, layer_from_config
from .containers import Residual
from .dense import Dense
from .dropout import Dropout
from .normalization import BatchNorm, LayerNorm
from .parameter import Buffer, Parameter
from .shape import Flatten

__all__ = [
    "ACTIVATIONS", "LAYERS", "BatchNorm", "Buffer", "BuildContext", "Dense", "Dropout", "ExportGraph", "Flatten",
    "Identity", "Layer", "LayerNorm", "LeakyReLU", "Parameter", "ReLU", "Residual", "Sigmoid", "Softmax", "Softplus",
    "Tanh", "layer_from_config",
]
