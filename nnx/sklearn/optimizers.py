"""scikit-learn's `SGDOptimizer` and `AdamOptimizer` update rules as nnx optimizers."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .. import _validate as check
from ..optim import Optimizer

__all__ = ["SklearnAdam", "SklearnSGD"]


class SklearnSGD(Optimizer):
    """scikit-learn's `SGDOptimizer` update: ``v = momentum*v - lr*g``; ``p += v`` (Nesterov: ``momentum*v - lr*g``).

    Args:
        params: the parameters to update.
        lr: learning rate (> 0); scikit-learn's schedules set `lr` between epochs.
        momentum: momentum in [0, 1].
        nesterov: use Nesterov's momentum.
    """

    elementwise = True  # each element's update reads only that element
    # hyper-parameters, set by Optimizer.__init__ (declared here for type checkers)
    momentum: float
    nesterov: bool

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9, nesterov: bool = True) -> None:
        super().__init__(params, lr, momentum=momentum, nesterov=nesterov)

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        return {**super()._check(hp), "momentum": check.real("momentum", hp["momentum"], 0.0, 1.0),
                "nesterov": check.flag("nesterov", hp["nesterov"])}

    def init_state(self, xp: Any, value: Any) -> dict[str, Any]:
        """scikit-learn's velocities, zero."""
        return {"velocity": xp.zeros_like(value)}

    def update(self, xp: Any, value: Any, grad: Any, state: dict[str, Any], step: Any,
               lr: Any) -> tuple[Any, dict[str, Any]]:
        """One step of scikit-learn's rule: (new value, new state)."""
        # the operations, in their order, of scikit-learn's SGDOptimizer._get_updates
        velocity = self.momentum * state["velocity"] - lr * grad
        update = self.momentum * velocity - lr * grad if self.nesterov else velocity
        return value + update, {"velocity": velocity}


class SklearnAdam(Optimizer):
    """scikit-learn's `AdamOptimizer` update, which differs from torch's Adam in where eps enters.

    ``lr_t = lr * sqrt(1 - beta2**t) / (1 - beta1**t)``; ``p -= lr_t * m / (sqrt(v) + eps)``
    (torch adds eps to ``sqrt(v / (1 - beta2**t))`` instead).

    Args:
        params: the parameters to update.
        lr: learning rate (> 0).
        betas: decay rates of the first and second moments, each in [0, 1).
        eps: added to ``sqrt(v)`` (> 0).
    """

    elementwise = True  # each element's update reads only that element
    # hyper-parameters, set by Optimizer.__init__ (declared here for type checkers)
    betas: tuple[float, float]
    eps: float

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        super().__init__(params, lr, betas=betas, eps=eps)

    @classmethod
    def _check(cls, hp: dict[str, Any]) -> dict[str, Any]:
        b1, b2 = hp["betas"]
        return {**super()._check(hp), "betas": (check.probability("betas[0]", b1), check.probability("betas[1]", b2)),
                "eps": check.positive("eps", hp["eps"])}

    def init_state(self, xp: Any, value: Any) -> dict[str, Any]:
        """scikit-learn's first and second moments, zero."""
        return {"m": xp.zeros_like(value), "v": xp.zeros_like(value)}

    def update(self, xp: Any, value: Any, grad: Any, state: dict[str, Any], step: Any,
               lr: Any) -> tuple[Any, dict[str, Any]]:
        """One step of scikit-learn's rule: (new value, new state); `step` counts from 1."""
        beta_1, beta_2 = self.betas
        # the operations, in their order, of scikit-learn's AdamOptimizer._get_updates
        m = beta_1 * state["m"] + (1 - beta_1) * grad
        v = beta_2 * state["v"] + (1 - beta_2) * (grad * grad)
        lr_t = lr * (1 - beta_2**step) ** 0.5 / (1 - beta_1**step)  # arithmetic only: step may be traced
        return value + -lr_t * m / (xp.sqrt(v) + self.eps), {"m": m, "v": v}


class OptimizerView:
    """A read-only view of an estimator's optimizer under scikit-learn's names: ``estimator._optimizer.learning_rate``.

    Args:
        optimizer: the nnx optimizer the estimator trains with.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self._optimizer = optimizer

    @property
    def learning_rate(self) -> float:
        """The step size as scikit-learn's optimizer holds it: SGD's current rate, Adam's bias-corrected last one."""
        opt = self._optimizer
        if isinstance(opt, SklearnAdam):
            t = int(opt.state_dict()["step"])
            if t:  # scikit-learn's AdamOptimizer keeps the lr_t of its last update
                beta_1, beta_2 = opt.betas
                return opt.lr * math.sqrt(1 - beta_2**t) / (1 - beta_1**t)
        return float(opt.lr)
