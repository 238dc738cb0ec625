"""Report how many type annotations in `nnx/` mention `Any`, in total and per module (issue 19, item 5).

A report, not a test: run ``python benchmarks/count_any.py`` (``--all`` lists every module,
``--names`` counts the parameter names annotated ``Any``, e.g. how many ``model: Any``).
An annotation counts once however often it names `Any` (``dict[str, Any]`` is one). Annotations
naming `nnx.protocols.Array` (an array of some namespace: the one `Any` the array API forces) are
counted apart.
"""

from __future__ import annotations

import argparse
import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "nnx"


def annotations(tree: ast.AST) -> list[tuple[str, ast.expr]]:
    """(parameter or target name, annotation) of every annotated argument, return and assignment."""
    found: list[tuple[str, ast.expr]] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]:
                if arg is not None and arg.annotation is not None:
                    found.append((arg.arg, arg.annotation))
            if node.returns is not None:
                found.append(("return", node.returns))
        elif isinstance(node, ast.AnnAssign):
            found.append((ast.unparse(node.target), node.annotation))
    return found


def mentions_any(annotation: ast.expr, name: str = "Any") -> bool:
    """Whether an annotation names `name` (also inside a string annotation)."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return name in annotation.value
    return any(isinstance(n, ast.Name) and n.id == name or isinstance(n, ast.Attribute) and n.attr == name
               for n in ast.walk(annotation))


def count(package: Path = PACKAGE) -> tuple[collections.Counter, collections.Counter, int, int]:
    """(Any annotations per module, Any annotations per name, all annotations, annotations naming Array)."""
    per_module: collections.Counter = collections.Counter()
    per_name: collections.Counter = collections.Counter()
    total = arrays = 0
    for path in sorted(package.rglob("*.py")):
        found = annotations(ast.parse(path.read_text(encoding="utf-8")))
        total += len(found)
        arrays += sum(mentions_any(annotation, "Array") for _, annotation in found)
        for name, annotation in found:
            if mentions_any(annotation):
                per_module[str(path.relative_to(package.parent))] += 1
                per_name[name] += 1
    return per_module, per_name, total, arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all", action="store_true", help="list every module, not the 15 with most")
    parser.add_argument("--names", action="store_true", help="also count by parameter name")
    options = parser.parse_args()
    per_module, per_name, total, arrays = count()
    print(f"annotations mentioning Any in nnx/: {sum(per_module.values())} of {total} "
          f"(and {arrays} naming Array, the Any the array API forces)")
    print(f"model: Any {per_name['model']}")
    for module, n in per_module.most_common(None if options.all else 15):
        print(f"  {n:4d}  {module}")
    if options.names:
        for name, n in per_name.most_common(25):
            print(f"  {n:4d}  {name}: Any")


if __name__ == "__main__":
    main()
