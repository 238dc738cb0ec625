"""Training: the step with its stages, gradient transforms, the loop, callbacks and History."""

from ..metrics import METRICS, register_metric, resolve_metrics
from .callbacks import Callback
from .data import batch_slices
from .history import History
from .interrupts import InterruptGuard
from .step import NonFiniteStep, TrainStep
from .transforms import Accumulate, CallbackHook, ClipByNorm, ClipByValue, GradientTransform

__all__ = [
    "METRICS", "Accumulate", "Callback", "CallbackHook", "ClipByNorm", "ClipByValue", "GradientTransform",
    "History", "InterruptGuard", "NonFiniteStep", "TrainStep", "batch_slices", "register_metric",
    "resolve_metrics",
]
