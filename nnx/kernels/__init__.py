"""Hand-fused kernels: where one backend's own operations beat the portable code, for one exact class.

A kernel is declared for one exact class (a subclass may change the math, so it is not
covered until declared itself) and one backend, with a test that it gives the portable
code's numbers, NaN and inf included. The portable code stays the definition: a kernel
only runs where its declaration says it applies, and everything else runs the plain rule.

- `update_kernel`: an optimizer's step over the flat buffers of `nnx.training.flat`,
  written in place with the library's fused operations instead of the rule's temporaries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import torch_adam

__all__ = ["update_kernel"]

# (exact optimizer class, backend name, whether it covers this object's settings, the in-place update)
_UPDATE_KERNELS: tuple[tuple[type, str, Callable[[Any], bool], Callable[..., None]], ...] = (
    *((cls, "torch", torch_adam.covers, torch_adam.update_in_place) for cls in torch_adam.CLASSES),
)


def update_kernel(optimizer: Any, backend: Any) -> Callable[..., None] | None:
    """The in-place update declared for `optimizer`'s exact class on `backend` and its current settings, or None.

    It is called as ``kernel(optimizer, value, grad, state, step, lr)`` on flat buffers (or
    slices of them), writes the new value and state into them, and gives the numbers of
    ``optimizer.update`` to float rounding.
    """
    if "update" in vars(optimizer) or "init_state" in vars(optimizer):
        return None  # the rule replaced on this object (a user's or a test's hook) must run itself
    for cls, name, covers, kernel in _UPDATE_KERNELS:
        if type(optimizer) is cls and backend.name == name and covers(optimizer):
            return kernel
    return None
