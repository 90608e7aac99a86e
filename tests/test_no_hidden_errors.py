"""Bad numbers never pass as ``ok``: sabotaged backends through the real harness, tables and comparison.

A fake family (``test_bench_core``'s one-Linear attention) gets backends that are wrong on purpose: NaN
everywhere, one NaN, one +inf, 1% off, one element far off, and a NaN in the gradient only. Each runs
through ``run_sweep`` in both phases (the NaN gradient only where a gradient is computed); every row
must be ``mismatch`` with a status_detail saying why. A family whose reference backend returns NaN must
give ``error`` rows. The correct backend must stay
``ok``, so that these tests fail both ways. The rows then go through the report tables and ``compare``,
which must neither crash nor show a speedup for any of them.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import bench.suites.attention_rows
from attentions.registry import _FAMILIES, Backend
from bench import load_results, run_sweep
from bench.analysis.compare import compare_runs, format_comparison
from bench.analysis.verdicts import NEW_FAILURE, REGRESSED
from bench.core.accuracy import judge
from bench.schema.files import ResultsWriter
from bench.report.catalog import make_tables
from bench.report.tables import backend_table
from bench.schema.registry_facts import from_snapshot
from bench.suites.snapshot import registry_snapshot
from test_bench_core import FakeAttention, case, context

PHASES = ("fwd", "fwd+bwd")
FAR_OFF = 1e3  # the one wrong element's error: far beyond any tolerance times the output's norm


def _at_first_element(y: torch.Tensor, value: float) -> torch.Tensor:
    """``y`` plus ``value`` at its first element (an addition, so gradients still flow through ``y``)."""
    bump = torch.zeros_like(y)
    bump.view(-1)[0] = value
    return y + bump


class _NanGradient(torch.autograd.Function):
    """The identity whose backward puts a NaN in the first element of the gradient."""

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        return y.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _at_first_element(grad, math.nan)


# backend -> (what is wrong, phases where it is wrong, words its status_detail must hold)
SABOTAGE = {
    "nan_everywhere": ("NaN everywhere", PHASES, "values (NaN/inf) in the output/gradients where float64 "
                                                 "has none (output 2048"),  # 2 × 8 × 8 × 16, then the gradients
    "one_nan": ("a single NaN", PHASES, "1 non-finite value (NaN/inf) in the output/gradients where "
                                        "float64 has none (output 1)"),
    "one_inf": ("+inf in one element", PHASES, "1 non-finite value (NaN/inf) in the output/gradients where "
                                               "float64 has none (output 1)"),
    "wrong": ("the right answer × 1.01", PHASES, ": rel_err 0.01 from float64 > bound 1e-05"),
    "one_far_off": (f"one element off by {FAR_OFF:g}", PHASES, "from float64 > bound 1e-05"),
    # the NaN at the projection's first output reaches one row of its weight, its bias and every input channel
    "nan_gradient": ("a NaN in the gradient only", ("fwd+bwd",),
                     "33 non-finite values (NaN/inf) in the output/gradients where float64 has none (input "
                     "gradient 16, gradient of proj.weight 16, gradient of proj.bias 1)"),
}


class SabotagedAttention(FakeAttention):
    """The fake family with the sabotaged backends of ``SABOTAGE``."""

    family = "sabotaged"
    backends = {
        **FakeAttention.backends,
        "nan_everywhere": Backend("nan_everywhere", lambda y: y * math.nan, "NaN everywhere"),
        "one_nan": Backend("one_nan", lambda y: _at_first_element(y, math.nan), "one NaN"),
        "one_inf": Backend("one_inf", lambda y: _at_first_element(y, math.inf), "one +inf"),
        "one_far_off": Backend("one_far_off", lambda y: _at_first_element(y, FAR_OFF), "one element far off"),
        "nan_gradient": Backend("nan_gradient", _NanGradient.apply, "a NaN in the gradient"),
    }


class NanReferenceAttention(SabotagedAttention):
    """The same backends, judged against the one that returns NaN everywhere."""

    family = "nan_reference"
    reference_backend = "nan_everywhere"


@pytest.fixture
def sabotaged_families(monkeypatch):
    monkeypatch.setitem(_FAMILIES, SabotagedAttention.family, SabotagedAttention)
    monkeypatch.setitem(_FAMILIES, NanReferenceAttention.family, NanReferenceAttention)
    # gc.collect between cases costs more than these tiny cases themselves; nothing to free here
    monkeypatch.setattr(bench.suites.attention_rows, "free_memory", lambda device: None)


@pytest.fixture
def sabotaged_run(sabotaged_families, tmp_path) -> Path:
    """A results file of every sabotaged backend in the phases where it is wrong, the correct backend in both
    phases, and the NaN-reference family's reference rows and a correct backend judged against them."""
    cases = [case("sabotaged", backend, phase) for backend, (_, phases, _) in SABOTAGE.items() for phase in phases]
    cases += [case(family, backend, phase) for phase in PHASES
              for family, backend in [("sabotaged", "torch"), ("nan_reference", "nan_everywhere"),
                                      ("nan_reference", "torch")]]
    path = tmp_path / "run.csv"
    assert run_sweep(cases, context(), path) == (len(cases), 0)
    return path


def rows_of(frame: pd.DataFrame, family: str, backend: str) -> pd.DataFrame:
    return frame[(frame["family"] == family) & (frame["backend"] == backend)]


def write_rows(path: Path, rows: pd.DataFrame) -> None:
    """Rows of a loaded results frame into a new results file (empty cells stay empty)."""
    writer = ResultsWriter(path)
    for row in rows.to_dict("records"):
        writer.append({column: None if pd.isna(value) else value for column, value in row.items()})


def test_a_nan_never_loses_a_maximum():
    """``max(0.0, nan)`` is 0.0 in Python: a NaN anywhere must give inf errors and a count, never a small number."""
    exact = [torch.ones(4, dtype=torch.float64), torch.ones(3, dtype=torch.float64)]
    for got, where, reason in [
            ([torch.full((4,), math.nan), torch.ones(3)], {"output": 4}, "4 non-finite values (NaN/inf)"),
            ([torch.ones(4), torch.tensor([1.0, -math.inf, 1.0])], {"input gradient": 1},
             "1 non-finite value (NaN/inf)")]:
        measured = judge(got, exact, exact, ["output", "input gradient"], "float32")
        assert (measured.max_abs, max(measured.errors), measured.nonfinite) == (math.inf, math.inf, where)
        assert measured.mismatch_reason().startswith(reason)
    # a reference that overflows where float64 does not bounds nothing: the case is judged on finiteness
    overflowing = judge([exact[0] * 1.5], [torch.full((4,), math.inf)], exact[:1], ["output"], "float16")
    assert overflowing.bound == math.inf and overflowing.mismatch_reason() is None


@pytest.mark.parametrize("backend", list(SABOTAGE))
def test_a_sabotaged_backend_is_a_mismatch_that_says_why(sabotaged_run, backend):
    what, phases, detail = SABOTAGE[backend]
    rows = rows_of(load_results(sabotaged_run), "sabotaged", backend)
    assert list(rows["phase"]) == list(phases)
    for _, row in rows.iterrows():
        assert row["status"] == "mismatch", f"{what} ({row['phase']}): {row['status']}, {row['status_detail']!r}"
        assert detail in row["status_detail"], row["status_detail"]
        assert row["rel_err"] > row["err_tolerance"] and row["max_abs_err"] > 0
        if "non-finite" in row["status_detail"]:
            assert row["rel_err"] == row["max_abs_err"] == math.inf  # never a small finite number


def test_a_nan_reference_makes_its_cases_errors(sabotaged_run):
    """The NaN reference's own rows and a correct backend judged against it: ``error``, naming the reference
    and where its non-finite values are."""
    frame = load_results(sabotaged_run)
    for backend in ("nan_everywhere", "torch"):
        rows = rows_of(frame, "nan_reference", backend)
        assert list(rows["status"]) == ["error", "error"], list(rows["status_detail"])
        for detail in rows["status_detail"]:
            assert "reference backend 'nan_everywhere' gives" in detail and "cannot be judged" in detail
        assert rows[["rel_err", "max_abs_err", "latency_ms_median"]].isna().all(axis=None)
        fwd, fwd_bwd = rows["status_detail"]
        assert "2048 non-finite values (NaN/inf) in its float64 output/gradients (output 2048)" in fwd
        assert ("(output 2048, input gradient 2048, gradient of proj.weight 256, gradient of proj.bias 16)"
                in fwd_bwd)


def test_a_correct_backend_is_still_ok(sabotaged_families, sabotaged_run):
    """The correct backend in both phases, and the NaN-gradient backend in the forward (its output is right;
    only a pass that computes the gradient can see the NaN): ok, against the same reference."""
    rows = rows_of(load_results(sabotaged_run), "sabotaged", "torch")
    assert list(rows["status"]) == ["ok", "ok"], list(rows["status_detail"])
    row = bench.suites.attention_rows.run_case(case("sabotaged", "nan_gradient", "fwd"), context())
    assert row["status"] == "ok" and row["rel_err"] == row["ref_rel_err"] > 0, row["status_detail"]


def test_tables_show_the_status_and_no_speedup(sabotaged_run):
    frame = load_results(sabotaged_run)
    facts = from_snapshot(registry_snapshot())  # the live registry: the sabotaged family is this test's own
    tables = {table.name: table for table in make_tables(frame, facts, "attentions")}
    backends = tables["backends"].frame()
    failed = backends[~((backends["Variant"] == "sabotaged") & (backends["Backend"] == "torch"))]
    assert set(failed["Status"]) == {"mismatch", "error"}
    assert failed[["Speedup", "Mem saving"]].isna().all(axis=None)
    main = tables["main"].frame()
    failed = main[~((main["Variant"] == "sabotaged") & (main["Backend"] == "torch"))]
    assert failed[["× ref", "Mem/ref", "Img/s", "Mem MB"]].isna().all(axis=None)
    # status, speedup, memory saving, its error, the reference's, the bound, max abs error
    mismatch = r"\| mismatch \| — \| — \| inf \| [0-9.e+-]+ \| [0-9.e+-]+ \| inf \|"
    assert re.search(mismatch, tables["backends"].to_markdown())
    only_nonfinite = frame[(frame["family"] == "sabotaged") & frame["backend"].isin(["torch", "nan_everywhere",
                                                                                     "one_nan"])]
    assert "**inf**" not in backend_table(only_nonfinite, facts).to_markdown()  # inf errors only: none is the best
    for table in tables.values():
        assert table.to_latex()


def test_compare_calls_a_backend_turning_bad_a_new_failure(sabotaged_run, tmp_path):
    """BASE: the correct backend's rows. NEW: the same cases giving a sabotaged backend's numbers. Every case
    regressed, a new failure whose reason says why; the sabotaged run compared with itself fails nowhere and speeds
    nothing up."""
    frame = load_results(sabotaged_run)
    base_rows = rows_of(frame, "sabotaged", "torch").set_index("phase", drop=False)
    base = tmp_path / "base.csv"
    write_rows(base, base_rows)
    for backend, (_, phases, _) in SABOTAGE.items():
        new_rows = rows_of(frame, "sabotaged", backend).set_index("phase", drop=False)
        new_rows = new_rows.assign(backend="torch", case_key=base_rows.loc[new_rows.index, "case_key"])
        new = tmp_path / f"{backend}.csv"
        write_rows(new, new_rows)
        comparison = compare_runs(base, new)
        assert comparison.failed and list(comparison.table["verdict"]) == [REGRESSED] * len(phases)
        assert list(comparison.table["change"]) == [NEW_FAILURE] * len(phases)
        for note, detail in zip(comparison.table["reason"], new_rows["status_detail"]):
            assert note.startswith(detail[:80]), (note, detail)  # compare shortens it to 100 characters
        assert "FAILED" in format_comparison(comparison)
    itself = compare_runs(sabotaged_run, sabotaged_run)
    assert itself.regressed.empty  # its ok rows have too few rounds to judge (the fixture's 3): inconclusive
    judged = itself.table[itself.table["status_base"] != "ok"]
    assert set(judged["change"]) == {"still mismatch", "still error"} and set(judged["verdict"]) == {"ok"}
    format_comparison(itself)

