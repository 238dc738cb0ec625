"""What this machine's NVIDIA driver supports, read without any GPU library: the cause in GPU error messages.

The driver's CUDA version comes from ``libcuda`` itself (``cuDriverGetVersion``), so a
message can tell "no NVIDIA driver or GPU here" from "a driver too old for this wheel".
"""

from __future__ import annotations

import ctypes
import ctypes.util

JAX_CUDA_INSTALL = 'pip install "jax[cuda12]"'
CUPY_INSTALL = 'pip install "nnx-mlp[cupy12]" (CUDA 12 driver) or pip install "nnx-mlp[cupy13]" (CUDA 13 driver)'


def driver_cuda_version() -> tuple[int, int] | None:
    """The newest CUDA version the installed NVIDIA driver runs, e.g. (12, 4); None without a driver."""
    name = ctypes.util.find_library("cuda") or "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    version = ctypes.c_int(0)
    try:
        if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except AttributeError:  # a library of that name that is not the driver
        return None
    return version.value // 1000, (version.value % 1000) // 10


def parse_cuda(text: str | None) -> tuple[int, int] | None:
    """``"12.6"`` (torch.version.cuda, a runtime version) as (12, 6); None for None or junk."""
    major, _, minor = (text or "").partition(".")
    return (int(major), int(minor.split(".")[0] or 0)) if major.isdigit() else None


def gpu_cause(built_for: tuple[int, int] | None, driver: tuple[int, int] | None) -> str:
    """Why a library built for CUDA `built_for` sees no GPU, given the driver's CUDA version (`driver_cuda_version`)."""
    if driver is None:
        return "no NVIDIA driver or GPU was found on this machine (libcuda cannot be loaded)"
    have = f"{driver[0]}.{driver[1]}"
    if built_for is not None and driver[0] < built_for[0]:  # CUDA runs any minor of its major
        return (f"the NVIDIA driver runs CUDA up to {have}, older than the CUDA {built_for[0]}.{built_for[1]} "
                f"this library was built for: update the driver, or install the library's CUDA {driver[0]} build")
    return f"an NVIDIA driver for CUDA {have} is installed, but no usable GPU was found (check nvidia-smi)"


def torch_cuda_install(driver: tuple[int, int] | None) -> str:
    """The pip line for torch's CUDA build that this machine's driver runs (CUDA 13 wheels need a CUDA 13 driver)."""
    flavour = "cu130" if driver is not None and driver[0] >= 13 else "cu128"
    return f"pip install torch --index-url https://download.pytorch.org/whl/{flavour}"
