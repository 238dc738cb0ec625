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

import numpy as np

from ..layers.parameter import Parameter
from .transforms import GradientTransform

# numbers already on the host: reading them waits for no device
_HOST_TYPES = (float, np.ndarray, np.generic)


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
        self._fast_grads = False  # whether the last forward_loss left p.grad as views of the fast flat buffer
        self._flat = getattr(self._fast, "flat", None)
        self._ones: Any = None
        kernels = getattr(self._fast, "k", None)
        self._flat_on_host = getattr(getattr(kernels, "m", None), "__name__", "") == "numpy"

    # -- stages ------------------------------------------------------------------------------
    def forward_loss(self, X: Any, y: Any, sample_weight: Any = None) -> tuple[Any, Any]:
        """Training-mode forward to the loss head; returns (loss incl. penalty, head outputs)."""
        if self._fast is not None and sample_weight is None:
            value, Z, _ = self._fast(X, y)  # forward, loss and backward in one buffered pass
            self._dZ = None
            self._fast_grads = True
            return value, Z
        self._fast_grads = False
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
        """Whether the loss and every gradient are finite: one reduction and one read of one number per step.

        The sum of the gradients is finite when none of their elements is NaN or
        infinite, unless finite gradients overflow it: a non-finite sum is therefore
        confirmed element by element (only then), so a large but finite step is never refused.
        On a fast path whose gradients are views of one flat buffer, that buffer is
        summed at once. A NumPy number is read directly (no device to wait for); a
        device array's costs one `Backend.to_float` per step.
        """
        if not self.check_finite:
            return True
        total = self._flat_total(value) if self._fast_grads and self._flat is not None else None
        if total is None:
            xp = self.model.xp
            total = value
            for p in self.params:
                if p.grad is not None:
                    total = total + xp.sum(p.grad)
        elif self._flat_on_host:
            if math.isfinite(total):  # NumPy scalar: read without a copy or a sync
                return True
            return self._all_finite(value)
        if math.isfinite(float(total) if isinstance(total, _HOST_TYPES) else self.model.backend.to_float(total)):
            return True
        return self._all_finite(value)

    def _flat_total(self, value: Any) -> Any:
        """value + the sum of the fast path's flat gradient buffer, or None when ``p.grad`` are not its views.

        The fast pass writes every gradient into one fresh buffer and binds ``p.grad`` to
        its views in parameter order; checking the first and last binding confirms that
        layout for this step at a fraction of comparing all of them.
        """
        flat = self._flat
        grads = flat.grads
        if grads is None:
            return None
        views, params = flat.grad_views, self.params
        if len(views) != len(params) or params[0].grad is not views[0] or params[-1].grad is not views[-1]:
            return None
        # A dot product with ones is the sum through BLAS: a third of a ufunc reduction's cost at the
        # small shape, where this check is a few percent of a step. The ones are made on the first
        # step (dot(None) raises TypeError) and again when the layout's size changes (ValueError).
        try:
            return value + grads.dot(self._ones)
        except (TypeError, ValueError):
            self._ones = self._fast.k.m.ones(grads.shape, dtype=grads.dtype)
            return value + grads.dot(self._ones)

    def _all_finite(self, value: Any) -> bool:
        """The exact check, element by element (after a non-finite sum, to tell overflow from NaN/inf)."""
        xp, be = self.model.xp, self.model.backend
        arrays = [xp.reshape(xp.asarray(value), (1,))] + [xp.reshape(p.grad, (-1,)) for p in self.params
                                                          if p.grad is not None]
        return all(bool(be.to_host(xp.all(xp.isfinite(a)))) for a in arrays)

    def update(self) -> None:
        """Apply the optimizer to ``p.grad``."""
        self.optimizer.step()

    def flush(self) -> bool:
        """End of epoch: held-back gradients go through the later transforms; True when an update is due."""
        for i, t in enumerate(self.transforms):
            if t.flush(self.params):
                return all(later.apply(self.params, 0) for later in self.transforms[i + 1:])
        return False

    def reset(self) -> None:
        """Drop anything the transforms hold back (after an interrupted or failed step)."""
        for t in self.transforms:
            t.reset()
