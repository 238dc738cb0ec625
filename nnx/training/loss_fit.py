"""Whether a loss fits what the model outputs, checked before training: a misfit trains nothing or nonsense.

Cross-entropy over one output is always 0 (a softmax over one class is 1), so it
trains nothing; a loss that reads probabilities (`BinaryCrossEntropy`,
`CrossEntropy` with ``from_logits=False``) on an unbounded output clips it and
reports a small, meaningless loss. The last layer's type tells which case a model
is in when it is a built-in; otherwise the first batch's outputs tell.
"""

from __future__ import annotations

from typing import Any

from ..layers import (
    BatchNorm,
    Dense,
    Dropout,
    Flatten,
    Identity,
    LayerNorm,
    LeakyReLU,
    ReLU,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
)
from ..losses import BinaryCrossEntropy, CrossEntropy, Loss
from ..protocols import Model

# exact types: a subclass may change what its forward returns, so its outputs are looked at instead
PROBABILITY_OUTPUTS = (Sigmoid, Softmax)
UNBOUNDED_OUTPUTS = (Dense, Identity, ReLU, LeakyReLU, Softplus, Tanh, BatchNorm, LayerNorm)
RANGE_KEEPING = (Dropout, Flatten, Identity)
"""Layers that pass on the range of the layer before at inference; `Sequential.output_layer` looks past them."""


def reads_probabilities(loss: Loss) -> bool:
    """Whether `loss` takes the model's outputs as probabilities in [0, 1]."""
    return isinstance(loss, (BinaryCrossEntropy, CrossEntropy)) and not loss.from_logits


def _instead(loss: Loss) -> str:
    if isinstance(loss, BinaryCrossEntropy):
        return ('end the model with nnx.Sigmoid(), or pass loss="bce_with_logits" '
                "(nnx.losses.BinaryCrossEntropy(from_logits=True)) to read the outputs as logits")
    return ('end the model with nnx.Softmax(), or pass loss="cross_entropy" '
            "(nnx.losses.CrossEntropy(from_logits=True)) to read the outputs as logits")


def check_loss_fits(model: Model, loss: Loss) -> bool:
    """Raise ValueError when `loss` cannot fit the model's outputs; True when only the outputs can tell.

    Decided from the model's shape and its last layer's type where they tell; when they do
    not (a user's layer), the caller passes the first outputs to `check_outputs`.
    """
    if isinstance(loss, CrossEntropy) and model.out_features == 1:
        raise ValueError(
            f"loss {loss!r} on a model with one output is always 0 and trains nothing (a softmax over one "
            'class is 1); for 0/1 labels use loss="bce" with one nnx.Sigmoid() unit, or give the model one '
            "output per class")
    if not reads_probabilities(loss):
        return False
    last = model.output_layer()
    if type(last) in PROBABILITY_OUTPUTS:
        return False
    if type(last) in UNBOUNDED_OUTPUTS:
        raise ValueError(
            f"loss {loss!r} reads the model's outputs as probabilities in [0, 1], but the model ends in "
            f"{type(last).__name__}, whose outputs are not bounded to [0, 1]; {_instead(loss)}")
    return True


def check_outputs(model: Model, loss: Loss, Y: Any, what: str = "the first batch") -> None:
    """Raise ValueError when outputs `Y` (of `what`) that `loss` reads as probabilities leave [0, 1].

    NaN is left to the finite checks.
    """
    xp = model.xp
    if Y.shape[0] == 0 or not bool(model.backend.to_host(xp.any((Y < 0) | (Y > 1)))):
        return
    lo, hi = (float(model.backend.to_host(f(Y))) for f in (xp.min, xp.max))
    raise ValueError(
        f"loss {loss!r} reads the model's outputs as probabilities in [0, 1], but the outputs of {what} "
        f"range over [{lo:.4g}, {hi:.4g}] (the model ends in {type(model.output_layer()).__name__}); "
        f"{_instead(loss)}")
