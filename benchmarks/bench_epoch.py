"""Compiled epochs: nnx on JAX (each epoch one program) against per-step execution and hand-written loops.

Every contender trains the same MLP (ReLU hidden layers, float32, Adam lr 1e-3, betas
0.9/0.999) for `--epochs` epochs on the same data, shuffled every epoch, and one timed
run is one such call, ended by reading the loss:

- ``nnx_epoch``: ``model.fit(X, y, epochs=E)`` on JAX, each epoch one compiled program;
- ``nnx_step``: the same fit, step by step (a callback with a per-batch hook forces it): the
  compiled step called once per batch, as nnx on JAX ran before epochs were compiled;
- ``nnx_numpy``: the same fit on NumPy;
- ``jax_scan``: a hand-written ``lax.scan`` epoch, shuffle on the device, one program an epoch;
- ``jax_jit``: a hand-written ``jax.jit`` step, called once per batch (the batch gathered
  inside it from the epoch's permutation);
- ``torch``: a hand-written PyTorch eager loop (``--torch-device``, for the GPU check).

Contenders alternate in a rotating order, `--repeats` rounds after a warm-up round
(which compiles); the report gives the median ms per epoch and the median per-round
ratio of each contender to ``nnx_epoch``.

    python benchmarks/bench_epoch.py                          # the issue's shape and medium, on the CPU
    python benchmarks/bench_epoch.py --device gpu --shapes small,medium,large \\
        --contenders nnx_epoch,nnx_step,torch --torch-device cuda
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "nnx" / "__init__.py").exists() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

LR, SEED = 1e-3, 0
# name -> (layer sizes, rows, batch, loss)
SHAPES = {
    "small": ((30, 16, 8, 1), 4096, 32, "bce"),  # the shape: 128 steps an epoch
    "medium": ((784, 256, 128, 10), 8192, 128, "ce"),
    "large": ((784, 1024, 1024, 10), 16384, 256, "ce"),
    "tiny": ((10, 6, 1), 256, 32, "bce"),
}
CONTENDERS = ("nnx_epoch", "nnx_step", "nnx_numpy", "jax_scan", "jax_jit", "torch")


def make_data(name: str) -> tuple[Any, Any]:
    from bench_jax import synthetic_data  # the per-step benchmark's data, at this script's shapes

    sizes, n, _, loss = SHAPES[name]
    return synthetic_data(sizes, n, loss, SEED)


# -- nnx -----------------------------------------------------------------------------------------
class NnxRun:
    """``model.fit(X, y, epochs=E)`` on a backend; per step when `per_step`."""

    def __init__(self, name: str, X: Any, y: Any, spec: str, per_step: bool, epochs: int) -> None:
        import nnx

        sizes, _, self.batch, loss = SHAPES[name]
        layers: list[Any] = []
        for i in range(len(sizes) - 1):
            layers.append(nnx.Dense(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nnx.ReLU())
        layers.append(nnx.Sigmoid() if loss == "bce" else nnx.Softmax())
        self.model = nnx.Sequential(*layers, backend=spec, dtype="float32", seed=SEED)
        be = self.model.backend
        self.X, self.y = be.asarray(X), be.asarray(y) if loss == "ce" else be.asarray(y[:, None])
        self.loss = "bce" if loss == "bce" else "cross_entropy"
        self.optimizer = nnx.optim.Adam(self.model.parameters(), lr=LR)
        self.epochs = epochs

        class PerBatch(nnx.callbacks.Callback):
            def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
                pass

        self.callbacks = [PerBatch()] if per_step else []
        self.mode = ""

    def __call__(self) -> float:
        h = self.model.fit(self.X, self.y, loss=self.loss, optimizer=self.optimizer, epochs=self.epochs,
                           batch_size=self.batch, callbacks=self.callbacks)
        self.mode = f"{h.execution_mode}/{h.execution}"
        return h.history["loss"][-1]


# -- hand-written JAX ------------------------------------------------------------------------------
def _jax_parts(name: str, device: str) -> tuple[Any, ...]:
    import jax
    import jax.numpy as jnp

    sizes, _, batch, loss = SHAPES[name]
    dev = jax.devices(device)[0]
    keys = jax.random.split(jax.random.PRNGKey(SEED), len(sizes))
    params = [(jax.random.normal(keys[i], (sizes[i], sizes[i + 1]), jnp.float32) * (2.0 / sizes[i]) ** 0.5,
               jnp.zeros((sizes[i + 1],), jnp.float32)) for i in range(len(sizes) - 1)]
    params = jax.device_put(params, dev)

    def loss_fn(p: Any, xb: Any, yb: Any) -> Any:
        h = xb
        for i, (W, b) in enumerate(p):
            h = jnp.matmul(h, W, precision="highest") + b  # full float32, as nnx's programs multiply
            if i < len(p) - 1:
                h = jax.nn.relu(h)
        if loss == "bce":
            z = h[:, 0]
            return jnp.mean(jnp.maximum(z, 0) - z * yb + jnp.log1p(jnp.exp(-jnp.abs(z))))
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), yb[:, None], axis=1))

    def adam(p: Any, m: Any, v: Any, t: Any, g: Any) -> tuple[Any, Any, Any]:
        m = jax.tree.map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree.map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        c1, c2 = 1 - 0.9**t, 1 - 0.999**t
        p = jax.tree.map(lambda w, a, b: w - LR * (a / c1) / (jnp.sqrt(b / c2) + 1e-8), p, m, v)
        return p, m, v

    def step(state: Any, xb: Any, yb: Any) -> tuple[Any, Any]:
        p, m, v, t = state
        value, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        t = t + 1
        p, m, v = adam(p, m, v, t, g)
        return (p, m, v, t), value

    zeros = jax.tree.map(jnp.zeros_like, params)
    state = (params, zeros, zeros, jnp.asarray(0.0, jnp.float32))
    return jax, jnp, dev, batch, step, state


class JaxScanRun:
    """A hand-written epoch: shuffle on the device, ``lax.scan`` over the batches, one program."""

    def __init__(self, name: str, X: Any, y: Any, device: str, epochs: int) -> None:
        jax, jnp, dev, batch, step, self.state = _jax_parts(name, device)
        self.X, self.y = jax.device_put(X, dev), jax.device_put(y, dev)
        n = X.shape[0]
        steps = n // batch

        def epoch(state: Any, key: Any, X: Any, y: Any) -> tuple[Any, Any]:
            perm = jax.random.permutation(key, n)[:steps * batch]
            Xs = X[perm].reshape((steps, batch) + X.shape[1:])
            ys = y[perm].reshape((steps, batch) + y.shape[1:])
            state, losses = jax.lax.scan(lambda s, b: step(s, b[0], b[1]), state, (Xs, ys))
            return state, jnp.mean(losses)

        self.epoch = jax.jit(epoch)
        self.key = jax.device_put(jax.random.PRNGKey(SEED), dev)
        self.jax, self.epochs = jax, epochs

    def __call__(self) -> float:
        value: Any = 0.0
        for _ in range(self.epochs):
            self.key, sub = self.jax.random.split(self.key)
            self.state, value = self.epoch(self.state, sub, self.X, self.y)
        return float(value)


class JaxJitRun:
    """A hand-written ``jax.jit`` step called once per batch; the batch is gathered inside it."""

    def __init__(self, name: str, X: Any, y: Any, device: str, epochs: int) -> None:
        jax, jnp, dev, batch, step, self.state = _jax_parts(name, device)
        self.X, self.y = jax.device_put(X, dev), jax.device_put(y, dev)
        n = X.shape[0]
        self.steps = n // batch

        def one(state: Any, total: Any, X: Any, y: Any, perm: Any, i: Any) -> tuple[Any, Any]:
            rows = jax.lax.dynamic_slice_in_dim(perm, i * batch, batch)
            state, value = step(state, X[rows], y[rows])
            return state, total + value

        self.one = jax.jit(one)
        self.perm = jax.jit(lambda key: jax.random.permutation(key, n))
        self.key = jax.device_put(jax.random.PRNGKey(SEED), dev)
        self.jax, self.jnp, self.epochs, self.dev = jax, jnp, epochs, dev

    def __call__(self) -> float:
        value = 0.0
        for _ in range(self.epochs):
            self.key, sub = self.jax.random.split(self.key)
            perm = self.perm(sub)
            total = self.jax.device_put(self.jnp.zeros((), self.jnp.float32), self.dev)
            for i in range(self.steps):
                self.state, total = self.one(self.state, total, self.X, self.y, perm, i)
            value = float(total) / self.steps
        return value


class TorchRun:
    """A hand-written PyTorch eager loop (shuffle on the device, loss read once per epoch)."""

    def __init__(self, name: str, X: Any, y: Any, device: str, epochs: int) -> None:
        import torch

        sizes, _, self.batch, loss = SHAPES[name]
        torch.manual_seed(SEED)
        layers: list[Any] = []
        for i in range(len(sizes) - 1):
            layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        self.net = torch.nn.Sequential(*layers).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=LR)
        self.X = torch.as_tensor(X, device=device)
        self.y = torch.as_tensor(y, device=device)
        self.loss = torch.nn.BCEWithLogitsLoss() if loss == "bce" else torch.nn.CrossEntropyLoss()
        self.bce = loss == "bce"
        self.torch, self.device, self.epochs = torch, device, epochs

    def __call__(self) -> float:
        torch = self.torch
        n = self.X.shape[0]
        value = 0.0
        for _ in range(self.epochs):
            perm = torch.randperm(n, device=self.device)
            total = torch.zeros((), device=self.device)
            steps = 0
            for start in range(0, n, self.batch):
                rows = perm[start:start + self.batch]
                out = self.net(self.X[rows])
                loss = self.loss(out[:, 0], self.y[rows]) if self.bce else self.loss(out, self.y[rows])
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                self.opt.step()
                total += loss.detach()
                steps += 1
            value = float(total) / steps
        return value


def make(contender: str, name: str, X: Any, y: Any, args: argparse.Namespace) -> Any:
    spec = f"jax:{args.device}"
    if contender == "nnx_epoch":
        return NnxRun(name, X, y, spec, False, args.epochs)
    if contender == "nnx_step":
        return NnxRun(name, X, y, spec, True, args.epochs)
    if contender == "nnx_numpy":
        return NnxRun(name, X, y, "numpy", False, args.epochs)
    if contender == "jax_scan":
        return JaxScanRun(name, X, y, args.device, args.epochs)
    if contender == "jax_jit":
        return JaxJitRun(name, X, y, args.device, args.epochs)
    if contender == "torch":
        return TorchRun(name, X, y, args.torch_device, args.epochs)
    raise ValueError(f"unknown contender {contender!r}; choose from {CONTENDERS}")


def bench(name: str, args: argparse.Namespace) -> dict[str, Any]:
    X, y = make_data(name)
    runs = {c: make(c, name, X, y, args) for c in args.contenders}
    for run in runs.values():
        run()  # warm-up: compiles
    times: dict[str, list[float]] = {c: [] for c in runs}
    order = list(runs)
    for r in range(args.repeats):
        for c in order[r % len(order):] + order[:r % len(order)]:  # rotate who goes first
            start = time.perf_counter()
            runs[c]()
            times[c].append((time.perf_counter() - start) / args.epochs)
    base = "nnx_epoch" if "nnx_epoch" in times else order[0]
    result: dict[str, Any] = {"shape": name, "epochs_per_run": args.epochs, "rows": X.shape[0],
                              "batch": SHAPES[name][2], "sizes": SHAPES[name][0], "contenders": {}}
    for c, ts in times.items():
        ratios = [b / t for b, t in zip(times[base], ts, strict=True)]
        result["contenders"][c] = {"median_ms": statistics.median(ts) * 1e3, "min_ms": min(ts) * 1e3,
                                   f"{base}_over_this": statistics.median(ratios),
                                   "mode": getattr(runs[c], "mode", "")}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--shapes", default="small,medium")
    parser.add_argument("--contenders", default="nnx_epoch,nnx_step,nnx_numpy,jax_scan,jax_jit")
    parser.add_argument("--device", default="cpu", help="JAX platform for nnx and the hand-written loops")
    parser.add_argument("--torch-device", default="cpu")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per timed run (fit(epochs=E))")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None, help="write results.json here")
    args = parser.parse_args(argv)
    args.contenders = [c for c in args.contenders.split(",") if c]
    reports = []
    for name in args.shapes.split(","):
        report = bench(name, args)
        reports.append(report)
        sizes = "-".join(map(str, report["sizes"]))
        print(f"\n{name}: {sizes}, {report['rows']} rows, batch {report['batch']}, fit(epochs={args.epochs}), "
              f"{args.repeats} alternating rounds")
        print(f"{'contender':<11} {'ms/epoch':>9} {'min':>8} {'nnx_epoch/it':>13}  mode")
        for c, r in report["contenders"].items():
            ratio = next(v for k, v in r.items() if k.endswith("_over_this"))
            print(f"{c:<11} {r['median_ms']:9.2f} {r['min_ms']:8.2f} {ratio:13.3f}  {r['mode']}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"device": args.device, "shapes": reports}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
