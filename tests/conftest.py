"""Shared fixtures: every test that takes `backend` runs once per installed backend."""

from __future__ import annotations

import atexit
import importlib.metadata
import os
import re
import shutil
import tempfile

# Everything a test run puts in the temporary folder (pytest's tmp_path, the JAX cache below, what
# scikit-learn's checks, torchrun and torch leave there) goes into one folder of this run, removed when
# it ends, so $TMPDIR is as clean afterwards as before. pytest-xdist workers and the subprocesses tests
# start inherit it through TMPDIR; only the first process (the one that starts the others) makes it.
if "NNX_TEST_TMPDIR" not in os.environ:
    _run_tmp = tempfile.mkdtemp(prefix="nnx-tests-")
    atexit.register(shutil.rmtree, _run_tmp, ignore_errors=True)
    os.environ.update(NNX_TEST_TMPDIR=_run_tmp, TMPDIR=_run_tmp)
    tempfile.tempdir = None  # tempfile reads TMPDIR again

# JAX compiles one program per model layout; the suite builds many small models with the same
# layouts, in both pytest-xdist workers and in subprocesses, so the run keeps JAX's compilation cache
# on disk and compiles each whole-epoch or optimized program once. Only programs that took 0.1 s or more
# to compile are written: an eager op or a small step compiles in 10-40 ms, and writing it (about 2.5 ms)
# and reading it back cost more than compiling it again (JAX's own count of the time saved was negative
# with every program written). Set before JAX is imported; a cache the caller configured is left alone.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _jax_cache = tempfile.mkdtemp(prefix="nnx-test-jax-cache-")
    atexit.register(shutil.rmtree, _jax_cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_jax_cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.1",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

# Most of the suite's JAX time is XLA compiling small programs, each run a few times; XLA's optimising
# passes cost more there than they win, and they do not change the numbers (no fast-math on the CPU).
# The tests of the compiled numbers themselves turn them back on (the `jax_optimized` fixture), so what
# users run is tested there. A value the caller set is left alone.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# XLA's CPU compiler has two code generators for fused element-wise work; its classic one compiles the
# suite's many small programs in about 60% of the time of the default, newer one (20 JAX cases: 44 s ->
# 27 s). Its arithmetic is not bit for bit the newer one's, and two programs of different shapes (an epoch
# and a step) may round differently under it; the tests that compare such programs bit for bit take the
# `jax_default_emitters` fixture, which compiles nnx's programs as users do. A flag the caller set is left alone.
# XLA removed that flag in jaxlib 0.11, and an XLA that does not know a flag in XLA_FLAGS aborts the process
# without a word when JAX starts it, so the flag is only given to the jaxlib versions that have it.
_CLASSIC_EMITTERS = "--xla_cpu_use_fusion_emitters=false"


def _has_classic_emitters() -> bool:
    try:
        major, minor = (int(part) for part in importlib.metadata.version("jaxlib").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) < (0, 11)


HAS_CLASSIC_EMITTERS = _has_classic_emitters()
if HAS_CLASSIC_EMITTERS and "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_CLASSIC_EMITTERS}".strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import nnx  # noqa: E402
from nnx.backends import backend_status  # noqa: E402

# (spec, the dtype tests use by default there). array_api_strict runs twice: float64 on
# its CPU device, float32 on a second device, which catches a creation call without device=.
# It runs a third time through the generic adapter (DLPack, host RNG, no kernels), as a
# library nnx has no adapter for would.
BACKEND_CASES = [
    ("numpy", "float64"),
    ("array_api_strict", "float64"),
    ("array_api_strict:device1", "float32"),
    ("generic:array_api_strict", "float64"),
    ("torch", "float64"),
    ("jax", "float64"),
    ("cupy", "float64"),
]


def _test_backend():
    """NNX_TEST_BACKEND with its library part lower-cased (backend names are case-insensitive); None when unset."""
    only = os.environ.get("NNX_TEST_BACKEND", "").strip()
    if not only:
        return None
    library, colon, device = only.partition(":")
    return library.lower() + colon + device


def _selected_cases():
    only = _test_backend()
    if only is None:
        return BACKEND_CASES
    library, _, device = only.partition(":")
    if library == "generic" and device:  # "generic:array_api_strict", or another module through the generic adapter
        selected = [(only, dtype) for spec, dtype in BACKEND_CASES if spec.partition(":")[0] == "generic"]
    elif device:  # a device spec ("torch:cuda", "jax:gpu"): its library's dtype
        selected = [(only, dtype) for spec, dtype in BACKEND_CASES if spec == library]
    else:
        selected = [case for case in BACKEND_CASES if case[0].partition(":")[0] == library]
    if not selected:  # every backend test would skip as "got empty parameter set", and the run would pass
        libraries = ", ".join(dict.fromkeys(spec.partition(":")[0] for spec, _ in BACKEND_CASES))
        raise pytest.UsageError(f"NNX_TEST_BACKEND={os.environ['NNX_TEST_BACKEND']!r} selects no backend case; "
                                f"valid: {libraries}, one of them with a device (torch:cuda), or generic:<module>")
    return selected


def _case_id(spec: str) -> str:
    """A backend case's part of a test id: the spec, with generic's colon a dash ("generic-array_api_strict")."""
    return spec.replace(":", "-", 1) if spec.startswith("generic:") else spec


def _case_param(spec: str, dtype: str):
    ok, why = backend_status(spec)
    if ok:  # asking loads nothing for good; the suite runs with each backend loaded, as a model on it loads it
        nnx.get_backend(spec)
    marks = [] if ok else [pytest.mark.skip(reason=f"{spec} not available: {why}")]
    return pytest.param((spec, dtype), id=_case_id(spec), marks=marks)


_PARAMS = [_case_param(spec, dtype) for spec, dtype in _selected_cases()]


@pytest.fixture
def jax_default_emitters():
    """nnx's JAX programs compiled with XLA's default code generator for this test (the suite's is the classic one)."""
    from nnx.backends import jax as jax_adapter

    before = dict(jax_adapter.COMPILER_OPTIONS)
    if HAS_CLASSIC_EMITTERS:  # a later XLA has only the default one, and no such option
        jax_adapter.COMPILER_OPTIONS["xla_cpu_use_fusion_emitters"] = True
    yield
    jax_adapter.COMPILER_OPTIONS.clear()
    jax_adapter.COMPILER_OPTIONS.update(before)


@pytest.fixture
def jax_optimized(jax_default_emitters):
    """XLA's optimising passes on for this test, as users compile (the suite turns most of them off)."""
    import jax

    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(params=_PARAMS)
def backend_case(request):
    """(Backend, default test dtype) for each installed backend."""
    spec, dtype = request.param
    return nnx.get_backend(spec), dtype


@pytest.fixture
def backend(backend_case):
    """Each installed backend in turn."""
    return backend_case[0]


@pytest.fixture
def dtype(backend_case):
    """The dtype tests on this backend use when they don't need float64."""
    return backend_case[1]


@pytest.fixture
def rng():
    """A seeded NumPy generator for test data."""
    return np.random.default_rng(12345)


# -- what `python -m pytest` prints -------------------------------------------------------------

# Modules that feed NaN, inf and huge values on purpose: NumPy's "overflow"/"invalid value"
# RuntimeWarnings are the inputs doing their job there, and would bury the summary. Elsewhere
# they still show (and tests/test_examples.py turns them into errors).
PROVOKES_FLOAT_WARNINGS = {"test_fuzz_inputs.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in PROVOKES_FLOAT_WARNINGS:
            item.add_marker(pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"))
            item.add_marker(pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"))
            item.add_marker(pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"))
    only = _test_backend()
    if only and os.environ.get("NNX_TEST_ONLY_BACKEND_CASES") == "1":
        _keep_backend_cases(config, items, only)
    elif only:
        _drop_other_backends_cases(config, items, only)


# the libraries of BACKEND_CASES, as a test's parameter id names them (a test may list backends itself)
_LIBRARIES = sorted({spec.partition(":")[0] for spec, _ in BACKEND_CASES} | {"array_api_strict"})


def _drop_other_backends_cases(config, items, spec):
    """Deselect the tests parametrized with other backends only: those that list backends themselves
    (``parametrize("backend", ["numpy", "torch"])``) besides the `backend` fixture's cases. Tests that name no
    backend run as usual."""
    library = spec.partition(":")[0]
    named = re.compile(rf"(^|-)({'|'.join(map(re.escape, _LIBRARIES))})(:[^-]*)?(?=-|$)")
    kept, dropped = [], []
    for item in items:
        found = {m.group(2) for m in named.finditer(item.callspec.id)} if hasattr(item, "callspec") else set()
        (dropped if found and library not in found else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def _keep_backend_cases(config, items, spec):
    """Deselect every test not parametrized with `spec` (a part of its parameter id, as in ``[torch:cuda-relu]``):
    what a GPU run asks for. Selected here rather than by passing ids, since each pytest-xdist worker collects
    on its own and would collect nothing, without a word, if one id were missing there."""
    device = "" if ":" in spec else "(:[^-]*)?"  # a bare name keeps its library's device cases too (device1)
    part = re.compile(rf"(^|-){re.escape(_case_id(spec))}{device}(-|$)")
    kept, dropped = [], []
    for item in items:
        (kept if hasattr(item, "callspec") and part.search(item.callspec.id) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Skip reasons grouped with counts, most frequent first (instead of one SKIPPED line per test)."""
    if "s" in (config.option.reportchars or "") or "a" in (config.option.reportchars or ""):
        return  # -rs / -ra asked for the per-test lines: pytest prints them
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if not reasons:
        return
    total, kinds = sum(reasons.values()), len(reasons)
    terminalreporter.section(f"skipped: {total} test{'s' * (total != 1)}, {kinds} reason{'s' * (kinds != 1)} "
                             "(-rs lists each test)")
    for reason, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        terminalreporter.write_line(f"{count:5d}  {reason}")
