"""Binary cross-entropy from logits on torch, the training step's loss head, as torch calls without the wrapper.

The portable loss runs each operation through the array-API namespace, whose own cost per call is
most of a 32-row head on torch. This kernel makes the very same torch calls, in the same order, on
the same operands, the loss's ``sigmoid`` included (torch's namespace has one): its value and
gradient are the loss's own bit for bit, NaN and inf included. (An ulp off is not enough: with a
Dense before a BatchNorm, whose bias has a true gradient of 0, Adam scaled one to 0.05 over a
3-epoch float32 fit.) A weighted batch runs the loss's own code.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

from ..losses import row_mean


class BCELogitsHeadKernel:
    """The loss head of a training step on torch for one `nnx.losses.BinaryCrossEntropy` with ``from_logits``."""

    def __init__(self, loss: Any) -> None:
        self.loss = loss
        # the library itself: this kernel is declared for the torch backend only, which has imported it
        self._torch = importlib.import_module("torch")
        self._zero: Any = None  # a 0-d zero of the logits' dtype and device

    def value_and_grad_prepared(self, xp: Any, y_true: Any, y_pred: Any, sample_weight: Any = None) -> tuple[Any, Any]:
        """The loss's `value_and_grad_prepared`, bit for bit (module docstring)."""
        loss = self.loss
        if sample_weight is not None or not loss.from_logits:
            return loss.value_and_grad_prepared(xp, y_true, y_pred, sample_weight)
        torch, zero = self._torch, self._zero
        z, y = y_pred, loss.prepare(xp, y_true, y_pred, False)
        if zero is None or zero.dtype != z.dtype or zero.device != z.device:
            zero = self._zero = torch.zeros((), dtype=z.dtype, device=z.device)
        # BinaryCrossEntropy.rows, operation for operation
        rows = row_mean(xp, (torch.maximum(z, zero) - y * z) + torch.log1p(torch.exp(-torch.abs(z))))
        return torch.sum(rows) / z.shape[0], (torch.sigmoid(z) - y) * (1 / math.prod(z.shape))
