"""nnx on JAX (its compiled step) against a hand-written `jax.jit` training step of the same network.

Both train the same MLP (float32, SGD with momentum 0.9, lr 0.01, torch's momentum rule) from
the same initial weights on the same batches in the same order. The hand-written loop
`jax.jit`s one step (`jax.value_and_grad` of the loss, the SGD update), gathers each
epoch's permutation once on the device and feeds contiguous slices of it, and reads the
epoch's mean loss once. nnx runs one ``fit(epochs=1)`` per epoch; its epoch is timed from
the epoch-begin to the epoch-end callback (the loop, the batches and the one loss read),
and the whole `fit` call is reported beside it. Epochs of the two alternate, in a
rotating order, and the report gives medians and the median of the per-round ratios.

    python benchmarks/bench_jax.py                      # small and medium, 2 threads
    python benchmarks/bench_jax.py --shapes small --repeats 11
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "nnx" / "__init__.py").exists() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

LR, MOMENTUM, SEED = 0.01, 0.9, 0
# name -> (layer sizes, samples, batch, loss); the shapes of benchmarks/bench_train.py
SHAPES = {
    "small": ((30, 16, 8, 1), 455, 32, "bce"),
    "medium": ((784, 256, 128, 10), 60_000, 128, "ce"),
    "tiny": ((10, 6, 1), 64, 16, "bce"),
}
REPEATS = {"small": 31, "medium": 5, "tiny": 3}


def make_data(name: str) -> tuple[Any, Any]:
    sizes, n, _, loss = SHAPES[name]
    return synthetic_data(sizes, n, loss, SEED)


def synthetic_data(sizes: tuple[int, ...], n: int, loss: str, seed: int) -> tuple[Any, Any]:
    """`n` rows of float32 features and targets a linear map of them decides (0/1 for bce, classes for ce)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, sizes[0]), dtype=np.float32)
    logits = X @ rng.standard_normal((sizes[0], sizes[-1]), dtype=np.float32)
    y = (logits[:, 0] > 0).astype(np.float32) if loss == "bce" else np.argmax(logits, axis=1).astype(np.int64)
    return X, y


class NnxRunner:
    """nnx on JAX: Dense/ReLU stack, SGD with momentum, one ``fit(epochs=1)`` per epoch."""

    def __init__(self, name: str, X: Any, y: Any, fast: bool = True) -> None:
        import nnx

        sizes, _, self.batch, loss = SHAPES[name]
        be = nnx.get_backend("jax").with_fastpath(fast)
        layers: list[Any] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nnx.Dense(a, b), nnx.ReLU()]
        layers.pop()
        if loss == "bce":
            layers.append(nnx.Sigmoid())
        self.model = nnx.Sequential(*layers, backend=be, dtype="float32", seed=SEED)
        self.initial = [be.to_host(p.value).copy() for p in self.model.parameters()]
        self.opt = nnx.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.loss = "bce" if loss == "bce" else "cross_entropy"
        self.X, self.y = be.asarray(X, dtype="float32"), be.asarray(y)
        runner = self

        class Timer(nnx.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                runner.t0, runner.c0 = time.perf_counter(), time.process_time()

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                runner.seconds = time.perf_counter() - runner.t0
                runner.cpu = time.process_time() - runner.c0
                runner.value = (logs or {}).get("loss", math.nan)

        self.timer = Timer()

    def epoch(self) -> tuple[float, float, float, float]:
        t0 = time.perf_counter()
        self.model.fit(self.X, self.y, loss=self.loss, optimizer=self.opt, epochs=1, batch_size=self.batch,
                       callbacks=[self.timer])
        return self.seconds, time.perf_counter() - t0, self.value, self.cpu


class JitRunner:
    """A hand-written JAX loop: one jitted step, the epoch's permutation gathered once, contiguous slices."""

    def __init__(self, name: str, X: Any, y: Any, initial: list[Any]) -> None:
        import jax
        import jax.numpy as jnp

        import nnx

        sizes, self.n, self.batch, loss = SHAPES[name]
        self.jax, self.jnp = jax, jnp
        self.params = [jnp.asarray(a) for a in initial]
        self.velocity = [jnp.zeros_like(p) for p in self.params]
        self.X, self.y = jnp.asarray(X), jnp.asarray(y)
        self.rng = nnx.Sequential(nnx.Dense(1, 1), seed=SEED).shuffle_rng  # nnx's batches, in its order
        n_layers = len(self.params) // 2

        def loss_fn(params: list[Any], xb: Any, yb: Any) -> Any:
            h = xb
            for i in range(n_layers):
                # full float32, as nnx's programs multiply (JAX's default may use TensorFloat-32 on a GPU)
                h = jnp.matmul(h, params[2 * i], precision="highest") + params[2 * i + 1]
                if i < n_layers - 1:
                    h = jax.nn.relu(h)
            if loss == "bce":
                z = h[:, 0]
                return jnp.mean(jnp.maximum(z, 0) - z * yb + jnp.log1p(jnp.exp(-jnp.abs(z))))
            return jnp.mean(jax.nn.logsumexp(h, axis=1) - jnp.take_along_axis(h, yb[:, None], axis=1)[:, 0])

        @jax.jit
        def step(params: list[Any], velocity: list[Any], xb: Any, yb: Any) -> tuple[list[Any], list[Any], Any]:
            value, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
            velocity = [MOMENTUM * v + g for v, g in zip(velocity, grads, strict=True)]  # torch's SGD momentum
            params = [p - LR * v for p, v in zip(params, velocity, strict=True)]
            return params, velocity, value

        self.step = step

    def epoch(self) -> tuple[float, float, float, float]:
        jnp, n, bs = self.jnp, self.n, self.batch
        t0, c0 = time.perf_counter(), time.process_time()
        perm = self.jax.device_put(self.rng.permutation(n))
        Xp, yp = jnp.take(self.X, perm, axis=0), jnp.take(self.y, perm, axis=0)
        params, velocity, losses, rows = self.params, self.velocity, [], []
        for start in range(0, n, bs):
            params, velocity, value = self.step(params, velocity, Xp[start:start + bs], yp[start:start + bs])
            losses.append(value)
            rows.append(min(bs, n - start))
        self.params, self.velocity = params, velocity
        mean = float(jnp.dot(jnp.stack(losses), jnp.asarray(rows, dtype=jnp.float32))) / n  # one read an epoch
        seconds = time.perf_counter() - t0
        return seconds, seconds, mean, time.process_time() - c0


def alternate(runners: dict[str, Any], repeats: int, warmup: int = 2) -> dict[str, Any]:
    names = list(runners)
    rounds: list[dict[str, tuple]] = []
    for r in range(warmup + repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        got = {name: runners[name].epoch() for name in order}
        if r >= warmup:
            rounds.append(got)
    out: dict[str, Any] = {}
    for name in names:
        out[name] = {"epoch": statistics.median(g[name][0] for g in rounds),
                     "fit": statistics.median(g[name][1] for g in rounds),
                     "loss": rounds[-1][name][2]}
    ratios = [g["nnx"][0] / g["jit"][0] for g in rounds]
    out["ratio"] = statistics.median(ratios)
    out["ratio_fit"] = statistics.median(g["nnx"][1] / g["jit"][0] for g in rounds)
    out["ratio_range"] = (min(ratios), max(ratios))
    out["ratio_cpu"] = statistics.median(g["nnx"][3] / g["jit"][3] for g in rounds)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="small,medium")
    parser.add_argument("--repeats", type=int, default=None, help="alternated epochs per shape (default per shape)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=None, help="cap the samples (quick runs)")
    args = parser.parse_args(argv)
    # XLA's CPU client sizes its thread pool from this when it starts
    os.environ.setdefault("XLA_FLAGS", f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}")
    import jax

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {args.threads} threads, float32, SGD momentum")
    print("| shape | nnx epoch | hand-written jit epoch | nnx / jit wall (median of rounds, range) "
          "| nnx / jit CPU time | nnx whole fit / jit |")
    print("|---|---|---|---|---|---|")
    for name in args.shapes.split(","):
        if args.samples:
            sizes, n, b, loss = SHAPES[name]
            SHAPES[name] = (sizes, min(n, args.samples), b, loss)
        X, y = make_data(name)
        nnx_runner = NnxRunner(name, X, y)
        runners = {"nnx": nnx_runner, "jit": JitRunner(name, X, y, nnx_runner.initial)}
        res = alternate(runners, args.repeats or REPEATS[name])
        sizes, n, b, _ = SHAPES[name]
        lo, hi = res["ratio_range"]
        print(f"| {name} {'-'.join(map(str, sizes))}, {n} samples, batch {b} | {res['nnx']['epoch'] * 1e3:.2f} ms "
              f"| {res['jit']['epoch'] * 1e3:.2f} ms | **{res['ratio']:.2f}** ({lo:.2f}-{hi:.2f}) "
              f"| {res['ratio_cpu']:.2f} | {res['ratio_fit']:.2f} |", flush=True)
        from nnx.training.compiled import compiled_step_of

        steps = compiled_step_of(nnx_runner.model)
        print(f"<!-- {name}: losses nnx {res['nnx']['loss']:.6f} jit {res['jit']['loss']:.6f}; "
              f"nnx compilations {getattr(steps, 'traces', None)} -->", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
