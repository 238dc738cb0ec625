"""nnx's training step on torch against the same step in native torch eager, stage by stage.

The same network (Dense/ReLU, float32, one thread) is stepped by nnx's `TrainStep` on the
torch backend and by ``torch.nn`` with ``torch.optim``, on one fixed batch, alternating
rounds of ``--steps`` steps in one process. Each stage's median over all timed steps is
reported: forward with the loss, backward, nnx's finite check (native torch has none) and
the optimizer update. It says where the gap of `bench_train.py`'s "nnx on torch vs native
torch eager" row lies (issue 17's target there: <= 1.0x at the medium shape).

    python benchmarks/bench_torch_steps.py [--shape medium] [--optimizer sgd|adam] [--rounds 25]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

import nnx
from nnx.training.step import TrainStep

# sizes, batch, loss: the shapes of bench_train.py ("medium", SGD with momentum) and of issue 17 ("medium_bce")
SHAPES = {"small": ((30, 16, 8, 1), 32, "bce"), "medium": ((784, 256, 128, 10), 128, "ce"),
          "medium_bce": ((784, 256, 128, 1), 128, "bce")}
STAGES = ("forward+loss", "backward", "finite check", "update")


def _native(torch: Any, sizes: tuple[int, ...], loss: str, optimizer: str) -> Any:
    mods: list[Any] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        mods += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    net = torch.nn.Sequential(*mods[:-1])
    opt = (torch.optim.Adam(net.parameters(), lr=1e-3) if optimizer == "adam"
           else torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
    loss_fn = torch.nn.BCEWithLogitsLoss() if loss == "bce" else torch.nn.CrossEntropyLoss()

    def step(X: Any, y: Any) -> tuple[int, ...]:
        t0 = time.perf_counter_ns()
        opt.zero_grad(set_to_none=True)
        value = loss_fn(net(X), y)
        t1 = time.perf_counter_ns()
        value.backward()
        t2 = time.perf_counter_ns()
        opt.step()
        t3 = time.perf_counter_ns()
        return t1 - t0, t2 - t1, 0, t3 - t2
    return step


def _nnx(sizes: tuple[int, ...], loss: str, optimizer: str) -> Any:
    layers: list[Any] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nnx.Dense(fan_in, fan_out), nnx.ReLU()]
    model = nnx.Sequential(*layers[:-1], backend="torch", dtype="float32", seed=0)
    opt = (nnx.optim.Adam(model.parameters(), lr=1e-3) if optimizer == "adam"
           else nnx.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    train = TrainStep(model, model.resolve_loss("bce_with_logits" if loss == "bce" else "cross_entropy"), opt)

    def step(X: Any, y: Any) -> tuple[int, ...]:
        t0 = time.perf_counter_ns()
        value, _ = train.forward_loss(X, y)
        t1 = time.perf_counter_ns()
        train.backward()
        t2 = time.perf_counter_ns()
        train.check(value)
        t3 = time.perf_counter_ns()
        train.update()
        t4 = time.perf_counter_ns()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3
    return step, model, train


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--shape", default="medium", choices=sorted(SHAPES))
    parser.add_argument("--optimizer", default="sgd", choices=("sgd", "adam"))
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    sizes, batch, loss = SHAPES[args.shape]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((batch, sizes[0])).astype(np.float32)
    y = (rng.random((batch, 1)) > 0.5).astype(np.float32) if loss == "bce" else rng.integers(0, sizes[-1], batch)
    native = _native(torch, sizes, loss, args.optimizer)
    mine, model, train = _nnx(sizes, loss, args.optimizer)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    Xd, yd = model.prepare_inputs(X), model.prepare_targets(y, train.loss, batch)
    times: dict[str, list[tuple[int, ...]]] = {"native torch": [], "nnx": []}
    for r in range(args.rounds + 2):  # two rounds to warm up
        for name, step, data in (("native torch", native, (Xt, yt)), ("nnx", mine, (Xd, yd))):
            for _ in range(args.steps):
                t = step(*data)
                if r >= 2:
                    times[name].append(t)
    print(f"{args.shape} {'-'.join(map(str, sizes))}, batch {batch}, {args.optimizer}, float32, 1 thread; "
          f"{args.rounds} alternated rounds of {args.steps} steps, medians in us")
    print("| | " + " | ".join(STAGES) + " | step |")
    print("|---|" + "---:|" * (len(STAGES) + 1))
    steps = {}
    for name, rows in times.items():
        stages = [statistics.median(col) / 1e3 for col in zip(*rows, strict=True)]
        steps[name] = statistics.median([sum(row) for row in rows]) / 1e3
        print(f"| {name} | " + " | ".join(f"{v:.1f}" for v in stages) + f" | {steps[name]:.1f} |")
    print(f"nnx / native torch, whole step: {steps['nnx'] / steps['native torch']:.3f}x "
          f"(execution: {train.execution})")


if __name__ == "__main__":
    main()
