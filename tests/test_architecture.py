"""docs/architecture.md tells the truth: its tree, floors and long-module list are what docs/gen_tree.py makes."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("gen_tree", ROOT / "docs" / "gen_tree.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen = _generator()


def _block(text: str, name: str) -> str:
    found = re.search(rf"<!-- generated: {name} -->\n(.*?)\n?<!-- end: {name} -->", text, re.DOTALL)
    assert found, f"docs/architecture.md has no generated block {name!r}"
    return found.group(1).rstrip("\n")


@pytest.mark.parametrize("name", sorted(gen.BLOCKS))
def test_generated_block_matches_the_package(name):
    text = gen.DOC.read_text(encoding="utf-8")
    assert _block(text, name) == gen.BLOCKS[name](), (
        f"the {name!r} block of docs/architecture.md differs from the package: run `python docs/gen_tree.py` "
        "and commit the doc")


def test_every_module_over_the_limit_is_explained():
    text = gen.DOC.read_text(encoding="utf-8")
    prose = re.sub(r"<!-- generated: long-modules -->.*?<!-- end: long-modules -->", "", text, flags=re.DOTALL)
    for name in re.findall(r"`(nnx/[^`]+)`", gen.long_modules()):
        assert re.search(rf"^- `{re.escape(name)}`", prose, re.MULTILINE), (
            f"{name} is over {gen.LONG_LINES} lines: docs/architecture.md must say why, in a '- `{name}` ...' line")


def _package(root: Path, modules: dict[str, str]) -> Path:
    for rel, doc in modules.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'"""{doc}"""\n', encoding="utf-8")
    return root / "pkg"


def test_the_tree_changes_with_the_package(tmp_path):
    """What makes the block test fail: a module added, or a docstring changed, changes the generated tree."""
    package = _package(tmp_path, {"__init__.py": "A package.", "a.py": "Module a. More.", "sub/__init__.py": "Sub.",
                                  "sub/b.py": "Module b w.r.t. c."})
    before = gen.tree(package)
    assert before.splitlines() == [
        "pkg/".ljust(gen.NAME_WIDTH) + "A package",
        "  a.py".ljust(gen.NAME_WIDTH) + "Module a",
        "  sub/".ljust(gen.NAME_WIDTH) + "Sub",
        "    b.py".ljust(gen.NAME_WIDTH) + "Module b w.r.t. c",
    ]
    (package / "new.py").write_text('"""A new module."""\n', encoding="utf-8")
    assert gen.tree(package) != before


def test_floors_follow_the_imports_and_refuse_a_circle(tmp_path):
    package = _package(tmp_path, {"__init__.py": "Root.", "low.py": "Low.", "mid.py": "Mid.",
                                  "top/__init__.py": "Top."})
    (package / "mid.py").write_text('"""Mid."""\nfrom . import low\n', encoding="utf-8")
    (package / "top" / "__init__.py").write_text('"""Top."""\nfrom ..mid import thing\n', encoding="utf-8")
    assert gen.floors(package).splitlines()[:3] == ["floor 0: low", "floor 1: mid", "floor 2: top/"]
    (package / "low.py").write_text('"""Low."""\nfrom .top import x\n', encoding="utf-8")
    with pytest.raises(SystemExit, match="import circle"):
        gen.floors(package)


# The modules that may import an array library themselves, each for a job on the host or in one library's own
# code (docs/architecture.md, "Array libraries stay in their adapters"); everything else computes with `xp`.
LIBRARY_IMPORTS = {
    "backends/": "the adapters: each wraps its library",
    "__main__.py": "`python -m nnx info` reports NumPy's BLAS",
    "io.py": "files hold host copies of the arrays",
    "onnx.py": "ONNX initializers are host arrays",
    "plot.py": "matplotlib plots host arrays",
    "distributed/": "MPI and NCCL exchange host or library buffers; torchrun's process group is torch's",
    "sklearn/": "scikit-learn's estimators take and give NumPy arrays",
    "kernels/torch_": "kernels declared for torch alone",
}
LIBRARIES = ("numpy", "cupy", "torch", "jax")


def _library_imports(path: Path) -> set[str]:
    """The array libraries a module imports: import statements anywhere, and ``importlib.import_module("torch")``."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == \
                "import_module" and node.args and isinstance(node.args[0], ast.Constant):
            names = [str(node.args[0].value)]
        found.update(name.split(".")[0] for name in names if name.split(".")[0] in LIBRARIES)
    return found


def test_array_libraries_are_imported_only_where_the_architecture_says():
    package = ROOT / "nnx"
    strays = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        libraries = _library_imports(path)
        if libraries and not any(relative.startswith(prefix) for prefix in LIBRARY_IMPORTS):
            strays.append(f"nnx/{relative}: {sorted(libraries)}")
    assert not strays, "modules importing an array library outside the adapters and the host-side modules:\n" + \
        "\n".join(strays)
