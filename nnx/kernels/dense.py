"""What the Dense kernels share: the layer's math, with its gradients written where the step offers them.

From `nnx.training.replay.MIN_ELEMENTS` parameters on, the flat update (and the sharded one
across ranks) offers, each step, a view per parameter of one new flat buffer
(`nnx.training.flat.offer_grads`). A
kernel writes each gradient there (a product or a sum with ``out=``), and the step needs no
copy to gather them: on the large network (6.3M parameters) that copy is 24 MiB a step and,
while it runs, a second copy of every gradient in memory. The buffer is new each step, so
a ``p.grad`` kept from an earlier step is never written. Without an offer, each gradient is
a new array, as the layer makes it.
"""

from __future__ import annotations

from typing import Any

from ..layers.dense import check_input
from ..layers.passes import nothing_kept


class DenseKernel:
    """Runs one `nnx.Dense` in a training step; a backend's kernel supplies `product` and `column_sum`.

    `destinations`, set by the training step before each backward, maps a parameter to the
    array its gradient may be written into (None: no offer this step).
    """

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.destinations: dict[Any, Any] | None = None
        self._X: Any = None  # the input a training forward keeps for the backward

    def product(self, a: Any, b: Any, out: Any = None) -> Any:
        """``a @ b`` with the layer's bits, written into `out` when given and suitable."""
        raise NotImplementedError(f"{type(self).__name__} must implement product(a, b, out=None)")

    def column_sum(self, dY: Any, out: Any = None) -> Any:
        """``xp.sum(dY, axis=0)`` with the layer's bits, written into `out` when given and suitable."""
        raise NotImplementedError(f"{type(self).__name__} must implement column_sum(dY, out=None)")

    def forward(self, X: Any, training: bool = False) -> Any:
        check_input(self.layer, X)
        if training:
            self._X = X
        return self.product(X, self.layer.weight.value) + self.layer.bias.value

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        X, self._X = self._X, None
        if X is None:
            raise nothing_kept(self.layer)
        layer, offered = self.layer, self.destinations or {}
        self.destinations = None  # an offer holds for one step
        weight, bias = layer.weight, layer.bias
        W = weight.value
        grad_W = self.product(X.T, dY, offered.get(weight))
        if layer.regularizer is not None:
            grad_W = grad_W + layer.regularizer.gradient(W)
        weight.grad = grad_W
        bias.grad = self.column_sum(dY, offered.get(bias))
        return self.product(dY, W.T) if need_dX else None
