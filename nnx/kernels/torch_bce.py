"""Binary cross-entropy from logits on torch, the training step's loss head, as torch calls without the wrapper.

The portable loss runs each operation through the array-API namespace, whose own cost per call is
most of a 32-row head on torch. This kernel makes the very same torch calls, in the same order, on
the same operands: the row losses, the mean and the gradient ``(where(z >= 0, 1, e) / (1 + e) - y)
/ n`` with ``e = exp(-|z|)``. So its value and gradient are the loss's own bit for bit, NaN and inf
included. (``torch.sigmoid`` would be one kernel for the probability instead of three, but it
rounds once where the formula rounds three times: a gradient an ulp off, which Adam turned into
0.05 on the bias of a Dense before a BatchNorm, whose true gradient is 0, over a 3-epoch float32
fit.) A weighted batch runs the loss's own code.
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
        self._one: Any = None  # and a one

    def value_and_grad_prepared(self, xp: Any, y_true: Any, y_pred: Any, sample_weight: Any = None) -> tuple[Any, Any]:
        """The loss's `value_and_grad_prepared`, bit for bit (module docstring)."""
        loss = self.loss
        if sample_weight is not None or not loss.from_logits:
            return loss.value_and_grad_prepared(xp, y_true, y_pred, sample_weight)
        torch, zero, one = self._torch, self._zero, self._one
        z, y = y_pred, loss.prepare(xp, y_true, y_pred, False)
        if zero is None or zero.dtype != z.dtype or zero.device != z.device:
            zero = self._zero = torch.zeros((), dtype=z.dtype, device=z.device)
            one = self._one = torch.ones((), dtype=z.dtype, device=z.device)
        # BinaryCrossEntropy.rows, operation for operation
        e = torch.exp(-torch.abs(z))
        rows = row_mean(xp, (torch.maximum(z, zero) - y * z) + torch.log1p(e))
        probability = torch.where(z >= 0, one, e) / (1 + e)
        return torch.sum(rows) / z.shape[0], (probability - y) * (1 / math.prod(z.shape))
