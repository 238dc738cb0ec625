"""`summary`: a printed table of a model's layers (nested ones under their container), shapes and sizes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .protocols import Model


def summary(model: Model, print_fn: Callable[[str], Any] = print) -> None:
    """Print a table of layers, their output shapes and parameter counts.

    Once `fit` has an optimizer, trainable parameters are those it updates; any it leaves out
    (an optimizer given a subset of ``model.parameters()``) are counted apart, as never trained. A model
    nested in another is trained by that one's optimizer: its own table counts its parameters and points there.

    Args:
        print_fn: what receives the table as one string (default `print`; e.g. a logger's
            ``info``, or ``lines.append`` to keep it).
    """
    rows = [("layer", "output shape", "params")]
    for path, layer in model.named_layers():  # a sub-layer under its container, indented, named by path
        shape = layer.output_sample_shape
        count = sum(math.prod(p.shape) for p in layer.parameters())
        shown = "?" if shape is None else str(("batch", *shape)).replace("'", "")
        rows.append((f"{'  ' * path.count('.')}{path}: {type(layer).__name__}", shown, f"{count:,}"))
    widths = [max(len(r[c]) for r in rows) for c in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    params = model.parameters()
    trained = {id(p) for p in model.optimizer.params} if model.optimizer is not None else {id(p) for p in params}
    total = sum(math.prod(p.shape) for p in params if id(p) in trained)
    left_out = sum(math.prod(p.shape) for p in params if id(p) not in trained)
    buffers = sum(math.prod(b.shape) for b in model.buffers())
    untrained = f"; not trained (outside the optimizer): {left_out:,}" if left_out else ""
    counted = f"trainable parameters: {total:,}{untrained}"
    if getattr(model, "nested", False) and model.optimizer is None:
        # the optimizer of the model holding this one decides, and may leave these out: not known from here
        counted = f"parameters: {total:,} (trained as the model holding this one decides: see its summary)"
    lines.append(f"{counted}; buffers: {buffers:,}; {model.backend.spec}, {model.dtype}")
    print_fn("\n".join(lines))
