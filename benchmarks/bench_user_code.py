"""A user's layer and a user's optimizer against the built-ins: speed is derived, not whitelisted.

A user's `Dense` (a `nnx.Layer` subclass with the built-in's math, written with the
public API) and a user's Adam (an `nnx.optim.Optimizer` written as a pure rule) are
timed against the built-in `Dense` and `Adam` in one process, alternating, best of
``--repeats`` epochs, on each backend. The ratio user / built-in is the figure; the
targets (issue 17) are <= 1.3 (Dense) and <= 1.2 (Adam) at small, <= 1.1 at medium.

    python benchmarks/bench_user_code.py [--backends numpy,torch,jax] [--repeats 7] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import nnx

SHAPES = {"small": ((30, 16, 8, 1), 32, 4096), "medium": ((784, 256, 128, 1), 128, 4096)}


class UserDense(nnx.Layer):
    """The built-in Dense's math, written as a user would: ``X @ W + b``."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.X: Any = None

    def build(self, input_shape: Any) -> None:
        self.weight = self.add_parameter("weight", (self.in_features, self.out_features), "he", regularized=True)
        self.bias = self.add_parameter("bias", (self.out_features,), "zeros")

    def output_shape(self, input_shape: Any) -> tuple[int]:
        return (self.out_features,)

    def forward(self, X: Any, training: bool = False) -> Any:
        if training:
            self.X = X
        return X @ self.weight.value + self.bias.value

    def backward(self, dY: Any, need_dX: bool = True) -> Any:
        self.weight.grad = self.X.T @ dY
        self.bias.grad = self.xp.sum(dY, axis=0)
        return dY @ self.weight.value.T if need_dX else None

    def get_config(self) -> dict:
        return {"type": "UserDense", "in_features": self.in_features, "out_features": self.out_features}


class UserAdam(nnx.optim.Optimizer):
    """torch's Adam as a user writes it: one pure, elementwise rule."""

    elementwise = True

    def __init__(self, params: Any, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8) -> None:
        super().__init__(params, lr, beta1=beta1, beta2=beta2, eps=eps)

    def init_state(self, xp: Any, value: Any) -> dict:
        return {"m": xp.zeros_like(value), "v": xp.zeros_like(value)}

    def update(self, xp: Any, value: Any, grad: Any, state: dict, step: Any, lr: Any) -> tuple[Any, dict]:
        m = self.beta1 * state["m"] + (1.0 - self.beta1) * grad
        v = self.beta2 * state["v"] + (1.0 - self.beta2) * (grad * grad)
        denom = xp.sqrt(v) / (1.0 - self.beta2**step) ** 0.5 + self.eps
        return value - (lr / (1.0 - self.beta1**step)) * (m / denom), {"m": m, "v": v}


def build(backend: str, sizes: tuple[int, ...], dense: type, seed: int = 0) -> Any:
    layers: list[Any] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(dense(a, b))
        layers.append(nnx.ReLU() if i < len(sizes) - 2 else nnx.Sigmoid())
    return nnx.Sequential(*layers, backend=backend, dtype="float32", seed=seed)


class Runner:
    """One configuration: a model and an optimizer, timed one epoch at a time."""

    def __init__(self, backend: str, shape: str, dense: type, adam: type) -> None:
        sizes, self.batch, rows = SHAPES[shape]
        rng = np.random.default_rng(0)
        self.X = rng.standard_normal((rows, sizes[0])).astype(np.float32)
        self.y = (rng.random((rows, 1)) > 0.5).astype(np.float32)
        self.model = build(backend, sizes, dense)
        self.opt = adam(self.model.parameters(), lr=1e-3)
        self.epoch()  # warm-up: compilations, buffers

    def epoch(self) -> float:
        start = time.perf_counter()
        self.model.fit(self.X, self.y, loss="bce", optimizer=self.opt, epochs=1, batch_size=self.batch, verbose=0)
        return time.perf_counter() - start


def measure(backend: str, shape: str, repeats: int) -> dict:
    runners = {"built-in": Runner(backend, shape, nnx.Dense, nnx.optim.Adam),
               "user Dense": Runner(backend, shape, UserDense, nnx.optim.Adam),
               "user Adam": Runner(backend, shape, nnx.Dense, UserAdam)}
    best = {name: float("inf") for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            best[name] = min(best[name], runner.epoch())
    base = best["built-in"]
    return {"ms_per_epoch": {k: round(v * 1e3, 3) for k, v in best.items()},
            "user_dense_ratio": round(best["user Dense"] / base, 3),
            "user_adam_ratio": round(best["user Adam"] / base, 3)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="numpy,torch,jax")
    p.add_argument("--shapes", default="small,medium")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--quick", action="store_true", help="2 repeats, small shape only (the test runs this)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    shapes = ["small"] if args.quick else args.shapes.split(",")
    repeats = 2 if args.quick else args.repeats
    report = {}
    for backend in args.backends.split(","):
        ok, why = nnx.backends.backend_status(backend)
        if not ok:
            print(f"{backend}: skipped ({why})")
            continue
        for shape in shapes:
            row = report[f"{backend}/{shape}"] = measure(backend, shape, repeats)
            print(f"{backend:6s} {shape:6s} built-in {row['ms_per_epoch']['built-in']:8.2f} ms/epoch   "
                  f"user Dense {row['user_dense_ratio']:.3f}x   user Adam {row['user_adam_ratio']:.3f}x", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
