"""Cost of the per-step finite check (``fit(check_finite=True)``) at the small shape.

One model (30-16-8-1, float32, SGD lr 0.01 momentum 0.9, batch 32, the 455-row
small data of bench_train.py) trains one epoch per `fit` call, alternating
check_finite=True and False (the order rotates every round; one model, so both
settings use the same buffers), one thread everywhere. An epoch is timed from its begin hook to its end hook, as in
bench_train.py. Prints the medians and their ratio; with --markdown, a RESULTS.md section.

    OMP_NUM_THREADS=1 python benchmarks/bench_finite_check.py --repeats 301
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train  # noqa: E402

import nnx  # noqa: E402


class Timer(nnx.callbacks.Callback):
    """Wall time of the last epoch, from its begin hook to its end hook."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds = time.perf_counter() - self._t0


def _runner(backend: Any, X: Any, y: Any, shape: Any) -> Any:
    """One model trained an epoch per call, the check on or off: the same buffers and weights for both."""
    layers: list[Any] = []
    for fan_in, fan_out in zip(shape.sizes[:-1], shape.sizes[1:], strict=True):
        layers += [nnx.Dense(fan_in, fan_out), nnx.ReLU()]
    layers[-1] = nnx.Sigmoid()
    model = nnx.Sequential(*layers, backend=backend, dtype="float32", seed=bench_train.SEED)
    opt = nnx.optim.SGD(model.parameters(), lr=bench_train.LR, momentum=bench_train.MOMENTUM)
    Xd, yd = backend.asarray(X, dtype="float32"), backend.asarray(y)
    timer = Timer()

    def epoch(check: bool) -> float:
        model.fit(Xd, yd, loss="bce", optimizer=opt, epochs=1, batch_size=shape.batch, callbacks=[timer],
                  check_finite=check)
        return timer.seconds

    return epoch


def measure(repeats: int, fast: bool = True, backend_name: str = "numpy") -> dict:
    """Median epoch seconds with the check on and off, and their ratio."""
    try:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(1)
    except ImportError:
        limits = None
    shape = bench_train.SHAPES["small"]
    X, y, _ = bench_train.make_data(shape)
    be = nnx.get_backend(backend_name).with_fastpath(fast)
    epoch = _runner(be, X, y, shape)
    times: dict[str, list[float]] = {"on": [], "off": []}
    for r in range(repeats + 5):
        order = ["on", "off"] if r % 2 == 0 else ["off", "on"]
        for name in order:
            t = epoch(name == "on")
            if r >= 5:  # warm-up rounds
                times[name].append(t)
    if limits is not None:
        limits.unregister() if hasattr(limits, "unregister") else None
    on, off = statistics.median(times["on"]), statistics.median(times["off"])
    # paired: each round's on/off ratio, so slow stretches of the shared machine hit both
    paired = statistics.median(a / b for a, b in zip(times["on"], times["off"], strict=True))
    return {"on": on, "off": off, "ratio": on / off, "paired_ratio": paired, "repeats": repeats,
            "fast": be.fastpath_enabled, "min_on": min(times["on"]), "min_off": min(times["off"])}


def direct(number: int = 2000, repeat: int = 15) -> dict:
    """Best-of-`repeat` seconds of one `TrainStep.check` on a batch of the small shape (fast path): robust
    to a busy machine, unlike epoch times; times steps per epoch, it is the check's share of an epoch."""
    import timeit

    from nnx.training import TrainStep

    shape = bench_train.SHAPES["small"]
    X, y, _ = bench_train.make_data(shape)
    be = nnx.get_backend("numpy")
    layers: list[Any] = []
    for fan_in, fan_out in zip(shape.sizes[:-1], shape.sizes[1:], strict=True):
        layers += [nnx.Dense(fan_in, fan_out), nnx.ReLU()]
    layers[-1] = nnx.Sigmoid()
    model = nnx.Sequential(*layers, backend=be, dtype="float32", seed=bench_train.SEED)
    loss = model.resolve_loss("bce")
    step = TrainStep(model, loss, nnx.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9))
    Xb = model.prepare_inputs(X[:shape.batch])
    yb = model.prepare_targets(y[:shape.batch], loss, shape.batch)
    value, _ = step.forward_loss(Xb, yb)
    step.backward()

    return {"check": min(timeit.repeat(lambda: step.check(value), number=number, repeat=repeat)) / number,
            "steps": shape.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=301)
    parser.add_argument("--portable", action="store_true", help="also measure with the fast path off")
    args = parser.parse_args()
    rows = [measure(args.repeats, True)]
    if args.portable:
        rows.append(measure(max(args.repeats // 3, 11), False))
    d = direct()
    share = d["check"] * d["steps"] / rows[0]["min_off"]
    print(f"direct: one check {d['check'] * 1e6:.2f} us (best of 15) x {d['steps']} steps = {share * 100:.2f}% "
          f"of the fastest unchecked epoch")
    for r in rows:
        print(f"fast path {'on ' if r['fast'] else 'off'}: check on {r['on'] * 1e3:.3f} ms, "
              f"off {r['off'] * 1e3:.3f} ms "
              f"(min {r['min_on'] * 1e3:.3f} / {r['min_off'] * 1e3:.3f}), ratio of medians {r['ratio']:.4f}, "
              f"median paired ratio {r['paired_ratio']:.4f}, {r['repeats']} epochs each")


if __name__ == "__main__":
    main()
