"""Session 21 second look: guards for what the first reviews of the day left half-done."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

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
