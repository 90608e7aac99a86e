"""The cells and conventions the report's tables share (``bench.report.tables``, ``bench.report.tables_bra``).

Rules every table follows:
- a short caption, and a note: what the columns shown mean, units and conventions (GMACs are the papers'
  "FLOPs"; HW FLOPs = 2 × MACs);
- the best value of each column is in bold, within each block of rows (a resolution and phase);
- rows whose status is not ok keep their place and show the status instead of numbers;
- a mismatch row never shows a speedup: it failed the error check against the reference;
- a noisy row shows its latency marked NOISY, never in bold and never in a ratio of timings; its peak memory
  and memory ratios stay (peak memory is no timing figure);
- only cases that ran are rows: a combination the sweep never ran has no row of "—";
- a speedup over the reference is the paired one (median of per-round ratios, timed in the same
  rounds) with its 95% confidence interval where the run has it, else the ratio of medians; a speedup over
  the compiled reference (× compiled ref, in the tables of backends where some row has one) is paired only;
- a backend is named by its label: 'torch+compile' is torch under torch.compile (``bench.schema.labels``);
- an error recorded as inf (NaN/inf in a backend's output or gradients) reads "inf" and is never in bold.
"""

from __future__ import annotations

import math

import pandas as pd

from bench.schema.registry_facts import RegistryFacts
from bench.report.tabular import Cell, Column
from bench.schema.columns import EAGER, MEASURED_STATUSES

MEMORY_STATUSES = ("ok", "noisy")  # rows whose peak memory stands: noise is in the timing, not in the memory
CONVENTIONS = ("GMACs are multiply-adds counted by fvcore, the papers' \"FLOPs\"; hardware FLOPs = 2 × MACs "
               "(forward+backward: 3 × the forward). Latency is the median over timed rounds with the p20–p80 "
               "spread; memory is the peak allocated during one pass above what was allocated before it.")


def ratio_text(value: float) -> str:
    return f"{value:.2f}×"


def latency_cell(row: pd.Series) -> Cell:
    text = f"{row['latency_ms_median']:.3g} [{row['latency_ms_p20']:.3g}–{row['latency_ms_p80']:.3g}]"
    return Cell(row["latency_ms_median"], text)


def latency_or_status(row: pd.Series) -> object:
    """The latency of an ok row; of a noisy or mismatch row as marked text (never bold); else the status."""
    if row["status"] == "ok":
        return latency_cell(row)
    if row["status"] in MEASURED_STATUSES:
        return f"{latency_cell(row).text} {row['status'].upper()}"
    return row["status"].upper()


def peak_memory(row: pd.Series) -> float | None:
    """The row's peak memory, where it stands (``MEMORY_STATUSES``)."""
    return value_or_none(row["peak_mem_mb"]) if row["status"] in MEMORY_STATUSES else None


def memory_ratio(row: pd.Series, partner: str) -> float | None:
    """Peak memory over the ``partner``'s (a ``bench.analysis.variants`` prefix: reference, full), where both stand."""
    if row["status"] not in MEMORY_STATUSES or row[f"{partner}_status"] not in MEMORY_STATUSES:
        return None
    memory, partner_memory = row["peak_mem_mb"], row[f"{partner}_peak_mem_mb"]
    return memory / partner_memory if partner_memory > 0 and math.isfinite(memory / partner_memory) else None


def speedup_cell(row: pd.Series, partner: str = "reference") -> Cell | None:
    """The speedup over the ``partner`` (a ``bench.analysis.variants`` prefix: reference, compiled_reference) with
    its confidence interval, when the run paired them."""
    value = value_or_none(row[f"{partner}_speedup"])
    if value is None:
        return None
    low, high = value_or_none(row.get(f"{partner}_speedup_low")), value_or_none(row.get(f"{partner}_speedup_high"))
    return Cell(value, ratio_text(value) if low is None else f"{ratio_text(value)} [{low:.2f}–{high:.2f}]")


def compiled_reference_column(rows: pd.DataFrame) -> Column:
    """The "× compiled ref" column of a table of ``rows`` (``with_compiled_reference``), its note naming their
    compiled references."""
    references = ", ".join(sorted(rows["compiled_ref"].dropna().unique()))
    return Column("× compiled ref", ratio_text, "max", note=f"× compiled ref: speedup over the compiled reference "
                  f"({references}: the fastest torch.compile mode of the reference backend), timed in paired rounds "
                  f"like × ref, with its 95% confidence interval.")


def compiled_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of cases run under torch.compile (a compile mode other than eager)."""
    if "compile" not in frame.columns:
        return frame.iloc[:0]
    return frame[frame["compile"].notna() & (frame["compile"] != EAGER)]


def compile_columns() -> list[Column]:
    """The columns of a compiled case's compilation (``compile_cells``)."""
    return [Column("Compile s", lambda v: f"{v:.3g}", "min", note="Compile s: cold compile time, the first compiled "
                   "pass with Inductor's caches empty and dynamo reset."),
            Column("Graphs", lambda v: f"{v:.0f}", note="Graphs: graphs dynamo compiled for the pass (1 without a "
                   "graph break)."),
            Column("Graph breaks", lambda v: f"{v:.0f}", "min", note="Graph breaks: where dynamo left the graph "
                   "tracing the pass."),
            Column("Status", note="Status: timeout, a compile past its limit.")]


def compile_cells(row: pd.Series) -> list[object]:
    return [value_or_none(row["compile_s"]), value_or_none(row["graphs"]), value_or_none(row["graph_breaks"]),
            row["status"]]


def value_or_none(value: float) -> float | None:
    return None if pd.isna(value) else value


def case_columns() -> list[Column]:
    """The columns naming an attention case; in LaTeX the resolution, width and phase head their blocks."""
    return [Column("Variant"), Column("Backend"), Column("Res.", heading=True), Column("C/heads", heading=True),
            Column("Phase", heading=True)]


def in_case_order(frame: pd.DataFrame, facts: RegistryFacts) -> pd.DataFrame:
    """Rows by phase, resolution and width, then families in registry order, variants and backends by name."""
    return frame.assign(_family_order=frame["family"].map(facts.family_rank)).sort_values(
        ["phase", "resolution", "dim", "_family_order", "variant", "backend"], kind="stable")
