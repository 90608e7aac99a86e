"""Reports from result files alone: tables in three formats, plots, the index, and clear errors."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

import bench.report.build
from bench import cli, load_results
from bench.analysis.variants import with_full_attention, with_reference
from bench.report.build import build_report
from bench.report.catalog import PLOTS, names
from bench.schema.registry_facts import from_snapshot
from bench.report.tables import backend_table, main_table
from bench.report.tables_bra import ablation_table, bra_fast_path_table
from bench.report.tabular import PAGE_LINES, Column, Table, latex_escape
from bench.schema.metadata import write_metadata
from bench.suites.snapshot import registry_snapshot
from small_results import MISMATCH_LATENCY_MS, noise_frame

TABLES = ("main", "bra_topk", "bra_kv_modes", "backends", "bra_fast_paths")
PLOT_NAMES = names(PLOTS, "attentions")
FACTS = from_snapshot(registry_snapshot())  # the registry the small run was measured with


@pytest.fixture(scope="module")
def report(small_results, tmp_path_factory):
    write_metadata(small_results.with_suffix(".json"), {
        "run_id": "run", "preset": "test", "gpu_profile": "cpu", "device_name": "test-cpu",
        "command": "python run_bench.py --gpu cpu", "environment": {"torch": "2.13.0", "suite_commit": "abc123"},
        "nodes": {"node-7": {"gpu_name": "NVIDIA H100 80GB HBM3", "driver": "550.54", "cuda": "12.4", "torch": "2.13.0",
                             "triton": "3.1.0"}}})
    out = tmp_path_factory.mktemp("report")
    return build_report(small_results, out)


def test_report_holds_every_table_and_plot(report):
    out = report.parent
    for name in TABLES:
        for suffix in (".md", ".tex", ".csv"):
            assert (out / "tables" / f"{name}{suffix}").stat().st_size > 0
    for name in PLOT_NAMES:
        assert (out / "plots" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert (out / "plots" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    index = report.read_text()
    for name in TABLES:
        assert f"tables/{name}.tex" in index
    for name in PLOT_NAMES:
        assert f"(plots/{name}.png)" in index
    assert "test-cpu" in index and "abc123" in index and "2.13.0" in index and "python run_bench.py --gpu cpu" in index
    assert "- node `node-7`: NVIDIA H100 80GB HBM3, driver 550.54, CUDA 12.4, torch 2.13.0, triton 3.1.0" in index


@pytest.mark.parametrize("name", TABLES)
def test_latex_is_well_formed(report, name):
    """Each float: a table, a tabular in booktabs rules, one cell per column in every row; specials escaped.
    (tests/test_latex.py compiles them.)"""
    tex = (report.parent / "tables" / f"{name}.tex").read_text()
    floats = tex.count(r"\begin{table}")
    assert re.findall(r"\\begin\{(\w+)\}", tex) == ["table", "tabular"] * floats
    assert re.findall(r"\\end\{(\w+)\}", tex) == ["tabular", "table"] * floats
    assert tex.count(r"\toprule") == tex.count(r"\bottomrule") == floats
    for part in tex.split(r"\begin{table}")[1:]:
        assert part.index(r"\toprule") < part.index(r"\midrule") < part.index(r"\bottomrule")
        spec = re.search(r"\\begin\{tabular\}\{(\w+)\}", part).group(1)
        for line in part[part.index(r"\toprule"):part.index(r"\bottomrule")].splitlines():
            if line.endswith(r"\\") and r"\multicolumn" not in line:  # not a heading or a span
                assert len(re.split(r"(?<!\\)&", line)) == len(spec), line
    assert tex.count("{") == tex.count("}")
    body = "\n".join(line for line in tex.splitlines() if not line.startswith("%"))
    assert re.search(r"(?<!\\)[_%#]", re.sub(r"\\(label|begin|end)\{[^}]*\}", "", body)) is None  # all escaped
    assert (r"\textbf{" in tex) == (name != "bra_fast_paths")  # the small run has one fast path: nothing to rank
    assert "\\caption{" in tex and "GMACs" in tex and "2 $\\times$ MACs" in tex


def test_latex_keeps_the_paper_columns_and_the_markdown_all(small_results):
    """main's LaTeX: the paper's columns, the resolution, width and phase in block headings; the markdown
    and CSV keep every column."""
    table = main_table(load_results(small_results), FACTS)
    tex, markdown = table.to_latex(), table.to_markdown()
    header = r"Variant & Backend & GMACs & Latency ms & Mem MB & $\times$ full & $\times$ ref \\"
    assert header in tex.splitlines()
    assert r"\multicolumn{7}{l}{\emph{Res. 7$^2$, C/heads 16/2, Phase fwd}} \\" in tex
    assert "Img/s" not in tex and "Mem/full" not in tex and "Params" not in tex
    assert list(table.frame().columns) == [c.header for c in table.columns]
    assert all(f" {c.header} |" in markdown for c in table.columns)


def test_latex_float_per_page_of_rows():
    """A table longer than a page is cut into floats at block boundaries, the first with the caption, the
    note and the label; a block longer than a page is cut too."""
    table = Table("t", "caption", [Column("name"), Column("ms", best="min")], note="note " * 40,
                  rows=[[f"r{i}", float(i)] for i in range(100)], blocks=[0] * 30 + [1] * 30 + [2] * 40)
    assert [len(page) for page in table.pages(table.note)] == [30, 30, 40]
    table.blocks = [0] * 100
    assert [len(page) for page in table.pages(table.note)] == [PAGE_LINES - 3, 100 - (PAGE_LINES - 3)]  # note: 2 lines
    tex = table.to_latex()
    assert tex.count(r"\begin{table}") == 2 and tex.count(r"\footnotesize") == 1
    assert r"\caption{caption}" in tex and r"\label{tab:t}" in tex
    assert r"\caption{caption (continued)}" in tex and r"\label{tab:t:2}" in tex


def test_main_table_keeps_failed_rows_and_never_ranks_a_mismatch(small_results):
    frame = load_results(small_results)
    table = main_table(frame, FACTS)
    shown = table.frame()
    statuses = " ".join(str(c) for c in shown["Latency ms"])
    assert "OOM" in statuses and "ERROR" in statuses and "MISMATCH" in statuses
    assert len(shown) == len(frame)  # nothing silently dropped
    mismatch = shown[shown["Latency ms"].astype(str).str.contains("MISMATCH")]
    assert len(mismatch) == 1
    assert mismatch[["× full", "× ref", "Img/s", "Mem MB"]].isna().all(axis=None)
    assert not (shown["Latency ms"] == MISMATCH_LATENCY_MS).any()
    markdown = table.to_markdown()
    assert "**" in markdown and f"{MISMATCH_LATENCY_MS:.3g} [" in markdown  # shown as measured, not bold
    assert f"**{MISMATCH_LATENCY_MS:.3g}" not in markdown


def test_speedups_come_from_the_measured_rows(small_results):
    frame = load_results(small_results)
    shown = main_table(frame, FACTS).frame()
    row = shown[(shown["Variant"] == "window") & (shown["Backend"] == "sdpa") & (shown["Res."] == "7²")
                & (shown["Phase"] == "fwd")].iloc[0]
    pick = lambda f, b: frame[(frame.family == f) & (frame.backend == b) & (frame.resolution == 7)  # noqa: E731
                              & (frame.phase == "fwd")].iloc[0]
    window, window_ref, full = pick("window", "sdpa"), pick("window", "torch"), pick("full", "sdpa")
    assert row["× full"] == pytest.approx(full.latency_ms_median / window.latency_ms_median)
    # against the reference: the paired speedup of the run (the two were timed in the same rounds)
    assert row["× ref"] == pytest.approx(window.speedup_vs_ref)
    assert window.speedup_ci_low <= window.speedup_vs_ref <= window.speedup_ci_high
    assert window_ref.backend == "torch" and pd.isna(window_ref.speedup_vs_ref)
    assert row["Mem/full"] == pytest.approx(window.peak_mem_mb / full.peak_mem_mb)
    backends = backend_table(frame, FACTS).frame()
    assert set(backends["Backend"]) == {"sdpa"}
    assert backends["Status"].str.contains("mismatch").sum() == 1
    assert backends.loc[backends["Status"] == "mismatch", "Speedup"].isna().all()


def test_ratios_never_pair_rows_of_two_device_names(small_results):
    """A run spread over two device models (a mixed Ray cluster): here the sdpa rows at 14² ran on
    another one. They get no ratio to the reference rows of the first, even the run's paired speedup;
    full attention on the same device is still their partner; the rest keeps its ratios."""
    frame = load_results(small_results)
    moved = (frame["backend"] == "sdpa") & (frame["resolution"] == 14)
    frame.loc[moved, "device_name"] = "other-cpu"
    rows = with_full_attention(with_reference(frame))
    assert rows.loc[moved, ["reference_status", "reference_speedup", "reference_mem_ratio"]].isna().all(axis=None)
    ok = rows["status"] == "ok"
    windows = rows[moved & ok & (rows["family"] == "window") & (rows["full_status"] == "ok")]
    assert len(windows) and windows["full_speedup"].notna().all()
    kept = rows[~moved & ok & (rows["backend"] == "sdpa") & (rows["reference_status"] == "ok")]
    assert len(kept) and kept["reference_speedup"].notna().all()
    shown = main_table(frame, FACTS).frame()
    assert shown.loc[(shown["Backend"] == "sdpa") & (shown["Res."] == "14²"), "× ref"].isna().all()


def test_bra_fast_path_table_takes_its_ratios_from_the_rows(small_results):
    """BRA's sdpa rows against the reference, a flex backend and dense flash attention; the flex and
    flash rows are the run's own bra/full sdpa rows relabelled with 2× and 3× their latency."""
    frame = load_results(small_results)
    sdpa = (frame["backend"] == "sdpa") & (frame["status"] == "ok")
    flex = frame[sdpa & (frame["family"] == "bra")].assign(backend="flex")
    flash = frame[sdpa & (frame["family"] == "full")].assign(backend="sdpa_flash")
    flex["latency_ms_median"] *= 2
    flash["latency_ms_median"] *= 3
    shown = bra_fast_path_table(pd.concat([frame, flex, flash], ignore_index=True), FACTS).frame()
    assert set(shown["Backend"]) == {"sdpa", "flex"}
    assert shown["Variant"].str.contains("avgpool").sum() == 0  # the FLOP ratio assumes unpooled regions
    row = shown[(shown["Backend"] == "sdpa") & (shown["Res."] == "7²") & (shown["Phase"] == "fwd")
                & (shown["Variant"] == "bra")].iloc[0]  # "bra": its defaults, topk 4
    pick = lambda f, b: frame[(frame.family == f) & (frame.backend == b) & (frame.resolution == 7)  # noqa: E731
                              & (frame.phase == "fwd") & (frame.options == "{}")].iloc[0]
    bra, bra_ref, full = pick("bra", "sdpa"), pick("bra", "torch"), pick("full", "sdpa")
    assert row["× ref"] == pytest.approx(bra.speedup_vs_ref)  # paired with the reference in the run's rounds
    assert row["Mem/ref"] == pytest.approx(bra.peak_mem_mb / bra_ref.peak_mem_mb)
    assert row["1/topk"] == 0.25 and row["FLOP ratio"] == 49 / 4
    assert row["× flex"] == pytest.approx(2)
    assert row["× flash"] == pytest.approx(3 * full.latency_ms_median / bra.latency_ms_median)
    assert row["% of FLOP ratio"] == pytest.approx(row["× flash"] / (49 / 4))
    assert shown.loc[shown["Backend"] == "flex", "× flex"].isna().all()


def test_ablation_tables_cover_the_sweep(small_results):
    frame = load_results(small_results)
    topk = ablation_table(frame, "topk").frame()
    assert sorted(set(topk["topk"])) == ["1", "4"]
    kv = ablation_table(frame, "kv_downsample_mode").frame()
    assert set(kv["kv mode"]) == {"identity", "avgpool"}
    assert "ERROR" in set(kv["7² ms"].astype(str))  # avgpool cannot pool 1×1 regions: its status is shown
    assert ablation_table(frame[frame["family"] != "bra"], "topk") is None


def test_noisy_rows_keep_their_peak_memory_and_memory_ratios():
    """Peak memory is no timing figure: a noisy row shows its memory and its memory ratios in every table,
    and still no ratio of timings."""
    frame = noise_frame()
    shown = main_table(frame, FACTS).frame()
    noisy = shown[shown["Latency ms"].astype(str).str.endswith("NOISY")]
    assert len(noisy) == (frame["status"] == "noisy").sum() and noisy["Mem MB"].notna().all()
    assert noisy[["× ref", "× full", "Img/s"]].isna().all(axis=None)
    case = {"Variant": "full", "Backend": "sdpa", "Res.": "14²", "Phase": "fwd"}  # noisy, its reference ok

    def pick(table: pd.DataFrame, **columns) -> pd.Series:
        return table[(table[list(columns)] == pd.Series(columns)).all(axis=1)].iloc[0]
    assert pick(shown, **case)[["Mem MB", "Mem/ref"]].tolist() == pytest.approx([1.5, 0.5])
    backends = pick(backend_table(frame, FACTS).frame(), **case)
    assert backends["Status"] == "noisy" and backends["Mem saving"] == pytest.approx(2.0)
    assert pd.isna(backends["Speedup"])
    topk = pick(ablation_table(frame, "topk").frame(), Phase="fwd", Backend="chunked", topk="1")
    assert str(topk["14² ms"]).endswith("NOISY") and topk["14² MB"] == pytest.approx(0.9)
    fast = pick(bra_fast_path_table(frame, FACTS).frame(), **case | {"Variant": "bra (topk=1)", "Backend": "chunked"})
    assert fast["Mem/ref"] == pytest.approx(0.3) and pd.isna(fast["× ref"])


def test_the_topk_table_has_rows_only_for_what_the_sweep_ran():
    """topk 16 ran once (chunked, 14², fwd): one row for it, none of "—" for the backends and phases without it."""
    frame = noise_frame()
    shown = ablation_table(frame, "topk").frame()
    bra = frame[frame["family"] == "bra"]
    ran = set(zip(bra["phase"], bra["backend"], bra["topk"].astype(int).astype(str)))
    assert len(shown) == len(ran) == 17 and set(zip(shown["Phase"], shown["Backend"], shown["topk"])) == ran
    only = shown[shown["topk"] == "16"]
    assert only[["Phase", "Backend", "28² ms"]].values.tolist() == [["fwd", "chunked", None]]


def test_best_value_is_bold_per_block():
    table = Table("t", "caption", [Column("name"), Column("ms", best="min"), Column("img/s", best="max")],
                  rows=[["a", 2.0, 10.0], ["b", 1.0, 5.0], ["c", 3.0, None], ["d", 9.0, 1.0]], blocks=[0, 0, 0, 1])
    assert table.best_cells() == {(1, 1), (0, 2)}  # block 1 has one row: nothing to rank
    assert "| b | **1** | 5 |" in table.to_markdown() and "| c | 3 | — |" in table.to_markdown()
    assert latex_escape("topk_1 50% a&b #2 3×") == r"topk\_1 50\% a\&b \#2 3$\times$"


def test_report_cli_and_clear_errors(small_results, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench.report.build, "make_plots", fake_plots(("latency_vs_resolution",)))  # (drawn elsewhere)
    assert cli.main(["report", str(small_results), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "README.md").exists()
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "foreign.csv").write_text("a,b\n1,2\n")
    for bad, message in [(tmp_path / "missing.csv", "does not exist"), (tmp_path / "empty.csv", "is empty"),
                         (tmp_path / "foreign.csv", "not a results file")]:
        assert cli.main(["report", str(bad), "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    assert cli.main(["report", str(empty_dir)]) == 2
    assert "no results .csv" in capsys.readouterr().err


def test_a_folder_of_runs_keeps_the_newest_row_per_case(small_results, tmp_path, monkeypatch):
    monkeypatch.setattr(bench.report.build, "make_plots", fake_plots(("latency_vs_resolution",)))  # (drawn elsewhere)
    frame = pd.read_csv(small_results)
    latencies = ["latency_ms_median", "latency_ms_p20", "latency_ms_p80", "latency_ms_ci_low", "latency_ms_ci_high"]
    older = frame.assign(timestamp="2000-01-01T00:00:00+00:00", **{c: frame[c] * 100 for c in latencies})
    older.to_csv(tmp_path / "old.csv", index=False)
    frame.to_csv(tmp_path / "new.csv", index=False)
    (tmp_path / "new.json").write_text(json.dumps({"run_id": "new"}))
    readme = build_report(tmp_path, tmp_path / "out")
    main = pd.read_csv(tmp_path / "out" / "tables" / "main.csv")
    assert len(main) == len(frame)
    newest = pd.to_numeric(main["Latency ms"], errors="coerce").dropna()
    assert newest.max() <= frame["latency_ms_median"].max()  # none of the 100× older rows
    assert "Run `old`" in readme.read_text() and "no metadata file" in readme.read_text()


def fake_plots(names: tuple[str, ...]):
    """A stand-in for ``make_plots`` (drawn and tested in test_plots.py) writing empty plots of ``names``."""
    def make(frame, out_dir, facts, plot_names):
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{name}{suffix}" for name in names for suffix in (".png", ".pdf")]
        for path in paths:
            path.write_bytes(b"")
        return paths
    return make


def report_files(out) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() or p.is_symlink()}


def test_a_report_removes_only_its_own_stale_tables_and_plots(small_results, tmp_path, monkeypatch):
    """Rewritten over an earlier report, a report removes the tables and plots it no longer writes (of an
    earlier version, or that no longer apply), so that its folder and its index agree; everything else
    stays: other files, subfolders (the sweeps' per-run reports among them), links and what they point to."""
    out = tmp_path / "reports" / "cpu"
    stale = ["tables/old_table.md", "tables/old_table.tex", "tables/old_table.csv", "plots/old_plot.png",
             "plots/old_plot.pdf"]
    kept = ["tables/notes.txt", "plots/drafts/sketch.png", "notes.md", "20260101T000000Z-quick/README.md",
            "20260101T000000Z-quick/tables/main.md", "20260101T000000Z-quick/plots/topk_sweep.png"]
    for name in stale + kept:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("earlier\n")
    outside = tmp_path / "reports" / "elsewhere.md"
    outside.write_text("not the report's\n")
    link = out / "tables" / "linked.md"
    link.symlink_to(outside)

    monkeypatch.setattr(bench.report.build, "make_plots", fake_plots(("latency_vs_resolution", "topk_sweep")))
    readme = build_report(small_results, out)
    files = report_files(out)
    assert not set(stale) & files
    assert set(kept) <= files and all((out / name).read_text() == "earlier\n" for name in kept)
    assert link.is_symlink() and outside.read_text() == "not the report's\n"
    ours = {name for name in files if name.startswith(("tables/", "plots/")) and "/" not in name.split("/", 1)[1]
            and name.endswith((".md", ".tex", ".csv", ".png", ".pdf")) and name != "tables/linked.md"}
    assert ours == {f"tables/{t}{s}" for t in TABLES for s in (".md", ".tex", ".csv")} | {
        f"plots/{p}{s}" for p in ("latency_vs_resolution", "topk_sweep") for s in (".png", ".pdf")}
    index = readme.read_text()
    assert all(f"tables/{t}.tex" in index for t in TABLES) and "(plots/topk_sweep.png)" in index

    # the same folder from runs without BRA rows: the BRA tables and the topk plot no longer apply
    frame = pd.read_csv(small_results)
    no_bra = tmp_path / "no_bra.csv"
    frame[frame["family"] != "bra"].to_csv(no_bra, index=False)
    monkeypatch.setattr(bench.report.build, "make_plots", fake_plots(("latency_vs_resolution",)))
    index = build_report(no_bra, out).read_text()
    files = report_files(out)
    assert {name for name in files if name.startswith("tables/") and name.count("/") == 1} == {
        f"tables/{t}{s}" for t in ("main", "backends") for s in (".md", ".tex", ".csv")} | {
        "tables/notes.txt", "tables/linked.md"}
    assert {name for name in files if name.startswith("plots/")} == {
        "plots/latency_vs_resolution.png", "plots/latency_vs_resolution.pdf", "plots/drafts/sketch.png"}
    assert "bra_topk" not in index and "topk_sweep" not in index
    assert set(kept) <= files and link.is_symlink() and outside.exists()


def test_report_of_one_run_goes_to_its_own_folder_and_of_a_folder_to_the_gpu_folder(small_results, tmp_path,
                                                                                      monkeypatch, capsys):
    """Without --out: a run's report in reports/<gpu>/<run-id>/, a folder's in reports/<gpu>/ (results and
    reports beside each other, as in the repository)."""
    monkeypatch.setattr(bench.report.build, "make_plots", fake_plots(("latency_vs_resolution",)))
    results = tmp_path / "results" / "cpu"
    results.mkdir(parents=True)
    run = results / "20260101T000000Z-quick.csv"
    run.write_bytes(small_results.read_bytes())
    assert cli.main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == \
        f"report written to {tmp_path / 'reports' / 'cpu' / '20260101T000000Z-quick' / 'README.md'}"
    assert cli.main(["report", str(results)]) == 0
    assert capsys.readouterr().out.strip() == f"report written to {tmp_path / 'reports' / 'cpu' / 'README.md'}"
    assert (tmp_path / "reports" / "cpu" / "20260101T000000Z-quick" / "tables" / "main.md").exists()
