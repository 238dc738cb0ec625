"""Write the generated parts of docs/architecture.md from the package itself: its tree, its floors, its long modules.

    python docs/gen_tree.py            # rewrite the generated blocks of docs/architecture.md
    python docs/gen_tree.py --check    # exit 1, showing the difference, when the doc has drifted

Each block sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->`` markers:

- ``tree``: every package and module of ``nnx/`` with the first sentence of its docstring, so a
  module's job is written once, in the module;
- ``floors``: the top-level units of ``nnx`` ordered by their module-level imports (a unit sits one
  floor above the highest unit it imports; function-level imports are not counted);
- ``long-modules``: the modules over ``LONG_LINES`` lines, which the doc must explain.

tests/test_architecture.py fails when a block differs from what this script generates.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nnx"
DOC = ROOT / "docs" / "architecture.md"
LONG_LINES = 600
NAME_WIDTH = 26


def first_sentence(path: Path) -> str:
    """The first sentence of a module's docstring (its first paragraph up to the first full stop)."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    match = re.search(r"\.(\s+[A-Z`(]|$)", paragraph)  # "w.r.t. the" does not end a sentence
    return paragraph[:match.start()] if match else paragraph


def tree(package: Path = PACKAGE) -> str:
    """The package tree: a package's line carries its ``__init__``'s docstring, a module's line its own."""
    lines = [f"{package.name}/".ljust(NAME_WIDTH) + first_sentence(package / "__init__.py")]

    def walk(folder: Path, depth: int) -> None:
        indent = "  " * depth
        for module in sorted(p for p in folder.glob("*.py") if p.name != "__init__.py"):
            lines.append(f"{indent}{module.name}".ljust(NAME_WIDTH) + first_sentence(module))
        for sub in sorted(p for p in folder.iterdir() if (p / "__init__.py").is_file()):
            lines.append(f"{indent}{sub.name}/".ljust(NAME_WIDTH) + first_sentence(sub / "__init__.py"))
            walk(sub, depth + 1)

    walk(package, 1)
    return "\n".join(line.rstrip() for line in lines)


def _module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The top-level unit a module belongs to: ``nnx.training.step`` -> ``training``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def unit_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Top-level unit -> the other units its modules import at module level (``TYPE_CHECKING`` blocks excluded)."""
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        unit = _unit(name)
        if not unit:
            continue  # the package root re-exports everything; it is the top, not a floor
        graph[unit]  # every unit is listed, also one that imports none of the others
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = here.split(".")[:len(here.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in modules]
                targets = subs or [target]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                other = _unit(target) if target in modules else ""
                if other and other != unit:
                    graph[unit].add(other)
    return graph


def floors(package: Path = PACKAGE) -> str:
    """One line per floor: the units whose highest import is on the floor below."""
    graph = unit_imports(package)
    level: dict[str, int] = {}

    def place(unit: str, path: tuple[str, ...]) -> int:
        if unit in path:
            raise SystemExit(f"import circle between top-level units: {' -> '.join((*path, unit))}")
        if unit not in level:
            level[unit] = 1 + max((place(dep, (*path, unit)) for dep in graph[unit]), default=-1)
        return level[unit]

    for unit in graph:
        place(unit, ())
    by_floor: dict[int, list[str]] = defaultdict(list)
    for unit, floor in level.items():
        by_floor[floor].append(unit if (package / f"{unit}.py").is_file() else f"{unit}/")
    rows = [f"floor {floor}: {', '.join(sorted(by_floor[floor]))}" for floor in sorted(by_floor)]
    return "\n".join([*rows, "top:     nnx/__init__.py (the flat re-exports)"])


def long_modules(package: Path = PACKAGE) -> str:
    """The modules over `LONG_LINES` lines, as a Markdown list (names only, so an edit does not move it)."""
    found = [p.relative_to(package.parent).as_posix() for p in sorted(package.rglob("*.py"))
             if len(p.read_text(encoding="utf-8").splitlines()) > LONG_LINES]
    return "\n".join(f"- `{name}`" for name in found) or "- none"


BLOCKS = {
    "tree": lambda: f"```\n{tree()}\n```",
    "floors": lambda: f"```\n{floors()}\n```",
    "long-modules": long_modules,
}


def render(text: str) -> str:
    """`text` with every generated block rewritten; a block's markers must be present."""
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated: {name} -->\n)(?:.*?\n)?(<!-- end: {name} -->)", re.DOTALL)
        if not pattern.search(text):
            raise SystemExit(f"{DOC.relative_to(ROOT)} has no '<!-- generated: {name} -->' ... "
                             f"'<!-- end: {name} -->' block")
        block = make()
        text = pattern.sub(lambda m: m.group(1) + block + "\n" + m.group(2), text)  # noqa: B023 - used at once
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report drift instead of rewriting (exit 1)")
    args = parser.parse_args(argv)
    current = DOC.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if current != wanted:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(keepends=True),
                                                       wanted.splitlines(keepends=True), "doc", "package"))
            return 1
        return 0
    if current != wanted:
        DOC.write_text(wanted, encoding="utf-8")
        print(f"rewrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
