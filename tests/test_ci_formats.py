"""Output for CI: ``run_bench.py compare --format text|markdown|json`` and ``run_bench.py export --format
github-action-benchmark``, on the committed CPU runs of results/cpu/ and copies of them (nothing is timed here)."""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from bench.analysis.compare import compare_runs
from bench.analysis.compare_formats import format_markdown, markdown_text
from bench.analysis.export import ENTRY_KEYS, benchmark_entries
from bench.analysis.verdicts import REGRESSED
from bench.cli import COMMANDS, main as main_program
from bench.cli import export as export_command
from bench.cli.compare import main as main_compare
from bench.schema.files import load_results
from bench.schema.registry_facts import frozen_facts

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "results" / "cpu"
BASE = RUNS / "20261130T103150Z-bra56-topk4-paired.csv"  # two runs of the same five cases
NEW = RUNS / "20261130T103322Z-bra56-topk4-paired.csv"
BOTH_PHASES = RUNS / "20261205T091110Z-bra56-topk4.csv"  # BASE's cases and five more; a warning against BASE
DEFAULT_RUN = RUNS / "20261205T083834Z-default.csv"  # 280 rows, unsupported ones among them
MODEL_RUN = RUNS / "20261205T091147Z-models.csv"
CHUNKED = "bra/chunked 56² C64 h2 b8 float32 fwd"  # a case of BASE and NEW, ok in both


def copy_run(source: Path, target: Path, edit: Callable[[pd.DataFrame], None]) -> Path:
    """A copy of a run (its CSV edited in place by ``edit``, every cell as text; its metadata as it is)."""
    frame = pd.read_csv(source, keep_default_na=False, na_values=[""], dtype=str)
    edit(frame)
    frame.to_csv(target, index=False)
    shutil.copy(source.with_suffix(".json"), target.with_suffix(".json"))
    return target


@pytest.fixture
def slower_chunked(tmp_path) -> Path:
    """NEW with its chunked case made twice as slow by its code: latencies doubled, and its speedup over the
    reference timed beside it halved (what a real slowdown of the code does to a paired run)."""
    def slow_down(frame: pd.DataFrame) -> None:
        row = frame.index[frame["backend"] == "chunked"][0]
        for column in ("latency_ms_median", "latency_ms_p20", "latency_ms_p80"):
            frame.loc[row, column] = repr(float(frame.loc[row, column]) * 2)
        for column in ("speedup_vs_ref", "speedup_ci_low", "speedup_ci_high"):
            frame.loc[row, column] = repr(float(frame.loc[row, column]) / 2)
    return copy_run(NEW, tmp_path / "slower.csv", slow_down)


def compare_output(capsys, *argv: str) -> tuple[int, str]:
    """(exit status, stdout) of ``run_bench.py compare ARGV``."""
    status = main_compare([str(arg) for arg in argv])
    return status, capsys.readouterr().out


def text_counts(text: str) -> dict[str, int]:
    """The verdict counts of the text format's 'Cases:' line."""
    line = next(line for line in text.splitlines() if line.startswith("Cases: "))
    return {verdict: int(n) for n, verdict in re.findall(r"(\d+) (\w+)", line)}


def strict_json(text: str) -> object:
    """JSON as a strict reader reads it: NaN or Infinity is an error, not a number."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of each line of the markdown's table (header and separator included), split at unescaped pipes."""
    return [re.split(r"(?<!\\)\|", line)[1:-1] for line in markdown.splitlines() if line.startswith("|")]


# --------------------------------------------------------------------------------------------
# compare --format
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("new", [NEW, BOTH_PHASES], ids=["same cases", "more cases"])
def test_the_text_format_is_the_default_output(capsys, new):
    default = compare_output(capsys, BASE, new)
    assert compare_output(capsys, BASE, new, "--format", "text") == default
    assert default[1].strip().splitlines()[-1].startswith("UNDECIDED: 3 of 5 cases inconclusive")


def test_every_format_exits_with_the_same_status(capsys, slower_chunked):
    for new, expected in ((NEW, 3), (slower_chunked, 1)):
        assert [compare_output(capsys, BASE, new, "--format", f)[0] for f in ("text", "markdown", "json")] \
            == [expected] * 3


@pytest.mark.parametrize("new", [NEW, BOTH_PHASES], ids=["same cases", "more cases"])
def test_markdown_has_the_verdict_line_and_a_table_row_per_compared_case(capsys, new):
    _, text = compare_output(capsys, BASE, new)
    status, markdown = compare_output(capsys, BASE, new, "--format", "markdown")
    lines = markdown.strip().splitlines()
    assert lines[0].startswith("## ") and status == 3
    assert f"**{markdown_text(text.strip().splitlines()[-1])}**" in lines
    rows = table_rows(markdown)
    assert len(rows) == 2 + 5 and len({len(row) for row in rows}) == 1  # header, separator, one row per case
    assert [cell.strip() for cell in rows[0]][:2] == ["family", "backend"]
    assert all(set(cell) <= set("-:") for cell in rows[1])
    assert [row[1].strip() for row in rows[2:]] == list(pd.read_csv(BASE)["backend"])  # BASE's order: none regressed
    warnings = [line for line in text.splitlines() if line.startswith("  - ")]
    bullets = [line for line in lines if line.startswith("- ")]
    assert len(bullets) == len(warnings)  # the warnings and the cases in one run only


def test_markdown_puts_the_regressed_case_first_in_bold(capsys, slower_chunked):
    status, markdown = compare_output(capsys, BASE, slower_chunked, "--format", "markdown")
    first = [cell.strip() for cell in table_rows(markdown)[2]]
    assert status == 1 and first[1] == "chunked" and f"**{REGRESSED}**" in first
    assert markdown.count(f"**{REGRESSED}**") == 1


def test_markdown_escapes_pipes_and_line_breaks_in_cells():
    comparison = compare_runs(BASE, NEW)
    comparison.table.loc[0, "reason"] = "a | b\nc"
    comparison.table.loc[1, "options"] = "mode=x|y"
    rows = table_rows(format_markdown(comparison))
    assert len(rows) == 7 and len({len(row) for row in rows}) == 1
    assert "a \\| b c" in "|".join(rows[2]) and "mode=x\\|y" in "|".join(rows[3])


def test_json_reads_back_and_agrees_with_the_text(capsys):
    status, text = compare_output(capsys, BASE, NEW, "--max-regression", "20%", "--min-shared", "80%",
                                  "--max-inconclusive", "50%")
    json_status, out = compare_output(capsys, BASE, NEW, "--max-regression", "20%", "--min-shared", "80%",
                                      "--max-inconclusive", "50%", "--format", "json")
    report = strict_json(out)
    assert json_status == status == report["exit_status"] == 3
    assert report["verdict_line"] == text.strip().splitlines()[-1]
    assert report["decision"].upper() == report["verdict_line"].split(":")[0]
    assert {v: n for v, n in report["counts"].items() if n} == text_counts(text) == {"inconclusive": 3, "ok": 2}
    assert report["thresholds"] == {"max_regression": 0.2, "min_shared": 0.8, "max_inconclusive": 0.5}
    assert report["compared"] == len(report["cases"]) == 5 and report["warnings"] == []
    rows = pd.read_csv(NEW).set_index("backend")
    cases = {case["backend"]: case for case in report["cases"]}
    assert cases["chunked"]["case"] == CHUNKED
    assert cases["chunked"]["new"]["latency_ms_median"] == pytest.approx(rows.loc["chunked", "latency_ms_median"])
    assert cases["chunked"]["new"]["rounds"] == rows.loc["chunked", "rounds"]
    triton = cases["triton"]  # unsupported in both: no numbers, and null for each
    assert triton["base"]["latency_ms_median"] is None and triton["latency_ratio"] is None
    assert triton["new"]["latency_ms_interval"] is None and triton["base"]["status"] == "unsupported"


def test_json_of_a_doubled_latency_says_regressed_and_exit_1(capsys, slower_chunked):
    status, out = compare_output(capsys, BASE, slower_chunked, "--format", "json")
    report = strict_json(out)
    assert status == report["exit_status"] == 1 and report["decision"] == "failed"
    assert report["counts"][REGRESSED] == 1
    [case] = [case for case in report["cases"] if case["verdict"] == REGRESSED]
    base, new = pd.read_csv(BASE).set_index("backend"), pd.read_csv(NEW).set_index("backend")
    assert case["case"] == CHUNKED and case["change"] == "slower" and "latency 2.0" in case["reason"]
    assert case["latency_ratio"] == pytest.approx(2 * new.loc["chunked", "latency_ms_median"]
                                                  / base.loc["chunked", "latency_ms_median"])
    assert case["base"]["latency_ms_median"] == pytest.approx(base.loc["chunked", "latency_ms_median"])
    interval = case["new"]["latency_ms_interval"]
    assert interval["source"] == "p20-p80"
    assert interval["low"] == pytest.approx(2 * new.loc["chunked", "latency_ms_p20"])


@pytest.mark.parametrize("fmt", ["markdown", "json"])
def test_an_unusable_file_exits_2_with_one_line_in_every_format(tmp_path, capsys, fmt):
    missing = tmp_path / "missing.csv"
    assert main_compare([str(BASE), str(missing), "--format", fmt]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert captured.err.startswith("run_bench.py compare: error:") and "missing.csv" in captured.err


# --------------------------------------------------------------------------------------------
# export --format github-action-benchmark
# --------------------------------------------------------------------------------------------

def run_export(*argv: str) -> int:
    """``run_bench.py export ARGV``: through the program's command line once bench.cli registers ``export``, else
    through the command module with a parser of its own."""
    argv_text = [str(arg) for arg in argv]
    if "export" in COMMANDS:
        return main_program(["export", *argv_text])
    parser = argparse.ArgumentParser(prog="run_bench.py export")
    export_command.add_arguments(parser)
    return export_command.run(parser.parse_args(argv_text), parser, argv_text)


def exported(capsys, *argv: str) -> tuple[list[dict], str]:
    """The entries that ``run_bench.py export ARGV`` prints, and its stderr; it must exit 0."""
    assert run_export(*argv) == 0
    captured = capsys.readouterr()
    return strict_json(captured.out), captured.err


@pytest.mark.parametrize("run", [BASE, DEFAULT_RUN], ids=["paired", "default"])
def test_export_writes_one_entry_per_timed_row_and_one_per_peak_memory(capsys, run):
    entries, err = exported(capsys, run, "--format", "github-action-benchmark")
    rows = pd.read_csv(run)
    timed = rows[rows["status"].isin(["ok", "noisy"])]
    assert isinstance(entries, list) and all(isinstance(entry, dict) for entry in entries)
    assert sum(entry["unit"] == "ms" for entry in entries) == len(timed)
    assert sum(entry["unit"] == "MB" for entry in entries) == timed["peak_mem_mb"].notna().sum()
    assert len(entries) == len(timed) + timed["peak_mem_mb"].notna().sum()
    names = [entry["name"] for entry in entries]
    assert len(set(names)) == len(names)
    for entry in entries:
        assert {"name", "unit", "value"} <= set(entry) <= set(ENTRY_KEYS)
        assert isinstance(entry["name"], str) and entry["name"] and isinstance(entry["unit"], str)
        assert isinstance(entry["value"], float) and math.isfinite(entry["value"]) and entry["value"] > 0
        assert all(isinstance(entry[key], str) for key in ("range", "extra") if key in entry)
    left_out = rows["status"].value_counts().drop(["ok", "noisy"], errors="ignore")
    assert err.count("\n") == 1 and err.startswith("run_bench.py export: left out")
    assert all(f"{n} {status}" in err for status, n in left_out.items())


def test_export_values_are_the_rows_medians_and_peak_memories(capsys):
    entries, _ = exported(capsys, BASE)
    by_name = {entry["name"]: entry for entry in entries}
    chunked = pd.read_csv(BASE).set_index("backend").loc["chunked"]
    latency, memory = by_name[CHUNKED], by_name[f"{CHUNKED} peak memory"]
    assert (latency["unit"], latency["value"]) == ("ms", pytest.approx(chunked["latency_ms_median"]))
    assert (memory["unit"], memory["value"]) == ("MB", pytest.approx(chunked["peak_mem_mb"]))
    assert latency["extra"] == f"status {chunked['status']}; {int(chunked['rounds'])} rounds; {chunked['device_name']}"
    assert "range" not in latency  # the committed runs recorded no latency interval


def test_export_range_is_the_half_width_of_the_latency_interval(tmp_path, capsys):
    def add_interval(frame: pd.DataFrame) -> None:
        frame["latency_ms_ci_low"], frame["latency_ms_ci_high"] = "", ""
        row = frame.index[frame["backend"] == "chunked"][0]
        median = float(frame.loc[row, "latency_ms_median"])
        frame.loc[row, "latency_ms_ci_low"], frame.loc[row, "latency_ms_ci_high"] = repr(0.97 * median), \
            repr(1.05 * median)

    run = copy_run(BASE, tmp_path / "with-interval.csv", add_interval)
    entries, _ = exported(capsys, run)
    ranges = {entry["name"]: entry.get("range") for entry in entries}
    median = pd.read_csv(BASE).set_index("backend").loc["chunked", "latency_ms_median"]
    assert ranges[CHUNKED].startswith("± ")
    assert float(ranges[CHUNKED][2:]) == pytest.approx(0.04 * median, rel=1e-2)
    assert [name for name, text in ranges.items() if text] == [CHUNKED]


def test_export_out_writes_what_stdout_shows(tmp_path, capsys):
    printed, _ = exported(capsys, BASE)
    out = tmp_path / "deeper" / "bench.json"
    assert run_export(BASE, "--out", out) == 0
    assert strict_json(out.read_text()) == printed and str(out) in capsys.readouterr().out


def test_shared_labels_get_their_case_key_and_a_repeated_case_its_last_row():
    frame = load_results(BASE)
    chunked = frame[frame["backend"] == "chunked"]
    elsewhere = chunked.assign(device="cuda", case_key=chunked["case_key"].str.replace("|cpu|", "|cuda|"))
    again = chunked.assign(latency_ms_median=chunked["latency_ms_median"] * 1.5)
    export = benchmark_entries(pd.concat([frame, elsewhere, again], ignore_index=True), frozen_facts().defaults)
    latencies = {entry["name"]: entry["value"] for entry in export.entries if entry["unit"] == "ms"}
    assert len(latencies) == 5 and export.repeated == 1 and export.left_out == {"unsupported": 1}
    key = chunked["case_key"].iloc[0]
    assert latencies[f"{CHUNKED} [{key}]"] == pytest.approx(1.5 * chunked["latency_ms_median"].iloc[0])
    assert f"{CHUNKED} [{key.replace('|cpu|', '|cuda|')}]" in latencies and CHUNKED not in latencies


@pytest.mark.parametrize("kind, message", [("missing", "does not exist"),
                                           ("foreign", "not a results file of this suite"),
                                           ("header only", "has no rows"),
                                           ("model run", "models-suite run")])
def test_export_of_an_unusable_file_exits_2_with_one_line(tmp_path, capsys, kind, message):
    path = {"missing": tmp_path / "missing.csv", "foreign": tmp_path / "foreign.csv",
            "header only": tmp_path / "header.csv", "model run": MODEL_RUN}[kind]
    if kind == "foreign":
        path.write_text("name,score\nalice,3\n")
    elif kind == "header only":
        path.write_text(BASE.read_text().splitlines()[0] + "\n")
    assert run_export(path) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and "Traceback" not in captured.err
    assert lines[0].startswith("run_bench.py export: error:") and message in lines[0] and path.name in lines[0]


def test_the_ci_formats_load_without_torch():
    code = ("import sys\nsys.modules['torch'] = None\nsys.modules['attentions'] = None\n"
            "import bench.analysis.compare_formats, bench.analysis.export, bench.cli.export\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
