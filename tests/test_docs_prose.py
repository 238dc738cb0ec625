"""The sentences of the guides, pinned to the code: defaults and names the prose states.

tests/test_docs.py runs the guides' code blocks; these tests read the prose around them, the
signatures a table gives and the lists of names a paragraph gives, and compare each with the code,
so a default changed in one place and not the other fails here:

- the callback table of docs/training.md (``EarlyStopping(monitor="val_loss", patience=0, ...)``),
  the layers and losses rows of the README's "What is in it" table, and the parameter table of
  docs/sklearn.md give the real argument names and defaults;
- the positional orders docs/getting_started.md gives for ``fit``, ``evaluate`` and ``predict`` are
  the signatures' own;
- every loss, optimizer and metric name docs/training.md lists is accepted, and every backend
  alias the README lists names its backend;
- the README's "without optimizer=opt it makes its own Adam (lr=1e-3)";
- ``nnx.load``'s docstring and docs/getting_started.md: a file whose backend cannot run here loads
  on the same library's default device where that one runs (``torch`` for ``torch:cuda``);
- docs/getting_started.md's loss-order sentence: torch outputs passed first beside NumPy targets
  raise an error naming the order.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import nnx
from nnx import callbacks
from nnx.backends import backend_status
from nnx.backends.registry import _ALIASES, host_fallback

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
TRAINING = (ROOT / "docs" / "training.md").read_text()
GETTING_STARTED = (ROOT / "docs" / "getting_started.md").read_text()
SKLEARN = (ROOT / "docs" / "sklearn.md").read_text()


def _documented_call(text: str) -> tuple[str, list[str], dict[str, object]]:
    """``Name(a, b, k=v, ...)`` as the prose writes a signature: its name, positional names, keyword defaults."""
    text = re.sub(r"\bin\b", "in_", text.replace(", ...", "").replace("...", ""))  # Dense(in, out): a keyword
    call = ast.parse(text, mode="eval").body
    assert isinstance(call, ast.Call), text
    assert isinstance(call.func, ast.Name), text
    positional = [arg.id for arg in call.args if isinstance(arg, ast.Name)]
    keywords = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg is not None}
    return call.func.id, positional, keywords


def _check_signature(obj: object, text: str, aliases: dict[str, str] | None = None) -> None:
    """The names and defaults `text` states are `obj`'s: the keywords by name, the positional names in order."""
    _, positional, keywords = _documented_call(text)
    params = inspect.signature(obj).parameters  # type: ignore[arg-type]
    names = [name for name in params if name not in ("self", "params")]
    aliases = aliases or {}
    for i, name in enumerate(positional):
        assert aliases.get(name, name) == names[i], f"{text}: argument {i} is {names[i]!r} in the code"
    for name, value in keywords.items():
        assert name in params, f"{text}: {getattr(obj, '__name__', obj)} has no argument {name!r}"
        assert params[name].default == value, (
            f"{text}: the code's default for {name!r} is {params[name].default!r}, the prose says {value!r}")


def _callback_table_rows() -> list[str]:
    section = TRAINING.split("| callback | what it does |", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `([A-Za-z]+\([^`]*\))`", section, re.MULTILINE)


def test_the_callback_table_gives_the_real_names_and_defaults():
    rows = _callback_table_rows()
    assert len(rows) >= 7, rows  # EarlyStopping, ModelCheckpoint, CSVLogger, LearningRateScheduler, ...
    for text in rows:
        name = _documented_call(text)[0]
        _check_signature(getattr(callbacks, name), text)


def test_the_readmes_layer_and_loss_signatures_are_the_codes():
    table = README.split("## What is in it", 1)[1].split("\n## ", 1)[0]
    layers_row = next(line for line in table.splitlines() if line.startswith("| layers |"))
    losses_row = next(line for line in table.splitlines() if line.startswith("| losses"))
    calls = re.findall(r"`([A-Z][A-Za-z]*\([^`]*\))`", layers_row + losses_row)
    checked = set()
    for text in calls:
        name = _documented_call(text)[0]
        obj = getattr(nnx, name, None) or getattr(nnx.losses, name)
        _check_signature(obj, text, aliases={"in_": "in_features", "out": "out_features"})
        checked.add(name)
    assert {"Dense", "Dropout", "LeakyReLU", "BinaryCrossEntropy", "CrossEntropy"} <= checked, checked


def test_the_positional_orders_getting_started_gives_are_the_signatures():
    orders = re.findall(r"`((?:fit|evaluate|predict)\([^`]*\))`", GETTING_STARTED)
    assert {text.split("(")[0] for text in orders} == {"fit", "evaluate", "predict"}, orders
    for text in orders:
        name, positional, _ = _documented_call(text)
        params = [p for p in inspect.signature(getattr(nnx.Sequential, name)).parameters if p != "model"]
        assert positional == params[:len(positional)], f"{text}: the code's order is {params[:len(positional)]}"


def _init_defaults(path: Path) -> dict[str, ast.expr]:
    """The keyword defaults of the ``__init__`` in `path`, read from its source (importing nnx.sklearn imports
    scikit-learn, a second and a half)."""
    tree = ast.parse(path.read_text())
    init = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "__init__")
    args = init.args
    named = list(zip(args.args[len(args.args) - len(args.defaults):], args.defaults, strict=True))
    named += [(arg, default) for arg, default in zip(args.kwonlyargs, args.kw_defaults, strict=True)
              if default is not None]
    return {arg.arg: default for arg, default in named}


def test_the_sklearn_parameter_table_gives_the_real_defaults():
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", SKLEARN, re.MULTILINE)
    assert {name for name, _ in rows} == {"backend", "dtype", "dropout"}, rows
    # MLPClassifier takes MLPBase's __init__; MLPRegressor has its own (``loss`` first)
    for source in ("base.py", "regressor.py"):
        defaults = _init_defaults(ROOT / "nnx" / "sklearn" / source)
        for name, default in rows:
            assert ast.literal_eval(defaults[name]) == ast.literal_eval(default), (source, name)


def _backticked_after(text: str, start: str, end: str) -> list[str]:
    part = text.split(start, 1)[1].split(end, 1)[0]
    return re.findall(r'`"?([a-z_0-9]+)"?`', part)


def test_every_loss_optimizer_and_metric_name_training_md_lists_is_accepted():
    losses = _backticked_after(TRAINING, "Losses by name:", "Optimizers by name:")
    optimizers = _backticked_after(TRAINING, "Optimizers by name:", "Metrics:")
    metrics = _backticked_after(TRAINING, "Metrics:\n", "(with")
    assert len(losses) >= 10 and len(optimizers) == 7 and len(metrics) == 8, (losses, optimizers, metrics)
    for name in losses:
        nnx.losses.get_loss(name)
    model = nnx.Sequential(nnx.Dense(2, 1), seed=0)
    for name in optimizers:
        nnx.optim.get_optimizer(name, model.parameters())
    assert set(metrics) <= set(nnx.metrics.METRICS), set(metrics) - set(nnx.metrics.METRICS)
    # the optimizers listed are all nnx.optim has (nnx.sklearn registers its own two, not listed there)
    builtin = {cls.__name__.lower() for cls in vars(nnx.optim).values()
               if isinstance(cls, type) and issubclass(cls, nnx.optim.Optimizer) and cls is not nnx.optim.Optimizer}
    assert builtin <= set(optimizers), builtin - set(optimizers)


def test_the_backend_aliases_the_readme_lists_name_their_backends():
    section = README.split("## Backends", 1)[1].split("##", 1)[0]
    pairs = re.findall(r'`"(\w+)"` for (\w+)', section)
    assert len(pairs) == 4, pairs
    for alias, name in pairs:
        assert _ALIASES.get(alias) == name, (alias, name)


def test_fit_without_an_optimizer_makes_adam_at_the_rate_the_readme_states():
    assert "makes its own Adam (lr=1e-3)" in README
    rng = np.random.default_rng(0)
    X = rng.standard_normal((8, 2))
    model = nnx.Sequential(nnx.Dense(2, 1), seed=0)
    model.fit(X, X[:, :1], epochs=1, batch_size=None)
    assert type(model.optimizer).__name__ == "Adam" and model.optimizer.lr == 1e-3


@pytest.mark.skipif(not backend_status("torch")[0], reason="torch does not run here")
def test_a_file_from_a_gpu_loads_on_the_same_librarys_default_device_as_load_says():
    assert "same library's" in (nnx.load.__doc__ or "")
    assert host_fallback("torch:cuda") == "torch"
    assert host_fallback("cupy:1") == ("cupy" if backend_status("cupy")[0] else "numpy")


@pytest.mark.skipif(not backend_status("torch")[0], reason="torch does not run here")
def test_torch_outputs_passed_first_beside_numpy_targets_are_refused_naming_the_order():
    import torch

    y = np.array([[0.0], [1.0]], dtype=np.float32)
    out = torch.tensor([[0.2], [0.7]])
    with pytest.raises(TypeError, match=r"loss\(y_true, y_pred\)"):
        nnx.losses.BinaryCrossEntropy()(out, y)


def test_cosine_decay_follows_its_docstrings_formula_with_the_epochs_counted_after_the_warm_up():
    import math

    doc = callbacks.CosineDecay.__doc__ or ""
    assert "t = epoch - warmup_epochs" in doc
    schedule = callbacks.CosineDecay(decay_epochs=10, min_lr=0.01, warmup_epochs=4, initial_lr=1.0)
    for epoch in range(20):
        if epoch < 4:
            expected = (epoch + 1) / 4
        else:
            t = epoch - 4
            expected = 0.01 + (1.0 - 0.01) * (1 + math.cos(math.pi * min(t, 10) / 10)) / 2
        assert schedule(epoch, 1.0) == pytest.approx(expected, rel=1e-12), epoch


def test_momentum_equals_torchs_momentum_sgd_only_while_the_rate_is_constant_as_the_readme_says():
    assert "equals torch's momentum SGD only while the rate is constant" in README
    value = np.array([1.0])
    opt_param = nnx.Parameter("w", value.copy())
    opt = nnx.optim.Momentum([opt_param], lr=0.1, momentum=0.9)
    v = np.zeros(1)  # torch's SGD(momentum=0.9): buf = mu * buf + g; p -= lr * buf
    theirs = value.copy()
    for i, lr in enumerate([0.1, 0.1, 0.05]):
        g = np.array([1.0 + i])
        opt.lr = lr
        opt_param.grad = g
        opt.step()
        v = 0.9 * v + g
        theirs = theirs - lr * v
        same = np.allclose(opt_param.value, theirs, rtol=0, atol=1e-12)
        assert same == (i < 2), (i, opt_param.value, theirs)
