"""Callbacks for `fit`, importable as ``nnx.callbacks`` (they live in `nnx.training.callbacks`)."""

from .training.callbacks import *  # noqa: F403 - this module is the public name of that one
from .training.callbacks import __all__  # noqa: F401
