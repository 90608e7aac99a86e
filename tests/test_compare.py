"""``run_bench.py compare``: two runs aligned case by case, noise-aware regressions, exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from bench import COLUMNS, Case, RunContext, run_sweep
from bench.compare import (NEW_FAILURE, OTHER_DEVICE, REGRESSION, compare_runs, format_comparison, main_compare,
                           parse_threshold)
from bench.measure import SPEEDUP_INTERVAL_METHOD
from bench.profiles import PROFILES
from bench.results import ResultsWriter, write_metadata
from small_results import FAST



def make_case(family: str = "full", backend: str = "sdpa", resolution: int = 28, phase: str = "fwd",
              **options) -> Case:
    return Case(family, backend, tuple(sorted(options.items())), 1, resolution, 64, 2, "float32", "cuda", phase)


def make_row(case: Case, *, status: str = "ok", median: float = 2.0, spread: float = 0.05, p20: float | None = None,
             p80: float | None = None, mem: float = 40.0, gmacs: float = 0.0915, run_id: str = "base",
             gpu_profile: str = "h100", device_name: str = "NVIDIA H100 80GB HBM3") -> dict:
    """A complete row of the schema, as the runner writes it."""
    measured = status in ("ok", "mismatch")
    row = {c: None for c in COLUMNS}
    row.update(
        family=case.family, backend=case.backend, resolution=case.resolution, batch=case.batch, dim=case.dim,
        heads=case.heads, dtype=case.dtype, phase=case.phase, options=case.options_json, device=case.device,
        status=status, device_name=device_name, gpu_profile=gpu_profile, run_id=run_id, case_key=case.key,
        seed=0, reference_backend="torch", err_tolerance=1e-4, timestamp="2026-01-01T00:00:00+00:00",
        n_win=case.options_dict.get("n_win"), topk=case.options_dict.get("topk"),
        param_mb=0.06, input_mb=0.19)
    if measured:
        row.update(latency_ms_median=median, latency_ms_p20=median * (1 - spread) if p20 is None else p20,
                   latency_ms_p80=median * (1 + spread) if p80 is None else p80, peak_mem_mb=mem, rounds=50,
                   gmacs=gmacs, gmacs_analytic=gmacs, hw_gflops=2 * gmacs,
                   macs_parts=json.dumps({"attention": int(gmacs * 1e9)}), rel_err=3e-7 if status == "ok" else 0.2,
                   max_abs_err=1e-6, throughput=case.batch / median * 1e3,
                   tflops_achieved=2 * gmacs / median, pct_of_peak=0.01)
    if status != "ok":
        row["status_detail"] = {"mismatch": "rel_err 0.2 > tolerance 0.0001 for float32",
                                "error": "RuntimeError: kernel exploded",
                                "oom": "CUDA out of memory. Tried to allocate 80.00 GiB",
                                "unsupported": "xformers is not installed"}[status]
    return row


def environment(torch_version: str = "2.5.1", gpu: str = "NVIDIA H100 80GB HBM3", cuda: str = "12.4") -> dict:
    return {"gpu_name": gpu, "gpu_count": 1, "driver": "550.54", "cuda": cuda, "torch": torch_version,
            "triton": "3.1.0", "xformers": "0.0.28", "fvcore": "0.1.5", "tf32_matmul": False, "cpu": "x",
            "cpu_count": 16, "torch_threads": 16, "os": "Linux", "python": "3.11.7", "suite_commit": "abc",
            "suite_dirty": False}


def write_run(path: Path, rows: list[dict], metadata: dict | None = "default") -> Path:
    writer = ResultsWriter(path)
    for row in rows:
        writer.append(row)
    if metadata == "default":
        metadata = {"run_id": path.stem, "gpu_profile": "h100", "device_name": "NVIDIA H100 80GB HBM3",
                    "environment": environment(), "argv": [], "rows": len(rows)}
    if metadata is not None:
        write_metadata(path.with_suffix(".json"), metadata)
    return path


def pair(tmp_path: Path, base_rows: list[dict], new_rows: list[dict], **new_metadata) -> tuple[Path, Path]:
    base = write_run(tmp_path / "base.csv", base_rows)
    metadata = "default"
    if new_metadata:
        metadata = {"run_id": "new", "gpu_profile": "h100", "device_name": "NVIDIA H100 80GB HBM3",
                    "environment": environment()}
        metadata.update({k: v for k, v in new_metadata.items() if k != "env"})
        metadata["environment"].update(new_metadata.get("env", {}))
    new = write_run(tmp_path / "new.csv", new_rows, metadata)
    return base, new


A, B, C = make_case(), make_case(backend="torch"), make_case("bra", "sdpa", topk=4)
CASES = [A, B, C]


def baseline() -> list[dict]:
    return [make_row(case, median=1.0 + i) for i, case in enumerate(CASES)]


def verdict(comparison, case: Case) -> str:
    table = comparison.table.set_index("case_key")
    return table.loc[case.key, "verdict"]


# --------------------------------------------------------------------------------------------
# regressions and failures
# --------------------------------------------------------------------------------------------

def test_latency_regression_beyond_the_spreads_fails(tmp_path, capsys):
    new_rows = baseline()
    new_rows[1] = make_row(B, median=4.0)  # 2x, spreads [1.9, 2.1] and [3.8, 4.2]
    base, new = pair(tmp_path, baseline(), new_rows)
    comparison = compare_runs(base, new)
    assert comparison.failed
    assert verdict(comparison, B) == REGRESSION
    assert verdict(comparison, A) == verdict(comparison, C) == "ok"
    row = comparison.table.set_index("case_key").loc[B.key]
    assert row["latency_ratio"] == pytest.approx(2.0) and row["mem_ratio"] == pytest.approx(1.0)
    assert "latency 2.00×" in row["note"]

    assert main_compare([str(base), str(new)]) == 1
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "REGRESSION" in line)
    assert "torch" in line and "2.00×" in line
    assert out.strip().splitlines()[-1].startswith("FAILED: 1 regression beyond 10%")


@pytest.mark.parametrize("status", ["mismatch", "error", "oom"])
def test_a_case_that_stops_working_fails(tmp_path, status, capsys):
    new_rows = baseline()
    new_rows[0] = make_row(A, status=status)
    base, new = pair(tmp_path, baseline(), new_rows)
    comparison = compare_runs(base, new)
    assert comparison.failed and verdict(comparison, A) == NEW_FAILURE
    assert list(comparison.failures["case_key"]) == [A.key]
    assert main_compare([str(base), str(new)]) == 1
    out = capsys.readouterr().out
    assert f"ok -> {status}" in out and "1 new failure" in out.splitlines()[-1]


def test_mismatch_and_error_together(tmp_path):
    new_rows = baseline()
    new_rows[0] = make_row(A, status="mismatch")
    new_rows[2] = make_row(C, status="error")
    base, new = pair(tmp_path, baseline(), new_rows)
    comparison = compare_runs(base, new)
    assert [verdict(comparison, c) for c in CASES] == [NEW_FAILURE, "ok", NEW_FAILURE]
    assert "kernel exploded" in comparison.table.set_index("case_key").loc[C.key, "note"]
    assert main_compare([str(base), str(new)]) == 1


def test_memory_growth_fails_but_not_below_one_megabyte(tmp_path):
    base_rows = baseline() + [make_row(make_case(resolution=7), mem=0.2)]
    new_rows = baseline() + [make_row(make_case(resolution=7), mem=0.9)]  # 4.5x but under 1 MB: noise
    new_rows[0] = make_row(A, median=1.0, mem=80.0)  # same latency, 2x memory
    base, new = pair(tmp_path, base_rows, new_rows)
    comparison = compare_runs(base, new)
    assert comparison.failed and verdict(comparison, A) == REGRESSION
    assert "peak memory 2.00×" in comparison.table.set_index("case_key").loc[A.key, "note"]
    assert verdict(comparison, make_case(resolution=7)) == "ok"
    assert main_compare([str(base), str(new)]) == 1


# --------------------------------------------------------------------------------------------
# what does not fail
# --------------------------------------------------------------------------------------------

def test_noise_is_not_a_regression(tmp_path, capsys):
    base_rows = baseline()
    base_rows[0] = make_row(A, median=1.0, p20=0.8, p80=1.25)
    new_rows = baseline()
    new_rows[0] = make_row(A, median=1.15, p20=0.95, p80=1.4)  # +15% but NEW p20 < BASE p80
    new_rows[1] = make_row(B, median=2.06, spread=0.001)      # +3%, tight spreads: under the threshold
    base_rows[1] = make_row(B, median=2.0, spread=0.001)
    base, new = pair(tmp_path, base_rows, new_rows)
    comparison = compare_runs(base, new)
    assert not comparison.failed
    assert verdict(comparison, A) == "slower (noise)" and verdict(comparison, B) == "ok"
    assert main_compare([str(base), str(new)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASSED")


def test_threshold_decides(tmp_path):
    new_rows = baseline()
    new_rows[1] = make_row(B, median=2.6)  # +30%, spreads apart
    base, new = pair(tmp_path, baseline(), new_rows)
    assert compare_runs(base, new).failed
    assert not compare_runs(base, new, max_regression=0.5).failed
    assert main_compare([str(base), str(new), "--max-regression", "50%"]) == 0
    assert main_compare([str(base), str(new), "--max-regression", "25"]) == 1


def test_faster_passes(tmp_path):
    new_rows = baseline()
    new_rows[2] = make_row(C, median=1.5)  # 3.0 -> 1.5 ms
    base, new = pair(tmp_path, baseline(), new_rows)
    comparison = compare_runs(base, new)
    assert verdict(comparison, C) == "faster" and not comparison.failed
    assert main_compare([str(base), str(new)]) == 0


def test_fixed_and_unsupported_cases_do_not_fail(tmp_path):
    base_rows = baseline()
    base_rows[0] = make_row(A, status="mismatch")
    new_rows = baseline()
    new_rows[1] = make_row(B, status="unsupported")
    base, new = pair(tmp_path, base_rows, new_rows)
    comparison = compare_runs(base, new)
    assert verdict(comparison, A) == "fixed" and verdict(comparison, B) == "now unsupported"
    assert not comparison.failed
    assert any("unsupported in NEW" in w for w in comparison.warnings)


def test_gmacs_change_is_a_warning_only(tmp_path):
    new_rows = baseline()
    new_rows[2] = make_row(C, median=3.0, gmacs=0.2)
    base, new = pair(tmp_path, baseline(), new_rows)
    comparison = compare_runs(base, new)
    assert not comparison.failed and verdict(comparison, C) == "ok"
    row = comparison.table.set_index("case_key").loc[C.key]
    assert row["gmacs_ratio"] == pytest.approx(0.2 / 0.0915)
    assert "GMACs" in row["note"]
    assert [w for w in comparison.warnings if "GMACs changed" in w and "bra" in w]
    assert main_compare([str(base), str(new)]) == 0


def test_a_case_on_another_device_is_not_judged_but_its_status_is(tmp_path, capsys):
    """NEW ran on two GPU models (a mixed Ray cluster): its cases on the other model get no ratio and no
    latency verdict, and a warning names both devices; a case that fails there is still a new failure,
    and a slowdown on the same device is still a regression."""
    pcie = "NVIDIA H100 PCIe"
    new_rows = [make_row(A, median=10.0, device_name=pcie), make_row(B, median=4.0),
                make_row(C, status="error", device_name=pcie)]
    base, new = pair(tmp_path, baseline(), new_rows)
    comparison = compare_runs(base, new)
    table = comparison.table.set_index("case_key")
    assert verdict(comparison, A) == OTHER_DEVICE and verdict(comparison, B) == REGRESSION
    assert verdict(comparison, C) == NEW_FAILURE and comparison.failed
    assert pd.isna(table.loc[A.key, "latency_ratio"]) and pd.isna(table.loc[A.key, "mem_ratio"])
    assert table.loc[A.key, "gmacs_ratio"] == pytest.approx(1.0)
    assert f"BASE on NVIDIA H100 80GB HBM3, NEW on {pcie}" in table.loc[A.key, "note"]
    warning = "2 case(s) ran on another device: BASE 'NVIDIA H100 80GB HBM3', NEW 'NVIDIA H100 PCIe'"
    assert any(w.startswith(warning) for w in comparison.warnings), comparison.warnings
    assert main_compare([str(base), str(new)]) == 1
    out = capsys.readouterr().out
    assert OTHER_DEVICE in next(line for line in out.splitlines() if line.startswith("full") and "sdpa" in line)


def test_environment_differences_are_warnings(tmp_path, capsys):
    new_rows = [make_row(c, median=1.0 + i, gpu_profile="a100", device_name="NVIDIA A100-SXM4-80GB")
                for i, c in enumerate(CASES)]
    base, new = pair(tmp_path, baseline(), new_rows, gpu_profile="a100", device_name="NVIDIA A100-SXM4-80GB",
                     env={"torch": "2.6.0", "gpu_name": "NVIDIA A100-SXM4-80GB", "cuda": "12.6"})
    comparison = compare_runs(base, new)
    text = "\n".join(comparison.warnings)
    for expected in ("GPU profile differs: BASE 'h100', NEW 'a100'", "GPU differs", "torch differs",
                     "'2.5.1'", "'2.6.0'", "CUDA differs"):
        assert expected in text
    assert not comparison.failed
    assert main_compare([str(base), str(new)]) == 0
    out = capsys.readouterr().out
    assert "Warnings" in out and "torch differs" in out


def test_missing_metadata_is_a_warning_and_rows_still_compared(tmp_path):
    base = write_run(tmp_path / "base.csv", baseline(), metadata=None)
    new_rows = [make_row(c, median=1.0 + i, gpu_profile="l4", device_name="NVIDIA L4") for i, c in enumerate(CASES)]
    new = write_run(tmp_path / "new.csv", new_rows, {"run_id": "new", "gpu_profile": "l4", "device_name": "NVIDIA L4",
                                                     "environment": environment(gpu="NVIDIA L4")})
    comparison = compare_runs(base, new)
    assert any("no run metadata for BASE" in w and "base.json does not exist" in w for w in comparison.warnings)
    assert any("GPU profile differs" in w and "'l4'" in w for w in comparison.warnings)  # from the rows
    assert len(comparison.table) == 3 and not comparison.failed


def test_cases_in_one_run_only_are_named(tmp_path, capsys):
    extra = make_case(resolution=56)
    base, new = pair(tmp_path, baseline(), baseline()[1:] + [make_row(extra)])
    comparison = compare_runs(base, new)
    assert comparison.only_in_base == [A.label()] and comparison.only_in_new == [extra.label()]
    assert set(comparison.table["case_key"]) == {B.key, C.key} and not comparison.failed
    assert main_compare([str(base), str(new)]) == 0
    out = capsys.readouterr().out
    assert "Only in BASE (1)" in out and A.label() in out and "Only in NEW (1)" in out and extra.label() in out


def test_identical_runs_pass(tmp_path, capsys):
    base, new = pair(tmp_path, baseline(), baseline())
    comparison = compare_runs(base, new)
    assert not comparison.failed and comparison.warnings == []
    assert set(comparison.table["verdict"]) == {"ok"}
    assert list(comparison.table["case_key"]) == [c.key for c in CASES]
    assert set(comparison.table["latency_ratio"]) == {1.0}
    text = format_comparison(comparison)
    assert "1.00×" in text and text.splitlines()[-1].startswith("PASSED")
    assert main_compare([str(base), str(new.with_suffix(".json"))]) == 0  # a run's JSON path works too


# --------------------------------------------------------------------------------------------
# unusable input
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, message", [
    ("missing", "does not exist"),
    ("empty", "is empty"),
    ("header_only", "has no rows"),
    ("foreign", "not a results file of this suite"),
])
def test_unusable_files_exit_2_with_one_line(tmp_path, capsys, kind, message):
    good = write_run(tmp_path / "good.csv", baseline())
    bad = tmp_path / f"{kind}.csv"
    if kind == "empty":
        bad.write_text("")
    elif kind == "header_only":
        ResultsWriter(bad)
    elif kind == "foreign":
        bad.write_text("name,score\nalice,3\n")
    for argv in ([str(good), str(bad)], [str(bad), str(good)]):
        assert main_compare(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("run_bench.py compare: error:")
        assert message in lines[0] and bad.name in lines[0] and "Traceback" not in captured.err


def test_bad_threshold_exits_2_naming_it(tmp_path, capsys):
    base, new = pair(tmp_path, baseline(), baseline())
    for value in ("ten", "-5%", "nan"):
        assert main_compare([str(base), str(new), "--max-regression", value]) == 2
        err = capsys.readouterr().err
        assert "--max-regression" in err and repr(value) in err and "Traceback" not in err


@pytest.mark.parametrize("text, expected", [("10%", 0.10), ("0.1", 0.1), ("25", 0.25), ("1", 0.01),
                                            (" 5 % ", 0.05), ("0", 0.0), ("150%", 1.5), ("0.5%", 0.005)])
def test_parse_threshold(text, expected):
    assert parse_threshold(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "%", "ten", "-10%", "-0.1", "inf", "nan", "10%%"])
def test_parse_threshold_rejects(text):
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_threshold(text)


# --------------------------------------------------------------------------------------------
# two real harness runs
# --------------------------------------------------------------------------------------------

def test_two_real_runs_align_by_case_key(tmp_path, capsys):
    def cpu_case(backend: str) -> Case:
        return Case("full", backend, (), 1, 6, 16, 2, "float32", "cpu", "fwd")

    cases = [cpu_case("torch"), cpu_case("sdpa")]
    base, new = tmp_path / "cpu" / "base.csv", tmp_path / "cpu" / "new.csv"
    for path, run_cases in ((base, cases), (new, cases[::-1] + [Case("window", "torch", (), 1, 6, 16, 2,
                                                                     "float32", "cpu", "fwd")])):
        ctx = RunContext(run_id=path.stem, profile=PROFILES["cpu"], device_name="test-cpu", timing=FAST)
        run_sweep(run_cases, ctx, path)
    comparison = compare_runs(base, new)
    assert list(comparison.table["case_key"]) == [c.key for c in cases]  # BASE's order, NEW's rows matched
    assert set(comparison.table["status_base"]) == set(comparison.table["status_new"]) == {"ok"}
    assert comparison.table["verdict"].notna().all()
    assert (comparison.table["latency_ratio"] > 0).all() and (comparison.table["gmacs_ratio"] == 1).all()
    assert comparison.only_in_base == [] and len(comparison.only_in_new) == 1
    assert comparison.only_in_new[0].startswith("window/torch ")
    assert sum("no run metadata" in w for w in comparison.warnings) == 2
    assert main_compare([str(base), str(new)]) == (1 if comparison.failed else 0)
    assert "Only in NEW (1)" in capsys.readouterr().out


def test_a_paired_speedup_drop_fails_only_between_intervals_of_one_method(tmp_path):
    """Same latencies, but NEW's paired speedup interval lies wholly below BASE's: a regression when both runs
    made their intervals the same way; when the methods differ (or one run predates recording it), the
    intervals are not compared and a warning says why."""
    def with_speedup(row: dict, low: float, median: float, high: float) -> dict:
        return {**row, "speedup_vs_ref": median, "speedup_ci_low": low, "speedup_ci_high": high}

    base_rows = [with_speedup(make_row(c, median=1.0 + i), 1.9, 2.0, 2.1) for i, c in enumerate(CASES)]
    new_rows = [with_speedup(make_row(c, median=1.0 + i), 1.2, 1.3, 1.4) for i, c in enumerate(CASES)]
    metadata = {"run_id": "x", "argv": [], "environment": environment(),
                "timing": {"speedup_interval": SPEEDUP_INTERVAL_METHOD}}
    base = write_run(tmp_path / "base.csv", base_rows, {**metadata, "run_id": "base"})
    new = write_run(tmp_path / "new.csv", new_rows, {**metadata, "run_id": "new"})
    comparison = compare_runs(base, new)
    assert comparison.failed and verdict(comparison, A) == REGRESSION
    assert "intervals apart" in comparison.table.set_index("case_key").loc[A.key, "note"]
    older = write_run(tmp_path / "older.csv", base_rows, {**metadata, "run_id": "older", "timing": {}})
    comparison = compare_runs(older, new)
    assert not comparison.failed and verdict(comparison, A) == "ok"
    assert any("different methods (BASE unrecorded, NEW log-batch-means-t95)" in w for w in comparison.warnings)
