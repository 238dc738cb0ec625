"""A model's first calls on JAX (fit, evaluate, load), compiles included, here and in another checkout, in
alternated processes.

The first call at a new data shape pays for JAX's compiles: the epoch or step program, the evaluation
programs, and every operation nnx runs op by op on the data (its checks, the validation split), which JAX
compiles as a program of its own for each new shape. Each process imports nnx from one checkout, then times
each case once, each at a row count of its own (so nothing is compiled yet for it); the processes alternate
between the checkouts, and each case's figure is the median over processes.

    git worktree add --detach ../nnx-base HEAD~1
    python benchmarks/bench_first_calls.py ../nnx-base [--processes 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: (name, rows, loss, fit's keywords): rows differ per case, so that no case reuses another's compiles
FITS = (("fit, bce", 300, "bce", {}),
        ("fit, bce, validation_split=0.2", 310, "bce", {"validation_split": 0.2}),
        ("fit, mse, validation_split=0.2", 320, "mse", {"validation_split": 0.2}))
CASES = [name for name, *_ in FITS] + ["evaluate, bce, after the fit", "load, Adam's state (30-16-8-1)"]


def child(tree: Path) -> dict[str, float]:
    """In this process: nnx from `tree`, each case's first call in seconds."""
    sys.path.insert(0, str(tree))
    import numpy as np

    import nnx

    if not Path(nnx.__file__).resolve().is_relative_to(tree):
        raise SystemExit(f"imported nnx from {nnx.__file__}, not from {tree}")
    rng = np.random.default_rng(0)
    seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        seconds[name] = time.perf_counter() - start

    for name, rows, loss, kwargs in FITS:
        X = rng.standard_normal((rows, 7)).astype(np.float32)
        y = (rng.random(rows) < 0.5).astype(np.float32)
        layers = [nnx.Dense(7, 8), nnx.ReLU(), nnx.Dense(8, 1)] + ([nnx.Sigmoid()] if loss == "bce" else [])
        model = nnx.Sequential(*layers, backend="jax", dtype="float32", seed=0)
        with timed(name):
            model.fit(X, y, loss=loss, optimizer="sgd", epochs=2, batch_size=32, **kwargs)
        if name == FITS[0][0]:
            with timed(CASES[3]):
                model.evaluate(X[:133], y[:133])
    # a checkpoint of a model of shapes nothing above compiled, written in this process, read back by nnx.load
    saved = nnx.Sequential(nnx.Dense(30, 16), nnx.ReLU(), nnx.Dense(16, 8), nnx.ReLU(), nnx.Dense(8, 1),
                           backend="numpy", dtype="float32", seed=0)
    X = rng.standard_normal((64, 30)).astype(np.float32)
    saved.fit(X, X[:, :1], loss="mse", optimizer="adam", epochs=1)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.npz"
        saved.save(path)
        with timed(CASES[4]):
            nnx.load(path, backend="jax")
    return seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("other", type=Path, help="the other checkout (a directory holding nnx/)")
    p.add_argument("--processes", type=int, default=5, help="processes per checkout, alternated")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    other = args.other.resolve()
    if not (other / "nnx" / "__init__.py").exists():
        p.error(f"{args.other} holds no nnx/ package")
    if args.child:
        print(json.dumps(child(other)))
        return
    trees = {"this checkout": ROOT, str(args.other): other}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for _ in range(args.processes):
        for name, tree in trees.items():
            cmd = [sys.executable, str(Path(__file__).resolve()), str(tree), "--child"]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
            if res.returncode != 0:
                raise SystemExit(f"the process for {tree} failed:\n{res.stderr[-3000:]}")
            runs[name].append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"first calls on JAX (fit(epochs=2) of a 7-8-1 MLP, batch 32): seconds, median of {args.processes} "
          "processes per checkout, alternated")
    print(f"| case | this checkout | {args.other} | ratio |")
    print("|---|---:|---:|---:|")
    for name in CASES:
        mine, theirs = (statistics.median(run[name] for run in rows) for rows in runs.values())
        print(f"| {name} | {mine:.3f} | {theirs:.3f} | {mine / theirs:.2f}x |")


if __name__ == "__main__":
    main()
