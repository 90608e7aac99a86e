"""torch.compile in what reads result files: backend labels ('torch+compile'), the "× compiled ref" column of the
backends and BRA fast-path tables, the compile_times tables, the compiled backends' place and style in the figures,
compare's labels and verdicts, and ratio gates on compiled backends. Schema-2 files migrating with compile "eager":
tests/test_schema.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.analysis.compare import compare_runs
from bench.analysis.gates import GateError, evaluate, parse_gate
from bench.analysis.verdicts import NEW_FAILURE, REGRESSED
from bench.report.build import build_report, collect_results
from bench.report.catalog import PLOTS, TABLES
from bench.report.figure_style import backend_style
from bench.report.plot_data import backend_order, scaling_table
from bench.schema.columns import COLUMNS, EAGER, MODEL_COLUMNS
from bench.schema.files import ResultsWriter
from bench.schema.labels import backend_label, backend_labels, label_parts
from bench.schema.metadata import write_metadata
from bench.schema.registry_facts import frozen_facts
from bench.suites.cases import Case
from figure_checks import check_legends_match

FACTS = frozen_facts()
RESOLUTIONS = (14, 28)
# (backend, compile mode) -> latency (ms) at 14², × 4 at 28²; the compiled reference is torch+compile
LATENCY = {("torch", EAGER): 10.0, ("torch", "default"): 5.0, ("chunked", EAGER): 4.0, ("chunked", "default"): 2.5}
COMPILED_REFERENCE = ("torch", "default")


def bra_row(backend: str, mode: str, resolution: int, run_id: str = "compiled", **changes) -> dict:
    """A bra row (its default options) at ``resolution``, fwd, as the sweep writes it: timed against the eager
    reference (torch) and the compiled reference (torch+compile) in paired rounds; compiled rows with their
    compile time and graphs. ``changes`` override any column."""
    case = Case("bra", backend, (), 1, resolution, 16, 2, "float32", "cpu", "fwd", mode)
    scale = (resolution / 14) ** 2
    latency = LATENCY[backend, mode] * scale
    row = dict.fromkeys(COLUMNS, np.nan) | {
        "family": "bra", "backend": backend, "compile": mode, "resolution": resolution, "batch": 1, "dim": 16,
        "heads": 2, "dtype": "float32", "phase": "fwd", "n_win": 7, "topk": 4, "kv_downsample_mode": "identity",
        "status": "ok", "device_name": "synthetic-cpu", "gpu_profile": "cpu", "options": "{}", "device": "cpu",
        "reference_backend": "torch", "run_id": run_id, "case_key": case.key, "seed": 0,
        "timestamp": "2026-01-01T00:00:00+00:00", "gmacs": 0.05 * scale, "latency_ms_median": latency,
        "latency_ms_p20": latency * 0.95, "latency_ms_p80": latency * 1.05, "latency_ms_ci_low": latency * 0.98,
        "latency_ms_ci_high": latency * 1.02, "rounds": 20, "peak_mem_mb": 10.0 * scale, "throughput": 1e3 / latency,
        "param_mb": 0.01}
    if backend != "torch" or mode != EAGER:
        speedup = LATENCY["torch", EAGER] / LATENCY[backend, mode]
        row |= {"speedup_vs_ref": speedup, "speedup_ci_low": speedup * 0.95, "speedup_ci_high": speedup * 1.05}
    if (backend, mode) != COMPILED_REFERENCE:  # none for the compiled reference itself
        speedup = LATENCY[COMPILED_REFERENCE] / LATENCY[backend, mode]
        row |= {"compiled_ref": "torch+compile", "speedup_vs_compiled_ref": speedup,
                "compiled_speedup_ci_low": speedup * 0.9, "compiled_speedup_ci_high": speedup * 1.1}
    if mode != EAGER:
        row |= {"compile_s": 11.5 * scale, "graphs": 1, "graph_breaks": 0, "recompiles": 0}
    return row | changes


def full_row(backend: str, resolution: int) -> dict:
    """Full attention, eager only, no compiled reference in its group: torch, and sdpa timed like bra's chunked."""
    row = bra_row("torch" if backend == "torch" else "chunked", EAGER, resolution)
    case = Case("full", backend, (), 1, resolution, 16, 2, "float32", "cpu", "fwd")
    return row | {"family": "full", "backend": backend, "n_win": np.nan, "topk": np.nan, "kv_downsample_mode": np.nan,
                  "case_key": case.key, "compiled_ref": np.nan, "speedup_vs_compiled_ref": np.nan,
                  "compiled_speedup_ci_low": np.nan, "compiled_speedup_ci_high": np.nan}


# What a case that timed out compiling has none of
MEASUREMENTS = ("latency_ms_median", "latency_ms_p20", "latency_ms_p80", "latency_ms_ci_low", "latency_ms_ci_high",
                "rounds", "peak_mem_mb", "throughput", "speedup_vs_ref", "speedup_ci_low", "speedup_ci_high",
                "speedup_vs_compiled_ref", "compiled_speedup_ci_low", "compiled_speedup_ci_high", "graphs",
                "graph_breaks", "recompiles")


def timed_out(row: dict) -> dict:
    """``row`` as a case whose compile ran past its limit."""
    return row | dict.fromkeys(MEASUREMENTS, np.nan) | {
        "status": "timeout", "compile_s": 600.0, "compiled_ref": np.nan,
        "status_detail": "compile past its limit of 600 s"}


def compiled_rows() -> list[dict]:
    """bra's torch and chunked, eager and compiled, at 14² and 28²; chunked+compile the fastest of all, its 28²
    compile with graph breaks; torch+compile:max-autotune timed out at 14²; full attention eager."""
    rows = [bra_row(backend, mode, resolution) for backend, mode in LATENCY for resolution in RESOLUTIONS]
    rows = [row | {"graphs": 3, "graph_breaks": 2} if (row["backend"], row["compile"], row["resolution"])
            == ("chunked", "default", 28) else row for row in rows]
    autotuned = Case("bra", "torch", (), 1, 14, 16, 2, "float32", "cpu", "fwd", "max-autotune")
    rows.append(timed_out(bra_row("torch", "default", 14) | {"compile": "max-autotune", "case_key": autotuned.key}))
    return rows + [full_row(b, r) for b in ("torch", "sdpa") for r in RESOLUTIONS]


def write_run(path: Path, rows: list[dict], columns: list[str] = COLUMNS) -> Path:
    writer = ResultsWriter(path, columns)
    for row in rows:
        writer.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    write_metadata(path.with_suffix(".json"), {"run_id": path.stem, "rows": len(rows)})
    return path


@pytest.fixture
def compiled_run(tmp_path) -> Path:
    return write_run(tmp_path / "compiled.csv", compiled_rows())


@pytest.fixture
def frame(compiled_run) -> pd.DataFrame:
    """The run as a report reads it: backends as labels."""
    return collect_results(compiled_run)["attentions"][0]


def table_cells(table, backend: str, resolution: int) -> dict[str, str]:
    """The markdown texts of the table's row of ``backend`` at ``resolution``, by header."""
    headers = [c.header for c in table.columns]
    found = [dict(zip(headers, texts)) for texts, row in zip(table.texts(), table.rows)
             if row[1] == backend and row[2] == f"{resolution}²"]
    assert len(found) == 1, (backend, resolution, found)
    return found[0]


# --------------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, label", [(EAGER, "torch"), ("", "torch"), (np.nan, "torch"), (None, "torch"),
                                         ("default", "torch+compile"),
                                         ("max-autotune", "torch+compile:max-autotune"),
                                         ("reduce-overhead", "torch+compile:reduce-overhead")])
def test_a_backend_label_names_the_compile_mode_and_reads_back(mode, label):
    assert backend_label("torch", mode) == label
    assert label_parts(label) == ("torch", mode if isinstance(mode, str) and mode else EAGER)


def test_backend_labels_of_a_frame_and_of_one_without_a_compile_column():
    frame = pd.DataFrame({"backend": ["torch", "sdpa_flash", "torch"], "compile": [EAGER, "max-autotune", "default"]})
    assert list(backend_labels(frame)) == ["torch", "sdpa_flash+compile:max-autotune", "torch+compile"]
    assert list(backend_labels(frame.drop(columns="compile"))) == ["torch", "sdpa_flash", "torch"]


def test_a_report_names_every_compiled_backend_by_its_label(frame):
    assert set(zip(frame["backend"], frame["compile"])) >= {
        ("torch", EAGER), ("torch+compile", "default"), ("chunked+compile", "default"),
        ("torch+compile:max-autotune", "max-autotune")}


# --------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------

def test_the_backends_table_shows_the_speedup_over_the_compiled_reference(frame):
    table = TABLES["backends"].make(frame, FACTS)
    headers = [c.header for c in table.columns]
    assert headers[headers.index("Speedup") + 1] == "× compiled ref"
    assert "× compiled ref: speedup over the compiled reference (torch+compile" in table.to_markdown()
    # chunked, eager: 5 / 4 over torch+compile with its interval; 10 / 4 over the eager reference
    chunked = table_cells(table, "chunked", 14)
    assert (chunked["Speedup"], chunked["× compiled ref"]) == ("2.50× [2.38–2.62]", "1.25× [1.12–1.38]")
    # the compiled reference is a backend against the eager reference, never against itself
    compiled_torch = table_cells(table, "torch+compile", 28)
    assert (compiled_torch["Speedup"], compiled_torch["× compiled ref"]) == ("2.00× [1.90–2.10]", "—")
    assert table_cells(table, "chunked+compile", 28)["× compiled ref"] == "2.00× [1.80–2.20]"
    assert table_cells(table, "torch+compile:max-autotune", 14)["Status"] == "timeout"
    # full attention's group had no compiled reference
    assert table_cells(table, "sdpa", 14)["× compiled ref"] == "—"
    # a backend follows its eager self in the table
    backends = [row[1] for row, block in zip(table.rows, table.blocks) if block == table.blocks[0]]
    assert backends.index("chunked+compile") == backends.index("chunked") + 1


def test_the_tables_are_unchanged_without_a_compiled_reference(frame):
    """A run whose rows hold no speedup over a compiled reference (every run from before) gets the tables it got:
    no "× compiled ref" column, the same cells as the frame without its compile columns."""
    eager = frame[frame["compile"] == EAGER]
    blank = eager.assign(compiled_ref=np.nan, speedup_vs_compiled_ref=np.nan, compiled_speedup_ci_low=np.nan,
                         compiled_speedup_ci_high=np.nan)
    before = eager.drop(columns=["compile", "compiled_ref", "speedup_vs_compiled_ref", "compiled_speedup_ci_low",
                                 "compiled_speedup_ci_high"])
    for name in ("backends", "bra_fast_paths"):
        with_compiled = TABLES[name].make(eager, FACTS)
        assert "× compiled ref" in [c.header for c in with_compiled.columns]
        table = TABLES[name].make(blank, FACTS)
        assert "× compiled ref" not in [c.header for c in table.columns]
        assert table.to_markdown() == TABLES[name].make(before, FACTS).to_markdown()


def test_the_bra_fast_path_table_shows_the_speedup_over_the_compiled_reference(frame):
    table = TABLES["bra_fast_paths"].make(frame, FACTS)
    headers = [c.header for c in table.columns]
    assert headers[headers.index("× ref") + 1] == "× compiled ref"
    assert table_cells(table, "chunked", 28)["× compiled ref"] == "1.25× [1.12–1.38]"
    assert table_cells(table, "chunked+compile", 14)["× ref"] == "4.00× [3.80–4.20]"
    bold = {(table.rows[r][1], table.rows[r][2]) for r, c in table.best_cells() if headers[c] == "× compiled ref"}
    assert bold == {("chunked+compile", "14²"), ("chunked+compile", "28²")}


def test_compile_times_lists_every_compiled_case_and_nothing_for_an_eager_run(frame):
    table = TABLES["compile_times"].make(frame, FACTS)
    headers = [c.header for c in table.columns]
    assert headers[-4:] == ["Compile s", "Graphs", "Graph breaks", "Status"]
    rows = {(cells["Backend"], cells["Res."]): (cells["Compile s"], cells["Graphs"], cells["Graph breaks"],
                                                cells["Status"])
            for cells in (dict(zip(headers, texts)) for texts in table.texts())}
    assert rows == {("torch+compile", "14²"): ("11.5", "1", "0", "ok"),
                    ("torch+compile", "28²"): ("46", "1", "0", "ok"),
                    ("chunked+compile", "14²"): ("11.5", "1", "0", "ok"),
                    ("chunked+compile", "28²"): ("46", "3", "2", "ok"),
                    ("torch+compile:max-autotune", "14²"): ("600", "—", "—", "timeout")}
    assert TABLES["compile_times"].position > TABLES["backends"].position
    assert TABLES["compile_times"].make(frame[frame["compile"] == EAGER], FACTS) is None


def test_model_compile_times(tmp_path):
    def model_row(mode: str, **values) -> dict:
        key = f"biformer_tiny|bra|torch|224|1|float32|cpu|fwd{'' if mode == EAGER else '|compile=' + mode}"
        return dict.fromkeys(MODEL_COLUMNS, np.nan) | {
            "model": "biformer_tiny", "attention": "bra", "backend": "torch", "compile": mode, "resolution": 224,
            "batch": 1, "dtype": "float32", "phase": "fwd", "status": "ok", "device": "cpu", "case_key": key,
            "run_id": "models", "timestamp": "2026-01-01T00:00:00+00:00", "options": "{}", "device_name": "cpu",
            "gpu_profile": "cpu", "latency_ms_median": 20.0, "latency_ms_p20": 19.0, "latency_ms_p80": 21.0,
            "throughput": 50.0, "gmacs_per_image": 2.2, "params_m": 13.1} | values
    compiled = model_row("default", compile_s=95.0, graphs=4, graph_breaks=3)
    path = write_run(tmp_path / "models.csv", [model_row(EAGER), compiled], MODEL_COLUMNS)
    models = collect_results(path)["models"][0]
    table = TABLES["model_compile_times"].make(models, FACTS)
    assert [dict(zip([c.header for c in table.columns], texts)) for texts in table.texts()] == [{
        "Model": "BiFormer-T", "Attention": "bra", "Backend": "torch+compile", "Res.": "224²", "Batch": "1",
        "Dtype": "float32", "Phase": "fwd", "Compile s": "95", "Graphs": "4", "Graph breaks": "3", "Status": "ok"}]
    assert [row[2] for row in TABLES["models"].make(models, FACTS).rows] == ["torch", "torch+compile"]


def test_a_report_of_a_compiled_run_has_the_compile_tables(compiled_run, tmp_path):
    readme = build_report(compiled_run, tmp_path / "report")
    tables = readme.parent / "tables"
    assert (tables / "compile_times.md").is_file() and "### compile_times" in readme.read_text()
    assert "| bra | torch+compile | 28² |" in (tables / "backends.md").read_text()
    assert "× compiled ref" in pd.read_csv(tables / "bra_fast_paths.csv").columns


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------

def test_a_compiled_backend_follows_its_eager_self_and_looks_like_its_half_filled_twin():
    assert backend_order(["triton", "torch+compile:max-autotune", "sdpa", "torch+compile", "torch", "chunked"],
                         FACTS) == ["torch", "torch+compile", "torch+compile:max-autotune", "sdpa", "triton", "chunked"]
    (eager_line, eager), (line, compiled) = backend_style("torch", FACTS), backend_style("torch+compile", FACTS)
    autotuned = backend_style("torch+compile:max-autotune", FACTS)[1]
    assert line == eager_line and compiled.get_marker() == eager == autotuned.get_marker()
    assert (compiled.get_fillstyle(), autotuned.get_fillstyle()) == ("top", "bottom")
    assert backend_style("sdpa+compile", FACTS)[1].get_marker() == backend_style("sdpa", FACTS)[1] != eager


def test_the_figures_draw_compiled_backends_in_their_style_and_pick_one_as_best(frame):
    best = scaling_table(frame, FACTS)
    assert set(best.loc[(best["family"] == "bra") & (best["metric"] == "latency"), "backend"]) == {"chunked+compile"}
    figure = PLOTS["latency_vs_resolution"].make(frame, FACTS)
    assert check_legends_match(figure, FACTS) > 0
    fills = {line.get_gid(): line.get_fillstyle() for ax in figure.axes for line in ax.get_lines()
             if line.get_marker() not in ("None", "")}
    assert fills["backend:torch+compile"] == "top" and fills["backend:torch"] == "full"
    assert check_legends_match(PLOTS["scaling"].make(frame, FACTS), FACTS) > 0


# --------------------------------------------------------------------------------------------
# compare and gates
# --------------------------------------------------------------------------------------------

def test_compare_labels_compiled_cases_and_a_timeout_is_a_new_failure(compiled_run, tmp_path):
    rows = [timed_out(row) if (row["backend"], row["compile"], row["resolution"]) == ("chunked", "default", 28)
            else row for row in compiled_rows()]
    new = write_run(tmp_path / "new" / "compiled.csv", rows)
    table = compare_runs(compiled_run, new).table.set_index("case")
    assert table.loc["bra/chunked+compile 28² C16 h2 b1 float32 fwd", ["backend", "verdict", "change"]].tolist() == [
        "chunked+compile", REGRESSED, NEW_FAILURE]
    assert table.loc["bra/chunked 28² C16 h2 b1 float32 fwd", "verdict"] != REGRESSED
    assert "bra/torch+compile:max-autotune 14² C16 h2 b1 float32 fwd" in table.index
    assert len(table) == len(rows)


def test_a_gate_selects_a_compiled_backend_by_its_label():
    run = pd.DataFrame(compiled_rows())  # as the file holds it: plain backends and their compile modes
    result = evaluate(parse_gate("bra/chunked <= 0.9 * bra/torch+compile"), run, FACTS.defaults)
    # paired with the compiled reference: 1 / speedup_vs_compiled_ref, 1 / 1.25 in [1 / 1.375, 1 / 1.125]
    assert [(c.method, round(c.value, 4), round(c.low, 4), round(c.high, 4), c.passed) for c in result.checks] == [
        ("paired", 0.8, 0.7273, 0.8889, True)] * 2
    # bra/torch is the eager backend alone (no second row per shape): paired with the eager reference
    result = evaluate(parse_gate("bra/torch+compile <= 0.6 * bra/torch"), run, FACTS.defaults)
    assert [(c.method, round(c.value, 4)) for c in result.checks] == [("paired", 0.5)] * 2
    timed_out = evaluate(parse_gate("bra/torch+compile:max-autotune < 100"), run, FACTS.defaults)
    assert not timed_out.passed and timed_out.checks[0].reason.startswith("bra/torch+compile:max-autotune is timeout")
    with pytest.raises(GateError, match="no backend 'flex\\+compile' of 'bra' in the run \\(backends: torch, "
                                        "torch\\+compile, chunked, chunked\\+compile, torch\\+compile:max-autotune\\)"):
        evaluate(parse_gate("bra/flex+compile <= bra"), run, FACTS.defaults)
