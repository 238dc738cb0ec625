"""nnx's calls into CuPy, checked on a machine without a GPU against the installed CuPy's real signatures.

Two ways, both generic, so they cover code written after them:
- statically, every call in ``nnx/`` on a name bound to ``cupy``/``cupyx`` (``cupy.cuda.Device(i)``,
  ``cdist.init_process_group(...)``) must name something CuPy has, with arguments its signature takes;
- dynamically, the CuPy adapter, its RNG, host transfer, the fast path and training, and the NCCL
  communicator's setup and teardown run against tests/cupy_standin.py: NumPy behind every real signature.
Skipped where CuPy is not installed: ``pip install ".[cupy-check]"`` (imports without a GPU), then run this
file alone (with CuPy importable, scikit-learn's array-API estimator checks would try it and fail without a GPU).
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import array_api_compat
import numpy as np
import pytest

with warnings.catch_warnings():
    # without the CUDA toolkit wheels (cupy-cuda12x[ctk]) and NCCL, importing cupyx warns that their
    # libraries are missing; that is this test's situation by design (no GPU), not a fault
    warnings.simplefilter("ignore", UserWarning)
    pytest.importorskip("cupy", reason='CuPy is not installed (pip install ".[cupy-check]"; no GPU needed)')
    import cupy  # noqa: E402
    import cupyx.distributed  # noqa: E402, F401  # the real package, for its signatures

import nnx  # noqa: E402
from nnx.backends import registry  # noqa: E402
from nnx.backends.cupy import CupyBackend, CupyRNG, on_device  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import cupy_standin  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ROOTS = {"cupy": cupy, "cupyx": sys.modules["cupyx"]}


@pytest.fixture
def standin(monkeypatch):
    """The stand-in modules in sys.modules in place of CuPy, and array_api_compat's CuPy namespace over them."""
    modules = cupy_standin.standin()
    xp = cupy_standin.compat_namespace(modules)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setitem(sys.modules, "array_api_compat.cupy", xp)
    # a stand-in array is a NumPy array underneath, for which array_api_compat names NumPy's namespace and
    # the device "cpu"; for a CuPy array it names its CuPy namespace and `cupy.cuda.Device`, which code
    # passes on as `device=` (the stand-in's arrays are on the current device)
    numpy_device, numpy_namespace = array_api_compat.device, array_api_compat.array_namespace

    def namespace(*arrays: object, **kwargs: object) -> object:
        standin = any(isinstance(a, cupy_standin.StandinArray) for a in arrays)
        return xp if standin else numpy_namespace(*arrays, **kwargs)

    monkeypatch.setattr(array_api_compat, "device", lambda x: cupy_standin.Device()
                        if isinstance(x, cupy_standin.StandinArray) else numpy_device(x))
    monkeypatch.setattr(array_api_compat, "array_namespace", namespace)
    # and nnx resolves a stand-in array to a CuPy backend on the current device, as it resolves a CuPy
    # array (its own lookup sees a NumPy subclass): code that takes its namespace from an array meets the stand-in
    from_array = registry._from_array
    monkeypatch.setattr(registry, "_from_array", lambda x: _backend(xp, cupy_standin.Device.current)
                        if isinstance(x, cupy_standin.StandinArray) else from_array(x))
    # and a CuPy backend owns a stand-in array as it owns a CuPy array (`backend_name_of` sees a NumPy subclass)
    monkeypatch.setattr(CupyBackend, "owns", lambda self, x: isinstance(x, cupy_standin.StandinArray))
    return modules, xp


def _backend(xp, index=0):
    device = cupy_standin.Device(index)
    return CupyBackend(on_device(xp, device), device, str(index))


# -- the signatures, statically ---------------------------------------------------------------------------------
def _cupy_aliases(tree: ast.AST) -> dict[str, str]:
    """Local names bound to CuPy modules in one file: ``import cupy``, ``from cupyx import distributed as cdist``,
    ``cupy = import_library("cupy", ...)`` or ``importlib.import_module("cupy")``."""
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in ROOTS:
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ROOTS:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and node.value.args:
            first = node.value.args[0]
            if isinstance(first, ast.Constant) and str(first.value).split(".")[0] in ROOTS:
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        aliases[target.id] = str(first.value)
    return aliases


def _dotted(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def _resolve(path: str):
    head, *rest = path.split(".")
    obj = ROOTS[head]
    for part in rest:
        obj = getattr(obj, part)
    return obj


def cupy_calls(source: str) -> list[tuple[int, str, ast.Call]]:
    """(line, the CuPy object's dotted name, the call) for every call in `source` on a name bound to CuPy."""
    tree = ast.parse(source)
    aliases = _cupy_aliases(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            chain = _dotted(node.func)
            if chain and chain[0] in aliases and len(chain) > 1:
                found.append((node.lineno, ".".join([aliases[chain[0]], *chain[1:]]), node))
            elif chain and len(chain) == 1 and chain[0] in aliases and "." in aliases[chain[0]]:
                found.append((node.lineno, aliases[chain[0]], node))
    return found


def check_static_call(path: str, call: ast.Call) -> str | None:
    """Why a call does not fit CuPy (None when it does, or when it cannot be judged: ``*args``)."""
    try:
        target = _resolve(path)
    except (AttributeError, ImportError) as exc:
        return f"CuPy has no {path} ({exc})"
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return None
    try:
        cupy_standin.check_call(path, target, tuple(range(len(call.args))), {k.arg: 0 for k in call.keywords})
    except TypeError as exc:
        return str(exc)
    return None


def test_every_direct_cupy_call_in_nnx_fits_the_installed_cupy():
    checked, problems = 0, []
    for file in sorted((ROOT / "nnx").rglob("*.py")):
        for line, path, call in cupy_calls(file.read_text()):
            checked += 1
            why = check_static_call(path, call)
            if why:
                problems.append(f"{file.relative_to(ROOT)}:{line}: {why}")
    assert checked >= 8, f"found only {checked} CuPy calls in nnx/: the scan has lost them"
    assert not problems, "\n".join(problems)


def test_the_static_check_refuses_a_call_cupy_would():
    bad = "import cupy\ncupy.max(Z, 1, None, None, True)\ncupy.cuda.Device(0).use()\ncupy.no_such_function(1)\n"
    verdicts = {path: check_static_call(path, call) for _, path, call in cupy_calls(bad)}
    assert "too many positional arguments" in verdicts["cupy.max"]
    assert "CuPy has no cupy.no_such_function" in verdicts["cupy.no_such_function"]
    assert verdicts["cupy.cuda.Device"] is None


# -- the code paths, on the stand-in ----------------------------------------------------------------------------
def test_the_standin_refuses_issue_22_item_1s_call(standin):
    """``max(Z, 1, None, None, True)`` (NumPy's maximum.reduce order, issue 22 item 1) fails on CuPy 14: here too."""
    cp = standin[0]["cupy"]
    Z = np.ones((4, 3))
    with pytest.raises(TypeError, match="too many positional arguments"):
        cp.max(Z, 1, None, None, True)
    assert cp.max(Z, axis=1, keepdims=True).shape == (4, 1)


def test_host_transfer_sync_and_devices_on_the_standin(standin):
    be = _backend(standin[1], 1)
    x = be.asarray(np.arange(6.0).reshape(2, 3), dtype="float32")
    assert isinstance(x, cupy_standin.StandinArray) and x.dtype == np.float32
    np.testing.assert_array_equal(be._to_host(x), np.arange(6.0).reshape(2, 3))
    be.synchronize()
    assert cupy_standin.Device.synchronized == [1]
    assert CupyBackend.devices() == ["0 (stand-in)", "1 (stand-in)"]


def test_load_names_the_current_gpu_and_follows_it(standin):
    """Bare "cupy" is the current GPU (the one dist.init binds a rank to); "cupy:1" is GPU 1."""
    assert nnx.get_backend("cupy:1").device.id == 1
    cupy_standin.Device(1).use()
    assert nnx.get_backend("cupy").spec == "cupy:1"
    cupy_standin.Device(0).use()
    assert nnx.get_backend("cupy").spec == "cupy:0"


def test_rng_keeps_one_generator_and_resumes_from_its_state(standin):
    be = _backend(standin[1])
    rng = be.rng(7)
    first = [be._to_host(rng.uniform((3, 4), "float32")) for _ in range(3)]
    assert cupy_standin.RandomState.built == 1, "CupyRNG must keep one generator, not build one per draw"
    assert not np.array_equal(first[0], first[1])
    again = be.rng(0)
    again.set_state({"seed": 7, "counter": 1})
    np.testing.assert_array_equal(be._to_host(again.uniform((3, 4), "float32")), first[1])
    assert isinstance(rng, CupyRNG)


@pytest.mark.parametrize("loss, head", [("bce", "sigmoid"), ("mse", "identity"), ("cross_entropy", "softmax")])
@pytest.mark.parametrize("fastpath", [True, False], ids=["fastpath", "portable"])
def test_training_on_the_standin_calls_cupy_only_as_cupy_allows(standin, loss, head, fastpath):
    be = _backend(standin[1]).with_fastpath(fastpath)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 5)).astype(np.float32)
    classes = 3 if head == "softmax" else 1
    y = rng.integers(0, 3, size=64) if head == "softmax" else (X[:, :1] > 0).astype(np.float32)
    last = {"sigmoid": nnx.Sigmoid(), "identity": nnx.Identity(), "softmax": nnx.Softmax()}[head]
    model = nnx.Sequential(nnx.Dense(5, 8), nnx.ReLU(), nnx.Dropout(0.1), nnx.Dense(8, classes), last,
                           backend=be, dtype="float32", seed=0)
    history = model.fit(X, y, loss=loss, optimizer="adam", epochs=2, batch_size=16, verbose=0)
    assert np.isfinite(history["loss"]).all()
    assert model.predict(X).shape == (64, classes)


def test_nccl_communicator_setup_collectives_and_teardown_on_the_standin(standin):
    from nnx.distributed import NCCLCommunicator

    comm = NCCLCommunicator()
    group = comm.group.impl
    assert group.stopped == 1, "a world of one stops cupyx's rendezvous store once NCCL has its id"
    x = cupy_standin.StandinArray((3,), dtype=np.float32)
    x[...] = 2.0
    np.testing.assert_array_equal(comm.device_allreduce(x, "sum"), np.full(3, 2.0))
    comm.device_broadcast(x, 0)
    comm.close()
    comm.close()
    assert comm.group is None


# -- issue 22 item 2, with the real cupyx store -------------------------------------------------------------------
EXITS = textwrap.dedent("""
    import sys, types
    import cupyx.distributed._init as init
    import cupyx.distributed._nccl_comm as nccl_comm
    # no GPU here: NCCL itself is faked; cupyx's TCP store (a real, non-daemon process) is what is tested
    fake = types.SimpleNamespace(available=True, get_unique_id=lambda: bytes(128),
                                 NcclCommunicator=lambda n, uid, rank: object())
    init.nccl = nccl_comm.nccl = fake
    sys.modules["cupy"].cuda.runtime.getDeviceCount = lambda: 1
    from nnx.distributed import NCCLCommunicator
    comm = NCCLCommunicator() if sys.argv[1] == "nnx" else init.init_process_group(1, 0, use_mpi=False)
    print("made", flush=True)
""")


@pytest.mark.parametrize("who, limit", [("nnx", 60), ("cupyx", 10)])
def test_a_process_with_an_nccl_world_of_one_exits(who, limit, tmp_path):
    """cupyx alone hangs at exit (its store's stop() is a no-op by then); nnx's communicator stops it first."""
    script = tmp_path / "exits.py"
    script.write_text(EXITS)
    port = str(20000 + (os.getpid() * 2 + (who == "nnx")) % 20000)
    env = dict(os.environ, CUPYX_DISTRIBUTED_PORT=port, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    # a session of its own, so that a hung store process is killed with its parent
    proc = subprocess.Popen([sys.executable, str(script), who], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        hung = True
    assert "made" in out, err[-3000:]
    if who == "nnx":
        assert not hung and proc.returncode == 0, f"never exited (cupyx's store kept it alive): {err[-2000:]}"
    else:
        assert hung, "cupyx alone now exits: NCCLCommunicator's stop of the store may no longer be needed"


def test_an_nccl_rank_under_mpi_makes_gpu_local_rank_current(standin, monkeypatch):
    """Issue 22 item 4 for CuPy: rank 3 of 4 on its host drives GPU 3 (the bare name "cupy" then means it)."""
    from nnx.distributed import MPICommunicator, NCCLCommunicator
    from nnx.distributed import nccl as nccl_module

    monkeypatch.setattr(nccl_module, "import_mpi", lambda: None)  # no MPI_Init in this test process

    host = MPICommunicator.__new__(MPICommunicator)  # a world of 8 ranks as MPI would report it, no job needed
    host.rank, host.size, host.local_rank, host.local_size = 7, 8, 3, 4
    cupy_standin.Device.count = 4
    try:
        comm = NCCLCommunicator(host=host)
        assert cupy_standin.Device.current == 3 and comm.local_rank == 3
        assert nnx.get_backend("cupy").spec == "cupy:3"
        assert comm.group.impl.stopped == 0  # bootstrapped over MPI: no store was started, none to stop
        host.local_size = 5  # five ranks on a host with four GPUs: NCCL would refuse; nnx says why first
        with pytest.raises(RuntimeError, match="5 ranks run on this host but it has 4 GPU"):
            NCCLCommunicator(host=host)
    finally:
        cupy_standin.Device.count = 2


NO_MPI_LIBRARY = textwrap.dedent("""
    import sys
    class NoMPI:  # mpi4py.MPI as it fails to load without an MPI library (mpi4py 4 raises RuntimeError)
        def find_spec(self, name, path=None, target=None):
            if name == "mpi4py.MPI":
                raise RuntimeError("cannot load MPI library")
    sys.meta_path.insert(0, NoMPI())
    from nnx.distributed.nccl import _cupyx_distributed
    try:
        _cupyx_distributed(need_mpi=True)
    except ImportError as exc:
        print("over MPI:", exc)
    print("without MPI:", _cupyx_distributed(need_mpi=False).init_process_group.__name__)
""")


def test_cupyx_imports_where_mpi4py_finds_no_mpi_library(tmp_path):
    """cupyx catches only ImportError from mpi4py; without a launcher nnx hides the broken mpi4py from it."""
    pytest.importorskip("mpi4py")
    script = tmp_path / "no_mpi.py"
    script.write_text(NO_MPI_LIBRARY)
    res = subprocess.run([sys.executable, "-W", "ignore", str(script)], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path])))
    assert "over MPI: mpi4py is installed but cannot load an MPI library" in res.stdout, res.stderr[-3000:]
    assert "without MPI: init_process_group" in res.stdout, res.stderr[-3000:]
