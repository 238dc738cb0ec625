"""Gradient transforms: the stage between backward and the optimizer update.

A transform sees the parameters after backward has filled ``p.grad`` and may
rebind those gradients (clip them, average them over processes, add them up
over several batches). It returns whether the update should run this step:
accumulation says no until it has gathered its batches. Transforms rebind
``p.grad`` rather than write into it, so they are correct on JAX too; the
in-place forms used here only mutate arrays the step itself just made.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from .. import _validate as check
from ..layers.parameter import Parameter
from .callbacks.base import overrides


class GradientTransform:
    """Base class: `apply` rewrites ``p.grad`` of `params` and says whether to update now.

    `rows` is the number of samples behind this step's gradients, which accumulation
    weights batches by: an int, or under the loss reduction ``"mean_with_sample_weight"``
    the batch's sum of weights (a 0-d array, read without waiting for the device), as
    a weight of 2 counts the row twice there. `flush` is called at the end of an epoch;
    a transform holding gradients back returns True there to have them applied.
    """

    traceable = False
    """True for a transform that only does arithmetic on ``p.grad`` (no host state, no I/O), so that a
    compiled step may trace it; anything else runs the step's plain stages."""

    shardable = False
    """True for a transform that `apply_flat` can run on one slice of the concatenated gradients (one
    rank's shard under the sharded update across ranks, ``nnx.distributed.DataParallel(shard_update=True)``)."""

    def apply(self, params: list[Parameter], rows: int) -> bool:
        """Transform the gradients in place of ``p.grad``; return False to skip this step's update."""
        raise NotImplementedError(f"{type(self).__name__} must implement apply(params, rows) -> bool")

    def apply_flat(self, xp: Any, grad: Any, total: Any) -> Any:
        """This transform on `grad`, one flat slice of all gradients concatenated; returns the new slice.

        `total(x)` sums a small array over every slice (across ranks), for what needs the whole
        gradient (a global norm). Only for transforms that declare `shardable`.
        """
        raise NotImplementedError(f"{type(self).__name__} needs the gradients per parameter (shardable = False)")

    def flush(self, params: list[Parameter]) -> bool:
        """End of epoch: put any held-back gradients into ``p.grad`` and return True to apply them."""
        return False

    def take_joined(self) -> tuple[Any, list[Any]] | None:
        """The flat array the last `apply` joined the gradients into and the arrays it cut from it into ``p.grad``,
        forgotten here; None by default. The flat-buffer update takes that array as this step's gathered
        gradients while every ``p.grad`` is still its piece, instead of joining them once more."""
        return None

    def reset(self) -> None:
        """Forget held-back gradients (a new fit, or after a failed step)."""

    def state_dict(self) -> dict:
        """Progress to save with a checkpoint (nothing for stateless transforms)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict` output."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class ClipByNorm(GradientTransform):
    """Scale all gradients together so their global L2 norm is at most `max_norm` (torch's `clip_grad_norm_`).

    The scale ``min(1, max_norm / (norm + 1e-6))`` is computed and applied on the
    device, so clipping never makes the host wait.
    """

    traceable = True  # arithmetic on the gradients only: a compiled step may include it
    shardable = True  # a slice needs only the global sum of squares, one scalar summed over the slices

    def __init__(self, max_norm: float) -> None:
        self.max_norm = check.positive("ClipByNorm: max_norm", max_norm)

    def scale(self, xp: Any, sum_sq: Any) -> Any:
        """The factor every gradient is multiplied by, given the sum of squares of all of them (a 0-d array)."""
        return xp.minimum(self.max_norm / (xp.sqrt(sum_sq) + 1e-6), xp.ones_like(sum_sq))

    def apply(self, params: list[Parameter], rows: int) -> bool:
        grads = [p for p in params if p.grad is not None]
        if not grads:
            return True
        xp = array_api_compat.array_namespace(grads[0].grad)
        total = None
        for p in grads:
            part = xp.sum(p.grad * p.grad)
            total = part if total is None else total + part
        scale = self.scale(xp, total)
        for p in grads:
            p.grad = p.grad * scale
        return True

    def apply_flat(self, xp: Any, grad: Any, total: Any) -> Any:
        return grad * self.scale(xp, total(xp.sum(grad * grad)))


class ClipByValue(GradientTransform):
    """Clip every gradient element into ``[-clip_value, clip_value]`` (torch's `clip_grad_value_`)."""

    traceable = True  # arithmetic on the gradients only: a compiled step may include it
    shardable = True  # element by element

    def __init__(self, clip_value: float) -> None:
        self.clip_value = check.positive("ClipByValue: clip_value", clip_value)

    def apply_flat(self, xp: Any, grad: Any, total: Any) -> Any:
        return xp.clip(grad, -self.clip_value, self.clip_value)

    def apply(self, params: list[Parameter], rows: int) -> bool:
        for p in params:
            if p.grad is not None:
                xp = array_api_compat.array_namespace(p.grad)
                p.grad = xp.clip(p.grad, -self.clip_value, self.clip_value)
        return True


class Accumulate(GradientTransform):
    """Add up the gradients of `steps` batches and update once, as one batch `steps` times larger would.

    Each batch's gradient is a mean over its rows, so the sum is weighted by rows and
    divided by the total: a shorter last batch counts for what it holds (under
    ``mean_with_sample_weight``, by its sum of weights, which its gradient divides by).
    At the end of an epoch what has been gathered is applied (`flush`), so the epoch's
    last update is exactly the last large batch.
    """

    def __init__(self, steps: int) -> None:
        self.steps = check.positive_int("Accumulate: steps", steps)
        self._sums: list[Any] | None = None
        self._rows = 0
        self._count = 0

    def apply(self, params: list[Parameter], rows: int) -> bool:
        if self.steps == 1:
            return True
        if self._sums is None:
            self._sums = [None if p.grad is None else p.grad * rows for p in params]
        else:
            self._sums = [s if p.grad is None else (p.grad * rows if s is None else s + p.grad * rows)
                          for s, p in zip(self._sums, params, strict=True)]
        self._rows += rows
        self._count += 1
        if self._count < self.steps:
            return False
        return self.flush(params)

    def flush(self, params: list[Parameter]) -> bool:
        if self._sums is None:
            return False
        scale = inverse_total(self._rows)
        if isinstance(self._rows, int):
            for p, s in zip(params, self._sums, strict=True):
                p.grad = None if s is None else s * scale
        else:
            # weights that sum to 0 leave every batch of the group only its regularizers' gradient, the same for
            # each (the parameters did not move), which one call over all the rows gives too: the last batch's
            for p, s in zip(params, self._sums, strict=True):
                p.grad = None if s is None else weightless_mean(s * scale, p.grad, self._rows)
        self.reset()
        return True

    @property
    def pending(self) -> int:
        """Batches gathered since the last update."""
        return self._count

    def reset(self) -> None:
        self._sums, self._rows, self._count = None, 0, 0


def inverse_total(total: Any) -> Any:
    """1 / `total` (rows, or a 0-d array of summed weights), and 0 for weights that sum to 0: their batches'
    gradients are 0, as one call over those rows gives (never 0/0). No rows (a data-parallel rank whose slices
    of the accumulated batches were all empty placeholders, each counted for 0 rows) gives 0 too."""
    if isinstance(total, int):
        return 1.0 / total if total else 0.0
    xp = array_api_compat.array_namespace(total)
    return xp.astype(total != 0, total.dtype) / (total + xp.astype(total == 0, total.dtype))


def weightless_mean(mean: Any, last: Any, total: Any) -> Any:
    """`mean`, a group's gradient weighted by the batches' sums of weights (a 0-d array `total` in all), or where
    those sum to 0, `last`, the group's last gradient (the regularizers' alone, as every batch of the group has)."""
    if last is None:
        return mean
    xp = array_api_compat.array_namespace(mean)
    return xp.where(total == 0, last, mean)


class _CallbackStage(GradientTransform):
    """A stage that calls the callbacks with a `hook` of their own (`overrides`: their class's, or set on them)."""

    hook = ""

    def __init__(self, callbacks: list[Any]) -> None:
        self._callbacks = [cb for cb in callbacks if overrides(cb, self.hook)]

    def active(self) -> bool:
        """Whether any callback overrides the hook (otherwise `fit` leaves the stage out)."""
        return bool(self._callbacks)

    @property
    def callbacks(self) -> list[Any]:
        """The callbacks this stage calls."""
        return list(self._callbacks)


class CallbackLook(_CallbackStage):
    """Calls every callback's ``on_backward()`` while ``p.grad`` holds the batch's gradient, before the other
    transforms (so the first stage, where there are any: `GradientAnalyzer` then records the gradients that
    backward computed, not the clipped ones or a mean of several batches)."""

    hook = "on_backward"

    def apply(self, params: list[Parameter], rows: int) -> bool:
        for cb in self._callbacks:
            cb.on_backward()
        return True


class CallbackHook(_CallbackStage):
    """Hands the gradients to every callback's ``on_gradients(grads)`` before the update.

    `grads` maps parameter names to gradients; a callback may return a dict of
    replacements (same names and shapes), which the update then uses.
    """

    hook = "on_gradients"

    def __init__(self, callbacks: list[Any]) -> None:
        super().__init__(callbacks)
        #: steps at which a callback returned replacements (data-parallel ranks compare it: one rank's would drift)
        self.replaced = 0

    def apply(self, params: list[Parameter], rows: int) -> bool:
        by_name = {p.name: p for p in params}
        counted = False
        for cb in self._callbacks:
            replaced = cb.on_gradients({p.name: p.grad for p in params})
            if replaced is None:
                continue
            if not counted:
                self.replaced += 1
                counted = True
            if not isinstance(replaced, dict) or not set(replaced) <= set(by_name):
                raise ValueError(f"{type(cb).__name__}.on_gradients must return None or a dict of parameter "
                                 f"name -> gradient, got {type(replaced).__name__}")
            backend = getattr(getattr(cb, "model", None), "backend", None)
            for name, grad in replaced.items():
                p = by_name[name]
                if tuple(getattr(grad, "shape", ())) != p.shape:
                    raise ValueError(f"{type(cb).__name__}.on_gradients returned shape "
                                     f"{tuple(getattr(grad, 'shape', ()))} for {name!r}, which has shape {p.shape}")
                if backend is not None:
                    # a NumPy array (or another dtype) is moved and cast like any input, so the update
                    # neither fails on torch/JAX nor promotes a float32 model's weights
                    grad = backend.asarray(grad, dtype=p.value.dtype,
                                           argname=f"{type(cb).__name__}.on_gradients()[{name!r}]")
                p.grad = grad
        return True
