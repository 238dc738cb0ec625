"""Name resolution for `fit` and `evaluate`: the `Loss` and the `Optimizer` that a name, an instance or None means."""

from __future__ import annotations

import warnings
from typing import Any, cast

from .. import _validate as check
from ..layers import Sigmoid, Softmax
from ..losses import BinaryCrossEntropy, CrossEntropy, Loss, get_loss
from ..optim import OPTIMIZERS, Optimizer, get_optimizer
from ..protocols import Model


def resolve_loss(model: Model, loss: Any) -> Loss:
    """The `Loss` for a fit/evaluate argument: None reuses the last one or picks it from the output layer."""
    last = model.output_layer()
    if loss is None:
        if model.loss is not None:
            return model.loss
        loss = "bce" if isinstance(last, Sigmoid) else CrossEntropy(from_logits=False) \
            if isinstance(last, Softmax) else "mse"
    resolved = get_loss(loss)
    pair = {Softmax: CrossEntropy, Sigmoid: BinaryCrossEntropy}.get(type(last))
    if pair is not None and type(resolved) is pair and cast(Any, resolved).from_logits:
        # The output layer already gives probabilities; reading them as logits would apply the
        # activation twice. A name follows the model (Keras's "categorical_crossentropy" means
        # probabilities); an explicit from_logits=True instance is kept, with a warning as Keras gives.
        if isinstance(loss, str):
            return pair(from_logits=False)
        warnings.warn(f"{resolved!r} treats the outputs as logits, but the model ends in "
                      f"{type(last).__name__}, so they are probabilities; pass from_logits=False",
                      stacklevel=3)
    return resolved


def resolve_optimizer(model: Model, optimizer: Any, lr: float | None) -> Optimizer:
    """The `Optimizer` for a fit argument; a name matching the current optimizer keeps its state.

    `lr` is the rate of an optimizer made by name, or the new rate of the one given or kept.
    """
    if isinstance(optimizer, Optimizer):
        mine = {id(p) for p in model.parameters()}
        if not {id(p) for p in optimizer.params} <= mine:
            raise ValueError("optimizer was built on another model's parameters; pass model.parameters()")
        if lr is not None:
            _set_rate(optimizer, lr)
        optimizer.check_hyperparams()  # one set after construction (opt.momentum = 1.5) is refused before a step
        return optimizer
    current = model.optimizer
    if current is not None and optimizer is None:
        if lr is not None:
            _set_rate(current, lr)
        current.check_hyperparams()
        return current
    name = "adam" if optimizer is None else optimizer
    if isinstance(name, str) and current is not None and name in OPTIMIZERS and type(current) is OPTIMIZERS[name] \
            and (lr is None or lr in (current.lr, current.initial_lr)):
        # a second fit() call continues with the same optimizer state; so does a resumed one given the rate it
        # started from, which a schedule has since decayed (the schedule goes on from `initial_lr`). The rate
        # given is set, as for a kept optimizer: without a schedule the run goes on at it, not the decayed one
        if lr is not None:
            _set_rate(current, lr)
        current.check_hyperparams()
        return current
    kwargs = {} if lr is None else {"lr": lr}
    return get_optimizer(name, model.parameters(), **kwargs)


def _set_rate(optimizer: Optimizer, lr: float) -> None:
    """Give a passed or kept optimizer the rate fit was given. A new rate (neither its current one nor the one a
    schedule started from, which a resumed script passes again) is also the base of the next schedule, as it is
    for an optimizer made by name: a schedule would otherwise put the old base's rate back at the next epoch."""
    lr = check.positive("lr", lr)
    if lr not in (optimizer.lr, optimizer.initial_lr):
        optimizer.initial_lr = None
    optimizer.lr = lr
