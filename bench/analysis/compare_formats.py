"""``run_bench.py compare --format``: a comparison as text (``format_comparison``, for a terminal), as markdown
(for a CI job summary or a merge-request comment) or as JSON (for a program). Every format tells the same
verdict; the exit status never depends on the format."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable

import pandas as pd

from bench.analysis.compare import (EXIT_INCONCLUSIVE, EXIT_PASSED, EXIT_REGRESSED, NUMBER_COLUMNS, Comparison,
                                    case_columns, format_comparison, verdict_line)
from bench.analysis.verdicts import IDENTITY, REGRESSED, VERDICTS, latency_interval

# The gate's decision by exit status, as the verdict line starts (PASSED, FAILED, UNDECIDED), in lower case
DECISIONS = {EXIT_PASSED: "passed", EXIT_REGRESSED: "failed", EXIT_INCONCLUSIVE: "undecided"}
# Characters that GitHub-flavoured markdown could read as markup inside a table cell or a line of text
_MARKUP = re.compile(r"([\\`*_\[\]<|~])")


def verdict_counts(c: Comparison) -> dict[str, int]:
    """How many compared cases got each verdict, every verdict named (0 for none)."""
    return {verdict: int((c.table["verdict"] == verdict).sum()) for verdict in VERDICTS}


# --------------------------------------------------------------------------------------------
# markdown
# --------------------------------------------------------------------------------------------

def markdown_text(value: Any) -> str:
    """``value`` as one line of literal markdown text: whitespace runs (line breaks too, which would end a table
    row or a list item) become one space, and markup characters (a cell's pipe first of all) are escaped."""
    return _MARKUP.sub(r"\\\1", " ".join(str(value).split()))


def _markdown_table(c: Comparison) -> list[str]:
    """The compared cases as a markdown table with the text table's columns, the regressed cases first (their
    verdict in bold), then BASE's order; numbers right-aligned."""
    shown = case_columns(c.table.sort_values("verdict", key=lambda v: v != REGRESSED, kind="stable"))
    cells = {column: [markdown_text(value) for value in shown[column]] for column in shown.columns}
    cells["verdict"] = [f"**{v}**" if v == REGRESSED else v for v in cells["verdict"]]
    return ["| " + " | ".join(markdown_text(column) for column in shown.columns) + " |",
            "|" + "|".join("---:" if column in NUMBER_COLUMNS else "---" for column in shown.columns) + "|",
            *("| " + " | ".join(row) + " |" for row in zip(*cells.values()))]


def format_markdown(c: Comparison) -> str:
    """The comparison as GitHub-flavoured markdown: a heading, the verdict line, the runs, the verdict counts, the
    table of compared cases, the warnings and the cases in one run only, each list as bullets."""
    lines = [f"## Benchmark comparison: {DECISIONS[c.exit_status]}", "", f"**{markdown_text(verdict_line(c))}**", ""]
    if c.base or c.new:
        lines += [f"BASE {markdown_text(c.base)} · NEW {markdown_text(c.new)}", ""]
    counts = ", ".join(f"{n} {verdict}" for verdict, n in verdict_counts(c).items() if n)
    lines += [f"Cases: {counts or 'none compared'}", ""]
    lines += _markdown_table(c) if len(c.table) else ["*(no case in both runs)*"]
    for title, items in ((f"Warnings ({len(c.warnings)})", c.warnings),
                         (f"Only in BASE ({len(c.only_in_base)}), not compared", c.only_in_base),
                         (f"Only in NEW ({len(c.only_in_new)}), not compared", c.only_in_new)):
        if items:
            lines += ["", f"### {markdown_text(title)}", "", *(f"- {markdown_text(item)}" for item in items)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------

def _json_value(value: Any) -> Any:
    """A table cell as JSON can hold it: NaN, infinities and missing values as None, numpy scalars as Python's."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _side(row: pd.Series, side: str) -> dict[str, Any]:
    """One run's measurements of a compared case; ``latency_ms_interval`` is the one its verdict was judged on."""
    interval = latency_interval(row, side)
    return {
        "status": _json_value(row[f"status_{side}"]),
        "latency_ms_median": _json_value(row[f"latency_ms_median_{side}"]),
        "latency_ms_interval": None if interval is None else {
            "low": _json_value(interval.low), "high": _json_value(interval.high), "source": interval.source},
        "rounds": None if pd.isna(row[f"rounds_{side}"]) else int(row[f"rounds_{side}"]),
        "peak_mem_mb": _json_value(row[f"peak_mem_mb_{side}"]),
        "device_name": _json_value(row[f"device_name_{side}"]),
    }


def _case(row: pd.Series) -> dict[str, Any]:
    return {
        "case": row["case"], "case_key": row["case_key"], **{key: _json_value(row[key]) for key in IDENTITY},
        "base": _side(row, "base"), "new": _side(row, "new"),
        **{ratio: _json_value(row[ratio]) for ratio in ("latency_ratio", "mem_ratio", "gmacs_ratio")},
        "verdict": row["verdict"], "change": row["change"], "reason": _json_value(row["reason"]) or "",
        "remeasured": _json_value(row["remeasured"]),
    }


def comparison_json(c: Comparison) -> dict[str, Any]:
    """The comparison as a JSON object: the decision, verdict line and exit status, the runs, the verdict counts,
    the gate's thresholds (fractions), the warnings, the cases in one run only, and one object per compared case
    (its identity, each run's measurements, the ratios NEW/BASE, its verdict and reason). Missing numbers are
    None."""
    return {
        "decision": DECISIONS[c.exit_status], "verdict_line": verdict_line(c), "exit_status": c.exit_status,
        "base": c.base, "new": c.new, "counts": verdict_counts(c), "compared": len(c.table),
        "thresholds": {"max_regression": c.max_regression, "max_inconclusive": c.max_inconclusive,
                       "min_shared": c.min_shared},
        "warnings": list(c.warnings), "only_in_base": list(c.only_in_base), "only_in_new": list(c.only_in_new),
        "cases": [_case(row) for _, row in c.table.iterrows()],
    }


def format_json(c: Comparison) -> str:
    """``comparison_json`` as strict JSON text (no NaN: ``json.dumps`` refuses one rather than write it)."""
    return json.dumps(comparison_json(c), indent=2, ensure_ascii=False, allow_nan=False)


FORMATS: dict[str, Callable[[Comparison], str]] = {"text": format_comparison, "markdown": format_markdown,
                                                   "json": format_json}
