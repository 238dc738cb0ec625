"""nnx's training step on NumPy against its own array operations written out bare, stage by stage.

The bare step runs, for the same network (Dense/ReLU, binary cross-entropy from logits, SGD with
momentum, float32, one thread, issue 17's small shape: 30-16-8-1, batch 32), the operations nnx's
step runs on NumPy, through the same namespace (`nnx.get_backend("numpy").xp`), with nothing
around them: no layer objects, no loss class, no checks that nothing was rebound. nnx's
`TrainStep` and the bare step alternate rounds of ``--steps`` steps over the same batches in one
process; each stage's median over all timed steps is reported, and both must end on the same
weights, bit for bit (the same operations in the same order). The difference is what the
library's Python costs around the operations, stage by stage; the bare step's total is the floor
that no rearrangement of that Python can go below without running fewer or cheaper operations
(which is what the whitelisted fast paths before the functional core did).

From `nnx.training.replay.MIN_ELEMENTS` parameters on, nnx runs other operations (the rule replayed
into its buffers, gradients written where the update reads them), so the bare step is the small
shape's only. From its third step nnx replays its recorded passes (`nnx.training.recorded`): the
forward, the loss and the backward then run in `forward_loss`, and its "backward" stage only binds
the gradients, so the table also gives the three stages together. The steps after the first run
back to back (`TrainStep.back_to_back`), as `fit` runs an epoch's steps where no callback or data
source of the user's runs between them.

    python benchmarks/bench_numpy_floor.py [--rounds 25] [--steps 200]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from typing import Any

import numpy as np

import nnx
from nnx.training.step import TrainStep

SIZES, BATCH = (30, 16, 8, 1), 32
STAGES = ("forward+loss", "backward", "finite check", "update")
LR, MOMENTUM = 0.01, 0.9


def _batches(sizes: tuple[int, ...], batch: int, count: int = 14) -> list[tuple[Any, Any]]:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch * count, sizes[0])).astype(np.float32)
    y = (rng.random((batch * count, 1)) < 0.5).astype(np.float32)
    return [(X[i:i + batch], y[i:i + batch]) for i in range(0, batch * count, batch)]


def _nnx(sizes: tuple[int, ...]) -> tuple[Any, Any]:
    """nnx's step, stage by stage, and its model (whose initial weights the bare step starts from)."""
    layers: list[Any] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nnx.Dense(fan_in, fan_out), nnx.ReLU()]
    model = nnx.Sequential(*layers[:-1], backend="numpy", dtype="float32", seed=0)
    opt = nnx.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    train = TrainStep(model, model.resolve_loss("bce_with_logits"), opt)

    def step(X: Any, y: Any) -> tuple[int, ...]:
        t0 = time.perf_counter_ns()
        value, _ = train.forward_loss(X, y)
        train.back_to_back = True  # as `fit` runs an epoch's steps: nothing else touches the model between them
        t1 = time.perf_counter_ns()
        train.backward()
        t2 = time.perf_counter_ns()
        if not train.check(value):
            raise FloatingPointError("nnx's step went non-finite")
        t3 = time.perf_counter_ns()
        train.update()
        t4 = time.perf_counter_ns()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3
    return step, model


def _bare(initial: list[Any]) -> tuple[Any, list[Any]]:
    """The operations of nnx's step on NumPy for this network, in its order, with nothing around them;
    also the arrays it updates (views of one flat buffer, in the model's parameter order)."""
    xp = nnx.get_backend("numpy").xp
    flat = np.concatenate([a.reshape(-1) for a in initial])
    momentum = np.zeros_like(flat)
    views, start = [], 0
    for a in initial:
        views.append(flat[start:start + a.size].reshape(a.shape))
        start += a.size
    weights, biases = views[0::2], views[1::2]
    last = len(weights) - 1

    def step(X: Any, y: Any) -> tuple[int, ...]:
        t0 = time.perf_counter_ns()
        kept, Z = [], X
        for i, (W, b) in enumerate(zip(weights, biases, strict=True)):
            kept.append(Z)
            Z = Z.dot(W)
            Z += b
            if i < last:
                Z = xp.maximum(Z, 0.0)
                kept.append(Z)
        n, scale = Z.shape[0], 1 / Z.size
        e = xp.exp(-xp.abs(Z))
        rows = xp.reshape(xp.maximum(Z, 0) + xp.log1p(e) - y * Z, (n,))
        dY = (xp.where(Z >= 0, 1.0, e) / (1 + e) - y) * scale
        value = xp.sum(rows) / n
        t1 = time.perf_counter_ns()
        grads: list[Any] = [None] * (2 * len(weights))
        for i in range(last, -1, -1):
            grads[2 * i], grads[2 * i + 1] = kept[2 * i].T.dot(dY), dY.sum(axis=0)
            if i:
                dY = xp.where(kept[2 * i - 1] > 0.0, dY.dot(weights[i].T), 0.0)
        t2 = time.perf_counter_ns()
        g = np.concatenate(grads, axis=None)
        if not math.isfinite(value + xp.sum(g)):
            raise FloatingPointError("the bare step went non-finite")
        t3 = time.perf_counter_ns()
        buf = MOMENTUM * momentum + g
        new = flat - LR * buf
        momentum[...], flat[...] = buf, new
        t4 = time.perf_counter_ns()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3
    return step, views


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--steps", type=int, default=200, help="steps per round")
    args = ap.parse_args()
    try:
        import threadpoolctl
    except ImportError:
        one_thread: Any = contextlib.nullcontext()
    else:
        one_thread = threadpoolctl.threadpool_limits(1)  # a small network's GEMMs are a thread's work
    with one_thread:
        report(args.rounds, args.steps)


def report(rounds: int, steps: int) -> None:
    """Time both steps in alternated rounds and print the stage table."""
    batches = _batches(SIZES, BATCH)
    nnx_step, model = _nnx(SIZES)
    bare_step, bare_weights = _bare([np.array(p.value) for p in model.parameters()])
    steppers = {"nnx": nnx_step, "bare": bare_step}
    times: dict[str, list[tuple[int, ...]]] = {name: [] for name in steppers}
    for r in range(rounds + 1):  # round 0 warms up
        for name, step in steppers.items() if r % 2 else reversed(steppers.items()):
            got = [step(*batches[k % len(batches)]) for k in range(steps)]
            if r:
                times[name] += got
    medians = {name: [statistics.median(t[s] for t in ts) / 1e3 for s in range(len(STAGES))]
               for name, ts in times.items()}
    print(f"small {'-'.join(map(str, SIZES))}, batch {BATCH}, float32, 1 thread: median us a step, "
          f"{rounds} alternated rounds of {steps} steps")
    print("| stage | nnx | bare operations | nnx - bare |")
    print("|---|---:|---:|---:|")
    for s, stage in enumerate(STAGES):
        a, b = medians["nnx"][s], medians["bare"][s]
        print(f"| {stage} | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    a, b = sum(medians["nnx"][:2]), sum(medians["bare"][:2])
    print(f"| forward+loss+backward | {a:.1f} | {b:.1f} | {a - b:+.1f} |")
    a, b = sum(medians["nnx"]), sum(medians["bare"])
    print(f"| step | {a:.1f} | {b:.1f} | {a - b:+.1f} ({a / b:.2f}x) |")
    # the same steps over the same batches: the same operations leave the same bits
    same = all(np.array_equal(p.value, w) for p, w in zip(model.parameters(), bare_weights, strict=True))
    if not same:
        raise SystemExit("the final weights differ: the bare step no longer runs nnx's operations")
    print("final weights: the same bits in both")


if __name__ == "__main__":
    main()
