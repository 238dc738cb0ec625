"""What the guides claim beyond the blocks tests/test_docs.py runs.

- every class-like name the README and the guides put in backticks is one nnx has, one of
  another library that the page names as such, or one the page's own code defines: a
  reader who copies ``NNXClassifier`` from a sentence gets a class that exists;
- the code of docs/distributed.md, which tests/test_docs.py leaves to the launcher tests,
  runs as written in one process, as the page says it does ("The same script runs alone");
- the ``get_config``/``from_config`` pair docs/custom_layers.md shows outside its class
  saves, loads and moves a layer whose argument is not a JSON value.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import io
import pkgutil
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

import nnx

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "examples" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)

# Names in backticks that are not nnx's, each with where it comes from.
OTHER_LIBRARIES = {
    # ONNX operators (docs/export.md, docs/custom_layers.md); Log1p is named as the one ONNX lacks
    "Abs", "Add", "BatchNormalization", "Div", "Equal", "Gemm", "Greater", "GreaterOrEqual",
    "LayerNormalization", "LeakyRelu", "Log", "Log1p", "Mul", "Neg", "ReduceMean", "Relu", "Reshape",
    "Sqrt", "Sub", "Where",
    # scikit-learn, Keras, PyTorch, NumPy and MPI names the pages compare with
    "AdamOptimizer", "SGDOptimizer", "RandomState", "BinaryAccuracy", "RootMeanSquaredError",
    "TimeDistributed", "DataLoader", "DistributedSampler", "Linear", "Allgatherv", "Allreduce", "PyDataset",
    "Reduce_scatter",
    # classes of the reader's that docs/custom_layers.md imagines in a sentence
    "Scaled", "Config",
}


def _nnx_names() -> set[str]:
    names: set[str] = set()
    for info in pkgutil.walk_packages(nnx.__path__, "nnx."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional dependency (onnx, mpi4py) that is not installed here
            continue
        for key, value in vars(module).items():
            names.add(key)
            if isinstance(value, type):
                names.update(vars(value))
    return names


def _defined_in_code(text: str) -> set[str]:
    return {m.group(1) for block in FENCE.findall(text) for m in re.finditer(r"^\s*class (\w+)", block, re.M)}


def test_every_class_name_the_guides_cite_exists():
    known = _nnx_names() | set(dir(builtins)) | OTHER_LIBRARIES
    unknown = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        defined = _defined_in_code(text)
        # `Name`, `Name(...)` or `Name.attr`: a CamelCase name (ALL_CAPS ones are environment variables)
        for match in re.finditer(r"`([A-Z][A-Za-z0-9_]*[a-z][A-Za-z0-9_]*)[`(.]", text):
            name = match.group(1)
            if name not in known and name not in defined:
                line = text.count("\n", 0, match.start()) + 1
                unknown.append(f"{page.relative_to(ROOT)}:{line}: {name}")
    assert not unknown, "names nnx does not have:\n" + "\n".join(unknown)


@pytest.fixture
def no_launcher(monkeypatch):
    """An environment no launcher (mpiexec, srun, torchrun) started this process in."""
    from nnx.distributed import launch

    for group in ("MPI_ENV", "TORCHRUN_ENV", "WORLD_SIZE_ENV"):
        for name in getattr(launch, group, ()):
            monkeypatch.delenv(name, raising=False)


def test_distributed_page_runs_alone(no_launcher):
    text = (ROOT / "docs" / "distributed.md").read_text(encoding="utf-8")
    blocks = FENCE.findall(text)
    assert len(blocks) == 2, "docs/distributed.md's code changed: update this test"
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 4)).astype(np.float32)
    y = (X[:, :1] + X[:, 1:2] > 0).astype(np.float32)
    model = nnx.Sequential(nnx.Dense(4, 8), nnx.ReLU(), nnx.Dense(8, 1), nnx.Sigmoid(), seed=0)
    namespace = {"__name__": "nnx_docs_distributed", "model": model, "X": X, "y": y}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(blocks[0], "docs/distributed.md", "exec"), namespace)  # noqa: S102 - running the docs is the point
    comm = namespace["comm"]
    assert (comm.rank, comm.size) == (0, 1)
    assert printed.getvalue().strip() == str(model.history["loss"])  # one epoch's loss, printed by rank 0
    exec(compile(blocks[1], "docs/distributed.md", "exec"), namespace)  # noqa: S102 - the sharded update, alone
    assert model.epochs_trained == 2


def test_custom_layers_config_fragment_saves_loads_and_moves(tmp_path):
    text = (ROOT / "docs" / "custom_layers.md").read_text(encoding="utf-8")
    fragment = next(b for b in FENCE.findall(text) if "def from_config" in b)

    activations = {"tanh": lambda xp, x: xp.tanh(x), "relu": lambda xp, x: xp.maximum(x, 0.0)}
    source = textwrap.dedent('''
        class Activation(nnx.Layer):
            """An activation given as a function: not a JSON value, so get_config names it."""

            def __init__(self, activation):
                super().__init__()
                self.activation = activation
                self.activation_name = next(k for k, f in ACTIVATIONS.items() if f is activation)

            def forward(self, X, training=False):
                return self.activation(self.xp, X)
        ''') + fragment
    namespace = {"nnx": nnx, "ACTIVATIONS": activations, "__name__": "nnx_docs_claims_fragment"}
    exec(compile(source, "docs/custom_layers.md", "exec"), namespace)  # noqa: S102
    model = nnx.Sequential(nnx.Dense(2, 3), namespace["Activation"](activations["tanh"]), seed=0)
    X = np.linspace(-2, 2, 8, dtype=np.float32).reshape(4, 2)
    model.save(tmp_path / "m.npz")
    for other in (nnx.load(tmp_path / "m.npz"), model.to("numpy", dtype="float64")):
        assert other.layers[1].activation is activations["tanh"]
        np.testing.assert_allclose(other.backend.to_host(other.predict(X)), model.predict(X), rtol=1e-6)


@pytest.mark.parametrize("package", ["nnx", "nnx.callbacks", "nnx.optim", "nnx.losses", "nnx.regularizers",
                                     "nnx.sklearn", "nnx.distributed"])
def test_every_public_class_is_in_the_api_reference(package):
    """docs/api is written by mkdocstrings from `::: module` lines: a new module needs its line."""
    targets = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        targets |= set(re.findall(r"^::: ([\w.]+)", page.read_text(encoding="utf-8"), re.M))
    module = importlib.import_module(package)
    missing = []
    for name in module.__all__:
        obj = getattr(module, name)
        if not (isinstance(obj, type) or callable(obj)) or not hasattr(obj, "__module__"):
            continue
        path = f"{obj.__module__}.{obj.__qualname__}"
        if obj.__module__ not in targets and not any(path == t or path.startswith(t + ".") for t in targets):
            missing.append(f"{package}.{name} ({obj.__module__})")
    assert not missing, f"not on any docs/api page (add a '::: module' line): {missing}"
