"""A run's rows as the benchmark entries that the GitHub Action ``benchmark-action/github-action-benchmark`` reads
with ``tool: customSmallerIsBetter``: a JSON list of ``{"name", "unit", "value", "range", "extra"}`` objects.

Each timed case (status ok or noisy) gives its median latency in ms, and its peak memory in MB where the row has
one (named ``<case> peak memory``): smaller is better for both. The action draws one chart per ``name``, so a
name is the case's label as ``compare`` and ``--dry-run`` give it, and unique within the run: labels that two
cases share (options that differ only in spelling their defaults, two devices) get the case key added. The
range is the half-width of the median's 95% interval, where the row has one; the extra text names the status,
the rounds timed and the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.analysis.compare import case_label
from bench.analysis.variants import Defaults
from bench.analysis.verdicts import TIMED, is_known

GITHUB_ACTION_BENCHMARK = "github-action-benchmark"
MEMORY_SUFFIX = " peak memory"
ENTRY_KEYS = ("name", "unit", "value", "range", "extra")  # what the action reads of an entry; range, extra optional


@dataclass
class BenchmarkExport:
    """The entries of a run, and what of it they leave out."""

    entries: list[dict[str, Any]]
    left_out: dict[str, int]  # status -> rows of that status left out, not timed
    repeated: int  # earlier rows of a case the run holds again later; the last row of each case is exported


def _unique_names(rows: pd.DataFrame, defaults: Defaults) -> list[str]:
    """The rows' case labels, each shared label followed by its row's case key."""
    labels = [case_label(row, defaults) for _, row in rows.iterrows()]
    shared = {label for label in labels if labels.count(label) > 1}
    return [f"{label} [{key}]" if label in shared else label for label, key in zip(labels, rows["case_key"])]


def _extra(row: pd.Series) -> str:
    parts = [f"status {row['status']}"]
    if is_known(row["rounds"]):
        parts.append(f"{int(row['rounds'])} rounds")
    if is_known(row["device_name"]) and str(row["device_name"]).strip():
        parts.append(str(row["device_name"]))
    return "; ".join(parts)


def _latency_entry(name: str, row: pd.Series, extra: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "unit": "ms", "value": float(row["latency_ms_median"])}
    low, high = row["latency_ms_ci_low"], row["latency_ms_ci_high"]
    if is_known(low, high):
        entry["range"] = f"± {(high - low) / 2:.3g}"
    entry["extra"] = extra
    return entry


def benchmark_entries(frame: pd.DataFrame, defaults: Defaults) -> BenchmarkExport:
    """The entries of an attention-suite results frame (``bench.schema.files.load_results``), in its order;
    ``defaults``: the families' default options that the labels name options against (the run's recorded
    registry, ``bench.schema.registry_facts``)."""
    repeated = frame["case_key"].duplicated(keep="last")
    frame = frame[~repeated]
    timed = frame["status"].isin(TIMED) & frame["latency_ms_median"].notna()
    rows = frame[timed]
    entries = []
    for name, (_, row) in zip(_unique_names(rows, defaults), rows.iterrows()):
        extra = _extra(row)
        entries.append(_latency_entry(name, row, extra))
        if is_known(row["peak_mem_mb"]):
            entries.append({"name": f"{name}{MEMORY_SUFFIX}", "unit": "MB", "value": float(row["peak_mem_mb"]),
                            "extra": extra})
    left_out = {str(status): int(count) for status, count in frame.loc[~timed, "status"].value_counts().items()}
    return BenchmarkExport(entries, left_out, int(repeated.sum()))
