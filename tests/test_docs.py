"""The code the README and the documentation show runs as written, and the site builds strictly.

Every fenced ```python block of README.md and docs/**/*.md is executed, page by page,
in one namespace per page (a page reads top to bottom, so later blocks use earlier
names), in a temporary working directory. A block is not run when:

- the line just before its fence is ``<!-- not run: <reason> -->`` (an HTML comment,
  invisible on the site): for fragments such as a method body shown alone;
- it constructs a model on a GPU backend (``backend="cupy"``, ``"torch:cuda"``,
  ``"jax:gpu"``) and none runs here; GPU lines are better shown as comments;
- it imports a module that is not installed (``onnx``, ``mpi4py``, ...): the rest of
  the page is skipped, with the reason.

A page must leave nothing behind in the temporary folder (``tempfile.gettempdir()``).

Pages whose code another test already runs in its proper setting are listed in
COVERED_ELSEWHERE with that test; every other page is run, so a new page is tested
by default. ``mkdocs build --strict`` runs when mkdocs, mkdocs-material and
mkdocstrings are installed (``pip install ".[docs]"``), and is skipped otherwise.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import nnx

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

COVERED_ELSEWHERE = {
    "docs/distributed.md": "its fragments use the reader's model and data: tests/test_docs_claims.py runs them "
                           "in one process, and tests/test_distributed.py runs data-parallel fit under a launcher",
}
GPU_SPECS = ("cupy", "torch:cuda", "jax:gpu")
FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.*?)\s*-->\s*$")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def _blocks(page: Path) -> list[tuple[int, str, str | None]]:
    """(line number, code, reason not to run it or None) of each ```python block."""
    text = page.read_text(encoding="utf-8")
    found = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.search(before)
        found.append((line, match.group(1), marker.group(1) if marker else None))
    return found


def _gpu_runs() -> bool:
    return any(nnx.backends.backend_status(spec)[0] for spec in GPU_SPECS)


def _needs_gpu(tree: ast.AST) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "backend" and isinstance(node.value, ast.Constant):
            value = node.value.value
            if isinstance(value, str) and value.startswith(GPU_SPECS):
                return True
    return False


def _missing_module(tree: ast.AST) -> str | None:
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".", 1)[0]
            if importlib.util.find_spec(top) is None:
                return top
    return None


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


RUN_PAGES = [p for p in _pages() if _rel(p) not in COVERED_ELSEWHERE and _blocks(p)]
# Warnings a page provokes on purpose, by page: the page says why.
EXPECTED_WARNINGS = {
    # its pipeline trains max_iter=50 epochs to stay quick, and scikit-learn's ConvergenceWarning says so
    # (matched by message: the category's module need not be installed for the mark to load)
    "docs/sklearn.md": ["ignore:Stochastic Optimizer. Maximum iterations"],
}


def _page_param(page: Path):
    marks = [pytest.mark.filterwarnings(f) for f in EXPECTED_WARNINGS.get(_rel(page), [])]
    return pytest.param(page, id=_rel(page), marks=marks)


def test_every_page_with_code_is_run_or_covered():
    for name in COVERED_ELSEWHERE:
        if (ROOT / name).exists():
            assert _blocks(ROOT / name), f"{name} has no python blocks left; drop it from COVERED_ELSEWHERE"
    assert any(_rel(p) == "README.md" for p in RUN_PAGES)


@pytest.mark.slow
@pytest.mark.parametrize("page", [_page_param(p) for p in RUN_PAGES])
def test_page_code_runs(page, tmp_path, monkeypatch):
    work, temp = tmp_path / "cwd", tmp_path / "temp"
    work.mkdir()
    temp.mkdir()
    monkeypatch.chdir(work)  # snippets save files (model.save("x.npz")): never into the checkout
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # what a snippet leaves in the temp folder shows
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the page's classes register under this module, as tests/test_extension.py loads the guide (nnx_docs_<page>),
    # so the two runs of one page redefine its classes instead of colliding in one test process
    namespace: dict = {"__name__": f"nnx_docs_{page.stem}"}
    skipped = []
    for line, code, reason in _blocks(page):
        where = f"{_rel(page)}:{line}"
        if reason is not None:
            skipped.append(f"{where} ({reason})")
            continue
        tree = ast.parse(code, filename=where)
        missing = _missing_module(tree)
        if missing is not None:
            pytest.skip(f"{where} and the rest of the page need {missing!r}, which is not installed")
        if _needs_gpu(tree) and not _gpu_runs():
            skipped.append(f"{where} (needs a GPU backend)")
            continue
        try:
            exec(compile(tree, where, "exec"), namespace)  # noqa: S102 - running the docs is the point
        except Exception as exc:
            raise AssertionError(f"the block at {where} failed: {type(exc).__name__}: {exc}\n{code}") from exc
    if skipped:
        print("not run:", *skipped, sep="\n  ")
    left = sorted(p.name for p in temp.iterdir())
    assert not left, f"{_rel(page)} leaves {left} in the temporary folder; clean up (tempfile.TemporaryDirectory)"


def test_readme_links_stay_inside_the_repository():
    """Every relative link of the README names a file of the repository (no pointer to a shared folder)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)[^)]*\)", text) + re.findall(r'src="([^"]+)"', text)
    local = [t for t in targets if "://" not in t and not t.startswith("mailto:")]
    assert local, "the README links to no page of the repository"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
    for page in ("docs/getting_started.md", "docs/backends.md", "docs/training.md"):
        assert page in local, f"the README does not link to {page}"


@pytest.mark.slow
def test_site_builds_strictly(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f'{module} is not installed (pip install ".[docs]")')
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    assert (tmp_path / "site" / "index.html").exists()
