"""Compare two runs case by case, and gate on them: ``run_bench.py compare BASE NEW``.

The runs are aligned on ``case_key`` (family, backend, compile mode, options, batch, resolution, dim, heads,
dtype, device, phase); a case in only one run is named but judged no further. Every compared case
gets one of three verdicts, with its reason: ``regressed``, ``ok`` or ``inconclusive``, by the rules of
``bench.analysis.verdicts``.

The gate: exit 1 when any case regressed; else exit 3 (undecided) when more than
``--max-inconclusive`` (default 10%) of the compared cases are inconclusive, or NEW has fewer than
``--min-shared`` (default 50%) of BASE's cases; else 0. ``--rerun-inconclusive N`` re-times NEW's
cases that are inconclusive for their timing's sake with the code at hand (``bench.execution.remeasure``),
paired with their reference, up to N times before the verdict. docs/regression-gate.md states the
rule's measured false-alarm and detection rates.

Environment differences (GPU profile, device and GPU names, torch, CUDA, driver, triton, xformers,
TF32) come from each run's ``<run-id>.json``; they are warnings. A run without its JSON is a warning
too; its rows' ``gpu_profile`` and ``device_name`` are compared instead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from bench.analysis.variants import Defaults
from bench.analysis.verdicts import (FASTER, GMACS_TOLERANCE, IDENTITY, INCONCLUSIVE, NOW_UNSUPPORTED, OTHER_DEVICE,
                                     REGRESSED, SLOWER, TOO_FEW_ROUNDS, UNCHANGED, UNMEASURED, VERDICTS,
                                     interval_methods_differ, is_known, judge_table, percent_text, ratio_of,
                                     ratio_text, same_devices)
from bench.schema.columns import results_suite
from bench.schema.labels import backend_label, backend_labels, case_label as labelled_case, configuration_name
from bench.schema.registry_facts import facts_of_runs, frozen_facts
from bench.schema.errors import ResultsFormatError, results_warnings
from bench.schema.files import load_results
from bench.schema.metadata import read_metadata, warn_row_count
from bench.schema.storage import resolve_results_path

DEFAULT_MAX_REGRESSION = 0.10
DEFAULT_MIN_SHARED = 0.5   # share of BASE's cases that NEW must also have
DEFAULT_MAX_INCONCLUSIVE = 0.10  # share of compared cases that may be inconclusive before the gate cannot judge
PROG = "run_bench.py compare"
NUMBER_COLUMNS = {"res", "C", "heads", "batch", "base ms", "new ms", "latency", "memory", "GMACs"}  # of case_columns

# Exit statuses of ``compare``
EXIT_PASSED, EXIT_REGRESSED, EXIT_UNUSABLE, EXIT_INCONCLUSIVE = 0, 1, 2, 3

MEASURED = ["status", "status_detail", "latency_ms_median", "latency_ms_p20", "latency_ms_p80", "latency_ms_ci_low",
            "latency_ms_ci_high", "rounds", "peak_mem_mb", "gmacs", "rel_err", "speedup_vs_ref", "speedup_ci_low",
            "speedup_ci_high", "device_name", "reference_backend"]

# (label, where in the metadata): top-level keys, or keys of metadata["environment"]
ENVIRONMENT_FIELDS = [
    ("GPU profile", None, "gpu_profile"),
    ("device name", None, "device_name"),
    ("GPU", "environment", "gpu_name"),
    ("torch", "environment", "torch"),
    ("CUDA", "environment", "cuda"),
    ("driver", "environment", "driver"),
    ("triton", "environment", "triton"),
    ("xformers", "environment", "xformers"),
    ("TF32 matmul", "environment", "tf32_matmul"),
    ("TF32 cuDNN", "environment", "tf32_cudnn"),
    ("cudnn.benchmark", "environment", "cudnn_benchmark"),
    ("deterministic algorithms", "environment", "deterministic"),
]


@dataclass
class Comparison:
    """Two runs side by side, and the gate's decision.

    ``table`` has one row per case present in both runs, in BASE's order, with the case's identity (``case_key``,
    a readable ``case`` label, family, backend (its label: 'torch+compile' for a compiled case), ``options`` as
    ``k=v,...``, resolution, batch, dim, heads, dtype, device, phase), each run's measurements suffixed ``_base`` /
    ``_new`` (``MEASURED``), the ratios NEW/BASE ``latency_ratio``, ``mem_ratio`` (empty across two device names)
    and ``gmacs_ratio``, and ``verdict`` (regressed, ok, inconclusive), ``change`` and ``reason``; ``remeasured``
    counts how often NEW's case was re-timed before its verdict.
    """

    table: pd.DataFrame
    only_in_base: list[str]
    only_in_new: list[str]
    warnings: list[str]
    max_regression: float = DEFAULT_MAX_REGRESSION
    max_inconclusive: float = DEFAULT_MAX_INCONCLUSIVE
    min_shared: float = DEFAULT_MIN_SHARED
    too_few_shared: str | None = None  # why the runs share too few cases to be compared, or None
    base: str = ""
    new: str = ""

    @property
    def regressed(self) -> pd.DataFrame:
        return self.table[self.table["verdict"] == REGRESSED]

    @property
    def inconclusive(self) -> pd.DataFrame:
        return self.table[self.table["verdict"] == INCONCLUSIVE]

    @property
    def too_inconclusive(self) -> str | None:
        """Why the gate cannot judge (too few shared cases, or more inconclusive ones than allowed), or None."""
        if self.too_few_shared:
            return self.too_few_shared
        count, compared = len(self.inconclusive), len(self.table)
        if compared and count > self.max_inconclusive * compared:
            return (f"{count} of {compared} cases inconclusive ({count / compared:.0%}), more than the "
                    f"{percent_text(self.max_inconclusive)} allowed (--max-inconclusive)")
        return None

    @property
    def exit_status(self) -> int:
        """EXIT_REGRESSED on any regressed case, else EXIT_INCONCLUSIVE when the runs cannot be judged, else
        EXIT_PASSED."""
        if len(self.regressed):
            return EXIT_REGRESSED
        return EXIT_INCONCLUSIVE if self.too_inconclusive else EXIT_PASSED

    @property
    def failed(self) -> bool:
        return self.exit_status != EXIT_PASSED


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def _load(path: str | Path, name: str, warnings: list[str]) -> pd.DataFrame:
    """The run's rows, each case once; what the reader left out (a torn last line) is a warning."""
    with results_warnings() as left_out:
        frame = load_results(path)
    warnings += [f"{name}: {message}" for message in left_out]
    if results_suite(frame.columns) != "attentions":
        raise ResultsFormatError(f"{resolve_results_path(path)} is a {results_suite(frame.columns)}-suite run; "
                                 f"compare aligns attention-suite runs")
    if frame.empty:
        raise ResultsFormatError(f"results file {resolve_results_path(path)} has no rows")
    duplicated = frame["case_key"].duplicated(keep="last")
    if duplicated.any():
        warnings.append(f"{name} has {int(duplicated.sum())} repeated case rows; the last row of each case is used")
        frame = frame[~duplicated]
    return frame.reset_index(drop=True)


def _metadata(path: str | Path, name: str, warnings: list[str]) -> dict[str, Any] | None:
    """The run's metadata; a missing file is a warning, a corrupt one an error (ResultsFormatError)."""
    metadata = read_metadata(path, missing_ok=True)
    if metadata is None:
        warnings.append(f"no run metadata for {name} ({resolve_results_path(path).with_suffix('.json')} does not "
                        f"exist); environment compared only on the rows' gpu_profile and device_name")
    return metadata


def _row_count_warnings(path: str | Path, name: str, metadata: dict[str, Any] | None, frame: pd.DataFrame) -> list[str]:
    """Where the run's metadata counts other rows than its file holds (a run still being written, a row cut by
    a kill, rows lost or added by hand): a warning, since its cases then differ from the run's."""
    if metadata is None:
        return []
    with results_warnings() as differ:
        warn_row_count(path, metadata, len(frame))
    return [f"{name}: {message}" for message in differ]


def _options_text(options: Any) -> str:
    if not isinstance(options, str) or not options.strip():
        return ""
    try:
        parsed = json.loads(options)
    except json.JSONDecodeError:
        return options
    return ",".join(f"{k}={v}" for k, v in parsed.items()) if isinstance(parsed, dict) else options


def case_label(row: pd.Series | dict[str, Any], defaults: Defaults) -> str:
    """A results row's case as ``run_bench.py --dry-run`` labels it ('bra/torch+compile ...'), its options named
    against the families' ``defaults`` (the runs' recorded registry); the case key when the row cannot be read so."""
    try:
        options = json.loads(row["options"]) if isinstance(row["options"], str) and row["options"] else {}
        configuration = configuration_name(row["family"], options, defaults.get(row["family"], {}))
        return labelled_case(configuration, backend_label(row["backend"], row.get("compile")), int(row["resolution"]),
                             int(row["dim"]), int(row["heads"]), int(row["batch"]), row["dtype"], row["phase"])
    except (TypeError, ValueError, AttributeError, KeyError):
        return str(row["case_key"])


# --------------------------------------------------------------------------------------------
# environment
# --------------------------------------------------------------------------------------------

def _environment(metadata: dict[str, Any] | None, frame: pd.DataFrame) -> dict[str, Any]:
    """The fields of ENVIRONMENT_FIELDS a run records; from the rows where it has no metadata."""
    env: dict[str, Any] = {}
    if metadata is not None:
        for label, section, key in ENVIRONMENT_FIELDS:
            source = metadata if section is None else metadata.get(section)
            if isinstance(source, dict) and key in source:
                env[label] = source[key]
    for label, column in (("GPU profile", "gpu_profile"), ("device name", "device_name")):
        if label not in env:
            values = sorted({str(v) for v in frame[column].dropna()})
            if values:
                env[label] = values[0] if len(values) == 1 else " / ".join(values)
    return env


def _environment_warnings(base: dict[str, Any], new: dict[str, Any]) -> list[str]:
    out = []
    for label, _, _ in ENVIRONMENT_FIELDS:
        if label in base and label in new and base[label] != new[label]:
            out.append(f"{label} differs: BASE {base[label]!r}, NEW {new[label]!r}")
    return out


def _resumed_warnings(metadata: dict[str, Any] | None, name: str) -> list[str]:
    """A run resumed in another environment mixes rows of both."""
    if not metadata or not isinstance(metadata.get("environment"), dict):
        return []
    first = metadata["environment"]
    out = []
    for resume in metadata.get("resumed") or []:
        later = resume.get("environment") if isinstance(resume, dict) else None
        if not isinstance(later, dict):
            continue
        changed = [f"{label} {first.get(key)!r} -> {later.get(key)!r}" for label, section, key in ENVIRONMENT_FIELDS
                   if section == "environment" and key in first and key in later and first[key] != later[key]]
        if changed:
            out.append(f"{name} was resumed in another environment ({'; '.join(changed)}): its rows mix both")
    return out


def compare_frames(base: pd.DataFrame, new: pd.DataFrame, max_regression: float = DEFAULT_MAX_REGRESSION,
                   medians_only: str | None = None,
                   defaults: Defaults | None = None) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(aligned table, labels only in BASE, labels only in NEW) of two loaded results frames; ``medians_only``
    says why their latency intervals do not compare (see ``judge``), None when they do; ``defaults``: the
    families' default options that labels name options against (default: those of the frozen registry, for
    runs that recorded none)."""
    defaults = frozen_facts().defaults if defaults is None else defaults
    base_keys, new_keys = set(base["case_key"]), set(new["case_key"])
    only_in_base = [case_label(r, defaults) for _, r in base[~base["case_key"].isin(new_keys)].iterrows()]
    only_in_new = [case_label(r, defaults) for _, r in new[~new["case_key"].isin(base_keys)].iterrows()]

    left = base[["case_key", *IDENTITY, *MEASURED]].assign(backend=backend_labels(base)).rename(
        columns={c: f"{c}_base" for c in MEASURED})  # a compiled case's backend: its label, 'torch+compile'
    right = new[["case_key", *MEASURED]].rename(columns={c: f"{c}_new" for c in MEASURED})
    table = left.merge(right, on="case_key", how="inner", sort=False)
    table.insert(1, "case", [case_label(r, defaults) for _, r in table.iterrows()] if len(table) else [])
    table["options"] = table["options"].map(_options_text)

    same_device = same_devices(table)
    for name, column in (("latency_ratio", "latency_ms_median"), ("mem_ratio", "peak_mem_mb"),
                         ("gmacs_ratio", "gmacs")):
        table[name] = [ratio_of(n, b) if same or name == "gmacs_ratio" else math.nan
                       for n, b, same in zip(table[f"{column}_new"], table[f"{column}_base"], same_device)]
    return judge_table(table, max_regression, medians_only), only_in_base, only_in_new


# NEW's rows to re-time -> their re-timed rows (same columns); given NEW's metadata (see bench.execution.remeasure)
Remeasure = Callable[[pd.DataFrame, "dict[str, Any] | None"], pd.DataFrame]
RETIMABLE_CHANGES = (SLOWER, FASTER, UNCHANGED, TOO_FEW_ROUNDS, UNMEASURED)  # inconclusive for the timing's sake


def _fraction(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be a fraction in [0, 1], not {value!r}")


def compare_runs(base: str | Path, new: str | Path, max_regression: float = DEFAULT_MAX_REGRESSION,
                 min_shared: float = DEFAULT_MIN_SHARED, max_inconclusive: float = DEFAULT_MAX_INCONCLUSIVE,
                 rerun_inconclusive: int = 0, remeasure: Remeasure | None = None) -> Comparison:
    """Align two results files on case_key and judge every shared case (see the module docstring).

    With ``rerun_inconclusive`` N, NEW's cases that are inconclusive for their timing's sake are re-timed with
    the code at hand (``remeasure``: the command line gives ``bench.execution.remeasure.remeasure_rows``), up to N
    times, before the verdict. Raises ResultsFormatError when either file is missing, empty, has no rows or is not
    a results file of this suite. Missing run metadata is a warning.
    """
    if not math.isfinite(max_regression) or max_regression < 0:
        raise ValueError(f"max_regression must be a finite, non-negative fraction, not {max_regression!r}")
    _fraction("min_shared", min_shared)
    _fraction("max_inconclusive", max_inconclusive)
    if rerun_inconclusive < 0:
        raise ValueError(f"rerun_inconclusive must be 0 or more, not {rerun_inconclusive!r}")
    if rerun_inconclusive and remeasure is None:
        raise ValueError("rerun_inconclusive needs remeasure, the function that re-times NEW's rows")
    warnings: list[str] = []
    base_frame = _load(base, "BASE", warnings)
    new_frame = _load(new, "NEW", warnings)
    base_meta = _metadata(base, "BASE", warnings)
    new_meta = _metadata(new, "NEW", warnings)
    warnings += _row_count_warnings(base, "BASE", base_meta, base_frame) + _row_count_warnings(new, "NEW", new_meta,
                                                                                               new_frame)
    warnings += _environment_warnings(_environment(base_meta, base_frame), _environment(new_meta, new_frame))
    warnings += _resumed_warnings(base_meta, "BASE") + _resumed_warnings(new_meta, "NEW")
    speedups_apart = interval_methods_differ("speedup", base_meta, new_meta)
    if speedups_apart:
        warnings.append(f"{speedups_apart}: speedup intervals are not compared")
        for frame in (base_frame, new_frame):
            frame[["speedup_ci_low", "speedup_ci_high"]] = math.nan
    medians_only = interval_methods_differ("latency", base_meta, new_meta)
    defaults = facts_of_runs([meta for meta in (base_meta, new_meta) if meta is not None]).defaults
    if medians_only:
        warnings.append(f"{medians_only}: latencies are judged by their medians alone, which can pass a case but "
                        f"never find it regressed")

    table, only_in_base, only_in_new = compare_frames(base_frame, new_frame, max_regression, medians_only, defaults)
    remeasured: dict[str, int] = {}
    for _ in range(rerun_inconclusive):
        retime = table[(table["verdict"] == INCONCLUSIVE) & table["change"].isin(RETIMABLE_CHANGES)]["case_key"]
        if retime.empty:
            break
        fresh = remeasure(new_frame[new_frame["case_key"].isin(set(retime))], new_meta)
        new_frame = pd.concat([new_frame[~new_frame["case_key"].isin(set(fresh["case_key"]))], fresh],
                              ignore_index=True)
        for key in fresh["case_key"]:
            remeasured[key] = remeasured.get(key, 0) + 1
        table, only_in_base, only_in_new = compare_frames(base_frame, new_frame, max_regression, medians_only, defaults)
    table["remeasured"] = [remeasured.get(key, 0) for key in table["case_key"]]
    if remeasured:
        warnings.append(f"{len(remeasured)} of NEW's cases were re-timed with the code at hand before their verdict "
                        f"(--rerun-inconclusive); NEW's results file is unchanged")

    too_few_shared = None
    if table.empty or len(table) < min_shared * len(base_frame):
        required = "one" if min_shared == 0 else percent_text(min_shared)
        share = len(table) / len(base_frame)
        too_few_shared = (f"NEW has {len(table)} of BASE's {len(base_frame)} cases ({share:.0%}); "
                          f"at least {required} must be compared (--min-shared)")
    changed = table[[is_known(r) and abs(r - 1) > GMACS_TOLERANCE for r in table["gmacs_ratio"]]]
    for _, row in changed.iterrows():
        warnings.append(f"GMACs changed for {row['case']}: {row['gmacs_base']:.4g} -> {row['gmacs_new']:.4g} "
                        f"({ratio_text(row['gmacs_ratio'])}); the measured work differs, so its latency is not "
                        f"like for like")
    moved = table[~same_devices(table)]
    for (base_device, new_device), rows in moved.groupby(["device_name_base", "device_name_new"], dropna=False):
        warnings.append(f"{len(rows)} case(s) ran on another device: BASE {base_device!r}, NEW {new_device!r}; their "
                        f"latency, memory and speedup are not compared (change '{OTHER_DEVICE}')")
    unsupported = table[table["change"] == NOW_UNSUPPORTED]
    if len(unsupported):
        warnings.append(f"{len(unsupported)} case(s) ran in BASE but are unsupported in NEW (a backend missing from "
                        f"NEW's environment?): {', '.join(unsupported['case'][:5])}"
                        f"{' …' if len(unsupported) > 5 else ''}")
    return Comparison(table=table, only_in_base=only_in_base, only_in_new=only_in_new, warnings=warnings,
                      max_regression=max_regression, max_inconclusive=max_inconclusive, min_shared=min_shared,
                      too_few_shared=too_few_shared, base=str(resolve_results_path(base)),
                      new=str(resolve_results_path(new)))


# --------------------------------------------------------------------------------------------
# text
# --------------------------------------------------------------------------------------------

def _fmt_ms(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.3g}"


def _text_table(frame: pd.DataFrame, right: set[str]) -> str:
    """Fixed-width columns: text left-aligned, numbers and ratios right-aligned."""
    cells = {c: [str(v) for v in frame[c]] for c in frame.columns}
    widths = {c: max([len(c), *map(len, cells[c])]) for c in frame.columns}

    def line(values: dict[str, str]) -> str:
        return "  ".join(values[c].rjust(widths[c]) if c in right else values[c].ljust(widths[c])
                         for c in frame.columns).rstrip()
    return "\n".join([line({c: c for c in frame.columns}),
                      *(line({c: cells[c][i] for c in frame.columns}) for i in range(len(frame)))])


def case_columns(table: pd.DataFrame) -> pd.DataFrame:
    """The compared cases' columns as the text and markdown tables show them, from a ``Comparison.table``."""
    return pd.DataFrame({
        "family": table["family"], "backend": table["backend"], "options": table["options"],
        "res": table["resolution"], "C": table["dim"], "heads": table["heads"], "batch": table["batch"],
        "dtype": table["dtype"], "phase": table["phase"],
        "status": [b if b == n else f"{b} -> {n}" for b, n in zip(table["status_base"], table["status_new"])],
        "base ms": table["latency_ms_median_base"].map(_fmt_ms),
        "new ms": table["latency_ms_median_new"].map(_fmt_ms),
        "latency": table["latency_ratio"].map(ratio_text),
        "memory": table["mem_ratio"].map(ratio_text),
        "GMACs": table["gmacs_ratio"].map(ratio_text),
        "verdict": table["verdict"], "change": table["change"],
        "reason": [f"{reason}{'; ' if reason else ''}re-timed {n}×" if n else reason
                   for reason, n in zip(table["reason"], table["remeasured"])],
    })


def format_comparison(c: Comparison) -> str:
    """The comparison as text: the table, warnings, cases in one run only, and a final verdict line."""
    lines = []
    if c.base or c.new:
        lines += [f"BASE {c.base}", f"NEW  {c.new}", ""]
    table = c.table
    lines.append("(no case in both runs)" if table.empty else _text_table(case_columns(table), NUMBER_COLUMNS))
    if c.warnings:
        lines += ["", f"Warnings ({len(c.warnings)}):", *(f"  - {w}" for w in c.warnings)]
    for name, labels in (("BASE", c.only_in_base), ("NEW", c.only_in_new)):
        if labels:
            lines += ["", f"Only in {name} ({len(labels)}), not compared:", *(f"  - {label}" for label in labels)]
    counts = table["verdict"].value_counts() if not table.empty else pd.Series(dtype=int)
    lines += ["", "Cases: " + (", ".join(f"{counts[v]} {v}" for v in VERDICTS if v in counts) or "none compared")]
    lines.append(verdict_line(c))
    return "\n".join(lines)


def verdict_line(c: Comparison) -> str:
    """The gate's decision in one line, starting with PASSED, FAILED (regressed) or UNDECIDED (cannot judge)."""
    threshold = percent_text(c.max_regression)
    compared = f"in {len(c.table)} case{'s' if len(c.table) != 1 else ''} compared"
    if c.exit_status == EXIT_REGRESSED:
        return f"FAILED: {len(c.regressed)} regressed (beyond {threshold}, or a new failure) {compared}"
    if c.exit_status == EXIT_INCONCLUSIVE:
        advice = ("" if c.too_few_shared else
                  "; re-time them (--rerun-inconclusive N), or rerun with a longer --min-time on a quieter machine")
        return f"UNDECIDED: {c.too_inconclusive}{advice}"
    inconclusive = f", {len(c.inconclusive)} inconclusive (allowed)" if len(c.inconclusive) else ""
    return f"PASSED: no regression beyond {threshold} and no new failure {compared}{inconclusive}"
