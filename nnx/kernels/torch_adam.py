"""Adam and AdamW over flat torch buffers, in place: 4 temporaries a step instead of the rule's 13 and 3 copies.

The rule (`nnx.optim.Adam.update`) is pure, so each of its 13 operations makes a new
tensor, and the flat update then copies the three results back into the buffers. Here
the same operations, in the same order, write into the buffers and into four
temporaries, so the numbers are the rule's bit for bit (no fused multiply-add, whose
single rounding would differ).
"""

from __future__ import annotations

from typing import Any

from ..optim import Adam, AdamW

CLASSES = (Adam, AdamW)


def covers(optimizer: Any) -> bool:
    """Whether this kernel computes `optimizer`'s rule: every setting but AMSGrad."""
    return not optimizer.amsgrad


def update_in_place(optimizer: Any, value: Any, grad: Any, state: dict[str, Any], step: int, lr: float) -> None:
    """One Adam step written into `value` and `state` (torch tensors, flat or slices of flat buffers)."""
    beta1, beta2 = optimizer.betas
    wd, g = optimizer.weight_decay, grad
    if wd != 0:
        if optimizer.decoupled_weight_decay:
            value.mul_(1.0 - lr * wd)
        else:
            g = g + wd * value  # a new tensor: the gathered gradients are left as they were
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.add_((g - m).mul_(1.0 - beta1))  # m + (1 - beta1) (g - m), torch's lerp
    v.mul_(beta2).add_((g * g).mul_(1.0 - beta2))
    bias2_sqrt = (1.0 - beta2**step) ** 0.5
    step_size = lr / (1.0 - beta1**step)
    value.sub_((m / v.sqrt().div_(bias2_sqrt).add_(optimizer.eps)).mul_(step_size))
