"""The check that every layer computes with its own arrays: no parameter, buffer or layer from elsewhere.

`require_own_arrays` walks each layer's attributes (and the items of its lists, tuples and dicts) once, where
fit, check_gradients, save and ONNX export start: what a torch user ties by reference here trains, saves or
moves something other than what the layer computes with, so it is named instead.
"""

from __future__ import annotations

import types
from typing import Any

from .base import Layer
from .parameter import Buffer, Parameter

__all__ = ["require_own_arrays"]

# what every `Layer` keeps of its parameters, buffers and sub-layers (its own, by construction), and the
# constructor's arguments the registry records (a sub-layer passed in is held with add_layer, or named where kept)
_BOOKKEEPING = frozenset({"_params", "_buffers", "_layers", "_declared_layers", "_init_args", "_init_positional"})
# what most attributes hold, passed over at once (a fit walks every layer's attributes: 18 us for a small MLP)
_PLAIN = frozenset({type(None), bool, int, float, str, types.ModuleType})


def require_own_arrays(model: Any) -> None:
    """ValueError naming a layer attribute that holds a `Parameter` or `Buffer` from outside the layer's own tree,
    or a `Layer` outside it, directly or as an item of a list, tuple or dict.

    Torch ties two parameters with ``decoder.weight = encoder.weight`` (or computes with ``self.encoder.weight``)
    and adds their gradients. Here such an attribute made the layer compute with another layer's array while its
    own, unused, was the one its model trained, saved and moved, and the other layer's backward overwrote the
    gradient it added; a `Parameter` built by hand (not by `add_parameter`), or a layer not held with `add_layer`,
    was neither trained nor saved. Read by fit, check_gradients, save and ONNX export, never inside a step; predict
    and evaluate compute what the layers compute and are left unchecked (a walk of every layer's attributes would
    about double a small predict).
    """
    for path, layer in [("", model), *model.named_layers()]:
        own: set[int] | None = None
        params, buffers = layer._params, layer._buffers  # Layer's own tables by attribute (this package's)
        for attribute, value in vars(layer).items():
            if type(value) in _PLAIN or attribute in _BOOKKEEPING or params.get(attribute) is value \
                    or buffers.get(attribute) is value:
                continue  # (the common case, without listing the tree's arrays)
            if isinstance(value, _KINDS):
                held: list[tuple[str, Any]] = [(attribute, value)]
            elif isinstance(value, (list, tuple, dict)):
                held = _held_items(attribute, value)
            else:
                continue
            for label, item in held:
                if isinstance(item, Layer) and (any(item is sub for _, sub in layer.named_layers(recurse=False))
                                                or not (item.parameters() or item.buffers())):
                    # its own sub-layer (a container's list: no tree listed); or one without arrays (an activation
                    # kept to call, which raises there if it is no part of the model), which no gradient can miss
                    continue
                if own is None:  # the layer's arrays and sub-layers, and theirs (`self.w = self.inner.weight`)
                    own = {id(a) for a in [*layer.parameters(), *layer.buffers()]}
                    own.update(id(sub) for _, sub in layer.named_layers())
                    own.add(id(layer))
                if id(item) not in own:
                    where = f"layer {path} ({type(layer).__name__})" if path else type(layer).__name__
                    raise ValueError(f"{where}: attribute {label!r} {_not_own(model, layer, attribute, item)}")


_KINDS = (Parameter, Buffer, Layer)


def _held_items(attribute: str, value: list | tuple | dict) -> list[tuple[str, Any]]:
    """The parameters, buffers and layers `value` holds as items, each with the words naming it (``"tied[0]"``)."""
    if isinstance(value, dict):
        return [(f"{attribute}[{key!r}]", item) for key, item in value.items() if isinstance(item, _KINDS)]
    return [(f"{attribute}[{i}]", item) for i, item in enumerate(value) if isinstance(item, _KINDS)]


def _not_own(model: Any, layer: Layer, attribute: str, value: Any) -> str:
    """What is wrong with `layer` holding `value`, which is not its own, in `attribute`: the rest of the message."""
    share = ("To share a weight, write one layer that applies it in both places (a block holding the other layer "
             "with add_layer, adding its own use's gradient after that layer's backward)")
    if value is model:
        return ("holds the model itself: a layer computing with the model's parameters adds gradients to them that "
                "their own layers' backward overwrites. Keep what the layer needs of it (a number, a shape) instead")
    if isinstance(value, Layer):
        owner = _owner_of(model, value)
        if owner is not None:
            return (f"holds {owner}, another part of the model, not one of its own sub-layers: what it computes "
                    f"with that layer's parameters is not trained as torch trains it, since that layer's backward "
                    f"sets their gradients, overwriting any this layer adds (torch adds them up). {share}; to keep "
                    f"a setting of it, keep the number")
        return (f"holds a {type(value).__name__} that is not part of the model (not held with add_layer): its "
                "parameters are not in model.parameters(), so they would never be trained, saved or moved; hold it "
                "with self.add_layer(name, layer) in __init__")
    kind = "parameter" if isinstance(value, Parameter) else "buffer"
    head = f"holds the {kind} {value.name!r}, not one of its own: "
    replaced = layer._params.get(attribute) or layer._buffers.get(attribute)  # (Layer's tables, as above)
    if replaced is not None:
        return head + (f"it replaced its own {replaced.name!r}, which is still what the model trains, saves and "
                       f"moves, while the layer computes with the other; nnx does not tie arrays as torch's "
                       f"`a.weight = b.weight` does (its backward would overwrite the other layer's gradient). To "
                       f"share a weight, write one layer that applies it in both places; to copy values, use "
                       f"load_state_dict")
    owner = _owner_of(model, value)
    if owner is not None:
        return head + (f"it is {owner}'s {kind}, trained, saved and moved as that layer's; nnx does not share arrays "
                       f"between layers as torch's `a.weight = b.weight` does (a layer computing with another's "
                       f"{kind} would overwrite that layer's gradient in its backward). To share a weight, "
                       f"write one layer that applies it in both places")
    return head + (f"a {kind} the layer did not make with add_{kind} in build() (or hold through a sub-layer) "
                   f"is not in model.parameters()/buffers(): it would never be trained, saved or moved")


def _owner_of(model: Any, value: Any) -> str | None:
    """``"layer <path> (<class>)"`` (``"the model"``) for the layer of `model` that is `value` or made it (a
    parameter, a buffer); None for none."""
    for path, layer in [("", model), *model.named_layers()]:
        # (Layer's tables, as above: `parameters()` would walk the sub-layers of every layer again)
        if layer is value or any(a is value for a in (*layer._params.values(), *layer._buffers.values())):
            return f"layer {path} ({type(layer).__name__})" if path else "the model"
    return None
