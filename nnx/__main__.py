"""Command line: ``python -m nnx info`` reports the nnx version, each backend and the BLAS in use.

``python -m nnx`` without a subcommand prints the same report.

For every backend it prints the installed version, the devices it sees and whether
it runs here (and if not, why); ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import sys
from typing import Any


def _adapter(name: str) -> Any:
    """The adapter class of backend `name` (its module, not its library, is imported)."""
    from .backends.registry import adapter_class

    return adapter_class(name)


def _version(name: str) -> str | None:
    """The installed version of the distribution providing backend `name` (its adapter lists the candidates)."""
    for dist in _adapter(name).distributions or (name,):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def backend_report(name: str) -> dict[str, Any]:
    """Version, devices and whether `name` runs here (with the reason when it does not)."""
    from . import backends  # looked up at call time, so a test can replace backend_status

    backend_status = backends.backend_status
    entry: dict[str, Any] = {"name": name, "version": _version(name), "devices": [], "runs": False, "why": ""}
    try:
        entry["devices"] = _adapter(name).devices()  # what the library itself reports
    except Exception as exc:  # a missing or broken install: report it, don't crash the report
        entry["devices_error"] = f"{type(exc).__name__}: {exc}"
    ok, why = backend_status(name)
    entry["runs"], entry["why"] = ok, ("" if ok else why)
    spec = _adapter(name).gpu_spec
    if ok and spec:  # the GPU is what people usually want to know about
        gpus = [d for d in entry["devices"] if d.startswith(("cuda", "gpu", "rocm"))]
        if gpus:
            gpu_ok, gpu_why = backend_status(spec)
            entry["gpu"] = {"spec": spec, "runs": gpu_ok, "why": "" if gpu_ok else gpu_why}
    return entry


def blas_report() -> list[dict[str, Any]]:
    """The BLAS/LAPACK (and OpenMP) libraries loaded in this process.

    Uses threadpoolctl when installed (it sees every library actually loaded, including
    those of torch), else a summary of how NumPy was built.
    """
    import numpy  # noqa: F401  - loads NumPy's BLAS so threadpoolctl can see it

    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return _numpy_build_blas()
    found = []
    for lib in threadpool_info():
        found.append({
            "api": lib.get("user_api"),
            "name": lib.get("internal_api"),
            "version": lib.get("version"),
            "threads": lib.get("num_threads"),
            "architecture": lib.get("architecture"),
            "path": lib.get("filepath"),
            "source": "threadpoolctl",
        })
    return (found or _numpy_build_blas()) + _torch_blas()


def _torch_blas() -> list[dict[str, Any]]:
    """torch links its BLAS statically, where threadpoolctl cannot see it; ask torch itself."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    try:
        mkl = torch.backends.mkl.is_available()
        config = torch.__config__.show()
    except Exception:  # an old or partial torch: leave it out rather than fail the report
        return []
    name = "mkl" if mkl else next((line.split("=", 1)[1].strip(" ,") for line in config.split(",")
                                   if "BLAS_INFO=" in line), "unknown")
    return [{"api": "blas", "name": f"{name} (inside torch)", "version": None, "threads": torch.get_num_threads(),
             "architecture": None, "path": None, "source": "torch"}]


def _numpy_build_blas() -> list[dict[str, Any]]:
    import numpy as np

    try:
        config = np.show_config(mode="dicts")
        deps = config.get("Build Dependencies", {})
    except (TypeError, AttributeError):  # NumPy < 1.26 has no mode="dicts"
        return [{"api": "blas", "name": "unknown (install threadpoolctl for details)", "source": "numpy"}]
    found = []
    for api in ("blas", "lapack"):
        info = deps.get(api, {})
        if info:
            found.append({"api": api, "name": info.get("name"), "version": info.get("version"),
                          "threads": None, "architecture": None, "path": None, "source": "numpy build config"})
    return found


def collect_info() -> dict[str, Any]:
    """Everything `python -m nnx info` reports, as a JSON-serialisable dict."""
    from ._version import __version__
    from .backends import BACKEND_NAMES

    backends = [backend_report(name) for name in BACKEND_NAMES]
    return {
        "nnx": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backends": backends,
        "blas": blas_report(),  # after the backends, so the libraries they load are seen too
    }


def format_info(info: dict[str, Any]) -> str:
    """The human-readable report."""
    lines = [f"nnx {info['nnx']}  (Python {info['python']}, {info['platform']})", "", "backends:"]
    width = max(len(b["name"]) for b in info["backends"])
    for b in info["backends"]:
        version = b["version"] or "not installed"
        status = "runs here" if b["runs"] else f"does not run here: {_reason(b['why'])}"
        lines.append(f"  {b['name']:<{width}}  {version:<14} {status}")
        if b["devices"]:
            lines.append(f"  {'':<{width}}  devices: {', '.join(b['devices'])}")
        elif "devices_error" in b and b["version"]:
            lines.append(f"  {'':<{width}}  devices: unknown ({b['devices_error']})")
        if "gpu" in b:
            gpu = b["gpu"]
            verdict = "runs here" if gpu["runs"] else f"does not run here: {_reason(gpu['why'])}"
            lines.append(f"  {'':<{width}}  {gpu['spec']}: {verdict}")
    lines += ["", "BLAS:"]
    if not info["blas"]:
        lines.append("  none found")
    for lib in info["blas"]:
        parts = [f"{lib.get('name')}"]
        if lib.get("version"):
            parts.append(str(lib["version"]))
        details = [f"{lib['api']}"] if lib.get("api") else []
        if lib.get("threads") is not None:
            details.append(f"{lib['threads']} threads")
        if lib.get("architecture"):
            details.append(f"arch {lib['architecture']}")
        line = "  " + " ".join(parts) + (f" ({', '.join(details)})" if details else "")
        if lib.get("path"):
            line += f"  {lib['path']}"
        lines.append(line)
    return "\n".join(lines)


def _reason(why: str) -> str:
    """The reason without the "BackendUnavailableError: backend 'x' cannot run here:" preamble."""
    marker = "cannot run here: "
    return why.split(marker, 1)[1] if marker in why else why


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m nnx``."""
    parser = argparse.ArgumentParser(prog="python -m nnx", description="nnx command line tools")
    parser.add_argument("--json", action="store_true", dest="bare_json", help="without a command: `info --json`")
    sub = parser.add_subparsers(dest="command")
    info_parser = sub.add_parser("info", help="nnx version, backends (version, devices, status) and BLAS")
    info_parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    info = collect_info()
    if args.command is None and args.bare_json:
        print(json.dumps(info, indent=2))
        return 0
    if args.command is None:  # `info` is what a bare `python -m nnx` is run for; say how to get the rest
        print(format_info(info))
        print("\n(this is `python -m nnx info`; add --json for one JSON object, --help for every command)")
        return 0
    print(json.dumps(info, indent=2) if args.json or args.bare_json else format_info(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
