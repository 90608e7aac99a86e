"""``run_bench.py compare``: two runs aligned case by case, three verdicts, the gate and its exit codes."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from bench import COLUMNS, Case, RunContext, run_sweep
from bench.cli.compare import main as main_compare
from bench.analysis.compare import EXIT_INCONCLUSIVE, EXIT_REGRESSED, compare_runs, format_comparison
from bench.analysis.verdicts import (FASTER, FIXED, INCONCLUSIVE, MIN_ROUNDS, NEW_FAILURE, NOW_UNSUPPORTED, OK,
                                     OTHER_DEVICE, REGRESSED, SLOWER, parse_threshold)
from bench.core.statistics import LATENCY_INTERVAL_METHOD, SPEEDUP_INTERVAL_METHOD
from bench.core.methods import measurement_methods
from bench.core.profiles import PROFILES
from bench.schema.files import ResultsWriter, load_results
from bench.schema.metadata import versioned_metadata, write_metadata
from small_results import FAST



def make_case(family: str = "full", backend: str = "sdpa", resolution: int = 28, phase: str = "fwd",
              **options) -> Case:
    return Case(family, backend, tuple(sorted(options.items())), 1, resolution, 64, 2, "float32", "cuda", phase)


def make_row(case: Case, *, status: str = "ok", median: float = 2.0, spread: float = 0.05, p20: float | None = None,
             p80: float | None = None, ci: float | None = 0.02, mem: float = 40.0, gmacs: float = 0.0915,
             run_id: str = "base", gpu_profile: str = "h100", device_name: str = "NVIDIA H100 80GB HBM3",
             rounds: int = 50, speedup: tuple[float, float, float] | None = None) -> dict:
    """A complete row of the schema, as the runner writes it."""
    measured = status in ("ok", "noisy", "mismatch")
    row = {c: None for c in COLUMNS}
    row.update(
        family=case.family, backend=case.backend, compile=case.compile, resolution=case.resolution, batch=case.batch,
        dim=case.dim, heads=case.heads, dtype=case.dtype, phase=case.phase, options=case.options_json,
        device=case.device,
        status=status, device_name=device_name, gpu_profile=gpu_profile, run_id=run_id, case_key=case.key,
        seed=0, reference_backend="torch", err_tolerance=1e-4, timestamp="2026-01-01T00:00:00+00:00",
        n_win=case.options_dict.get("n_win"), topk=case.options_dict.get("topk"),
        param_mb=0.06, input_mb=0.19)
    if measured:
        row.update(latency_ms_median=median, latency_ms_p20=median * (1 - spread) if p20 is None else p20,
                   latency_ms_p80=median * (1 + spread) if p80 is None else p80, peak_mem_mb=mem, rounds=rounds,
                   gmacs=gmacs, gmacs_analytic=gmacs, hw_gflops=2 * gmacs,
                   macs_parts=json.dumps({"attention": int(gmacs * 1e9)}), rel_err=3e-7 if status == "ok" else 0.2,
                   max_abs_err=1e-6, throughput=case.batch / median * 1e3,
                   tflops_achieved=2 * gmacs / median, pct_of_peak=0.01)
        if ci is not None:
            row.update(latency_ms_ci_low=median * (1 - ci), latency_ms_ci_high=median * (1 + ci))
        if speedup is not None:
            row.update(speedup_ci_low=speedup[0], speedup_vs_ref=speedup[1], speedup_ci_high=speedup[2])
    if status not in ("ok", "noisy"):
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
    return comparison.table.set_index("case_key").loc[case.key, "verdict"]


def judged(comparison, case: Case) -> pd.Series:
    return comparison.table.set_index("case_key").loc[case.key]


def last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


# --------------------------------------------------------------------------------------------
# regressed
# --------------------------------------------------------------------------------------------

def test_latency_regression_with_intervals_apart_fails(tmp_path, capsys):
    new_rows = baseline()
    new_rows[0] = make_row(A, median=2.0)  # 2x, intervals [0.98, 1.02] and [1.96, 2.04]; its reference B unchanged
    base, new = pair(tmp_path, baseline(), new_rows)
    comparison = compare_runs(base, new)
    assert comparison.exit_status == EXIT_REGRESSED
    assert verdict(comparison, A) == REGRESSED and judged(comparison, A)["change"] == SLOWER
    assert verdict(comparison, B) == verdict(comparison, C) == OK
    row = judged(comparison, A)
    assert row["latency_ratio"] == pytest.approx(2.0) and row["mem_ratio"] == pytest.approx(1.0)
    assert "latency 2.00×" in row["reason"] and "intervals apart" in row["reason"] and "unpaired" in row["reason"]

    assert main_compare([str(base), str(new)]) == EXIT_REGRESSED
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if " regressed " in line)
    assert "sdpa" in line and "2.00×" in line
    assert out.strip().splitlines()[-1].startswith("FAILED: 1 regressed")


@pytest.mark.parametrize("status", ["mismatch", "error", "oom"])
def test_a_case_that_stops_working_regressed(tmp_path, status, capsys):
    new_rows = baseline()
    new_rows[0] = make_row(A, status=status)
    base, new = pair(tmp_path, baseline(), new_rows)
    comparison = compare_runs(base, new)
    assert verdict(comparison, A) == REGRESSED and judged(comparison, A)["change"] == NEW_FAILURE
    assert list(comparison.regressed["case_key"]) == [A.key]
    assert main_compare([str(base), str(new)]) == EXIT_REGRESSED
    out = capsys.readouterr().out
    assert f"ok -> {status}" in out and out.strip().splitlines()[-1].startswith("FAILED: 1 regressed")


def test_memory_growth_regressed_but_not_below_one_megabyte_and_noise_does_not_hide_it(tmp_path):
    base_rows = baseline() + [make_row(make_case(resolution=7), mem=0.2)]
    new_rows = baseline() + [make_row(make_case(resolution=7), mem=0.9)]  # 4.5x but under 1 MB: noise
    new_rows[0] = make_row(A, median=1.0, mem=80.0, status="noisy", ci=0.3)  # same latency, 2x memory, noisy
    base, new = pair(tmp_path, base_rows, new_rows)
    comparison = compare_runs(base, new)
    assert comparison.exit_status == EXIT_REGRESSED and verdict(comparison, A) == REGRESSED
    assert "peak memory 2.00×" in judged(comparison, A)["reason"]
    assert verdict(comparison, make_case(resolution=7)) == OK


# --------------------------------------------------------------------------------------------
# the two ways the old gate went wrong (issue 22)
# --------------------------------------------------------------------------------------------

def test_fails_open_no_more_every_case_slower_and_noisy(tmp_path, capsys):
    """Every case 6-55x slower and noisy: formerly PASSED. Where the paired speedups show the machine slowed
    everything alike (full's sdpa beside its reference) the cases are inconclusive; the unpaired bra case
    (no reference timed beside it) cannot be put on the machine, so with its intervals apart it regressed."""
    paired = (1.9, 2.0, 2.1)
    base_rows = [make_row(A, median=1.0, speedup=paired), make_row(B, median=2.0), make_row(C, median=3.0)]
    new_rows = [make_row(A, median=6.0 * 1.0, status="noisy", ci=0.2, speedup=(1.7, 2.0, 2.3)),
                make_row(B, median=12.0, status="noisy", ci=0.2),
                make_row(C, median=55.0 * 3.0, status="noisy", ci=0.3)]
    base, new = pair(tmp_path, base_rows, new_rows)
    comparison = compare_runs(base, new)
    for case in (A, B):
        assert verdict(comparison, case) == INCONCLUSIVE
        assert "the machine differed between the runs" in judged(comparison, case)["reason"]
    assert verdict(comparison, C) == REGRESSED and "unpaired" in judged(comparison, C)["reason"]
    assert main_compare([str(base), str(new)]) == EXIT_REGRESSED
    assert last_line(capsys).startswith("FAILED")
    paired_only = pair(tmp_path / "paired", base_rows[:2], new_rows[:2])
    assert main_compare([str(p) for p in paired_only]) == EXIT_INCONCLUSIVE
    assert last_line(capsys).startswith("UNDECIDED")


def test_fails_open_no_more_one_injected_slowdown_in_a_noisy_row(tmp_path, capsys):
    """One backend made 8.84x slower (a sleep), its row noisy: its paired speedup over the reference timed
    beside it collapsed, so it regressed whatever the noise; formerly PASSED."""
    base_rows = [make_row(A, median=1.0, speedup=(1.9, 2.0, 2.1)), make_row(B, median=2.0), make_row(C, median=3.0)]
    new_rows = [make_row(A, median=8.84, status="noisy", ci=0.25, speedup=(0.18, 0.23, 0.3)),
                make_row(B, median=2.0), make_row(C, median=3.0)]
    base, new = pair(tmp_path, base_rows, new_rows)
    comparison = compare_runs(base, new)
    assert verdict(comparison, A) == REGRESSED
    assert "despite the noise" in judged(comparison, A)["reason"] and "dropped" in judged(comparison, A)["reason"]
    assert main_compare([str(base), str(new)]) == EXIT_REGRESSED
    assert last_line(capsys).startswith("FAILED")


def test_fails_closed_no_more_identical_code_on_a_slower_machine(tmp_path, capsys):
    """Identical code, both runs ok, NEW 30x slower in absolute terms because the machine was loaded: the
    paired speedups did not move, so no case regressed; the gate is undecided, not failed."""
    base_rows = [make_row(A, median=1.0, speedup=(1.9, 2.0, 2.1)), make_row(B, median=2.0)]
    new_rows = [make_row(A, median=30.72, speedup=(1.85, 1.97, 2.1)), make_row(B, median=61.0)]
    base, new = pair(tmp_path, base_rows, new_rows)
    comparison = compare_runs(base, new)
    assert list(comparison.table["verdict"]) == [INCONCLUSIVE, INCONCLUSIVE]
    assert comparison.exit_status == EXIT_INCONCLUSIVE
    assert main_compare([str(base), str(new)]) == EXIT_INCONCLUSIVE
    assert last_line(capsys).startswith("UNDECIDED: 2 of 2 cases inconclusive")
    assert main_compare([str(base), str(new), "--max-inconclusive", "100%"]) == 0


def test_a_slower_reference_regressed_when_the_backends_beside_it_gained_on_it(tmp_path):
    base_rows = [make_row(A, median=1.0, speedup=(1.9, 2.0, 2.1)), make_row(B, median=2.0)]
    new_rows = [make_row(A, median=1.0, speedup=(2.5, 2.6, 2.7)), make_row(B, median=2.6)]
    comparison = compare_runs(*pair(tmp_path, base_rows, new_rows))
    assert verdict(comparison, B) == REGRESSED and "gained on it" in judged(comparison, B)["reason"]
    assert verdict(comparison, A) == OK


def test_slowdowns_within_the_paired_ratios_are_the_machines_and_a_distant_machine_is_not_judged(tmp_path):
    """The reference and its fast path both 1.3x slower, the paired speedup unchanged: the machine (or a change
    common to both), inconclusive. Beyond MACHINE_SHIFT_LIMIT of the reference's latency the runs saw different
    machines (load slows backends unevenly): nothing is judged on latency or paired speedup, even a speedup
    that fell, though memory still is."""
    base_rows = [make_row(A, median=1.0, speedup=(1.9, 2.0, 2.1)), make_row(B, median=2.0)]
    alike = [make_row(A, median=1.3, speedup=(1.9, 2.0, 2.1)), make_row(B, median=2.6)]
    comparison = compare_runs(*pair(tmp_path, base_rows, alike))
    assert list(comparison.table["verdict"]) == [INCONCLUSIVE, INCONCLUSIVE]
    assert "timed beside it is unchanged" in judged(comparison, A)["reason"]
    assert "slowed alike" in judged(comparison, B)["reason"]
    distant = [make_row(A, median=0.1, speedup=(1.1, 1.2, 1.3), mem=80.0), make_row(B, median=0.12)]
    comparison = compare_runs(*pair(tmp_path / "distant", base_rows, distant))
    assert verdict(comparison, B) == INCONCLUSIVE and "ran 0.06× its BASE time" in judged(comparison, B)["reason"]
    assert verdict(comparison, A) == REGRESSED and "peak memory 2.00×" in judged(comparison, A)["reason"]
    assert "speedup over the reference" not in judged(comparison, A)["reason"]


# --------------------------------------------------------------------------------------------
# ok and inconclusive
# --------------------------------------------------------------------------------------------

def test_overlapping_intervals_are_inconclusive_not_regressed(tmp_path):
    base_rows, new_rows = baseline(), baseline()
    base_rows[0] = make_row(A, median=1.0, ci=0.1)
    new_rows[0] = make_row(A, median=1.15, ci=0.1)  # +15%, intervals [0.9, 1.1] and [1.035, 1.265] overlap
    base_rows[1] = make_row(B, median=2.0, ci=0.001)
    new_rows[1] = make_row(B, median=2.06, ci=0.001)  # +3%, tight: within the threshold
    comparison = compare_runs(*pair(tmp_path, base_rows, new_rows))
    assert verdict(comparison, A) == INCONCLUSIVE and "intervals overlap" in judged(comparison, A)["reason"]
    assert verdict(comparison, B) == OK and len(comparison.regressed) == 0


def test_noisy_within_the_threshold_is_inconclusive_unless_its_interval_excludes_a_regression(tmp_path):
    base_rows, new_rows = baseline(), baseline()
    new_rows[0] = make_row(A, median=1.02, status="noisy", ci=0.3)   # ratio interval reaches 1.33: can't tell
    new_rows[2] = make_row(C, median=3.0, status="noisy", ci=0.05)   # ratio interval <= 1.07: no regression
    comparison = compare_runs(*pair(tmp_path, base_rows, new_rows))
    assert verdict(comparison, A) == INCONCLUSIVE and "noisy in NEW" in judged(comparison, A)["reason"]
    assert verdict(comparison, C) == OK


def test_too_few_rounds_are_inconclusive(tmp_path):
    new_rows = baseline()
    new_rows[0] = make_row(A, median=1.0, rounds=3)
    comparison = compare_runs(*pair(tmp_path, baseline(), new_rows))
    assert verdict(comparison, A) == INCONCLUSIVE and "3 timed rounds" in judged(comparison, A)["reason"]


def test_runs_without_intervals_fall_back_to_their_spreads(tmp_path):
    base_rows = [make_row(c, median=1.0 + i, ci=None) for i, c in enumerate(CASES)]
    new_rows = [make_row(c, median=1.0 + i, ci=None) for i, c in enumerate(CASES)]
    new_rows[0] = make_row(A, median=2.0, ci=None)  # spreads [0.95, 1.05] and [1.9, 2.1]
    comparison = compare_runs(*pair(tmp_path, base_rows, new_rows))
    assert verdict(comparison, A) == REGRESSED and "from p20-p80 spreads" in judged(comparison, A)["reason"]
    assert verdict(comparison, B) == OK


@pytest.mark.parametrize("allowed, expected", [("0", EXIT_INCONCLUSIVE), ("33%", EXIT_INCONCLUSIVE),
                                               ("34%", 0), ("100%", 0)])
def test_the_inconclusive_threshold_decides_between_passed_and_undecided(tmp_path, allowed, expected, capsys):
    new_rows = baseline()
    new_rows[0] = make_row(A, median=1.02, status="noisy", ci=0.3)  # 1 of 3 inconclusive
    base, new = pair(tmp_path, baseline(), new_rows)
    assert main_compare([str(base), str(new), "--max-inconclusive", allowed]) == expected
    line = last_line(capsys)
    assert line.startswith("UNDECIDED" if expected else "PASSED") and ("1 inconclusive" in line or "1 of 3" in line)


def test_regressed_wins_over_undecided(tmp_path):
    new_rows = baseline()
    new_rows[0] = make_row(A, median=1.02, status="noisy", ci=0.3)
    new_rows[1] = make_row(B, status="error")
    comparison = compare_runs(*pair(tmp_path, baseline(), new_rows), max_inconclusive=0)
    assert comparison.too_inconclusive and comparison.exit_status == EXIT_REGRESSED


def test_threshold_decides(tmp_path):
    new_rows = baseline()
    new_rows[1] = make_row(B, median=2.6)  # +30%, intervals apart
    base, new = pair(tmp_path, baseline(), new_rows)
    assert compare_runs(base, new).exit_status == EXIT_REGRESSED
    assert not compare_runs(base, new, max_regression=0.5).failed
    assert main_compare([str(base), str(new), "--max-regression", "50%"]) == 0
    assert main_compare([str(base), str(new), "--max-regression", "25"]) == EXIT_REGRESSED


def test_faster_passes(tmp_path):
    new_rows = baseline()
    new_rows[2] = make_row(C, median=1.5)  # 3.0 -> 1.5 ms
    base, new = pair(tmp_path, baseline(), new_rows)
    comparison = compare_runs(base, new)
    assert verdict(comparison, C) == OK and judged(comparison, C)["change"] == FASTER and not comparison.failed
    assert main_compare([str(base), str(new)]) == 0


def test_fixed_is_ok_and_now_unsupported_is_inconclusive(tmp_path):
    base_rows = baseline()
    base_rows[0] = make_row(A, status="mismatch")
    new_rows = baseline()
    new_rows[1] = make_row(B, status="unsupported")
    comparison = compare_runs(*pair(tmp_path, base_rows, new_rows), max_inconclusive=0.5)
    assert (verdict(comparison, A), judged(comparison, A)["change"]) == (OK, FIXED)
    assert (verdict(comparison, B), judged(comparison, B)["change"]) == (INCONCLUSIVE, NOW_UNSUPPORTED)
    assert not comparison.failed
    assert any("unsupported in NEW" in w for w in comparison.warnings)


def test_gmacs_change_is_a_warning_only(tmp_path):
    new_rows = baseline()
    new_rows[2] = make_row(C, median=3.0, gmacs=0.2)
    base, new = pair(tmp_path, baseline(), new_rows)
    comparison = compare_runs(base, new)
    assert not comparison.failed and verdict(comparison, C) == OK
    row = judged(comparison, C)
    assert row["gmacs_ratio"] == pytest.approx(0.2 / 0.0915)
    assert "GMACs" in row["reason"]
    assert [w for w in comparison.warnings if "GMACs changed" in w and "bra" in w]
    assert main_compare([str(base), str(new)]) == 0


def test_a_case_on_another_device_is_not_judged_but_its_status_is(tmp_path, capsys):
    """NEW ran on two GPU models (a mixed Ray cluster): its cases on the other model get no ratio and are
    inconclusive, and a warning names both devices; a case that fails there still regressed, and a slowdown
    on the same device is still a regression."""
    pcie = "NVIDIA H100 PCIe"
    new_rows = [make_row(A, median=10.0, device_name=pcie), make_row(B, median=2.4),
                make_row(C, status="error", device_name=pcie)]
    base, new = pair(tmp_path, baseline(), new_rows)
    comparison = compare_runs(base, new)
    table = comparison.table.set_index("case_key")
    assert (verdict(comparison, A), table.loc[A.key, "change"]) == (INCONCLUSIVE, OTHER_DEVICE)
    assert verdict(comparison, B) == REGRESSED
    assert (verdict(comparison, C), table.loc[C.key, "change"]) == (REGRESSED, NEW_FAILURE)
    assert pd.isna(table.loc[A.key, "latency_ratio"]) and pd.isna(table.loc[A.key, "mem_ratio"])
    assert table.loc[A.key, "gmacs_ratio"] == pytest.approx(1.0)
    assert f"BASE on NVIDIA H100 80GB HBM3, NEW on {pcie}" in table.loc[A.key, "reason"]
    warning = "2 case(s) ran on another device: BASE 'NVIDIA H100 80GB HBM3', NEW 'NVIDIA H100 PCIe'"
    assert any(w.startswith(warning) for w in comparison.warnings), comparison.warnings
    assert main_compare([str(base), str(new)]) == EXIT_REGRESSED
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
    # the rows name another device, so nothing is compared: every case is inconclusive
    assert set(comparison.table["change"]) == {OTHER_DEVICE}
    assert main_compare([str(base), str(new)]) == EXIT_INCONCLUSIVE
    out = capsys.readouterr().out
    assert "Warnings" in out and "torch differs" in out


def test_missing_metadata_is_a_warning_and_rows_still_compared(tmp_path):
    base = write_run(tmp_path / "base.csv", baseline(), metadata=None)
    new = write_run(tmp_path / "new.csv", baseline(), {"run_id": "new", "gpu_profile": "l4",
                                                       "device_name": "NVIDIA H100 80GB HBM3",
                                                       "environment": environment()})
    comparison = compare_runs(base, new)
    assert any("no run metadata for BASE" in w and "base.json does not exist" in w for w in comparison.warnings)
    assert any("GPU profile differs" in w and "'l4'" in w for w in comparison.warnings)  # BASE's from the rows
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


def test_too_few_shared_cases_are_undecided(tmp_path, capsys):
    base, new = pair(tmp_path, baseline(), baseline()[:1])
    assert main_compare([str(base), str(new)]) == EXIT_INCONCLUSIVE
    assert "--min-shared" in last_line(capsys)


def test_identical_runs_pass(tmp_path, capsys):
    base, new = pair(tmp_path, baseline(), baseline())
    comparison = compare_runs(base, new)
    assert not comparison.failed and comparison.warnings == []
    assert set(comparison.table["verdict"]) == {OK}
    assert list(comparison.table["case_key"]) == [c.key for c in CASES]
    assert set(comparison.table["latency_ratio"]) == {1.0}
    text = format_comparison(comparison)
    assert "1.00×" in text and text.splitlines()[-1].startswith("PASSED")
    assert main_compare([str(base), str(new.with_suffix(".json"))]) == 0  # a run's JSON path works too


# --------------------------------------------------------------------------------------------
# re-measuring before the verdict
# --------------------------------------------------------------------------------------------

def test_rerun_inconclusive_retimes_until_a_verdict(tmp_path, capsys):
    """A stand-in re-measurement: the first re-timing is noisy again, the second quiet; the case becomes ok
    after two, the others are never re-timed, and a regressed case is not re-timed either."""
    new_rows = baseline()
    new_rows[0] = make_row(A, median=1.02, status="noisy", ci=0.3)
    new_rows[2] = make_row(C, status="error")
    base, new = pair(tmp_path, baseline(), new_rows)
    calls = []

    def remeasure(rows: pd.DataFrame, metadata: dict) -> pd.DataFrame:
        calls.append(list(rows["case_key"]))
        assert metadata["run_id"] == "new"
        quiet = len(calls) == 2
        return pd.DataFrame([make_row(A, median=1.0, status="ok" if quiet else "noisy", ci=0.02 if quiet else 0.3,
                                      run_id="new")], columns=rows.columns)

    comparison = compare_runs(base, new, rerun_inconclusive=1, remeasure=remeasure)
    assert verdict(comparison, A) == INCONCLUSIVE and calls == [[A.key]]
    calls.clear()
    comparison = compare_runs(base, new, rerun_inconclusive=5, remeasure=remeasure)
    assert verdict(comparison, A) == OK and calls == [[A.key], [A.key]]
    assert judged(comparison, A)["remeasured"] == 2 and judged(comparison, B)["remeasured"] == 0
    assert verdict(comparison, C) == REGRESSED
    assert "re-timed 2×" in format_comparison(comparison)
    assert any("re-timed with the code at hand" in w for w in comparison.warnings)


def test_rerun_inconclusive_with_the_real_harness_and_a_stand_in_clock(tmp_path, monkeypatch):
    """Both runs timed by the real harness on a stand-in clock (every pass 0.5 ms: steady); NEW's sdpa row then
    made noisy. Re-measured by the real group runner (beside its reference), it comes back ok and the case
    gets its verdict."""
    import bench.core.measure as measure

    def stand_in_clock(run, device, flush=None):
        run()
        return 0.5, None

    monkeypatch.setattr(measure, "timed_once", stand_in_clock)
    cases = [Case("full", backend, (), 1, 6, 16, 2, "float32", "cpu", "fwd") for backend in ("torch", "sdpa")]
    ctx = RunContext(run_id="base", profile=PROFILES["cpu"], device_name="test-cpu",
                     timing=dataclasses.replace(FAST, min_rounds=MIN_ROUNDS, max_rounds=None))
    base = tmp_path / "cpu" / "base.csv"
    run_sweep(cases, ctx, base)
    frame = load_results(base)
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    noisy = dict(rows[1], status="noisy", latency_ms_ci_low=0.25, latency_ms_ci_high=1.0, run_id="new")
    metadata = {"run_id": "new", "gpu_profile": "cpu", "device_name": "test-cpu", "argv": [],
                "timing": {"min_time_s_per_pass": 0.0, "min_rounds": MIN_ROUNDS, "sittings": 1, "l2_flush": False}}
    new = write_run(tmp_path / "cpu" / "new.csv", [dict(rows[0], run_id="new"), noisy], metadata)
    write_metadata(base.with_suffix(".json"), {**metadata, "run_id": "base"})

    assert verdict(compare_runs(base, new), cases[1]) == INCONCLUSIVE
    from bench.execution.remeasure import remeasure_rows
    row = judged(compare_runs(base, new, rerun_inconclusive=2, remeasure=remeasure_rows), cases[1])
    assert (row["remeasured"], row["status_new"], row["verdict"]) == (1, "ok", OK), row["reason"]
    assert row["latency_ms_median_new"] == pytest.approx(0.5) and row["speedup_vs_ref_new"] == pytest.approx(1.0)


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
    assert main_compare([str(base), str(new)]) == comparison.exit_status
    assert "Only in NEW (1)" in capsys.readouterr().out


def test_a_paired_speedup_drop_regressed_only_between_intervals_of_one_method(tmp_path):
    """Same latencies, but NEW's paired speedup interval lies wholly below BASE's: a regression when both runs
    made their intervals the same way; when the methods differ (or one run predates recording it), the
    intervals are not compared and a warning says why."""
    base_rows = [make_row(c, median=1.0 + i, speedup=(1.9, 2.0, 2.1)) for i, c in enumerate(CASES)]
    new_rows = [make_row(c, median=1.0 + i, speedup=(1.2, 1.3, 1.4)) for i, c in enumerate(CASES)]
    metadata = {"run_id": "x", "argv": [], "environment": environment(),
                "timing": {"speedup_interval": SPEEDUP_INTERVAL_METHOD}}
    base = write_run(tmp_path / "base.csv", base_rows, {**metadata, "run_id": "base"})
    new = write_run(tmp_path / "new.csv", new_rows, {**metadata, "run_id": "new"})
    comparison = compare_runs(base, new)
    assert comparison.failed and verdict(comparison, A) == REGRESSED
    assert "intervals apart by more than 10%" in judged(comparison, A)["reason"]
    older = write_run(tmp_path / "older.csv", base_rows, {**metadata, "run_id": "older", "timing": {}})
    comparison = compare_runs(older, new)
    assert not comparison.failed and verdict(comparison, A) == OK
    assert any("different methods (BASE unrecorded, NEW log-batch-means-t95)" in w for w in comparison.warnings)


def versioned(run_id: str, **methods: str) -> dict:
    """Metadata of a run of the current schema, by this code's methods but for ``methods``."""
    return {"run_id": run_id, "argv": [], "environment": environment(),
            **versioned_metadata({**measurement_methods(), **methods})}


def test_latency_intervals_of_different_methods_decide_nothing_and_medians_decide_what_they_can(tmp_path):
    """A case 2× slower with intervals apart regressed between two runs of one latency interval method; against a
    run that did not record its method, no verdict rests on the intervals: it is inconclusive, with the ratio of
    the medians; a case within the threshold passes on its medians, unless a run is noisy."""
    new_rows = baseline()
    new_rows[0] = make_row(A, median=2.0)
    new_rows[2] = make_row(C, median=3.1, status="noisy")
    base = write_run(tmp_path / "base.csv", baseline(), versioned("base"))
    new = write_run(tmp_path / "new.csv", new_rows, versioned("new"))
    comparison = compare_runs(base, new)
    assert verdict(comparison, A) == REGRESSED and "intervals apart" in judged(comparison, A)["reason"]
    assert not any("latency intervals" in w for w in comparison.warnings)

    unrecorded = write_run(tmp_path / "unrecorded.csv", new_rows)  # metadata without schema_version: version 1
    comparison = compare_runs(base, unrecorded)
    methods = f"latency intervals made by different methods (BASE {LATENCY_INTERVAL_METHOD}, NEW unrecorded)"
    row = judged(comparison, A)
    assert (row["verdict"], row["change"]) == (INCONCLUSIVE, SLOWER) and row["latency_ratio"] == pytest.approx(2.0)
    assert row["reason"].startswith(f"latency 2.00×, {methods}: medians only; beyond 10%")
    assert (verdict(comparison, B), judged(comparison, B)["reason"]) == (OK, f"latency 1.00×, {methods}: medians only")
    assert verdict(comparison, C) == INCONCLUSIVE and judged(comparison, C)["reason"].endswith("noisy in NEW")
    assert comparison.exit_status == EXIT_INCONCLUSIVE
    assert any(w.startswith(f"{methods}: latencies are judged by their medians alone") for w in comparison.warnings)

    other = write_run(tmp_path / "other.csv", new_rows, versioned("other", latency_interval="bootstrap-percentile"))
    row = judged(compare_runs(base, other), A)
    assert row["verdict"] == INCONCLUSIVE and f"(BASE {LATENCY_INTERVAL_METHOD}, NEW bootstrap-percentile)" in row["reason"]


def test_speedup_intervals_are_compared_only_when_the_runs_methods_name_the_same_method(tmp_path):
    """Same latencies, NEW's paired speedup interval wholly below BASE's: a regression between runs whose
    ``methods`` name one speedup interval method; when NEW's names another, the speedups are not compared, and
    the latencies still are (same latency interval method: no warning about them)."""
    base_rows = [make_row(c, median=1.0 + i, speedup=(1.9, 2.0, 2.1)) for i, c in enumerate(CASES)]
    new_rows = [make_row(c, median=1.0 + i, speedup=(1.2, 1.3, 1.4)) for i, c in enumerate(CASES)]
    base = write_run(tmp_path / "base.csv", base_rows, versioned("base"))
    same = write_run(tmp_path / "same.csv", new_rows, versioned("same"))
    assert verdict(compare_runs(base, same), A) == REGRESSED
    other = write_run(tmp_path / "other.csv", new_rows, versioned("other", speedup_interval="bootstrap-percentile"))
    comparison = compare_runs(base, other)
    assert verdict(comparison, A) == OK and not comparison.failed
    assert comparison.warnings == [f"speedup intervals made by different methods (BASE {SPEEDUP_INTERVAL_METHOD}, "
                                   f"NEW bootstrap-percentile): speedup intervals are not compared"]
