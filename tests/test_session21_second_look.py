"""Session 21 second look: guards for what the first reviews of the day left half-done."""

from __future__ import annotations

import collections
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from user_code import CallCounting

import nnx
from nnx.backends import backend_status

_HOOK_PROBE = textwrap.dedent("""
    import sys
    from nnx.distributed.mpi import abort_on_uncaught

    class FakeMPI:
        Is_initialized = staticmethod(lambda: True)
        Is_finalized = staticmethod(lambda: False)

    class FakeComm:
        def Abort(self, code):
            raise AssertionError("aborted")

    before = sys.excepthook
    abort_on_uncaught(FakeMPI, FakeComm())
    print("left alone" if sys.excepthook is before else "installed")
""")


@pytest.mark.parametrize("runner", ["mpi4py", "mpi4py.run"])
def test_the_abort_hook_is_left_to_either_spelling_of_the_mpi4py_runner(runner: str) -> None:
    """a5abd39 left the abort hook to ``python -m mpi4py``'s runner (it aborts at exit itself, after the launcher
    forwarded the traceback) by looking for ``mpi4py.run`` in sys.modules; ``python -m mpi4py.run script.py``, the
    spelling the runner's own main documents, runs that module as ``__main__``, so the name is not there, the hook
    was installed and aborted the job before the failing rank's traceback was forwarded."""
    pytest.importorskip("mpi4py")
    done = subprocess.run([sys.executable, "-m", runner, "-c", _HOOK_PROBE], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "left alone"


def test_plain_python_still_gets_the_abort_hook() -> None:
    pytest.importorskip("mpi4py")
    done = subprocess.run([sys.executable, "-c", _HOOK_PROBE], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "installed"


# -- Python state kept in a dict subclass (fad50b4, 55b8fc5 took only exact dicts and lists) -----------------------



class S21SecondCountingLoss(nnx.losses.Loss):
    """A squared error whose weight falls with the batches it scored, counted in a defaultdict."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = collections.defaultdict(int)

    def rows(self, xp, y_true, y_pred):
        self.seen["batches"] += 1
        scale = 1.0 / self.seen["batches"]
        d = y_pred - y_true
        return scale * xp.sum(d * d, axis=1), 2.0 * scale * d


def _counted_backends() -> list[str]:
    return ["numpy"] + (["jax"] if backend_status("jax")[0] else [])


@pytest.mark.parametrize("backend", _counted_backends())
@pytest.mark.parametrize("kind", ["counter", "defaultdict"])
def test_layer_state_kept_in_a_dict_subclass_changes_every_step(backend: str, kind: str) -> None:
    """The trace and the recorded replay looked only at containers of type exactly dict or list: a count kept in a
    Counter or a defaultdict (the usual ways to count in Python) changed only when the step was traced or recorded
    ({'calls': 3} after 9 batches on NumPy, 2 on JAX), and the layer scaling by it trained other weights."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((45, 5))
    y = (X[:, 0] > 0).astype(np.float64)
    model = nnx.Sequential(nnx.Dense(5, 8), CallCounting(kind), nnx.Dense(8, 1), nnx.Sigmoid(),
                           backend=backend, dtype="float64", seed=7)
    model.fit(X, y, loss="bce", optimizer="sgd", lr=0.1, epochs=3, batch_size=16, verbose=0)
    assert model.layers[1].stats["calls"] == 9


@pytest.mark.parametrize("backend", _counted_backends())
def test_loss_state_kept_in_a_defaultdict_changes_every_step(backend: str) -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((45, 5))
    y = X[:, :2] @ np.array([[1.0, -0.5], [0.3, 2.0]])
    model = nnx.Sequential(nnx.Dense(5, 8), nnx.ReLU(), nnx.Dense(8, 2), backend=backend, dtype="float64", seed=7)
    loss = S21SecondCountingLoss()
    model.fit(X, y, loss=loss, optimizer="sgd", lr=0.01, epochs=3, batch_size=16, verbose=0)
    assert loss.seen["batches"] == 9
