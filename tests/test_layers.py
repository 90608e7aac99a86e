"""The harness's layers: each package of ``bench`` imports only from the packages below it, and the packages
that read result files (schema, analysis, report and their subcommands) never import torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
# package -> the packages of bench it may import from (itself included)
ALLOWED = {
    "core": {"core"},
    "schema": {"schema"},
    "analysis": {"schema", "analysis"},
    "report": {"schema", "analysis", "report"},
    "suites": {"core", "schema", "report", "suites"},
    "execution": {"core", "schema", "suites", "execution"},
    "cli": {"core", "schema", "analysis", "report", "suites", "execution", "cli"},
}
# modules that must load where torch cannot: results in, tables out
TORCH_FREE = ["bench", "bench.schema", "bench.analysis", "bench.report", "bench.cli", "bench.cli.arguments",
              "bench.cli.report", "bench.cli.compare", "bench.analysis.gates", "bench.cli.check",
              "bench.analysis.export", "bench.cli.export"]


def bench_imports(path: Path) -> set[str]:
    """The ``bench.*`` modules a source file imports, at any depth of its code (lazy imports count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.startswith("bench.")}


def package_modules() -> list[tuple[str, Path]]:
    return [(path.relative_to(BENCH).parts[0], path) for path in sorted(BENCH.glob("*/*.py"))]


def test_every_module_belongs_to_a_known_layer():
    assert {package for package, _ in package_modules()} == set(ALLOWED)
    assert [path.name for path in BENCH.glob("*.py")] == ["__init__.py"], "modules belong in a layer's package"


@pytest.mark.parametrize("package, path", package_modules(), ids=lambda p: p if isinstance(p, str) else p.name)
def test_imports_go_down_the_layers_only(package, path):
    upward = sorted(name for name in bench_imports(path)
                    if name.split(".")[1] in ALLOWED and name.split(".")[1] not in ALLOWED[package])
    assert not upward, f"{path.relative_to(BENCH.parent)} ({package}) imports {upward}: above its layer"


def test_reading_results_needs_no_torch():
    """Imported where ``import torch`` fails, the file-reading side of the harness still loads."""
    code = ("import sys\nsys.modules['torch'] = None\nsys.modules['attentions'] = None\nimport importlib\n"
            f"for name in {TORCH_FREE!r}:\n    importlib.import_module(name)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=BENCH.parent)
    assert result.returncode == 0, result.stderr[-2000:]


MAX_LINES = 400
SOURCES = sorted([*BENCH.rglob("*.py"), *(BENCH.parent / "attentions").glob("*.py"), *(BENCH.parent / "tools").glob("*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(BENCH.parent)))
def test_a_long_module_says_why(path):
    """A module longer than MAX_LINES (with a little slack) gives the reason in its docstring."""
    lines = len(path.read_text().splitlines())
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert lines <= MAX_LINES * 1.05 or f"{MAX_LINES} lines" in docstring, \
        f"{path.name}: {lines} lines and its docstring does not say why it is more than {MAX_LINES}"
