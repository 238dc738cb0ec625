"""nnx in this checkout against nnx in another checkout, each timed as a ratio to native torch eager.

Issue 17's "no regression" target compares the built-ins with an earlier commit's code
(758c565 had the per-class fast paths). Two versions of nnx cannot share one interpreter,
so each measurement is a fresh process that imports nnx from one checkout (and checks that
it did: `bench_train.py` puts its own checkout first on ``sys.path``, which would otherwise
win) and times `bench_train.py`'s nnx runner against its native torch runner, alternating
epochs. The processes alternate between the two checkouts, and the figure is the ratio of
their median epoch ratios, so torch's own drift between processes cancels out. Each nnx epoch
is one ``fit(epochs=1)`` call, timed from its first callback to its last; the whole call (the
checks and set-up of every fit besides) is timed too and reported beside it. With ``--in-one-fit`` the
epochs are those of one long ``fit`` call instead (a torch epoch runs between two of them, from a
callback, outside the nnx epoch's time): what a fit of many epochs spends on each, without the
set-up and first-batch checks each call makes.

    git worktree add --detach ../nnx-758c565 758c565
    python benchmarks/bench_against.py ../nnx-758c565 [--backend numpy] [--shape small] [--processes 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SAMPLES = {"medium": 6_000}  # bench_train's --quick size; every other shape keeps its own


def child(tree: Path, backend: str, shape_name: str, epochs: int, threads: int,
          in_one_fit: bool = False) -> dict[str, Any]:
    """In this process: nnx from `tree`, `epochs` alternated epoch pairs against native torch (`in_one_fit`: the
    nnx epochs of one fit call)."""
    sys.path.insert(0, str(tree))
    import nnx

    if not Path(nnx.__file__).resolve().is_relative_to(tree):
        raise SystemExit(f"imported nnx from {nnx.__file__}, not from {tree}")
    sys.path.insert(0, str(HERE))
    import bench_train as bt  # its sys.path insertion no longer matters: nnx is imported

    bt.limit_threads(threads)
    shape = bt.SHAPES[shape_name]
    shape = shape.with_samples(SAMPLES.get(shape_name, shape.samples))
    X, y, _ = bt.make_data(shape)
    mine = bt.NnxRunner(shape, X, y, backend=backend)
    native = bt.TorchRunner(shape, X, y, mine.initial)
    for _ in range(2):  # warm-up: first-use imports and caches
        mine.epoch(), native.epoch()
    if in_one_fit:
        return _in_one_fit(nnx, mine, native, epochs)
    ratios, nnx_s, torch_s, calls = [], [], [], []
    for _ in range(epochs):
        start = time.perf_counter()
        a = mine.epoch()[0]
        calls.append(time.perf_counter() - start)
        b = native.epoch()[0]
        ratios.append(a / b)
        nnx_s.append(a)
        torch_s.append(b)
    return {"ratio": statistics.median(ratios), "nnx_ms": min(nnx_s) * 1e3, "torch_ms": min(torch_s) * 1e3,
            "fit_call_ms": statistics.median(calls) * 1e3}


def _in_one_fit(nnx: Any, mine: Any, native: Any, epochs: int) -> dict[str, Any]:
    """`epochs` nnx epochs of one fit call, each followed by a native torch epoch run from its end hook."""
    pairs: list[tuple[float, float]] = []

    class Alternate(nnx.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            seconds = time.perf_counter() - self.start
            pairs.append((seconds, native.epoch()[0]))

    mine.model.fit(mine.X, mine.y, loss=mine.loss, optimizer=mine.opt, epochs=epochs + 2, batch_size=mine.shape.batch,
                   callbacks=[Alternate()])
    pairs = pairs[2:]  # (the fit's first epoch makes its checks)
    return {"ratio": statistics.median(a / b for a, b in pairs), "nnx_ms": min(a for a, _ in pairs) * 1e3,
            "torch_ms": min(b for _, b in pairs) * 1e3, "fit_call_ms": None}


def run_child(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), str(tree), "--child", "--backend", args.backend,
           "--shape", args.shape, "--epochs", str(args.epochs), "--threads", str(args.threads)]
    if args.in_one_fit:
        cmd.append("--in-one-fit")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))  # before the child's BLAS starts its pool
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if res.returncode != 0:
        raise SystemExit(f"the process for {tree} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("other", type=Path, help="the other checkout (a directory holding nnx/)")
    p.add_argument("--backend", default="numpy", choices=("numpy", "torch"))
    p.add_argument("--shape", default="small", help="a shape of bench_train.py (small, medium, tiny_bce, ...)")
    p.add_argument("--processes", type=int, default=3, help="processes per checkout, alternated")
    p.add_argument("--epochs", type=int, default=20, help="alternated epoch pairs per process")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--in-one-fit", action="store_true", help="time the epochs of one fit call, not one call each")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    other = args.other.resolve()
    if not (other / "nnx" / "__init__.py").exists():
        p.error(f"{args.other} holds no nnx/ package")
    if args.child:
        print(json.dumps(child(other, args.backend, args.shape, args.epochs, args.threads, args.in_one_fit)))
        return
    trees = {"this checkout": ROOT, str(args.other): other}
    figures: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for _ in range(args.processes):
        for name, tree in trees.items():
            figures[name].append(run_child(tree, args))
    epochs = "epochs of one fit call" if args.in_one_fit else "fit(epochs=1) calls"
    print(f"nnx on {args.backend}, {args.shape}: nnx / native torch per epoch, the median of {args.epochs} "
          f"alternated epoch pairs ({epochs}), in {args.processes} processes per checkout, alternated; "
          f"{args.threads} thread(s)")
    print("| checkout | nnx / torch, each process | best nnx epoch (ms) | best torch epoch (ms) | "
          "whole fit call, median of each process (ms) |")
    print("|---|---|---:|---:|---|")
    for name, rows in figures.items():
        ratios = ", ".join(f"{r['ratio']:.3f}x" for r in rows)
        best_nnx, best_torch = min(r["nnx_ms"] for r in rows), min(r["torch_ms"] for r in rows)
        calls = ", ".join("-" if r["fit_call_ms"] is None else f"{r['fit_call_ms']:.2f}" for r in rows)
        print(f"| {name} | {ratios} | {best_nnx:.2f} | {best_torch:.2f} | {calls} |")
    mine, theirs = (statistics.median(r["ratio"] for r in rows) for rows in figures.values())
    print(f"this checkout / {args.other}: {mine / theirs:.3f}x (medians of the processes' ratios)")
    if args.in_one_fit:
        return
    mine, theirs = (statistics.median(r["fit_call_ms"] for r in rows) for rows in figures.values())
    print(f"whole fit calls, this checkout / {args.other}: {mine / theirs:.3f}x (medians of the processes' medians)")


if __name__ == "__main__":
    main()
