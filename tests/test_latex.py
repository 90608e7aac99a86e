"""Every LaTeX table of a report compiles with pdflatex and fits an A4 page with 2.5 cm margins.

The tables come from two reports: the small real run (``small_results``) and the committed
``results/cpu``. Each report's tables are compiled together, in one minimal article with the packages
their ``% requires:`` lines name. Without pdflatex the compile test skips, unless REQUIRE_PDFLATEX=1
(set by ``.ci/run``, which installs TeX).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import bench.report.build
from bench.report.build import build_report
from bench.report.tabular import latex_escape

REPO = Path(__file__).resolve().parents[1]
REQUIRES = re.compile(r"% requires: ([\w-]+(?:, [\w-]+)*)\n")


@pytest.fixture(scope="module", params=["small_run", "results_cpu"])
def tables(request, small_results, tmp_path_factory) -> dict[str, str]:
    """Name -> LaTeX of every table the report of that run or folder writes (its plots are not drawn)."""
    results = small_results if request.param == "small_run" else REPO / "results" / "cpu"
    out = tmp_path_factory.mktemp(request.param)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench.report.build, "make_plots", lambda frame, out_dir, facts, names: [])
        build_report(results, out)
    return {path.stem: path.read_text() for path in sorted((out / "tables").glob("*.tex"))}


def test_every_table_is_ascii_with_caption_label_and_packages(tables):
    assert {"main", "backends"} <= set(tables)
    for name, tex in tables.items():
        assert tex.isascii(), f"{name}.tex: non-ASCII {sorted({ch for ch in tex if not ch.isascii()})}"
        assert REQUIRES.match(tex), f"{name}.tex does not start with a '% requires: ...' line"
        assert tex.count("\\begin{table}") == tex.count("\\caption{") == tex.count("\\label{tab:") >= 1
        assert f"\\label{{tab:{name}}}" in tex


def test_latex_escape_leaves_ascii_only():
    assert latex_escape('‖out − ref‖ ≤ 1/topk, |x| < 2 × 14², p20–p80: the papers\' "FLOPs"') == (
        r"$\|$out $-$ ref$\|$ $\leq$ 1/topk, $|$x$|$ $<$ 2 $\times$ 14$^2$, p20--p80: the papers' ``FLOPs''")
    assert latex_escape("~^\\{}$&%#_") == r"\textasciitilde{}\textasciicircum{}\textbackslash{}\{\}\$\&\%\#\_"
    assert latex_escape("Café 注意") == "Cafe ??"  # any other character: its ASCII letters, else '?'


@pytest.fixture(scope="module")
def pdflatex() -> str:
    path = shutil.which("pdflatex")
    if path is None:
        if os.environ.get("REQUIRE_PDFLATEX") == "1":
            pytest.fail("REQUIRE_PDFLATEX=1 but pdflatex is not installed")
        pytest.skip("pdflatex is not installed (Debian: texlive-latex-base texlive-latex-recommended)")
    return path


def test_every_table_compiles_and_fits_the_page(tables, pdflatex, tmp_path):
    """One document of all the tables: it compiles, and no table is wider than the text (an overfull
    box) or taller than the page (a float too large)."""
    packages = sorted({p for tex in tables.values() for p in REQUIRES.match(tex).group(1).split(", ")})
    body = []
    for name, tex in tables.items():
        (tmp_path / f"{name}.tex").write_text(tex)
        body += [f"\\typeout{{TABLE {name}}}", f"\\input{{{name}.tex}}", "\\clearpage"]
    (tmp_path / "doc.tex").write_text("\n".join([
        "\\documentclass{article}", "\\usepackage[a4paper,margin=2.5cm]{geometry}",
        f"\\usepackage{{{','.join(packages)}}}", "\\begin{document}", *body, "\\end{document}", ""]))
    run = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    log = (tmp_path / "doc.log").read_text(errors="replace")
    problems, table = [], None
    for line in log.splitlines():
        if line.startswith("TABLE "):
            table = line.split()[1]
        elif line.startswith("!") or "Overfull \\hbox" in line or "Float too large" in line:
            problems.append(f"{table}: {line}")
    assert run.returncode == 0 and not problems, "\n".join(problems) or run.stdout[-3000:]
    assert (tmp_path / "doc.pdf").stat().st_size > 0
