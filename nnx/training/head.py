"""The loss head: where the loss meets the model (a final Sigmoid or Softmax folded into it); one pass through it."""

from __future__ import annotations

from typing import Any

from ..layers import Sigmoid, Softmax
from ..losses import BinaryCrossEntropy, CrossEntropy, Loss
from ..protocols import Model


def output_head(model: Model, loss: Loss) -> tuple[int, Loss, bool]:
    """How many layers run before the loss, the loss applied there, and whether it sees logits.

    A final Sigmoid with BCE (or Softmax with cross-entropy) is folded into the loss
    computed from logits: exact where probabilities saturate, and one step cheaper. Only
    the model's last layer is folded: a layer after it (Dropout scales the probabilities
    in training) or around it (a nested model) is run, and the loss reads what it gives.
    A loss may also fold the last layer itself: ``loss.fold_output_layer(layer)`` returns
    the loss of that layer's inputs, or None (scikit-learn's Poisson loss and its exp output).
    """
    last = model.output_layer()
    if last is model.layers[-1]:
        if type(last) is Sigmoid and type(loss) is BinaryCrossEntropy and not loss.from_logits:
            return len(model.layers) - 1, BinaryCrossEntropy(from_logits=True, reduction=loss.reduction), True
        if type(last) is Softmax and type(loss) is CrossEntropy and not loss.from_logits:
            return len(model.layers) - 1, CrossEntropy(from_logits=True, reduction=loss.reduction), True
        fold = getattr(loss, "fold_output_layer", None)
        folded = fold(last) if fold is not None else None
        if folded is not None:
            return len(model.layers) - 1, folded, False
    from_logits = getattr(loss, "from_logits", False) and not isinstance(last, (Sigmoid, Softmax))
    return len(model.layers), loss, from_logits


def loss_and_grads(model: Model, X: Any, y: Any, loss: Loss, sample_weight: Any = None,
                   need_dX: bool = False) -> tuple[Any, Any, Any]:
    """One training-mode forward and backward on prepared arrays: (loss incl. penalty, head outputs, dL/dX).

    The portable path, for tools that need the plain gradient (gradient checks, L-BFGS).
    """
    n_run, head, _ = model.output_head(loss)
    value, Z, dZ = forward_and_loss(model, X, y, n_run, head, sample_weight)
    dX = model.backward_from_head(dZ, n_run, need_dX)
    return value, Z, dX


def forward_and_loss(model: Model, X: Any, y: Any, n_run: int, head: Loss,
                     sample_weight: Any = None) -> tuple[Any, Any, Any]:
    """(loss incl. penalty, head outputs, dL/dZ) of one training-mode forward through the first `n_run` layers,
    read by `head` (both as `output_head` gives them): `loss_and_grads` before its backward.

    Alone, it is what a finite difference evaluates: the same operations, so the same bits, without the backward
    and without working out the head again for each evaluation.
    """
    Z = model.forward_to_head(X, n_run, training=True)
    if sample_weight is None:
        value, dZ = head.value_and_grad(y, Z, check=False)
    else:
        value, dZ = head.value_and_grad(y, Z, check=False, sample_weight=sample_weight)
    reg = model.penalty()
    if reg is not None:
        value = value + reg
    return value, Z, dZ
