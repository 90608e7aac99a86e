"""Ratio gates on one run (``bench.analysis.gates``, ``run_bench.py check``): the language, the pairing of rows,
the interval that must clear the bound, and the rows a gate never trusts."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from bench import cli
from bench.analysis.gates import GateError, evaluate, format_results, parse_gate

DEFAULTS = {"bra": {"topk": 4, "n_win": 7}, "mybra": {"topk": 4, "n_win": 7}, "full": {}}


def row(family: str, backend: str, latency: float, *, resolution: int = 28, phase: str = "fwd", status: str = "ok",
        options: dict | None = None, reference: str = "torch", speedup: tuple[float, float, float] | None = None,
        ci: tuple[float, float] | None = None, peak_mem: float = 100.0, rel_err: float = 2e-7) -> dict:
    """One row of a run as the harness writes it (the columns a gate reads)."""
    low, high = ci or (latency * 0.95, latency * 1.05)
    speedup_vs_ref, speedup_low, speedup_high = speedup or (math.nan, math.nan, math.nan)
    return {"family": family, "backend": backend, "options": json.dumps(options or {}), "resolution": resolution,
            "batch": 2, "dim": 64, "heads": 2, "dtype": "float32", "phase": phase, "device_name": "cpu0",
            "status": status, "status_detail": "timing spread p80/p20 1.9" if status == "noisy" else "",
            "reference_backend": reference, "latency_ms_median": latency, "latency_ms_p20": latency * 0.9,
            "latency_ms_p80": latency * 1.2, "latency_ms_ci_low": low,
            "latency_ms_ci_high": high, "speedup_vs_ref": speedup_vs_ref, "speedup_ci_low": speedup_low,
            "speedup_ci_high": speedup_high, "peak_mem_mb": peak_mem, "gmacs": 0.2, "rel_err": rel_err,
            "throughput": 2e3 / latency}


@pytest.fixture
def run() -> pd.DataFrame:
    """BRA's torch and chunked rows timed as one group (chunked 2× faster, interval 1.8-2.2), a plugin's family
    of its own (mybra) and full attention, at 28² and 56²."""
    return pd.DataFrame([
        row("bra", "torch", 10.0, peak_mem=40.0),
        row("bra", "chunked", 5.0, speedup=(2.0, 1.8, 2.2), peak_mem=20.0),
        row("bra", "torch", 40.0, resolution=56, peak_mem=160.0),
        row("bra", "chunked", 25.0, resolution=56, speedup=(1.6, 1.25, 2.05), peak_mem=90.0),
        row("mybra", "torch", 8.0, ci=(7.6, 8.4), peak_mem=30.0),
        row("mybra", "torch", 30.0, resolution=56, ci=(28.0, 32.0), peak_mem=100.0),
        row("full", "torch", 12.0, peak_mem=200.0),
        row("full", "torch", 90.0, resolution=56, status="noisy", peak_mem=800.0),
    ])


def verdicts(text: str, frame: pd.DataFrame) -> list[tuple[int, bool, float, float, float, str]]:
    result = evaluate(parse_gate(text), frame, DEFAULTS)
    return [(int(c.shape.split("²")[0]), c.passed, round(c.value, 4), round(c.low, 4), round(c.high, 4), c.method)
            for c in result.checks]


def test_a_paired_ratio_takes_the_runs_speedup_interval(run):
    """chunked / torch in one comparison group: 1 / speedup, its interval 1/2.2 .. 1/1.8 = 0.4545 .. 0.5556
    at 28²; 1/2.05 .. 1/1.25 = 0.4878 .. 0.8 at 56²."""
    assert verdicts("bra/chunked <= 0.6 * bra/torch", run) == [
        (28, True, 0.5, 0.4545, 0.5556, "paired"), (56, False, 0.625, 0.4878, 0.8, "paired")]
    # the same pair the other way round: the speedup itself
    assert verdicts("bra/torch >= 1.7 * bra/chunked", run) == [
        (28, True, 2.0, 1.8, 2.2, "paired"), (56, False, 1.6, 1.25, 2.05, "paired")]


def test_the_whole_interval_must_clear_the_bound_not_the_median(run):
    """At 56² the median 0.625 is below 0.7 but the interval reaches 0.8: not shown, so the gate fails."""
    result = evaluate(parse_gate("bra/chunked <= 0.7 * bra/torch"), run, DEFAULTS)
    assert not result.passed
    failing = result.checks[1]
    assert failing.reason == "the ratio 0.625 [0.488, 0.8] does not clear <= 0.7"


def test_rows_of_two_families_compare_at_the_far_ends_of_their_intervals(run):
    """mybra 8 [7.6, 8.4] against bra 10 [9.5, 10.5]: 0.8, at worst 8.4 / 9.5 = 0.8842, at best 7.6 / 10.5."""
    assert verdicts("mybra <= 0.9 * bra", run) == [
        (28, True, 0.8, round(7.6 / 10.5, 4), round(8.4 / 9.5, 4), "unpaired (the rows' median intervals)"),
        (56, True, 0.75, round(28 / 42, 4), round(32 / 38, 4), "unpaired (the rows' median intervals)")]
    assert [passed for _, passed, *_ in verdicts("mybra <= 0.85 * bra/torch", run)] == [False, True]


def test_a_run_without_latency_intervals_takes_the_wider_p20_p80(run):
    """Runs from before the intervals were recorded: mybra 8 [7.2, 9.6] against bra 10 [9, 12] at 28²: 0.8, at
    worst 9.6 / 9 = 1.0667."""
    run[["latency_ms_ci_low", "latency_ms_ci_high"]] = math.nan
    assert verdicts("mybra <= 1.1 * bra", run)[0] == (
        28, True, 0.8, round(7.2 / 12, 4), round(9.6 / 9, 4), "unpaired (the rows' median intervals)")
    assert not evaluate(parse_gate("mybra <= 1.05 * bra"), run, DEFAULTS).checks[0].passed


def test_memory_is_exact_and_the_right_side_takes_the_left_measure(run):
    assert verdicts("mybra peak_mem <= 0.5 * full", run)[0] == (28, True, 0.15, 0.15, 0.15, "exact")


def test_a_noisy_row_fails_the_gate_with_its_status(run):
    """full at 56² is noisy: its memory would clear the bound, but the gate does not trust the row."""
    result = evaluate(parse_gate("mybra peak_mem <= 0.5 * full"), run, DEFAULTS)
    assert [c.passed for c in result.checks] == [True, False] and not result.passed
    assert result.checks[1].reason == "full is noisy (timing spread p80/p20 1.9)"


@pytest.mark.parametrize("status", ["mismatch", "error", "unsupported"])
def test_a_row_that_is_not_ok_fails_the_gate(run, status):
    run.loc[1, "status"] = status
    result = evaluate(parse_gate("bra/chunked <= 0.6 * bra/torch"), run, DEFAULTS)
    assert not result.checks[0].passed and result.checks[0].reason.startswith(f"bra/chunked is {status}")


def test_an_absolute_bound(run):
    assert [c.passed for c in evaluate(parse_gate("bra/chunked < 6"), run, DEFAULTS).checks] == [True, False]
    assert evaluate(parse_gate("bra/torch rel_err <= 1e-6"), run, DEFAULTS).passed
    throughput = evaluate(parse_gate("mybra[resolution=28] throughput >= 240"), run, DEFAULTS)
    [check] = throughput.checks  # 2 images / 8.4 ms at worst = 238 per s: not shown to clear 240
    assert not check.passed and check.low == pytest.approx(2e3 / 8.4)


def test_options_pick_rows_and_a_side_of_two_variants_must_say_which(run):
    both = pd.concat([run, pd.DataFrame([row("bra", "torch", 12.0, options={"topk": 1})])], ignore_index=True)
    with pytest.raises(GateError, match=r"'bra' names 2 rows at 28² C64 h2 b2 float32 fwd \(options "
                                        r"\{\"topk\": 1\}; \{\}\): say which with \[KEY=VALUE\]"):
        evaluate(parse_gate("mybra <= bra"), both, DEFAULTS)
    assert verdicts("mybra <= bra[topk=4]", both)[0][:3] == (28, True, 0.8)  # topk 4: the default, not written
    assert verdicts("mybra <= bra[topk=1]", both)[0][:3] == (28, True, round(8 / 12, 4))


@pytest.mark.parametrize("text, message", [
    ("bra/chunked <= 0.6 *", "expected a selector (FAMILY[/BACKEND][KEY=VALUE,...]), got the end"),
    ("bra/chunked ~ 3", "cannot read '~ 3'"),
    ("bra/chunked latency", "expected one of <=, <, >=, > after 'bra/chunked', got the end"),
    ("bra/chunked speed <= 3", "unknown measure 'speed'"),
    ("bra <= 0 * full", "the bound's factor must be a positive number, got 0"),
    ("bra peak_mem <= 2 * full latency", "both sides must take one measure, not peak_mem and latency"),
    ("bra[topk] <= 2", "'topk' in 'bra[topk]' is not KEY=VALUE"),
    ("bra <= 2 full", "unexpected 'full' after the bound"),
])
def test_a_gate_that_does_not_parse_names_the_token(text, message):
    with pytest.raises(GateError) as error:
        parse_gate(text)
    assert message in str(error.value) and text in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("nobra <= bra", "'nobra' names no row: no family 'nobra' in the run (families: bra, mybra, full)"),
    ("bra/triton <= bra", "'bra/triton' names no row: no backend 'triton' of 'bra' in the run (backends: torch, "
                          "chunked)"),
    ("bra[topk=16] <= 2", "'bra[topk=16]' names no row: none of bra/torch's 2 rows has topk=16"),
    ("mybra[resolution=28] <= bra[resolution=56]", "share no shape in the run"),
])
def test_a_gate_that_names_no_row_says_which_side(run, text, message):
    with pytest.raises(GateError, match=None) as error:
        evaluate(parse_gate(text), run, DEFAULTS)
    assert message in str(error.value)


def test_the_formats(run):
    results = [evaluate(parse_gate(text), run, DEFAULTS) for text in ("bra/chunked <= 0.6 * bra/torch", "bra < 50")]
    text = format_results(results)
    assert text.splitlines()[0] == "FAIL  bra/chunked <= 0.6 * bra/torch"
    assert "  ok    28² C64 h2 b2 float32 fwd: 0.5 [0.455, 0.556] (paired)" in text
    assert text.splitlines()[-1] == "1 of 2 gates passed"
    markdown = format_results(results, "markdown").splitlines()
    assert markdown[:2] == ["| gate | shape | value [95% interval] | how | verdict |", "|---|---|---|---|---|"]
    assert len(markdown) == 2 + 4 + 1
    decoded = json.loads(format_results(results, "json"))
    assert [gate["passed"] for gate in decoded] == [False, True] and decoded[0]["checks"][0]["low"] == pytest.approx(
        1 / 2.2)


# --------------------------------------------------------------------------------------------
# run_bench.py check, on a real run's file
# --------------------------------------------------------------------------------------------

def test_check_exits_0_1_or_2_on_a_real_run(small_results, capsys):
    """The small run (tests/small_results.py): BRA at topk 1 and 4 (and an avgpool variant), full and window
    attention at 7² and 14²; its full/sdpa row at 14² fwd is a mismatch."""
    bra4 = "bra[topk=4,kv_downsample_mode=identity]"
    assert cli.main(["check", str(small_results), "--expect", f"bra[topk=1] gmacs <= {bra4}"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 of 1 gates passed"
    assert cli.main(["check", str(small_results), "--expect", f"bra[topk=1] gmacs <= 0.1 * {bra4}"]) == 1
    assert "does not clear <= 0.1" in capsys.readouterr().out
    assert cli.main(["check", str(small_results), "--expect", "full/torch rel_err <= 1000 * full/sdpa",
                     "--format", "markdown"]) == 1
    assert "**fail**: full/sdpa is mismatch (rel_err 0.5 > tolerance)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["check", str(small_results), "--expect", "bra <= 2 *"])
    assert exc.value.code == 2 and "expected a selector" in capsys.readouterr().err
    assert cli.main(["check", str(small_results), "--expect", "deformable <= bra"]) == 2
    assert capsys.readouterr().err.strip().startswith(
        "run_bench.py check: error: gate 'deformable <= bra': 'deformable' names no row")
