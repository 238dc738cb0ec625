"""Name resolution for `fit` and `evaluate`: the `Loss` and the `Optimizer` that a name, an instance or None means."""

from __future__ import annotations

import json
import numbers
import warnings
from typing import Any, cast

from .. import _validate as check
from ..layers import Sigmoid, Softmax, layer_from_config
from ..losses import BinaryCrossEntropy, CrossEntropy, Loss, get_loss
from ..optim import OPTIMIZERS, Optimizer, get_optimizer
from ..protocols import Model
from .per_model import PerModel

# each model's config as text when it last passed `require_valid_settings`: a fit per epoch rebuilds no layers
_CHECKED_CONFIGS = PerModel()


def resolve_loss(model: Model, loss: Any) -> Loss:
    """The `Loss` for a fit/evaluate argument: None reuses the last one or picks it from the output layer."""
    last = model.output_layer()
    if loss is None:
        if model.loss is not None:
            return model.loss
        loss = "bce" if isinstance(last, Sigmoid) else CrossEntropy(from_logits=False) \
            if isinstance(last, Softmax) else "mse"
    if isinstance(loss, numbers.Number) and not isinstance(loss, bool):
        # Keras's order, fit(x, y, batch_size, epochs) and evaluate(x, y, batch_size): the number is not a loss
        raise TypeError(f"loss must be a Loss, a Loss class, a name or a config dict, got {type(loss).__name__} "
                        f"{loss!r}: fit(X, y, loss, optimizer, lr, epochs, batch_size, ...) and evaluate(X, y, loss, "
                        "metrics, batch_size, ...) take the loss third, where Keras takes batch_size; pass "
                        "batch_size= and epochs= by keyword")
    resolved = get_loss(loss)
    # a name, or a config naming no from_logits, follows the model; an instance says what it reads
    named = isinstance(loss, str) or (isinstance(loss, dict) and "from_logits" not in loss)
    if named and type(resolved) is CrossEntropy and not resolved.from_logits and not isinstance(last, Softmax):
        # Keras's "categorical_crossentropy" means probabilities; a model ending elsewhere gives logits, which a
        # name follows as it follows a Softmax below (an instance reading probabilities there is refused)
        return CrossEntropy(from_logits=True, reduction=resolved.reduction)
    pair = {Softmax: CrossEntropy, Sigmoid: BinaryCrossEntropy}.get(type(last))
    if pair is not None and type(resolved) is pair and cast(Any, resolved).from_logits:
        # The output layer already gives probabilities; reading them as logits would apply the
        # activation twice. A name follows the model (Keras's "categorical_crossentropy" means
        # probabilities); an explicit from_logits=True instance is kept, with a warning as Keras gives.
        if named:
            return pair(from_logits=False, reduction=resolved.reduction)
        warnings.warn(f"{resolved!r} treats the outputs as logits, but the model ends in "
                      f"{type(last).__name__}, so they are probabilities; pass from_logits=False",
                      stacklevel=3)
    return resolved


def require_valid_settings(model: Model) -> None:
    """ValueError as `fit` starts when a layer's setting, changed after construction, holds a value its constructor
    refuses (a BatchNorm momentum of 1.5 corrupts the running statistics without a word): the layers are rebuilt
    from their configs, objects only with no arrays, as `save` checks them. A layer whose config is not JSON (a
    constructor argument that is a function) cannot be rebuilt this way and is left to check its own settings."""
    try:
        config = model.get_config()
    except TypeError:
        return
    # as text, so that a list a layer keeps (and may change in place) is compared as it stood when checked
    try:
        text: str | None = json.dumps(config, sort_keys=True)
    except (TypeError, ValueError):
        text = None
    if text is not None and _CHECKED_CONFIGS.get(model) == text:
        return  # the settings it was checked with: the constructors would refuse nothing new
    try:
        layer_from_config({key: value for key, value in config.items() if key != "backend"})
    except ValueError as exc:
        raise ValueError(f"{exc}: a layer setting changed after construction holds a value its constructor "
                         "refuses; set it back to one the constructor takes") from exc
    if text is not None:
        _CHECKED_CONFIGS[model] = text


def resolve_optimizer(model: Model, optimizer: Any, lr: float | None) -> Optimizer:
    """The `Optimizer` for a fit argument; a name matching the current optimizer keeps its state.

    `lr` is the rate of an optimizer made by name, or the new rate of the one given or kept.
    """
    if isinstance(optimizer, Optimizer):
        _require_own(model, optimizer, "optimizer")
        if lr is not None:
            _set_rate(optimizer, lr)
        optimizer.check_hyperparams()  # one set after construction (opt.momentum = 1.5) is refused before a step
        return optimizer
    current = model.optimizer
    if current is not None and optimizer is None:
        # one set as `model.optimizer` may be another model's (the one this was moved or copied from): fit would
        # step its parameters, or copies belonging to no model, and leave this one as it was
        _require_own(model, current, "model.optimizer")
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
        _require_own(model, current, "model.optimizer")
        if lr is not None:
            _set_rate(current, lr)
        current.check_hyperparams()
        return current
    kwargs = {} if lr is None else {"lr": lr}
    params = model.parameters()
    if current is not None:
        held = {id(p) for p in current.params}
        left_out = [p.name for p in params if id(p) not in held]
        if left_out and len(left_out) < len(params):  # (one of another model's holds none of these)
            # the last optimizer held a subset (a frozen layer): a new one made by name holds every parameter
            warnings.warn(f"fit(optimizer={name!r}) makes a new optimizer over all of the model's parameters, and "
                          f"the last one left {len(left_out)} of them out ({', '.join(left_out[:4])}"
                          f"{', ...' if len(left_out) > 4 else ''}): they train from now on. To keep them frozen, "
                          "pass an optimizer built on the others", UserWarning, stacklevel=3)
    return get_optimizer(name, params, **kwargs)


def _require_own(model: Model, optimizer: Optimizer, label: str) -> None:
    """ValueError where `optimizer` updates parameters that are not `model`'s."""
    mine = {id(p) for p in model.parameters()}
    if not {id(p) for p in optimizer.params} <= mine:
        raise ValueError(f"{label} was built on another model's parameters (a copy of the model, or the model it "
                         "was moved or loaded from, has its own); build it on model.parameters()")


def _set_rate(optimizer: Optimizer, lr: float) -> None:
    """Give a passed or kept optimizer the rate fit was given. A rate other than the one a schedule started from
    (which a resumed script passes again) is also the base of the next schedule, as it is for an optimizer made by
    name: a schedule would otherwise put the old base's rate back at the next epoch. The rate a schedule decayed
    to is no exception: asking for it would otherwise decay from the old base, faster than asking for less."""
    lr = check.positive("lr", lr)
    if lr != optimizer.initial_lr:
        optimizer.initial_lr = None
    optimizer.lr = lr
