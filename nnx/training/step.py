"""The training step, in named stages that `fit`, the scikit-learn estimators and distributed training share.

    forward_loss  ->  backward  ->  check  ->  transform (accumulate, all-reduce, clip, hooks)  ->  update

`forward_loss` and `backward` run the model up to its loss head (a final
Sigmoid/Softmax is folded into the loss) and fill ``p.grad``; a backend's fast
path may do both in one buffered pass. Each transform may rebind ``p.grad`` or
hold the update back (accumulation). `check` refuses a step whose loss or
gradients are not finite *before* anything is updated, so a diverging run
keeps the weights and optimizer state of its last finite step.
"""

from __future__ import annotations

import math
from typing import Any

from ..layers.parameter import Parameter
from .transforms import GradientTransform


class NonFiniteStep(FloatingPointError):
    """The loss or a gradient of one step is NaN or infinite; nothing was updated."""


class TrainStep:
    """One optimisation step of `model` for `loss` and `optimizer`.

    Args:
        model: a `Sequential`.
        loss: the `Loss` being minimised.
        optimizer: the `Optimizer` over ``model.parameters()``.
        transforms: `GradientTransform` stages applied in order after backward.
        check_finite: refuse non-finite steps (see `check`).
    """

    def __init__(self, model: Any, loss: Any, optimizer: Any, transforms: list[GradientTransform] | None = None,
                 check_finite: bool = True) -> None:
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.transforms = list(transforms or [])
        self.check_finite = check_finite
        self.params: list[Parameter] = model.parameters()
        fastpath = model.backend.fastpath
        self._fast = None if fastpath is None else fastpath.train_step(model, loss)
        self.n_run, self.head, self.from_logits = model.output_head(loss)
        self._dZ: Any = None

    # -- stages ------------------------------------------------------------------------------
    def forward_loss(self, X: Any, y: Any, sample_weight: Any = None) -> tuple[Any, Any]:
        """Training-mode forward to the loss head; returns (loss incl. penalty, head outputs)."""
        if self._fast is not None and sample_weight is None:
            value, Z, _ = self._fast(X, y)  # forward, loss and backward in one buffered pass
            self._dZ = None
            return value, Z
        Z = self.model.forward_to_head(X, self.n_run, training=True)
        if sample_weight is None:
            value, self._dZ = self.head.value_and_grad(y, Z, check=False)
        else:
            value, self._dZ = self.head.value_and_grad(y, Z, check=False, sample_weight=sample_weight)
        penalty = self.model.penalty()
        if penalty is not None:
            value = value + penalty
        return value, Z

    def backward(self) -> None:
        """Fill ``p.grad`` with the gradient of the loss `forward_loss` returned (a no-op after the fast pass)."""
        if self._dZ is not None:
            dZ, self._dZ = self._dZ, None
            self.model.backward_from_head(dZ, self.n_run, need_dX=False)

    def transform(self, rows: int) -> bool:
        """Run the gradient transforms; False when one holds the update back (accumulating)."""
        for t in self.transforms:
            if not t.apply(self.params, rows):
                return False
        return True

    def check(self, value: Any) -> bool:
        """Whether the loss and every gradient are finite (one host read of one number per step).

        The sum of a gradient is finite exactly when none of its elements is NaN or
        infinite (or, for finite gradients, when it does not overflow, which a step
        that large would do to the weights anyway).
        """
        if not self.check_finite:
            return True
        xp = self.model.xp
        total = value
        for p in self.params:
            if p.grad is not None:
                total = total + xp.sum(p.grad)
        return math.isfinite(self.model.backend.to_float(total))

    def update(self) -> None:
        """Apply the optimizer to ``p.grad``."""
        self.optimizer.step()

    def flush(self) -> bool:
        """End of epoch: a transform holding gradients back hands them to the ones after it; True when an update is due."""
        for i, t in enumerate(self.transforms):
            if t.flush(self.params):
                return all(later.apply(self.params, 0) for later in self.transforms[i + 1:])
        return False

    def reset(self) -> None:
        """Drop anything the transforms hold back (after an interrupted or failed step)."""
        for t in self.transforms:
            t.reset()
