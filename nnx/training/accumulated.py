"""Gradient accumulation inside a compiled epoch: ``fit(accumulate=k)`` as one program.

The stages are those of `nnx.training.Accumulate` and `TrainStep`, traced: each batch's
gradient is added up weighted by its rows; every k-th batch the row-weighted mean goes
through the later transforms (clipping) and the optimizer's rule, and at the end of the
epoch what was gathered is applied, so the numbers are the step-by-step loop's. The
update count advances only with an applied update, so the host learns from the carry
how many updates the epoch made (`CompiledStep.end_epoch`'s counters follow it).

The carry of a step is ``(gradient sums, rows so far, batches so far)``; under the loss reduction
``mean_with_sample_weight`` with weights, batches count by their sums of weights instead of their rows
(`nnx.training.weights.batch_weight`), and the carry holds the weight so far.
"""

from __future__ import annotations

from typing import Any

from .compiled import (
    CARRY_COUNTER,
    CARRY_FIRST_BAD,
    CARRY_INDEX,
    CARRY_OK,
    CARRY_SEED,
    CARRY_T,
    CompiledStep,
    kept_buffers,
)
from .transforms import inverse_total, weightless_mean
from .weights import batch_weight, counts_by_weight

__all__ = ["flush", "start", "step"]

def start(cs: CompiledStep, values: tuple, w: Any) -> tuple:
    """Nothing gathered yet, for batches weighted by `w` (the epoch's sample weights, or None)."""
    xp = cs.xp
    zero = xp.asarray(0, dtype=xp.int64)
    seen = xp.zeros((), dtype=w.dtype) if counts_by_weight(cs.head, w) else zero
    return tuple(xp.zeros_like(v) for v in values), seen, zero


def _apply(cs: CompiledStep, values: tuple, states: tuple, acc: tuple, rows: int, t: Any, lr: Any,
           go: Any, last: tuple) -> tuple:
    """The gathered mean through the later transforms and the rule, kept where `go`: (values, states, t, mean).
    `last` is the gradient of the group's last batch."""
    xp = cs.xp
    sums, seen, _ = acc
    # `Accumulate.flush` scales by 1.0 / rows as a Python float, which meets the gradients in their dtype,
    # or by `inverse_total` of the weights (and takes the last gradient where they sum to 0)
    if xp.isdtype(seen.dtype, "integral"):
        scale = xp.astype(1.0 / xp.astype(seen, xp.float64), values[0].dtype)
        mean = tuple(s * scale for s in sums)
    else:
        scale = inverse_total(seen)
        mean = tuple(weightless_mean(s * scale, g, seen) for s, g in zip(sums, last, strict=True))
    mean = cs.transformed(values, mean, rows, cs.transforms)
    new_values, new_states = cs.updated(values, mean, states, t, lr)
    values = tuple(xp.where(go, new, old) for new, old in zip(new_values, values, strict=True))
    states = tuple({k: xp.where(go, arr, states[i][k]) for k, arr in st.items()} for i, st in enumerate(new_states))
    return values, states, t + xp.astype(go, t.dtype), mean


def step(cs: CompiledStep, k: int, values: tuple, states: tuple, bufs: tuple, lr: Any, ints: Any, acc: tuple,
         X: Any, y: Any, w: Any) -> tuple:
    """One batch: gather its gradient, update on every k-th; returns `CompiledStep.pure`'s outputs and the carry."""
    xp = cs.xp
    t, counter, index = ints[CARRY_T], ints[CARRY_COUNTER], ints[CARRY_INDEX]
    value, Z, grads, new_bufs, new_counter, ok_now = cs.gradients(values, bufs, counter, ints[CARRY_SEED], X, y, w)
    rows = int(X.shape[0])
    weight = batch_weight(xp, cs.head, rows, w)
    sums, seen, count = acc
    acc = (tuple(s + g * weight for s, g in zip(sums, grads, strict=True)), seen + weight, count + 1)
    due = acc[2] == k
    ok_in = ints[CARRY_OK] != 0
    keep = ok_in if ok_now is None else ok_in & ok_now
    values, states, t, mean = _apply(cs, values, states, acc, rows, t, lr, due & keep, grads)
    grads = tuple(xp.where(due, m, g) for m, g in zip(mean, grads, strict=True))  # as `p.grad` is left
    acc = (tuple(xp.where(due, xp.zeros_like(s), s) for s in acc[0]), xp.where(due, xp.zeros_like(acc[1]), acc[1]),
           xp.where(due, xp.zeros_like(acc[2]), acc[2]))
    if ok_now is not None:  # buffers as `CompiledStep.pure` leaves them: a refused step's forward does not count
        new_bufs = kept_buffers(xp, keep, new_bufs, bufs)
    first_bad = ints[CARRY_FIRST_BAD] if ok_now is None else xp.where(ok_in & ~ok_now, index, ints[CARRY_FIRST_BAD])
    ints = xp.concat([xp.stack([t, new_counter, index + 1, xp.astype(keep, ints.dtype), first_bad]), ints[CARRY_SEED:]])
    return values, states, new_bufs, grads, value, Z, ints, acc


def flush(cs: CompiledStep, values: tuple, states: tuple, grads: tuple, ints: Any, acc: tuple, lr: Any) -> tuple:
    """The end of the epoch: apply what was gathered since the last update; (values, states, grads, ints)."""
    xp = cs.xp
    pending = acc[2] > 0
    values, states, t, mean = _apply(cs, values, states, acc, 0, ints[CARRY_T], lr, pending & (ints[CARRY_OK] != 0),
                                     grads)
    grads = tuple(xp.where(pending, m, g) for m, g in zip(mean, grads, strict=True))
    return values, states, grads, xp.concat([xp.reshape(t, (1,)), ints[1:]])
