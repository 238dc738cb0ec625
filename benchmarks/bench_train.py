"""Training speed of nnx against PyTorch and scikit-learn, and against the BLAS limit.

The same MLPs (same sizes, float32, SGD with momentum 0.9, lr 0.01) are trained by
nnx, by PyTorch (torch.nn + torch.optim.SGD, starting from nnx's initial weights
and seeing nnx's batches in nnx's order) and by scikit-learn (MLPClassifier,
solver="sgd", one `partial_fit` per epoch). Epochs of the three alternate in one
process, in a rotating order, so that machine noise hits all of them alike; the
report gives medians. Besides epoch times it measures:

- the float32 matmul rate of NumPy's BLAS at the large shape's GEMMs (forward and
  both backward GEMMs of every layer) and how much of an nnx step they take;
- which BLAS and kernel run (threadpoolctl) and, when OPENBLAS_CORETYPE or
  OPENBLAS_L2_SIZE is set, the same measurements in a child process with both unset;
- nnx's fast paths against its portable path (ablation);
- peak memory while training the large shape (tracemalloc and RSS, in a clean
  child process) against what parameters, gradients, optimizer state and one
  batch's activations need;
- ``import nnx`` time (fresh interpreters, best of N);
- samples/s against batch size, plotted for the three libraries.

It writes RESULTS.md, results.json and a PNG to --out (default: benchmarks/runs/; benchmarks/RESULTS.md
is the hand-kept report, which quotes these runs).

    python benchmarks/bench_train.py                 # the full run (about 20-40 minutes on 2 cores)
    python benchmarks/bench_train.py --quick         # smaller data, fewer repeats
    python benchmarks/bench_train.py --tiny --out /tmp/b   # seconds; what tests/test_benchmarks.py runs
    python benchmarks/bench_train.py --backend cupy --torch-device cuda --frameworks nnx,torch \\
        --shapes medium,large,wide                   # on a GPU (see gpu_check.sh)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if (ROOT / "nnx" / "__init__.py").exists() and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import nnx  # noqa: E402

BLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
LR, MOMENTUM, SEED = 0.01, 0.9, 0


@dataclass(frozen=True)
class Shape:
    """One benchmark problem: layer sizes, samples, batch size and loss ("bce" or "ce")."""

    name: str
    sizes: tuple[int, ...]
    samples: int
    batch: int
    loss: str

    @property
    def steps(self) -> int:
        return math.ceil(self.samples / self.batch)

    def with_samples(self, samples: int) -> Shape:
        return Shape(self.name, self.sizes, samples, self.batch, self.loss)

    def label(self) -> str:
        return f"{'-'.join(map(str, self.sizes))}, {self.samples} samples, batch {self.batch}, {self.loss.upper()}"


SHAPES = {
    "small": Shape("small", (30, 16, 8, 1), 455, 32, "bce"),
    "medium": Shape("medium", (784, 256, 128, 10), 60_000, 128, "ce"),
    "large": Shape("large", (1024, 2048, 2048, 10), 16_384, 512, "ce"),
    "wide": Shape("wide", (1024, 8192, 8192, 10), 32_768, 1024, "ce"),  # for GPUs
    "tiny_bce": Shape("tiny_bce", (10, 6, 1), 64, 16, "bce"),
    "tiny_ce": Shape("tiny_ce", (12, 8, 3), 96, 16, "ce"),
}
QUICK_SAMPLES = {"medium": 6_000, "large": 2_048, "wide": 4_096}
DEFAULT_REPEATS = {"small": 31, "medium": 5, "large": 5, "wide": 5, "tiny_bce": 3, "tiny_ce": 3}
# The targets of issue 12 (issue 5's, raised), as (nnx / peer) ceilings, by the nnx backend's library.
TARGETS_BY_LIBRARY = {
    "numpy": {("small", "torch"): 0.12, ("small", "sklearn"): 0.15, ("medium", "torch"): 0.70},
    "torch": {("small", "torch"): 1.0, ("medium", "torch"): 1.0},  # nnx on torch vs native torch eager
    "jax": {("small", "jax"): 1.1, ("medium", "jax"): 1.1},  # nnx on JAX vs a hand-written jax.jit step
}
TARGETS = TARGETS_BY_LIBRARY["numpy"]
LARGE_GEMM_TARGET, IMPORT_TARGET_S, MEMORY_TARGET = 1.05, 0.15, 1.3


# -- data ---------------------------------------------------------------------------------------------

def nnx_shuffle_stream() -> Any:
    """The shuffle stream of an nnx model of seed SEED, so a hand-written loop draws nnx's batches: taken from a
    model, since `bench_against.py` runs this script against older checkouts, which derived the stream otherwise."""
    return nnx.Sequential(nnx.Dense(1, 1), seed=SEED).shuffle_rng


def make_data(shape: Shape, seed: int = SEED) -> tuple[Any, Any, str]:
    """(X float32, y, description). The small shape is the breast-cancer data when scikit-learn has it."""
    import numpy as np

    n, d, k = shape.samples, shape.sizes[0], shape.sizes[-1]
    if shape.name == "small":
        try:
            from sklearn.datasets import load_breast_cancer

            data = load_breast_cancer()
            order = np.random.default_rng(seed).permutation(len(data.target))[:n]
            X = data.data[order]
            X = ((X - X.mean(0)) / X.std(0)).astype(np.float32)
            return X, data.target[order].astype(np.float32), "scikit-learn's breast cancer data (455 of 569 rows)"
        except ImportError:
            pass
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d), dtype=np.float32)
    teacher = rng.standard_normal((d, max(k, 1)), dtype=np.float32)
    logits = X @ teacher
    if shape.loss == "bce":
        y = (logits[:, 0] > 0).astype(np.float32)
    else:
        y = np.argmax(logits, axis=1).astype(np.int64)
    return X, y, "synthetic: standard normal features, labels from a random linear teacher"


# -- the three libraries ------------------------------------------------------------------------------

class EpochTimer(nnx.callbacks.Callback):
    """nnx callback: wall time of each epoch (from its begin hook to its end hook) and host syncs in it."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.seconds = math.nan
        self.loss = math.nan
        self.syncs = 0
        self.max_syncs = 0
        self._start_syncs = 0
        self._t0 = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.backend.synchronize()
        self._start_syncs = self.syncs
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.backend.synchronize()
        self.seconds = time.perf_counter() - self._t0
        self.loss = float((logs or {}).get("loss", math.nan))
        self.max_syncs = max(self.max_syncs, self.syncs - self._start_syncs)


class _TorchSyncErrors:
    """``torch.cuda.set_sync_debug_mode("error")`` for the duration of a ``with`` block."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch

    def __enter__(self) -> None:
        self.torch.cuda.set_sync_debug_mode("error")

    def __exit__(self, *exc: Any) -> None:
        self.torch.cuda.set_sync_debug_mode("default")


class StepSyncGuard(nnx.callbacks.Callback):
    """Fails a step that synchronises the device: on CuPy, every step runs under
    ``cupyx.allow_synchronize(False)``, on torch:cuda under ``torch.cuda.set_sync_debug_mode("error")``
    (from the batch-begin to the batch-end hook)."""

    def __init__(self, backend: Any) -> None:
        self.active = False
        self.note = f"not checked: {backend.name} has no device to synchronise"
        self._allow = None
        self._cm: Any = None
        if backend.name == "cupy":
            import cupyx

            self._allow = getattr(cupyx, "allow_synchronize", None)
            self.active = self._allow is not None
            self.note = "no sync in any step (cupyx.allow_synchronize(False))" if self.active else \
                "not checked: this CuPy has no cupyx.allow_synchronize"
        elif backend.name == "torch" and str(backend.device).startswith("cuda"):
            import torch

            self._allow = lambda allowed: _TorchSyncErrors(torch)
            self.active = True
            self.note = 'no sync in any step (torch.cuda.set_sync_debug_mode("error"))'

    def on_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self.active:
            self._cm = self._allow(False)
            self._cm.__enter__()

    def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            cm.__exit__(None, None, None)

    def fail(self, exc: BaseException) -> None:
        if self._cm is not None:
            cm, self._cm = self._cm, None
            cm.__exit__(None, None, None)
        self.active = False
        self.note = f"FAILED: a training step synchronised the device ({type(exc).__name__}: {exc})"


class NnxRunner:
    """nnx on a backend: Dense/ReLU stack, SGD with momentum, one `fit(epochs=1)` per epoch."""

    label = "nnx"

    def __init__(self, shape: Shape, X: Any, y: Any, backend: str = "numpy", fast: bool = True,
                 fuse: bool = True, keep_initial: bool = True, check_sync: bool = False) -> None:
        # a Backend instance of its own (with_fastpath makes one), so counting its syncs counts only ours
        be = nnx.get_backend(backend).with_fastpath(fast)
        self.backend = be
        self.shape = shape
        layers: list[Any] = []
        for fan_in, fan_out in zip(shape.sizes[:-1], shape.sizes[1:], strict=True):
            layers += [nnx.Dense(fan_in, fan_out), nnx.ReLU()]
        layers.pop()
        if shape.loss == "bce":
            layers.append(nnx.Sigmoid())  # folded into the loss: BCE from logits, like BCEWithLogitsLoss
        self.model = nnx.Sequential(*layers, backend=be, dtype="float32", seed=SEED)
        self.initial = [be.to_host(p.value).copy() for p in self.model.parameters()] if keep_initial else None
        self.opt = nnx.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        if not fuse:
            self.opt.elementwise = False  # ablation only: this object's rule runs parameter by parameter
        self.loss = "bce" if shape.loss == "bce" else "cross_entropy"
        self.X = be.asarray(X, dtype="float32")
        self.y = be.asarray(y)
        self.timer = EpochTimer(be)
        self.guard = StepSyncGuard(be) if check_sync else None
        self._count_syncs()

    def _count_syncs(self) -> None:
        # Counts host<->device waits (Backend.to_host) per epoch: the loss once an epoch is the only one.
        be, timer = self.backend, self.timer
        original = type(be).to_host

        def to_host(x: Any) -> Any:
            timer.syncs += 1
            return original(be, x)

        be.to_host = to_host  # this runner's Backend instance only

    def epoch(self) -> tuple[float, float]:
        callbacks = [self.timer]
        if self.guard is not None and self.guard.active:
            try:
                self.model.fit(self.X, self.y, loss=self.loss, optimizer=self.opt, epochs=1,
                               batch_size=self.shape.batch, callbacks=[self.timer, self.guard])
                return self.timer.seconds, self.timer.loss
            except Exception as exc:  # cupyx.DeviceSynchronized: recorded, then time the epoch unguarded
                self.guard.fail(exc)
        self.model.fit(self.X, self.y, loss=self.loss, optimizer=self.opt, epochs=1,
                       batch_size=self.shape.batch, callbacks=callbacks)
        return self.timer.seconds, self.timer.loss


class TorchRunner:
    """PyTorch: torch.nn.Sequential of Linear/ReLU, torch.optim.SGD, nnx's initial weights and batches."""

    label = "torch"

    def __init__(self, shape: Shape, X: Any, y: Any, initial: list[Any] | None, device: str = "cpu") -> None:
        import numpy as np
        import torch

        self.torch, self.shape, self.device = torch, shape, torch.device(device)
        torch.manual_seed(SEED)
        mods: list[Any] = []
        for fan_in, fan_out in zip(shape.sizes[:-1], shape.sizes[1:], strict=True):
            mods += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
        self.net = torch.nn.Sequential(*mods[:-1]).to(self.device)
        if initial is not None:
            linears = [m for m in self.net if isinstance(m, torch.nn.Linear)]
            with torch.no_grad():
                for lin, (W, b) in zip(linears, zip(initial[::2], initial[1::2], strict=True), strict=True):
                    lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                    lin.bias.copy_(torch.from_numpy(b))
        self.loss_fn = torch.nn.BCEWithLogitsLoss() if shape.loss == "bce" else torch.nn.CrossEntropyLoss()
        self.opt = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)
        self.X = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(self.device)
        yt = np.asarray(y, dtype=np.float32).reshape(-1, 1) if shape.loss == "bce" else np.asarray(y, np.int64)
        self.y = torch.from_numpy(yt).to(self.device)
        self.rng = nnx_shuffle_stream()  # the same batches in the same order as nnx

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def epoch(self) -> tuple[float, float]:
        torch, n, bs = self.torch, self.shape.samples, self.shape.batch
        self._sync()
        t0 = time.perf_counter()
        perm = torch.from_numpy(self.rng.permutation(n)).to(self.device)
        losses = []
        for start in range(0, n, bs):
            idx = perm[start:start + bs]
            xb, yb = self.X.index_select(0, idx), self.y.index_select(0, idx)
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.net(xb), yb)
            loss.backward()
            self.opt.step()
            losses.append(loss.detach() * idx.shape[0])
        value = float((torch.stack(losses).sum() / n).item())  # one sync an epoch, as nnx
        self._sync()
        return time.perf_counter() - t0, value


class SklearnRunner:
    """scikit-learn: MLPClassifier(solver="sgd"), one `partial_fit` (one pass over the data) per epoch."""

    label = "sklearn"

    def __init__(self, shape: Shape, X: Any, y: Any) -> None:
        import numpy as np
        from sklearn.neural_network import MLPClassifier

        self.shape = shape
        self.clf = MLPClassifier(hidden_layer_sizes=shape.sizes[1:-1], activation="relu", solver="sgd", alpha=0.0,
                                 batch_size=shape.batch, learning_rate="constant", learning_rate_init=LR,
                                 momentum=MOMENTUM, nesterovs_momentum=False, shuffle=True, random_state=SEED)
        self.X = np.ascontiguousarray(X, dtype=np.float32)  # MLPClassifier keeps float32
        self.y = np.asarray(y).astype(np.int64)
        self.classes = np.unique(self.y)

    def epoch(self) -> tuple[float, float]:
        t0 = time.perf_counter()
        self.clf.partial_fit(self.X, self.y, classes=self.classes)
        return time.perf_counter() - t0, float(self.clf.loss_)


class JaxRunner:
    """JAX written by hand: a `jax.jit` step (value_and_grad, SGD with momentum as torch.optim), nnx's
    initial weights and batches; each epoch's permutation gathered once on the device, contiguous slices."""

    label = "jax"

    def __init__(self, shape: Shape, X: Any, y: Any, initial: list[Any] | None, device: str = "cpu") -> None:
        import jax
        import jax.numpy as jnp
        import numpy as np

        self.jax, self.jnp, self.shape = jax, jnp, shape
        self.device = jax.devices(device)[0]
        if initial is None:
            rng = np.random.default_rng(SEED)
            initial = []
            for fan_in, fan_out in zip(shape.sizes[:-1], shape.sizes[1:], strict=True):
                W = rng.standard_normal((fan_in, fan_out), dtype=np.float32) * np.float32(math.sqrt(2 / fan_in))
                initial += [W, np.zeros(fan_out, np.float32)]
        put = lambda a: jax.device_put(np.asarray(a), self.device)  # noqa: E731
        self.params = [put(a) for a in initial]
        self.bufs = [jnp.zeros_like(a) for a in self.params]
        self.first = True
        self.X = put(np.asarray(X, dtype=np.float32))
        self.y = put(np.asarray(y, dtype=np.float32).reshape(-1, 1) if shape.loss == "bce" else np.asarray(y, np.int32))
        self.rng = nnx_shuffle_stream()
        bce = shape.loss == "bce"

        def loss_fn(params: list[Any], xb: Any, yb: Any) -> Any:
            h = xb
            for j in range(0, len(params), 2):
                # full float32, as nnx's programs multiply (JAX's default may use TensorFloat-32 on a GPU)
                h = jnp.matmul(h, params[j], precision="highest") + params[j + 1]
                if j + 2 < len(params):
                    h = jnp.maximum(h, 0)
            if bce:
                return jnp.mean(jnp.maximum(h, 0) - h * yb + jnp.log1p(jnp.exp(-jnp.abs(h))))
            return jnp.mean(jax.nn.logsumexp(h, axis=1) - jnp.take_along_axis(h, yb[:, None], axis=1)[:, 0])

        def step(params: list[Any], bufs: list[Any], first: Any, xb: Any, yb: Any) -> tuple[list, list, Any]:
            value, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
            bufs = [jnp.where(first, g, MOMENTUM * b + g) for b, g in zip(bufs, grads, strict=True)]
            return [p - LR * b for p, b in zip(params, bufs, strict=True)], bufs, value

        self.step = jax.jit(step, donate_argnums=(0, 1))

    def epoch(self) -> tuple[float, float]:
        jax, jnp, n, bs = self.jax, self.jnp, self.shape.samples, self.shape.batch
        t0 = time.perf_counter()
        perm = jax.device_put(self.rng.permutation(n), self.device)
        X, y = jnp.take(self.X, perm, axis=0), jnp.take(self.y, perm, axis=0)
        losses = []
        for start in range(0, n, bs):
            xb, yb = X[start:start + bs], y[start:start + bs]
            self.params, self.bufs, value = self.step(self.params, self.bufs, self.first, xb, yb)
            self.first = False
            losses.append(value * xb.shape[0])
        value = float(jnp.stack(losses).sum() / n)  # one sync an epoch, as nnx
        jax.block_until_ready(self.params)
        return time.perf_counter() - t0, value


def make_runners(shape: Shape, X: Any, y: Any, args: argparse.Namespace) -> dict[str, Any]:
    runners: dict[str, Any] = {}
    initial = None
    if "nnx" in args.frameworks:
        runners["nnx"] = NnxRunner(shape, X, y, backend=args.backend, check_sync=args.check_sync)
        initial = runners["nnx"].initial
    if "torch" in args.frameworks and _has("torch"):
        runners["torch"] = TorchRunner(shape, X, y, initial, device=args.torch_device)
    if "sklearn" in args.frameworks and _has("sklearn"):
        runners["sklearn"] = SklearnRunner(shape, X, y)
    if "jax" in args.frameworks and _has("jax"):
        runners["jax"] = JaxRunner(shape, X, y, initial, device=args.jax_device)
    return runners


def alternate(runners: dict[str, Any], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Epochs of each runner in turn (rotating the order each round); warm-up rounds are not kept."""
    names = list(runners)
    times: dict[str, list[float]] = {k: [] for k in names}
    losses: dict[str, float] = {}
    for r in range(warmup + repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            seconds, loss = runners[name].epoch()
            if r >= warmup:
                times[name].append(seconds)
            losses[name] = loss
    return {k: {"times": times[k], "median": statistics.median(times[k]), "loss": losses[k]} for k in names}


# -- GEMMs ---------------------------------------------------------------------------------------------

def gemm_section(shape: Shape, X: Any, y: Any, args: argparse.Namespace, repeats: int) -> dict:
    """Rates of the step's GEMMs alone, and an nnx step against them, measured alternately."""
    import numpy as np

    be = nnx.get_backend(args.backend)
    xp = be.xp
    # matmul with out= where the library has it (NumPy, CuPy, torch): the GEMMs' own rate, without allocation
    out_mm = None
    if be.name == "numpy":
        out_mm = np.matmul
    elif be.name == "cupy":
        import cupy

        out_mm = cupy.matmul
    elif be.name == "torch":
        import torch

        out_mm = torch.mm
    has_out = out_mm is not None
    rng_host = np.random.default_rng(1)
    B = shape.batch

    def arr(*dims: int) -> Any:
        return be.asarray(rng_host.standard_normal(dims, dtype=np.float32), dtype="float32")

    gemms = []
    for i, (fi, fo) in enumerate(zip(shape.sizes[:-1], shape.sizes[1:], strict=True)):
        Xl, W, dY = arr(B, fi), arr(fi, fo), arr(B, fo)
        gemms += [
            {"layer": i, "kind": "forward X@W", "a": Xl, "b": W, "used": True},
            {"layer": i, "kind": "grad W = X.T@dY", "a": Xl.T, "b": dY, "used": True},
            # nnx never computes the input gradient of the first layer
            {"layer": i, "kind": "grad X = dY@W.T", "a": dY, "b": W.T, "used": i > 0},
        ]
    for g in gemms:
        m, k = g["a"].shape
        n = g["b"].shape[1]
        g["mkn"] = (m, k, n)
        g["flops"] = 2 * m * k * n
        g["out"] = xp.empty((m, n), dtype=xp.float32, device=be.device) if has_out else None

    def run(g: dict) -> None:
        if out_mm is not None:
            out_mm(g["a"], g["b"], out=g["out"])
        else:
            g["out"] = g["a"] @ g["b"]

    def timed(fn: Any, reps: int) -> float:
        be.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        be.synchronize()
        return (time.perf_counter() - t0) / reps

    for g in gemms:
        run(g)
        reps = max(1, min(200, int(2e8 // g["flops"])))
        samples = [timed(lambda g=g: run(g), reps) for _ in range(max(3, repeats))]
        g["seconds"] = statistics.median(samples)
        g["gflops"] = g["flops"] / g["seconds"] / 1e9

    used = [g for g in gemms if g["used"]]

    def gemm_set() -> None:
        for g in used:
            run(g)

    steps = max(2, min(8, shape.steps))
    sub = shape.with_samples(steps * B)
    runner = NnxRunner(sub, X[: sub.samples], y[: sub.samples], backend=args.backend)
    runner.epoch()
    gemm_times, step_times = [], []
    for _ in range(max(3, repeats)):
        gemm_times.append(timed(gemm_set, 1))
        step_times.append(runner.epoch()[0] / steps)
    gemm_s, step_s = statistics.median(gemm_times), statistics.median(step_times)
    flops = sum(g["flops"] for g in used)
    return {
        "shape": shape.name,
        "gemms": [{k: g[k] for k in ("layer", "kind", "mkn", "flops", "seconds", "gflops", "used")} for g in gemms],
        "gemm_set_s": gemm_s,
        "nnx_step_s": step_s,
        "ratio": step_s / gemm_s,
        "fraction_in_gemms": gemm_s / step_s,
        "step_flops": flops,
        "gemm_rate_gflops": flops / gemm_s / 1e9,
        "nnx_rate_gflops": flops / step_s / 1e9,
        "steps_per_epoch_measured": steps,
    }


# -- fast paths on and off --------------------------------------------------------------------------

def ablation(shape: Shape, X: Any, y: Any, args: argparse.Namespace, repeats: int) -> dict:
    """nnx's derived execution (flat update or compiled step), the per-parameter update, and the plain loop."""
    runners = {
        "portable": NnxRunner(shape, X, y, backend=args.backend, fast=False),
        "train step only": NnxRunner(shape, X, y, backend=args.backend, fast=True, fuse=False),
        "fast (default)": NnxRunner(shape, X, y, backend=args.backend, fast=True),
    }
    if not runners["fast (default)"].backend.fastpath_enabled:
        return {"shape": shape.name, "skipped": "derived executions are switched off (NNX_FASTPATH=0)"}
    res = alternate(runners, repeats)
    base = res["portable"]["median"]
    return {"shape": shape.name, "samples": shape.samples,
            "rows": {k: {"median": v["median"], "vs_portable": v["median"] / base} for k, v in res.items()}}


# -- batch-size sweep ----------------------------------------------------------------------------------

def sweep(shape: Shape, X: Any, y: Any, batches: list[int], args: argparse.Namespace, repeats: int) -> dict:
    """samples/s of each library for each batch size (epochs alternated per batch size)."""
    out: dict[str, dict[int, float]] = {}
    for bs in batches:
        sub = Shape(shape.name, shape.sizes, shape.samples, bs, shape.loss)
        res = alternate(make_runners(sub, X, y, args), repeats)
        for name, r in res.items():
            out.setdefault(name, {})[bs] = sub.samples / r["median"]
    return {"shape": shape.name, "samples": shape.samples, "batches": batches, "samples_per_s": out}


def plot_sweep(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, series in data["samples_per_s"].items():
        xs = sorted(int(b) for b in series)
        ax.plot(xs, [series[b] if b in series else series[str(b)] for b in xs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size")
    ax.set_ylabel("training samples / s")
    sizes = "-".join(map(str, SHAPES[data["shape"]].sizes))
    ax.set_title(f"{sizes} MLP, {data['samples']} samples, float32")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


# -- memory and import time (clean child processes) ------------------------------------------------------

def memory_child(shape_name: str, samples: int, backend: str) -> dict:
    """Runs in a fresh interpreter: peak memory while training one epoch, against what training needs."""
    import tracemalloc

    import numpy as np

    shape = SHAPES[shape_name].with_samples(samples)
    X, y, _ = make_data(shape)
    be = nnx.get_backend(backend)
    warm = SHAPES["tiny_ce"]  # first-use imports and caches happen here, not in the measurement
    NnxRunner(warm, *make_data(warm)[:2], backend=backend, keep_initial=False).epoch()
    rss_before = _rss_bytes()
    _reset_peak_rss()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    runner = NnxRunner(shape, X, y, backend=backend, keep_initial=False)
    runner.epoch()
    traced_peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    rss_peak = _peak_rss_bytes()
    B, sizes, item = shape.batch, shape.sizes, 4
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    # activations of one batch: the input, each Dense output and each ReLU output (torch keeps the same)
    acts = B * sizes[0] + 2 * B * sum(sizes[1:-1]) + B * sizes[-1]
    labels = B * (8 if shape.loss == "ce" else 4)
    need = {"parameters": n_params * item, "gradients": n_params * item, "optimizer state": n_params * item,
            "activations (one batch)": acts * item + labels}
    total = sum(need.values())
    data_bytes = int(X.nbytes + np.asarray(y).nbytes)
    return {"shape": shape.name, "samples": shape.samples, "backend": be.name, "need": need, "need_total": total,
            "traced_peak": traced_peak, "traced_ratio": traced_peak / total,
            "rss_peak_minus_start": None if rss_peak is None else rss_peak - rss_before,
            "rss_ratio": None if rss_peak is None else (rss_peak - rss_before) / total,
            "data_bytes": data_bytes}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError):  # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")


def _peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def import_time(n: int) -> dict:
    """Best and median time of `import nnx` (and of `import numpy` alone) in fresh interpreters.

    "cached": with compiled bytecode, as after `pip install` (kept in a temporary
    PYTHONPYCACHEPREFIX, so the checkout gets no __pycache__; one warm-up run compiles).
    "no bytecode cache": every run compiles nnx's sources, as under PYTHONDONTWRITEBYTECODE=1.
    """
    import tempfile

    base = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    base["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    out: dict[str, Any] = {"runs": n}
    with tempfile.TemporaryDirectory(prefix="nnx-pyc-") as cache:
        modes = {"cached": dict(base, PYTHONPYCACHEPREFIX=cache),
                 "no bytecode cache": dict(base, PYTHONDONTWRITEBYTECODE="1")}
        for mode, env in modes.items():
            for module in ("nnx", "numpy"):
                code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
                times = []
                for i in range(n + (mode == "cached")):
                    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                         cwd=ROOT, check=True)
                    if mode == "cached" and i == 0:
                        continue  # the warm-up run writes the bytecode
                    times.append(float(res.stdout.strip().splitlines()[-1]))
                out.setdefault(mode, {})[module] = {"best": min(times), "median": statistics.median(times)}
    return out


# -- environment -----------------------------------------------------------------------------------------

def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def blas_info() -> list[dict]:
    try:
        import threadpoolctl
    except ImportError:
        return [{"note": "threadpoolctl not installed"}]
    keep = ("user_api", "internal_api", "version", "architecture", "num_threads", "threading_layer")
    return [{**{k: info.get(k) for k in keep}, "library": Path(info.get("filepath", "")).name}
            for info in threadpoolctl.threadpool_info()]


# the distributions that install each module reported, in the order tried (CuPy's wheel is named for its CUDA)
DISTRIBUTIONS = {"nnx": ("nnx-mlp",), "numpy": ("numpy",), "torch": ("torch",), "sklearn": ("scikit-learn",),
                 "threadpoolctl": ("threadpoolctl",), "array_api_compat": ("array-api-compat",),
                 "cupy": ("cupy-cuda12x", "cupy-cuda13x", "cupy"), "jax": ("jax",)}


def versions() -> dict:
    """The libraries' versions; one this run did not import is read from its installed metadata instead
    (importing JAX or scikit-learn only to name its version took seconds), by its distribution's name:
    `importlib.metadata.packages_distributions` reads every installed package's file list (0.4 s)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for module, dists in DISTRIBUTIONS.items():
        if module in sys.modules and hasattr(sys.modules[module], "__version__"):
            out[module] = sys.modules[module].__version__
            continue
        for dist in dists:
            with contextlib.suppress(metadata.PackageNotFoundError):
                out[module] = metadata.version(dist)
                break
    return out


def machine() -> dict:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(),
            "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def limit_threads(n: int) -> None:
    with contextlib.suppress(ImportError):
        import threadpoolctl

        threadpoolctl.threadpool_limits(n)
    if _has("torch"):
        import torch

        torch.set_num_threads(n)


# -- the measurements one process makes -------------------------------------------------------------------

def measure(args: argparse.Namespace) -> dict:
    """Everything that depends on the BLAS: epochs, GEMMs, ablation, sweep."""
    import numpy  # noqa: F401  (loaded first, so threadpoolctl sees its BLAS)

    if "torch" in args.frameworks and _has("torch"):
        import torch  # noqa: F401
    if "sklearn" in args.frameworks and _has("sklearn"):
        import sklearn.neural_network  # noqa: F401
    if "jax" in args.frameworks and _has("jax"):
        import jax  # noqa: F401
    limit_threads(args.threads)
    result: dict[str, Any] = {
        "env": {k: os.environ.get(k) for k in BLAS_VARS},
        "blas": blas_info(),
        "loadavg_start": list(os.getloadavg()),
        "shapes": {},
    }
    for name in args.shape_list:
        shape = args.shape_objs[name]
        X, y, desc = make_data(shape)
        reps = args.repeats or DEFAULT_REPEATS.get(name, 5)
        _log(f"[{args.variant}] {name}: {shape.label()} x {reps} epochs each ...")
        runners = make_runners(shape, X, y, args)
        res = alternate(runners, reps)
        nnx_runner = runners.get("nnx")
        result["shapes"][name] = {
            "label": shape.label(), "data": desc, "samples": shape.samples, "steps": shape.steps, "repeats": reps,
            "results": res,
            "nnx_syncs_per_epoch": None if nnx_runner is None else nnx_runner.timer.max_syncs,
            "sync_check": None if nnx_runner is None or nnx_runner.guard is None else nnx_runner.guard.note,
        }
        _log("   " + ", ".join(f"{k} {v['median'] * 1e3:.1f} ms" for k, v in res.items()))
        del runners
    gemm_shape = args.gemm_shape
    if gemm_shape and "nnx" in args.frameworks:
        shape = args.shape_objs[gemm_shape]
        X, y, _ = make_data(shape.with_samples(max(8 * shape.batch, shape.batch)))
        _log(f"[{args.variant}] GEMMs of {gemm_shape} ...")
        result["gemm"] = gemm_section(shape, X, y, args, args.gemm_repeats)
        _log(f"   step / GEMMs = {result['gemm']['ratio']:.3f}")
    if args.ablation and "nnx" in args.frameworks:
        result["ablation"] = []
        for name, samples, reps in args.ablation:
            shape = SHAPES[name].with_samples(samples)
            X, y, _ = make_data(shape)
            _log(f"[{args.variant}] fast paths on/off: {name} ({shape.samples} samples) ...")
            result["ablation"].append(ablation(shape, X, y, args, reps))
    if args.sweep:
        shape = args.sweep_shape
        X, y, _ = make_data(shape)
        _log(f"[{args.variant}] batch-size sweep on {shape.name} ({shape.samples} samples) ...")
        result["sweep"] = sweep(shape, X, y, args.sweep, args, args.sweep_repeats)
    result["loadavg_end"] = list(os.getloadavg())
    return result


_T0 = time.perf_counter()


def _log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


# -- RESULTS.md ------------------------------------------------------------------------------------------

def _fmt_s(s: float) -> str:
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.3f} s"


def _mb(b: float) -> str:
    return f"{b / 2**20:.1f} MiB" if b >= 2**20 else f"{b / 2**10:.1f} KiB"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**not met**")


def target_rows(variants: dict[str, dict], extra: dict) -> list[tuple[str, list[str], str]]:
    """(target, figure per variant, verdict per variant joined) rows."""
    rows = []
    targets = TARGETS_BY_LIBRARY.get(str(extra.get("backend", "numpy")).split(":")[0], {})
    for (shape, peer), limit in targets.items():
        figs, oks = [], []
        for v in variants.values():
            r = v.get("shapes", {}).get(shape, {}).get("results", {})
            if "nnx" in r and peer in r:
                ratio = r["nnx"]["median"] / r[peer]["median"]
                figs.append(f"{ratio:.3f}x ({_fmt_s(r['nnx']['median'])} vs {_fmt_s(r[peer]['median'])})")
                oks.append(ratio <= limit)
            else:
                figs.append("not run")
                oks.append(None)
        rows.append((f"{shape}: nnx epoch <= {limit}x {peer}", figs, " / ".join(_verdict(o) for o in oks)))
    figs, oks = [], []
    for v in variants.values():
        g = v.get("gemm")
        if g and g["shape"] == "large":
            figs.append(f"{g['ratio']:.3f}x ({_fmt_s(g['nnx_step_s'])} step vs {_fmt_s(g['gemm_set_s'])} GEMMs; "
                        f"{100 * g['fraction_in_gemms']:.0f}% of the step in GEMMs)")
            oks.append(g["ratio"] <= LARGE_GEMM_TARGET)
        else:
            figs.append("not run")
            oks.append(None)
    rows.append((f"large: nnx step <= {LARGE_GEMM_TARGET}x its GEMMs alone", figs,
                 " / ".join(_verdict(o) for o in oks)))
    imp = extra.get("import")
    if imp:
        c, u = imp["cached"], imp["no bytecode cache"]
        fig = (f"{c['nnx']['best']:.3f} s best of {imp['runs']} with bytecode "
               f"(numpy alone {c['numpy']['best']:.3f} s); {u['nnx']['best']:.3f} s compiling the sources every time")
        rows.append((f"import nnx < {IMPORT_TARGET_S} s (installed, bytecode cached)", [fig] * len(variants),
                     _verdict(c["nnx"]["best"] < IMPORT_TARGET_S)))
    checks = [v2.get("sync_check") for v in variants.values() for v2 in v.get("shapes", {}).values()]
    checks = [c for c in checks if c]
    if checks:
        failed = [c for c in checks if c.startswith("FAILED")]
        rows.append(("no device sync inside a training step (checked on the device)",
                     [failed[0] if failed else checks[0]] * len(variants),
                     _verdict(not failed) if any(not c.startswith("not checked") for c in checks) else "n/a"))
    syncs = [v2.get("nnx_syncs_per_epoch") for v in variants.values() for v2 in v.get("shapes", {}).values()]
    syncs = [s for s in syncs if s is not None]
    if syncs:
        rows.append(("host syncs inside training steps (only the once-per-epoch loss allowed)",
                     [f"max {max(syncs)} Backend.to_host call(s) per epoch"] * len(variants),
                     _verdict(max(syncs) <= 1)))
    mem = extra.get("memory")
    if mem:
        fig = (f"{_mb(mem['traced_peak'])} traced peak ({mem['traced_ratio']:.2f}x), "
               + (f"{_mb(mem['rss_peak_minus_start'])} RSS growth ({mem['rss_ratio']:.2f}x), "
                  if mem.get("rss_ratio") is not None else "")
               + f"vs {_mb(mem['need_total'])} needed")
        rows.append((f"{mem['shape']}: peak memory <= {MEMORY_TARGET}x need", [fig] * len(variants),
                     _verdict(mem["traced_ratio"] <= MEMORY_TARGET
                              and (mem.get("rss_ratio") is None or mem["rss_ratio"] <= MEMORY_TARGET))))
    return rows


def render(report: dict) -> str:
    variants: dict[str, dict] = report["variants"]
    names = list(variants)
    lines = ["# nnx training benchmark", ""]
    lines += [f"Written by `benchmarks/bench_train.py` on {report['date']}. Exact command:", "",
              "```", report["command"], "```", ""]
    m = report["machine"]
    lines += [f"- Machine: {m['cpu']}, {m['cores']} logical cores, {m['platform']}.",
              f"- Threads: every library limited to **{report['threads']}** "
              f"(threadpoolctl for the BLAS/OpenMP pools, torch.set_num_threads).",
              f"- Load average at start: {', '.join(f'{x:.2f}' for x in m['loadavg'] or [])} "
              "(the machine is shared; epochs of the libraries alternate so noise hits all of them).",
              "- Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
              f"- nnx backend: `{report['backend']}`"
              + (f"; PyTorch device `{report['torch_device']}`" if "torch" in report["frameworks"] else "") + ".",
              "- Every library: float32, SGD lr 0.01 momentum 0.9, ReLU hidden layers, loss on logits. "
              "PyTorch starts from nnx's initial weights and sees nnx's batches in nnx's order; "
              "scikit-learn shuffles with its own generator.",
              "- Epoch time: nnx from the epoch-begin to the epoch-end callback of `fit` (shuffle, all steps, "
              "the once-per-epoch loss sync); PyTorch the same loop written by hand; scikit-learn one "
              "`partial_fit` call (which also validates its input).", ""]
    lines += ["## BLAS and environment", ""]
    for name in names:
        v = variants[name]
        env = ", ".join(f"{k}={v['env'][k]!r}" if v["env"][k] is not None else f"{k} unset" for k in BLAS_VARS)
        lines += [f"**{name}** ({env}):", "", "| library | API | implementation | version | kernel | threads |",
                  "|---|---|---|---|---|---|"]
        for b in v["blas"]:
            lines.append(f"| {b.get('library', '')} | {b.get('user_api', '')} | {b.get('internal_api', '')} | "
                         f"{b.get('version', '')} | {b.get('architecture') or '-'} | {b.get('num_threads', '')} |")
        lines.append("")
    if len(names) == 1 and not any(variants[names[0]]["env"].values()):
        lines += [f"Neither {' nor '.join(BLAS_VARS)} was set for this run, so the figures are the "
                  "unset ones; when either is set the script repeats its measurements in a child "
                  "process with both unset and reports both.", ""]
    lines += ["## Targets", "", f"Verdicts in the order of the columns ({' / '.join(names)}).", "",
              "| target | " + " | ".join(names) + " | verdict |",
              "|---|" + "---|" * len(names) + "---|"]
    for target, figs, verdict in target_rows(variants, report):
        lines.append(f"| {target} | " + " | ".join(figs) + f" | {verdict} |")
    lines.append("")
    for name in names:
        v = variants[name]
        lines += [f"## Epoch times: {name}", ""]
        for shape_name, s in v["shapes"].items():
            res = s["results"]
            lines += [f"**{shape_name}**: {s['label']}, {s['steps']} steps/epoch, median of {s['repeats']} "
                      f"epochs each. Data: {s['data']}.", "",
                      "| library | median epoch | min - max | samples/s | nnx / this | loss after last epoch |",
                      "|---|---|---|---|---|---|"]
            base = res.get("nnx", {}).get("median")
            for lib, r in res.items():
                ratio = f"{base / r['median']:.3f}" if base and lib != "nnx" else "-"
                lines.append(f"| {lib} | {_fmt_s(r['median'])} | {_fmt_s(min(r['times']))} - "
                             f"{_fmt_s(max(r['times']))} | {s['samples'] / r['median']:,.0f} | {ratio} | "
                             f"{r['loss']:.4f} |")
            lines.append("")
        g = v.get("gemm")
        if g:
            lines += [f"### GEMMs of the {g['shape']} shape ({name})", "",
                      "Each GEMM timed alone with `matmul(..., out=)` in the memory layout nnx uses "
                      "(transposes are views); the GEMM set is the ones nnx runs in a step (it skips "
                      "the first layer's input gradient).", "",
                      "| layer | GEMM | m x k x n | time | GFLOP/s | in nnx's step |", "|---|---|---|---|---|---|"]
            for row in g["gemms"]:
                mkn = " x ".join(map(str, row["mkn"]))
                lines.append(f"| {row['layer']} | {row['kind']} | {mkn} | {_fmt_s(row['seconds'])} | "
                             f"{row['gflops']:.1f} | {'yes' if row['used'] else 'no'} |")
            lines += ["", f"GEMM set of one step: {_fmt_s(g['gemm_set_s'])} ({g['gemm_rate_gflops']:.1f} GFLOP/s); "
                      f"nnx step (an epoch of {g['steps_per_epoch_measured']} steps through `fit`, divided): "
                      f"{_fmt_s(g['nnx_step_s'])} ({g['nnx_rate_gflops']:.1f} GFLOP/s effective). "
                      f"Step / GEMMs = **{g['ratio']:.3f}**; {100 * g['fraction_in_gemms']:.1f}% of the step "
                      "is spent in GEMMs. Both measured alternately in this process.", ""]
        if v.get("ablation"):
            lines += [f"### nnx fast paths on and off ({name})", "",
                      "`portable`: the array-API path (`Backend.with_fastpath(False)`); `train step only`: "
                      "buffered `TrainStep` but the per-parameter optimizer loop; `fast (default)`: "
                      "`TrainStep` plus the fused optimizer update over the flat parameter buffer.", "",
                      "| shape | samples | variant | median epoch | / portable |", "|---|---|---|---|---|"]
            for a in v["ablation"]:
                if "skipped" in a:
                    lines.append(f"| {a['shape']} | - | {a['skipped']} | - | - |")
                    continue
                for k, r in a["rows"].items():
                    lines.append(f"| {a['shape']} | {a['samples']} | {k} | {_fmt_s(r['median'])} | "
                                 f"{r['vs_portable']:.3f} |")
            lines.append("")
        if v.get("sweep"):
            sw = v["sweep"]
            libs = list(sw["samples_per_s"])
            lines += [f"### Samples/s against batch size ({name})", "",
                      f"{SHAPES[sw['shape']].label().split(',')[0]} on {sw['samples']} samples. "
                      f"Plot: `{report['plot']}`.", "",
                      "| batch | " + " | ".join(libs) + " |", "|---|" + "---|" * len(libs)]
            for bs in sw["batches"]:
                cells = []
                for lib in libs:
                    val = sw["samples_per_s"][lib].get(bs, sw["samples_per_s"][lib].get(str(bs)))
                    cells.append(f"{val:,.0f}" if val else "-")
                lines.append(f"| {bs} | " + " | ".join(cells) + " |")
            lines.append("")
    mem = report.get("memory")
    if mem:
        lines += ["## Peak memory", "",
                  f"One epoch of the {mem['shape']} shape ({mem['samples']} samples) with nnx on "
                  f"`{mem['backend']}` in a fresh interpreter. Training data ({_mb(mem['data_bytes'])}) is "
                  "made before measuring starts and not counted.", "",
                  "| what training needs | bytes |", "|---|---|"]
        for k, b in mem["need"].items():
            lines.append(f"| {k} | {_mb(b)} |")
        lines += [f"| **total** | **{_mb(mem['need_total'])}** |", "",
                  f"- tracemalloc peak (NumPy reports its allocations to it): {_mb(mem['traced_peak'])}, "
                  f"**{mem['traced_ratio']:.2f}x** the need."]
        if mem.get("rss_ratio") is not None:
            lines.append(f"- Peak RSS growth (VmHWM reset before the model is built): "
                         f"{_mb(mem['rss_peak_minus_start'])}, **{mem['rss_ratio']:.2f}x** the need.")
        lines.append("")
    imp = report.get("import")
    if imp:
        lines += ["## Import time", "",
                  f"Fresh interpreters, {imp['runs']} runs each. *cached*: compiled bytecode as after "
                  "`pip install` (in a temporary PYTHONPYCACHEPREFIX); *no bytecode cache*: "
                  "PYTHONDONTWRITEBYTECODE=1, so every run compiles nnx's sources.", "",
                  "| | import nnx best | median | import numpy best | median |", "|---|---|---|---|---|"]
        for mode in ("cached", "no bytecode cache"):
            r = imp[mode]
            lines.append(f"| {mode} | {r['nnx']['best']:.3f} s | {r['nnx']['median']:.3f} s | "
                         f"{r['numpy']['best']:.3f} s | {r['numpy']['median']:.3f} s |")
        lines.append("")
    lines += ["## GPU", ""]
    gpu = report.get("gpu")
    if gpu:
        lines += [f"From `{gpu['path']}` (written by `benchmarks/gpu_check.sh`):", "", "```", gpu["summary"], "```", ""]
    else:
        lines += ["No GPU run is recorded next to these results. `bash benchmarks/gpu_check.sh` on a machine with "
                  "an NVIDIA GPU installs the CuPy extra if it must (and can), runs the suite on the cupy backend, "
                  "then this benchmark with nnx on CuPy against PyTorch on CUDA at the medium, large and wide "
                  "(8192-unit) shapes with device synchronisation, and writes `benchmarks/gpu_results/`; "
                  "`--dry-run` runs the same steps on NumPy / PyTorch CPU at tiny size.", ""]
    notes = STANDING_NOTES + report.get("notes", [])
    lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


STANDING_NOTES = [
    "Threads: one per library by default. On this shared two-core machine, with two OpenBLAS threads and "
    "the other core busy, a 128x784x256 sgemm (the medium shape's first layer) took about 54 ms instead "
    "of 0.5 ms, because each call waits for a thread that is not running; `--threads 2` on an idle "
    "machine measures both cores.",
    "The medium and large data are synthetic (standard normal features, labels from a random linear "
    "teacher) with the issue's shapes; the small data is the breast-cancer set. Speed does not depend on "
    "the values.",
    "scikit-learn's epoch is one `partial_fit` call, which also validates X (a finite check over the "
    "data) and shuffles; nnx's and PyTorch's epochs include their shuffling too.",
    "The GEMM rates are NumPy's BLAS at the thread count above; the large target compares an nnx step "
    "(through `fit`, everything included) with the GEMMs that step must run, measured alternately.",
    "Peak memory counts what the training run allocates beyond the data: the flat parameter, gradient "
    "and momentum buffers, the step's reusable activation buffers and the batch gathered from X.",
]


# -- command line -------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller data and fewer repeats (minutes)")
    size.add_argument("--tiny", action="store_true", help="tiny shapes, seconds; the test runs this")
    p.add_argument("--shapes", help=f"comma list among {', '.join(SHAPES)} (default small,medium,large)")
    p.add_argument("--repeats", type=int, help="timed epochs per library and shape (default: per shape)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "runs",
                   help="folder for RESULTS.md, results.json and the plot (default benchmarks/runs/)")
    p.add_argument("--threads", type=int, default=1,
                   help="BLAS/OpenMP threads for every library (default 1: on a shared machine more threads "
                        "than idle cores make multithreaded BLAS stall)")
    p.add_argument("--frameworks", default="nnx,torch,sklearn", help="comma list among nnx, torch, sklearn, jax")
    p.add_argument("--backend", default="numpy", help="nnx backend (numpy, cupy, torch, ...)")
    p.add_argument("--torch-device", default="cpu", help="PyTorch device (cpu, cuda)")
    p.add_argument("--jax-device", default="cpu", help="platform of the hand-written JAX step (cpu, gpu)")
    p.add_argument("--no-unset", action="store_true",
                   help=f"do not repeat the measurements with {' and '.join(BLAS_VARS)} unset")
    p.add_argument("--no-sweep", action="store_true", help="skip the batch-size sweep and plot")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory child")
    p.add_argument("--no-ablation", action="store_true", help="skip the fast-paths on/off comparison")
    p.add_argument("--no-gemm", action="store_true", help="skip the GEMMs-alone measurement")
    p.add_argument("--check-sync", action="store_true",
                   help="on CuPy and torch:cuda, fail any nnx training step that synchronises the device "
                        "(cupyx.allow_synchronize, torch.cuda.set_sync_debug_mode)")
    p.add_argument("--import-runs", type=int, help="fresh interpreters for the import time (default 15; 0 skips it)")
    p.add_argument("--rerender", type=Path, metavar="RESULTS_JSON",
                   help="only rewrite RESULTS.md next to this results.json (no measuring)")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # measure only; write JSON here
    p.add_argument("--memory-child", nargs=3, metavar=("SHAPE", "SAMPLES", "BACKEND"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    default_shapes = "tiny_bce,tiny_ce" if args.tiny else "small,medium,large"
    args.shape_list = [s.strip() for s in (args.shapes or default_shapes).split(",") if s.strip()]
    for s in args.shape_list:
        if s not in SHAPES:
            p.error(f"unknown shape {s!r}; choose among {', '.join(SHAPES)}")
    args.shape_objs = {
        name: sh.with_samples(QUICK_SAMPLES[name]) if args.quick and name in QUICK_SAMPLES else sh
        for name, sh in SHAPES.items()
    }
    if args.tiny:
        args.gemm_shape, args.gemm_repeats = "tiny_ce", 3
        args.ablation = [("tiny_ce", SHAPES["tiny_ce"].samples, 2)]
        args.sweep, args.sweep_shape, args.sweep_repeats = [8, 16, 32], SHAPES["tiny_ce"], 2
        args.import_runs = 2 if args.import_runs is None else args.import_runs
        args.memory_shape = ("tiny_ce", SHAPES["tiny_ce"].samples)
    else:
        big = [s for s in ("large", "wide") if s in args.shape_list]
        args.gemm_shape = big[0] if big else None
        args.gemm_repeats = 3 if args.quick else 7
        # (shape, samples, repeats): smaller data than the main table, the three variants alternate
        ablation = {"small": (455, 21), "medium": (6_000, 3) if args.quick else (12_000, 5),
                    "large": (1_024, 3) if args.quick else (2_048, 3)}
        args.ablation = [(s, *ablation[s]) for s in ("small", "medium", "large") if s in args.shape_list]
        args.sweep = [16, 32, 64, 128, 256, 512, 1024]
        args.sweep_shape = SHAPES["medium"].with_samples(2_048 if args.quick else 8_192)
        args.sweep_repeats = 2 if args.quick else 3
        args.import_runs = 15 if args.import_runs is None else args.import_runs
        mem_shape = "large" if "large" in args.shape_list else args.shape_list[-1]
        args.memory_shape = (mem_shape, args.shape_objs[mem_shape].samples)
    if args.no_ablation:
        args.ablation = []
    if args.no_gemm:
        args.gemm_shape = None
    if args.no_sweep:
        args.sweep = []
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rerender:
        report = json.loads(args.rerender.read_text())
        (args.rerender.parent / "RESULTS.md").write_text(render(report))
        return 0
    if args.memory_child:
        shape, samples, backend = args.memory_child
        print(json.dumps(memory_child(shape, int(samples), backend)))
        return 0
    if args.child:
        args.variant = "unset"
        args.child.write_text(json.dumps(measure(args)))
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    set_vars = {k: os.environ[k] for k in BLAS_VARS if k in os.environ}
    args.variant = ("as set: " + ", ".join(f"{k}={v}" for k, v in set_vars.items())) if set_vars \
        else "as run (variables unset)"
    variants = {args.variant: measure(args)}
    if set_vars and not args.no_unset:
        child_json = args.out / "results_unset.json.tmp"
        env = {k: v for k, v in os.environ.items() if k not in BLAS_VARS}
        cmd = [sys.executable, str(Path(__file__).resolve()), *args.argv, "--child", str(child_json)]
        _log(f"repeating with {' and '.join(BLAS_VARS)} unset: " + " ".join(shlex.quote(c) for c in cmd))
        subprocess.run(cmd, env=env, check=True, cwd=ROOT)
        variants["unset"] = json.loads(child_json.read_text())
        child_json.unlink()

    report: dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": " ".join(f"{k}={shlex.quote(v)}" for k, v in set_vars.items())
                   + (" " if set_vars else "") + "python benchmarks/bench_train.py "
                   + " ".join(shlex.quote(a) for a in args.argv),
        "machine": machine(), "versions": versions(), "threads": args.threads, "backend": args.backend,
        "torch_device": args.torch_device, "frameworks": args.frameworks, "variants": variants,
        "plot": "samples_per_s_vs_batch.png", "notes": [],
    }
    if not args.no_memory and "nnx" in args.frameworks:
        shape, samples = args.memory_shape
        _log(f"peak memory: {shape} in a child process ...")
        res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory-child", shape, str(samples),
                              args.backend], capture_output=True, text=True, check=True, cwd=ROOT)
        report["memory"] = json.loads(res.stdout.strip().splitlines()[-1])
    if args.import_runs and "nnx" in args.frameworks:
        _log(f"import time: {args.import_runs} fresh interpreters ...")
        report["import"] = import_time(args.import_runs)
    first = next(iter(variants.values()))
    if first.get("sweep"):
        if _has("matplotlib"):
            plot_sweep(first["sweep"], args.out / report["plot"])
        else:
            report["plot"] = "(not drawn: matplotlib is not installed)"
    gpu_md = args.out / "gpu_results" / "summary.txt"
    if gpu_md.exists() and "DRY RUN" not in gpu_md.read_text():
        report["gpu"] = {"path": str(gpu_md.relative_to(args.out)), "summary": gpu_md.read_text().strip()}
    if args.tiny:
        report["notes"].append("--tiny: sizes chosen so the script runs in seconds; these figures say nothing "
                               "about speed.")
    elif args.quick:
        report["notes"].append("--quick: medium and large use fewer samples than the issue's shapes.")
    (args.out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    (args.out / "RESULTS.md").write_text(render(report))
    _log(f"wrote {args.out / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
