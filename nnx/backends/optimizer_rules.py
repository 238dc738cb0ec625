"""What the fast paths know of nnx's built-in optimizers: the hyper-parameters each one's update reads.

A fast path handles an optimizer only if its exact class is listed here and it has no
other hyper-parameter (a new option it does not know turns the fast path off).
Names, not classes, so that importing a fast path imports no optimizer module.
"""

from __future__ import annotations

# optimizer class name in nnx.optim -> the hyper-parameters its (elementwise) update reads
BUILTIN_OPTIMIZER_HYPERPARAMS: dict[str, tuple[str, ...]] = {
    "SGD": ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize"),
    "Momentum": ("lr", "momentum"),
    "Adam": ("lr", "betas", "eps", "weight_decay", "amsgrad"),
    "AdamW": ("lr", "betas", "eps", "weight_decay", "amsgrad"),
    "RMSprop": ("lr", "alpha", "eps", "weight_decay", "momentum", "centered"),
    "Adagrad": ("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps"),
}
