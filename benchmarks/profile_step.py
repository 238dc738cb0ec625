"""Where an epoch's time goes on a GPU: nnx and the native torch loop, one profiled epoch each.

For each runner of `bench_train.py` at one shape, prints the epoch's wall time, the time the
GPU spent in kernels (from the CUDA activity torch's profiler records, CuPy's kernels included)
and the kernels that took the most, with their counts per step. Wall time well above kernel
time means the host (Python, launches) is the limit; kernel time above the native loop's
names the extra work. On a CPU (``--device cpu``) the operators' own times are listed instead.

    python benchmarks/profile_step.py --backend torch:cuda --shape large
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import bench_train as bt


def profile_epoch(runner: Any, on_gpu: bool, top: int) -> str:
    """One warm epoch of `runner` under torch's profiler, summarised."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    runner.epoch()  # warm: compiled kernels, allocator pools, the first fit's checks
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        runner.epoch()
        if on_gpu:
            torch.cuda.synchronize()
    wall = time.perf_counter() - start
    steps = -(-runner.shape.samples // runner.shape.batch)
    events = list(prof.key_averages())
    if on_gpu:
        # the kernels themselves: an operator's event also carries the time of the kernels it launched
        events = [e for e in events if e.device_type == DeviceType.CUDA]
        if not events:
            return f"{runner.label}: {wall * 1e3:.1f} ms wall (profiled); the profiler recorded no GPU kernels"
        # `self_device_time_total` in torch >= 2.4, `self_cuda_time_total` before
        key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    else:
        key = "self_cpu_time_total"
    busy = sum(getattr(e, key) for e in events) / 1e3  # microseconds -> ms
    lines = [f"{runner.label}: {wall * 1e3:.1f} ms wall (profiled), {busy:.1f} ms "
             f"{'in GPU kernels' if on_gpu else 'in operators (CPU)'}, {steps} steps"]
    for e in sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]:
        ms = getattr(e, key) / 1e3
        if ms > 0:
            lines.append(f"    {ms:8.2f} ms  {e.count / steps:6.1f}/step  {e.key[:90]}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="torch:cuda", help="nnx backend spec (torch:cuda, cupy, torch)")
    parser.add_argument("--shape", default="large", choices=sorted(bt.SHAPES))
    parser.add_argument("--samples", type=int, default=0, help="rows of data (default: the shape's)")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per runner")
    args = parser.parse_args()
    shape = bt.SHAPES[args.shape]
    if args.samples:
        shape = dataclasses.replace(shape, samples=args.samples)
    on_gpu = not (args.backend in ("numpy", "torch", "torch:cpu") or args.backend.startswith("jax"))
    X, y, _ = bt.make_data(shape)
    nnx_runner = bt.NnxRunner(shape, X, y, backend=args.backend)
    native = bt.TorchRunner(shape, X, y, nnx_runner.initial, device="cuda" if on_gpu else "cpu")
    print(f"== {args.backend} against torch, {shape.name} {shape.sizes}, batch {shape.batch}")
    for runner in (nnx_runner, native):
        print(profile_epoch(runner, on_gpu, args.top), flush=True)


if __name__ == "__main__":
    main()
