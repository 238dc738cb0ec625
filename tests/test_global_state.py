"""nnx and the process it runs in: what a user set globally must not change nnx, and nnx must not change it.

nnx is imported into research code that uses NumPy, torch and JAX directly. Each test here sets one of
those libraries' process-wide settings the way such code does, and puts it back whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnx

ROOT = Path(__file__).resolve().parents[1]


def _xy(n: int = 32, d: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    return X, (X[:, :1] > 0).astype(float)


@pytest.fixture
def torch_default_device():
    """Set torch's default device for a test (as ``torch.set_default_device("cuda")`` does on a GPU machine)
    and put the CPU back afterwards. "meta" stands in for "cuda" here: a tensor made without ``device=``
    lands off the CPU in both cases, and "meta" exists on every machine."""
    torch = pytest.importorskip("torch")
    try:
        yield torch.set_default_device
    finally:
        torch.set_default_device(None)


def test_torch_model_loads_and_moves_under_a_users_default_device(tmp_path, torch_default_device):
    X, y = _xy()
    model = nnx.Sequential(nnx.Dense(5, 4), nnx.Dropout(0.2), nnx.Dense(4, 1), backend="torch", seed=0)
    model.fit(X, y, loss="mse", epochs=1, batch_size=8, verbose=0)
    path = tmp_path / "m.npz"
    model.save(path)
    torch_default_device("meta")
    loaded = nnx.load(path, backend="torch")
    moved = model.to("torch")
    np.testing.assert_array_equal(np.asarray(loaded.predict(X).cpu()), np.asarray(model.predict(X).cpu()))
    np.testing.assert_array_equal(np.asarray(moved.predict(X).cpu()), np.asarray(model.predict(X).cpu()))
    # the float64 copy check_gradients builds restores the random streams too
    assert nnx.check_gradients(model, X[:4], y[:4], "mse") < 1e-5


def test_bare_jax_backend_is_the_users_default_jax_device():
    # "jax" is JAX's default device, as "cupy" is CuPy's current GPU: a device the user chose with
    # jax.default_device (or jax.config.update("jax_default_device", ...)) is the one a model goes to,
    # not the first device listed. (One CPU device here; the label shows which device was asked for.)
    jax = pytest.importorskip("jax")
    from nnx.backends.jax import JaxBackend

    device = jax.devices()[-1]
    label = f"{device.platform}:{jax.devices(device.platform).index(device)}"
    first = nnx.get_backend("jax")  # the bare name cached before a default device is set
    assert first.spec == "jax" and JaxBackend.default_label() is None
    with jax.default_device(device):
        assert JaxBackend.default_label() == label
        be = nnx.get_backend("jax")
        assert be.device == device and be.spec == f"jax:{label}"
    with jax.default_device(device.platform):  # a platform's name: its first device
        assert JaxBackend.default_label() == device.platform
    assert nnx.get_backend("jax") is first


def test_plot_keeps_a_matplotlib_backend_the_user_chose_without_a_display(tmp_path):
    # matplotlib.use("pgf") or "svg" at the top of a script decides how every later figure is written;
    # nnx.plot picks Agg only where nothing was chosen and there is no display, never over the user's choice.
    pytest.importorskip("matplotlib")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    script = ("import matplotlib; matplotlib.use('svg')\n"
              "from nnx import plot\n"
              f"plot.plot_activations(num=5).savefig({str(tmp_path / 'a.svg')!r})\n"
              "print(matplotlib.get_backend())\n")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == "svg"
