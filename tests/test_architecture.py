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
