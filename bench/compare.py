"""Compare two runs case by case: ``run_bench.py compare BASE NEW [--max-regression 10%]``.

The runs are aligned on ``case_key`` (family, backend, options, batch, resolution, dim, heads,
dtype, device, phase); a case in only one run is named but judged no further.

Judgement of a case that is ``ok`` in both runs:

- **Latency.** A regression only when the median ratio NEW/BASE exceeds ``1 + max_regression``
  *and* the spreads do not overlap (NEW's p20 above BASE's p80). A larger median with overlapping
  spreads is ``slower (noise)``. Symmetrically, ``faster`` needs a ratio below
  ``1 / (1 + max_regression)`` and NEW's p80 below BASE's p20 (else ``faster (noise)``).
- **Peak memory.** A regression when the ratio exceeds ``1 + max_regression`` and the growth is at
  least 1 MB (smaller differences are allocator noise, whatever their ratio).
- **Speedup over the reference.** Where both runs timed a case and its reference in paired rounds
  (``speedup_vs_ref`` with a confidence interval), a drop is a regression when NEW's interval lies
  wholly below BASE's, by more than ``max_regression``: unlike latencies taken in two runs, a paired
  speedup does not drift with the machine.
- **Noise.** A case that is ``noisy`` in either run has no latency or speedup regression (``slower
  (noise)`` at most); its memory is judged as usual.
- **GMACs.** A change (beyond a relative 1e-6) means the measured work changed: it is shown and
  warned about, never a failure.
- **Device.** A case whose rows name two devices (``device_name``: the GPU or CPU model it ran on,
  as in a run spread over mixed GPUs) is ``other device``: its latency, memory and speedup are not
  compared (no ratio across two device models), never a failure, and a warning names both devices.
  Its status is judged as usual.

Status changes: ``ok`` into ``mismatch``, ``error`` or ``oom`` is a ``NEW FAILURE``; ``ok`` into
``unsupported`` (a backend missing from NEW's environment) is ``now unsupported`` and a warning,
not a failure; a failure turning ``ok`` is ``fixed``. The comparison *fails* when any case is a
``REGRESSION`` or a ``NEW FAILURE``.

Coverage: the comparison also fails when the runs share no case, or fewer than ``min_shared`` (default
50%) of BASE's cases: a NEW run that skipped most of the sweep proves nothing about it.

Speedup intervals are compared only between runs whose metadata name the same interval method (a
warning says when they do not).

Environment differences (GPU profile, device and GPU names, torch, CUDA, driver, triton,
xformers, TF32) come from each run's ``<run-id>.json``; they are warnings. A run without its JSON
is a warning too; its rows' ``gpu_profile`` and ``device_name`` are compared instead.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from .cases import Case
from .results import ResultsFormatError, load_results, read_metadata, resolve_results_path, results_suite

DEFAULT_MAX_REGRESSION = 0.10
DEFAULT_MIN_SHARED = 0.5   # share of BASE's cases that NEW must also have
MIN_MEMORY_DELTA_MB = 1.0  # peak-memory differences below this are never judged
GMACS_TOLERANCE = 1e-6     # relative change of GMACs that counts as "the work changed"
PROG = "run_bench.py compare"

# Verdicts
OK = "ok"
FASTER = "faster"
FASTER_NOISE = "faster (noise)"
SLOWER_NOISE = "slower (noise)"
REGRESSION = "REGRESSION"
NEW_FAILURE = "NEW FAILURE"
FIXED = "fixed"
NOW_UNSUPPORTED = "now unsupported"
NOW_SUPPORTED = "now supported"
OTHER_DEVICE = "other device"
FAILING_VERDICTS = (REGRESSION, NEW_FAILURE)

FAILURE_STATUSES = ("mismatch", "error", "oom")

IDENTITY = ["family", "backend", "options", "resolution", "batch", "dim", "heads", "dtype", "device", "phase"]
MEASURED = ["status", "status_detail", "latency_ms_median", "latency_ms_p20", "latency_ms_p80", "peak_mem_mb",
            "gmacs", "rel_err", "speedup_vs_ref", "speedup_ci_low", "speedup_ci_high", "device_name"]
TIMED = ("ok", "noisy")  # statuses with a latency worth comparing

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
    """Two runs side by side.

    ``table`` has one row per case present in both runs, in BASE's order, with the case's identity
    (``case_key``, a readable ``case`` label, family, backend, ``options`` as ``k=v,...``,
    resolution, batch, dim, heads, dtype, device, phase), each run's measurements suffixed
    ``_base`` / ``_new`` (status, status_detail, latency_ms_median/p20/p80, peak_mem_mb, gmacs,
    rel_err, the speedup over the reference, device_name), the ratios NEW/BASE ``latency_ratio``,
    ``mem_ratio`` (empty across two device names) and ``gmacs_ratio``, and ``verdict`` and ``note`` (why).
    """

    table: pd.DataFrame
    only_in_base: list[str]
    only_in_new: list[str]
    warnings: list[str]
    failed: bool
    max_regression: float = DEFAULT_MAX_REGRESSION
    too_few_shared: str | None = None  # why the runs share too few cases to be compared, or None
    base: str = ""
    new: str = ""

    @property
    def failures(self) -> pd.DataFrame:
        """The rows that make the comparison fail."""
        return self.table[self.table["verdict"].isin(FAILING_VERDICTS)]


# --------------------------------------------------------------------------------------------
# threshold
# --------------------------------------------------------------------------------------------

def parse_threshold(text: str) -> float:
    """A regression threshold as a fraction.

    ``"10%"`` -> 0.10; a bare number below 1 is a fraction (``"0.1"`` -> 0.1), a bare number of 1
    or more is a percentage (``"25"`` -> 0.25, ``"1"`` -> 0.01). Negative, non-finite or
    non-numeric values raise ValueError naming the value.
    """
    raw = str(text)
    stripped = raw.strip()
    percent = stripped.endswith("%")
    number = stripped[:-1].strip() if percent else stripped
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"invalid threshold {raw!r}: give a percentage such as '10%' or a fraction such as "
                         f"'0.1'") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"invalid threshold {raw!r}: it must be a finite, non-negative number")
    return value / 100 if percent or value >= 1 else value


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}%"


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------

def _load(path: str | Path, name: str, warnings: list[str]) -> pd.DataFrame:
    frame = load_results(path)
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


def _options_text(options: Any) -> str:
    if not isinstance(options, str) or not options.strip():
        return ""
    try:
        parsed = json.loads(options)
    except json.JSONDecodeError:
        return options
    return ",".join(f"{k}={v}" for k, v in parsed.items()) if isinstance(parsed, dict) else options


def case_label(row: pd.Series | dict[str, Any]) -> str:
    """The same label as ``Case.label()`` (and ``run_bench.py --dry-run``) for a results row."""
    try:
        options = json.loads(row["options"]) if isinstance(row["options"], str) and row["options"] else {}
        case = Case(row["family"], row["backend"], tuple(sorted(options.items())), int(row["batch"]),
                    int(row["resolution"]), int(row["dim"]), int(row["heads"]), row["dtype"], row["device"],
                    row["phase"])
        return case.label()
    except (TypeError, ValueError, AttributeError, json.JSONDecodeError):
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


# --------------------------------------------------------------------------------------------
# judgement
# --------------------------------------------------------------------------------------------

def _ratio(new: float, base: float) -> float:
    if pd.isna(new) or pd.isna(base):
        return math.nan
    if base == 0:
        return 1.0 if new == 0 else math.inf
    return new / base


def _known(*values: Any) -> bool:
    return all(not pd.isna(v) for v in values)


def _fmt_ratio(value: float) -> str:
    if pd.isna(value):
        return "–"
    return "inf×" if math.isinf(value) else f"{value:.2f}×"


def _short(text: Any, limit: int = 100) -> str:
    if not isinstance(text, str) or not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _same_device(row: pd.Series) -> bool:
    base, new = row["device_name_base"], row["device_name_new"]
    return base == new or (pd.isna(base) and pd.isna(new))


def _same_devices(table: pd.DataFrame) -> pd.Series:
    """Per aligned case, whether both runs name the same device."""
    return pd.Series([_same_device(r) for _, r in table.iterrows()], index=table.index, dtype=bool)


def judge(row: pd.Series, max_regression: float) -> tuple[str, str]:
    """(verdict, note) of one aligned case."""
    base_status, new_status = row["status_base"], row["status_new"]
    notes: list[str] = []
    if _known(row["gmacs_ratio"]) and abs(row["gmacs_ratio"] - 1) > GMACS_TOLERANCE:
        notes.append(f"GMACs {row['gmacs_base']:.4g} -> {row['gmacs_new']:.4g} (work changed)")

    if base_status not in TIMED or new_status not in TIMED:
        if base_status in TIMED and new_status in FAILURE_STATUSES:
            verdict = NEW_FAILURE
        elif base_status in TIMED:
            verdict = NOW_UNSUPPORTED
        elif new_status in TIMED:
            verdict = FIXED if base_status in FAILURE_STATUSES else NOW_SUPPORTED
        elif base_status == new_status:
            verdict = f"still {new_status}"
        else:
            verdict = f"{base_status} -> {new_status}"
        if new_status not in TIMED and _short(row["status_detail_new"]):
            notes.insert(0, _short(row["status_detail_new"]))
        return verdict, "; ".join(notes)

    if not _same_device(row):
        notes.insert(0, f"BASE on {row['device_name_base']}, NEW on {row['device_name_new']}: latency, memory and "
                        f"speedup not compared")
        return OTHER_DEVICE, "; ".join(notes)

    noisy = "noisy" in (base_status, new_status)
    limit_up, limit_down = 1 + max_regression, 1 / (1 + max_regression)
    regression = False
    verdict = OK
    judged: list[str] = []  # latency, then memory, before the GMACs note
    latency = row["latency_ratio"]
    spreads = _known(row["latency_ms_p20_base"], row["latency_ms_p80_base"], row["latency_ms_p20_new"],
                     row["latency_ms_p80_new"])
    if _known(latency) and latency > limit_up:
        if noisy:
            verdict = SLOWER_NOISE
            judged.append(f"latency {_fmt_ratio(latency)}, but the case is noisy in "
                          f"{'both runs' if base_status == new_status else 'BASE' if base_status == 'noisy' else 'NEW'}")
        elif not spreads or row["latency_ms_p20_new"] > row["latency_ms_p80_base"]:
            regression = True
            why = ("no spreads recorded" if not spreads else
                   f"NEW p20 {row['latency_ms_p20_new']:.3g} ms > BASE p80 {row['latency_ms_p80_base']:.3g} ms")
            judged.append(f"latency {_fmt_ratio(latency)} ({why})")
        else:
            verdict = SLOWER_NOISE
            judged.append(f"latency {_fmt_ratio(latency)} within the runs' p20-p80 spreads")
    elif _known(latency) and latency < limit_down:
        if not spreads or row["latency_ms_p80_new"] < row["latency_ms_p20_base"]:
            verdict = FASTER
        else:
            verdict = FASTER_NOISE
            judged.append(f"latency {_fmt_ratio(latency)} within the runs' p20-p80 spreads")

    if not noisy and _known(row["speedup_ci_high_new"], row["speedup_ci_low_base"]):
        speedups = (f"speedup over the reference {row['speedup_vs_ref_base']:.2f}× "
                    f"[{row['speedup_ci_low_base']:.2f}–{row['speedup_ci_high_base']:.2f}] -> "
                    f"{row['speedup_vs_ref_new']:.2f}× [{row['speedup_ci_low_new']:.2f}–{row['speedup_ci_high_new']:.2f}]")
        if row["speedup_ci_high_new"] * limit_up < row["speedup_ci_low_base"]:
            regression = True
            judged.append(f"{speedups} (paired rounds, intervals apart)")

    memory = row["mem_ratio"]
    if _known(memory, row["peak_mem_mb_base"], row["peak_mem_mb_new"]):
        delta = row["peak_mem_mb_new"] - row["peak_mem_mb_base"]
        if memory > limit_up and delta >= MIN_MEMORY_DELTA_MB:
            regression = True
            judged.append(f"peak memory {_fmt_ratio(memory)} (+{delta:.3g} MB)")
        elif memory < limit_down and -delta >= MIN_MEMORY_DELTA_MB:
            judged.append(f"peak memory {_fmt_ratio(memory)} ({delta:.3g} MB)")
    notes = judged + notes
    return (REGRESSION if regression else verdict), "; ".join(notes)


def compare_frames(base: pd.DataFrame, new: pd.DataFrame,
                   max_regression: float = DEFAULT_MAX_REGRESSION) -> tuple[pd.DataFrame, list[str], list[str]]:
    """(aligned table, labels only in BASE, labels only in NEW) of two loaded results frames."""
    base_keys, new_keys = set(base["case_key"]), set(new["case_key"])
    only_in_base = [case_label(r) for _, r in base[~base["case_key"].isin(new_keys)].iterrows()]
    only_in_new = [case_label(r) for _, r in new[~new["case_key"].isin(base_keys)].iterrows()]

    left = base[["case_key", *IDENTITY, *MEASURED]].rename(columns={c: f"{c}_base" for c in MEASURED})
    right = new[["case_key", *MEASURED]].rename(columns={c: f"{c}_new" for c in MEASURED})
    table = left.merge(right, on="case_key", how="inner", sort=False)
    table.insert(1, "case", [case_label(r) for _, r in table.iterrows()] if len(table) else [])
    table["options"] = table["options"].map(_options_text)

    same_device = _same_devices(table)
    for name, column in (("latency_ratio", "latency_ms_median"), ("mem_ratio", "peak_mem_mb"),
                         ("gmacs_ratio", "gmacs")):
        table[name] = [_ratio(n, b) if same or name == "gmacs_ratio" else math.nan
                       for n, b, same in zip(table[f"{column}_new"], table[f"{column}_base"], same_device)]
    judged = [judge(r, max_regression) for _, r in table.iterrows()]
    table["verdict"] = [v for v, _ in judged]
    table["note"] = [n for _, n in judged]
    return table, only_in_base, only_in_new


def _interval_method(metadata: dict[str, Any] | None) -> str | None:
    """How a run's speedup intervals were made (``bench.measure.SPEEDUP_INTERVAL_METHOD``); None for a run
    from before the method was recorded, or without metadata."""
    return ((metadata or {}).get("timing") or {}).get("speedup_interval")


def compare_runs(base: str | Path, new: str | Path, max_regression: float = DEFAULT_MAX_REGRESSION,
                 min_shared: float = DEFAULT_MIN_SHARED) -> Comparison:
    """Align two results files on case_key and judge every shared case (see the module docstring).

    Raises ResultsFormatError when either file is missing, empty, has no rows or is not a results
    file of this suite. Missing run metadata is a warning. Fewer shared cases than ``min_shared`` of
    BASE's (and none at all) fail the comparison.
    """
    if not math.isfinite(max_regression) or max_regression < 0:
        raise ValueError(f"max_regression must be a finite, non-negative fraction, not {max_regression!r}")
    if not 0 <= min_shared <= 1:
        raise ValueError(f"min_shared must be a fraction in [0, 1], not {min_shared!r}")
    warnings: list[str] = []
    base_frame = _load(base, "BASE", warnings)
    new_frame = _load(new, "NEW", warnings)
    base_meta = _metadata(base, "BASE", warnings)
    new_meta = _metadata(new, "NEW", warnings)
    warnings += _environment_warnings(_environment(base_meta, base_frame), _environment(new_meta, new_frame))
    warnings += _resumed_warnings(base_meta, "BASE") + _resumed_warnings(new_meta, "NEW")
    base_method, new_method = _interval_method(base_meta), _interval_method(new_meta)
    if base_method != new_method:
        warnings.append(f"the runs' speedup intervals were made by different methods (BASE {base_method or 'unrecorded'}, "
                        f"NEW {new_method or 'unrecorded'}): intervals are not compared")
        for frame in (base_frame, new_frame):
            frame[["speedup_ci_low", "speedup_ci_high"]] = math.nan

    table, only_in_base, only_in_new = compare_frames(base_frame, new_frame, max_regression)
    too_few_shared = None
    if table.empty or len(table) < min_shared * len(base_frame):
        required = "one" if min_shared == 0 else _percent(min_shared)
        too_few_shared = (f"NEW has {len(table)} of BASE's {len(base_frame)} cases ({len(table) / len(base_frame):.0%}); "
                          f"at least {required} must be compared (--min-shared)")
    changed = table[[_known(r) and abs(r - 1) > GMACS_TOLERANCE for r in table["gmacs_ratio"]]]
    for _, row in changed.iterrows():
        warnings.append(f"GMACs changed for {row['case']}: {row['gmacs_base']:.4g} -> {row['gmacs_new']:.4g} "
                        f"({_fmt_ratio(row['gmacs_ratio'])}); the measured work differs, so its latency is not "
                        f"like for like")
    moved = table[~_same_devices(table)]
    for (base_device, new_device), rows in moved.groupby(["device_name_base", "device_name_new"], dropna=False):
        warnings.append(f"{len(rows)} case(s) ran on another device: BASE {base_device!r}, NEW {new_device!r}; their "
                        f"latency, memory and speedup are not compared (verdict '{OTHER_DEVICE}')")
    unsupported = table[table["verdict"] == NOW_UNSUPPORTED]
    if len(unsupported):
        warnings.append(f"{len(unsupported)} case(s) ran in BASE but are unsupported in NEW (a backend missing from "
                        f"NEW's environment?): {', '.join(unsupported['case'][:5])}"
                        f"{' …' if len(unsupported) > 5 else ''}")
    failed = bool(table["verdict"].isin(FAILING_VERDICTS).any()) or too_few_shared is not None
    return Comparison(table=table, only_in_base=only_in_base, only_in_new=only_in_new, warnings=warnings,
                      failed=failed, max_regression=max_regression, too_few_shared=too_few_shared,
                      base=str(resolve_results_path(base)), new=str(resolve_results_path(new)))


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


def format_comparison(c: Comparison) -> str:
    """The comparison as text: the table, warnings, cases in one run only, and a final verdict line."""
    lines = []
    if c.base or c.new:
        lines += [f"BASE {c.base}", f"NEW  {c.new}", ""]
    table = c.table
    if table.empty:
        lines.append("(no case in both runs)")
    else:
        shown = pd.DataFrame({
            "family": table["family"], "backend": table["backend"], "options": table["options"],
            "res": table["resolution"], "C": table["dim"], "heads": table["heads"], "batch": table["batch"],
            "dtype": table["dtype"], "phase": table["phase"],
            "status": [b if b == n else f"{b} -> {n}" for b, n in zip(table["status_base"], table["status_new"])],
            "base ms": table["latency_ms_median_base"].map(_fmt_ms),
            "new ms": table["latency_ms_median_new"].map(_fmt_ms),
            "latency": table["latency_ratio"].map(_fmt_ratio),
            "memory": table["mem_ratio"].map(_fmt_ratio),
            "GMACs": table["gmacs_ratio"].map(_fmt_ratio),
            "verdict": table["verdict"], "note": table["note"],
        })
        lines.append(_text_table(shown, right={"res", "C", "heads", "batch", "base ms", "new ms", "latency",
                                               "memory", "GMACs"}))
    if c.warnings:
        lines += ["", f"Warnings ({len(c.warnings)}):", *(f"  - {w}" for w in c.warnings)]
    for name, labels in (("BASE", c.only_in_base), ("NEW", c.only_in_new)):
        if labels:
            lines += ["", f"Only in {name} ({len(labels)}), not compared:", *(f"  - {label}" for label in labels)]

    counts = table["verdict"].value_counts() if not table.empty else pd.Series(dtype=int)
    lines += ["", "Cases: " + (", ".join(f"{n} {v}" for v, n in counts.items()) if len(counts) else "none compared")]
    threshold = _percent(c.max_regression)
    if c.failed:
        regressions = int(counts.get(REGRESSION, 0))
        new_failures = int(counts.get(NEW_FAILURE, 0))
        parts = [f"{regressions} regression{'s' if regressions != 1 else ''} beyond {threshold}"] if regressions else []
        if new_failures:
            parts.append(f"{new_failures} new failure{'s' if new_failures != 1 else ''}")
        if c.too_few_shared:
            parts.append(c.too_few_shared)
        lines.append(f"FAILED: {', '.join(parts)} in {len(table)} cases compared")
    else:
        lines.append(f"PASSED: no regression beyond {threshold} and no new failure in {len(table)} cases compared")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------

def _threshold_arg(text: str) -> float:
    try:
        return parse_threshold(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _share_arg(text: str) -> float:
    value = _threshold_arg(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"invalid share {text!r}: at most 100%")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Compare two runs case by case and fail on latency or memory regressions and on "
                               "cases that stopped working.",
        epilog="Exit status: 0 no regression, 1 regression or new failure, 2 unusable input.")
    parser.add_argument("base", metavar="BASE", help="results file of the reference run (.csv, .json or no suffix)")
    parser.add_argument("new", metavar="NEW", help="results file of the run to judge")
    parser.add_argument("--max-regression", type=_threshold_arg, default=DEFAULT_MAX_REGRESSION, metavar="PCT",
                        help="allowed slowdown / memory growth: '10%%', '10' (>= 1: percent) or '0.1' (< 1: "
                             "fraction); default 10%%")
    parser.add_argument("--min-shared", type=_share_arg, default=DEFAULT_MIN_SHARED, metavar="PCT",
                        help="share of BASE's cases NEW must have for the comparison to pass, as for "
                             "--max-regression, at most 100%% (default 50%%; 0: any, but at least one)")
    return parser


def main_compare(argv: Sequence[str] | None = None) -> int:
    """``run_bench.py compare BASE NEW [--max-regression PCT]``; returns the exit status (never raises SystemExit).

    0: no regression; 1: a regression or a new failure; 2: bad arguments (argparse's message) or an
    unusable results file (one line on stderr).
    """
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # "--max-regression -5%" would read as a missing value: glue the value on so the error names it
    for i in range(len(argv) - 1):
        if argv[i] == "--max-regression" and argv[i + 1].startswith("-"):
            argv[i:i + 2] = [f"--max-regression={argv[i + 1]}"]
            break
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        comparison = compare_runs(args.base, args.new, args.max_regression, args.min_shared)
    except (ResultsFormatError, OSError) as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(format_comparison(comparison))
    return 1 if comparison.failed else 0


if __name__ == "__main__":
    sys.exit(main_compare())
