"""The verdict on one case of two runs: ``regressed``, ``ok`` or ``inconclusive``, with what changed and why.

Latency of a case timed (``ok`` or ``noisy``) in both runs, on the same device. Each run's median
carries a 95% interval (``latency_ms_ci_low/high``: batch means of the log latencies, as the paired
speedups; runs from before it was recorded stand in their p20-p80 spread, which is wider). With
ratio r = NEW / BASE of the medians and threshold t (``--max-regression``):

- **regressed** when r > 1 + t *and* the intervals do not overlap (NEW's low end above BASE's high
  end) *and* the slowdown is the code's, not the machine's: the case's paired speedup over its
  reference (timed in the same rounds, so free of what the machine did between the runs) dropped
  too, its interval wholly below BASE's. A reference case has no speedup of its own: the backends
  timed beside it must have gained on it. A case timed alone has no such check, and says so.
- **ok** when the ratio's interval (NEW low / BASE high to NEW high / BASE low) stays within 1 + t,
  or when r <= 1 + t and neither run is noisy.
- **inconclusive** otherwise: noisy in either run (unless the intervals separate, as above, or the
  ratio's interval stays within 1 + t), intervals that overlap, fewer than ``MIN_ROUNDS`` rounds, no
  interval, or a slowdown that the paired speedups put on the machine.

Intervals are compared only when both runs made them by the same method (``metadata["methods"]``, see
``bench.core.methods``; runs from before a method was recorded name it unrecorded, and two such runs are
compared as they always were). When the latency interval methods differ (or one is unrecorded), no verdict
rests on the latency intervals: the ratio of the medians is shown, a case is **ok** when r <= 1 + t and
neither run is noisy (the rule above that needs no interval), and **inconclusive** otherwise, its reason
saying "medians only": a latency regression needs intervals apart, so none is found. When the speedup
interval methods differ, the paired speedups are not compared (nor used to tell the machine from the code).
A warning names the methods either way.

Besides latency, a case is **regressed** when its peak memory grew beyond 1 + t by at least 1 MB
(noise or not: memory is no timing figure), when its paired speedup fell by more than t with the
two intervals apart, or when it stopped working (``ok`` into ``mismatch``, ``error``, ``oom`` or ``timeout``,
a compile past its limit: a new failure). A backend ``unsupported`` in NEW, and a case whose rows name two devices
(``other device``), are inconclusive: nothing can be said of them. A failure turning ``ok`` is ``fixed``. A
GMACs change (beyond a relative 1e-6) means the measured work changed: a warning, never a verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

MIN_MEMORY_DELTA_MB = 1.0  # peak-memory differences below this are never judged
GMACS_TOLERANCE = 1e-6     # relative change of GMACs that counts as "the work changed"
MIN_ROUNDS = 5             # fewer timed rounds on either side are too few to judge a latency
# Beyond this change of a configuration's reference latency (either way), the two runs saw different machines:
# load lands unevenly on backends (measured: paired speedups of identical code 20-40% apart across runs whose
# reference latency differed 10-100×), so neither latency nor paired speedup is judged across them.
MACHINE_SHIFT_LIMIT = 1.5

# Verdicts: every compared case gets one, with its reason
REGRESSED = "regressed"
OK = "ok"
INCONCLUSIVE = "inconclusive"
VERDICTS = (REGRESSED, INCONCLUSIVE, OK)
# What changed between the runs (the ``change`` column)
SLOWER = "slower"
FASTER = "faster"
UNCHANGED = "unchanged"
TOO_FEW_ROUNDS = "too few rounds"
UNMEASURED = "no interval"
NEW_FAILURE = "new failure"
FIXED = "fixed"
NOW_UNSUPPORTED = "now unsupported"
NOW_SUPPORTED = "now supported"
OTHER_DEVICE = "other device"

FAILURE_STATUSES = ("mismatch", "error", "oom", "timeout")
TIMED = ("ok", "noisy")  # statuses with a latency worth comparing
IDENTITY = ["family", "backend", "options", "resolution", "batch", "dim", "heads", "dtype", "device", "phase"]


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


def percent_text(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def ratio_of(new: float, base: float) -> float:
    if pd.isna(new) or pd.isna(base):
        return math.nan
    if base == 0:
        return 1.0 if new == 0 else math.inf
    return new / base


def is_known(*values: Any) -> bool:
    return all(not pd.isna(v) for v in values)


def ratio_text(value: float) -> str:
    if pd.isna(value):
        return "–"
    return "inf×" if math.isinf(value) else f"{value:.2f}×"


def shortened(text: Any, limit: int = 100) -> str:
    if not isinstance(text, str) or not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def same_device(row: pd.Series) -> bool:
    base, new = row["device_name_base"], row["device_name_new"]
    return base == new or (pd.isna(base) and pd.isna(new))


def same_devices(table: pd.DataFrame) -> pd.Series:
    """Per aligned case, whether both runs name the same device."""
    return pd.Series([same_device(r) for _, r in table.iterrows()], index=table.index, dtype=bool)


@dataclass(frozen=True)
class Interval:
    """A 95% interval of a run's median latency (ms), and where it came from."""

    low: float
    high: float
    source: str  # "ci": the row's batch-means interval; "p20-p80": the spread, for runs that recorded no interval


def latency_interval(row: pd.Series, side: str = "") -> Interval | None:
    """The interval of one side's median latency (``side``: the suffix of an aligned table's columns, none for a
    run's own row): its recorded confidence interval, else (older runs) its p20–p80 spread, which is wider and
    so errs towards ``inconclusive``; None when neither is there."""
    suffix = f"_{side}" if side else ""
    low, high = row.get(f"latency_ms_ci_low{suffix}"), row.get(f"latency_ms_ci_high{suffix}")
    if is_known(low, high):
        return Interval(float(low), float(high), "ci")
    low, high = row.get(f"latency_ms_p20{suffix}"), row.get(f"latency_ms_p80{suffix}")
    return Interval(float(low), float(high), "p20-p80") if is_known(low, high) else None


def speedup_shift(row: pd.Series) -> str | None:
    """How the case's paired speedup over its reference moved between the runs: ``dropped`` (NEW's interval
    wholly below BASE's), ``rose`` (wholly above), ``unchanged`` (they overlap); None without both intervals.
    Measured in paired rounds, it is free of what the machine did between the runs."""
    if not is_known(row["speedup_ci_low_base"], row["speedup_ci_high_base"], row["speedup_ci_low_new"],
                    row["speedup_ci_high_new"]):
        return None
    if row["speedup_ci_high_new"] < row["speedup_ci_low_base"]:
        return "dropped"
    if row["speedup_ci_low_new"] > row["speedup_ci_high_base"]:
        return "rose"
    return "unchanged"


def _speedups(row: pd.Series) -> str:
    return (f"{row['speedup_vs_ref_base']:.2f}× [{row['speedup_ci_low_base']:.2f}–{row['speedup_ci_high_base']:.2f}] "
            f"-> {row['speedup_vs_ref_new']:.2f}× [{row['speedup_ci_low_new']:.2f}–{row['speedup_ci_high_new']:.2f}]")


def _status_change(row: pd.Series) -> tuple[str, str]:
    """(verdict, change) of a case not timed in both runs."""
    base_status, new_status = row["status_base"], row["status_new"]
    if base_status in TIMED and new_status in FAILURE_STATUSES:
        return REGRESSED, NEW_FAILURE
    if base_status in TIMED:
        return INCONCLUSIVE, NOW_UNSUPPORTED
    if new_status in TIMED:
        return OK, FIXED if base_status in FAILURE_STATUSES else NOW_SUPPORTED
    return OK, f"still {new_status}" if base_status == new_status else f"{base_status} -> {new_status}"


def _machine_check(row: pd.Series, siblings: pd.DataFrame) -> tuple[bool, str]:
    """Whether an absolute slowdown beyond the intervals is the code's (True) or may be the machine's (False),
    and why: the case's paired speedup over its reference must have dropped too. A reference case has no
    speedup of its own: the speedups of the other backends timed beside it (``siblings``) must have risen."""
    shift = speedup_shift(row)
    if shift == "dropped":
        return True, f"and its speedup over the reference timed beside it dropped: {_speedups(row)}"
    if shift is not None:
        return False, (f"but its speedup over the reference timed beside it is {shift}: {_speedups(row)}; the "
                       f"machine, or a change shared with the reference, slowed it")
    shifts = [speedup_shift(s) for _, s in siblings.iterrows()]
    shifts = [s for s in shifts if s is not None]
    if "rose" in shifts:
        return True, "and the backends timed beside it gained on it (their paired speedups over it rose)"
    if shifts:
        return False, ("but the backends timed beside it slowed alike (their paired speedups over it are "
                       "unchanged): the machine, or a change common to all of them")
    return True, "unpaired: nothing timed beside it tells the machine from the code"


def judge(row: pd.Series, max_regression: float, siblings: pd.DataFrame | None = None,
          medians_only: str | None = None) -> tuple[str, str, str]:
    """(verdict, change, reason) of one aligned case: ``verdict`` is regressed, ok or inconclusive
    (see the module docstring); ``siblings`` are the other aligned cases of its configuration (its reference
    and the backends timed beside it), which tell a slower machine from slower code. ``medians_only``: why
    the runs' latency intervals do not compare (their methods differ), or None when they do."""
    siblings = siblings if siblings is not None else row.to_frame().T.iloc[:0]
    notes: list[str] = []
    if is_known(row["gmacs_ratio"]) and abs(row["gmacs_ratio"] - 1) > GMACS_TOLERANCE:
        notes.append(f"GMACs {row['gmacs_base']:.4g} -> {row['gmacs_new']:.4g} (work changed)")
    base_status, new_status = row["status_base"], row["status_new"]
    if base_status not in TIMED or new_status not in TIMED:
        verdict, change = _status_change(row)
        if new_status not in TIMED and shortened(row["status_detail_new"]):
            notes.insert(0, shortened(row["status_detail_new"]))
        return verdict, change, "; ".join(notes)
    if not same_device(row):
        notes.insert(0, f"BASE on {row['device_name_base']}, NEW on {row['device_name_new']}: latency, memory and "
                        f"speedup not compared")
        return INCONCLUSIVE, OTHER_DEVICE, "; ".join(notes)

    limit_up = 1 + max_regression
    regressions: list[str] = []
    memory = row["mem_ratio"]
    if is_known(memory, row["peak_mem_mb_base"], row["peak_mem_mb_new"]):
        delta = row["peak_mem_mb_new"] - row["peak_mem_mb_base"]
        if memory > limit_up and delta >= MIN_MEMORY_DELTA_MB:
            regressions.append(f"peak memory {ratio_text(memory)} (+{delta:.3g} MB)")
        elif memory < 1 / limit_up and -delta >= MIN_MEMORY_DELTA_MB:
            notes.append(f"peak memory {ratio_text(memory)} ({delta:.3g} MB)")
    shift = reference_shift(row, siblings)
    if shift is not None and not 1 / MACHINE_SHIFT_LIMIT <= shift <= MACHINE_SHIFT_LIMIT:
        why = (f"latency {ratio_text(row['latency_ratio'])}, but the machine differed between the runs: the reference "
               f"timed beside it ran {ratio_text(shift)} its BASE time (beyond {MACHINE_SHIFT_LIMIT:g}× either way), "
               f"and load does not slow every backend alike, so neither latency nor paired speedup compares")
        verdict, change = INCONCLUSIVE, _latency_change(row["latency_ratio"], max_regression)
        return (REGRESSED if regressions else verdict), change, "; ".join([why, *regressions, *notes])
    if (is_known(row["speedup_ci_high_new"], row["speedup_ci_low_base"])
            and row["speedup_ci_high_new"] * limit_up < row["speedup_ci_low_base"]):
        regressions.append(f"speedup over the reference {_speedups(row)} (paired rounds, intervals apart by more "
                           f"than {percent_text(max_regression)})")

    verdict, change, why = _judge_latency(row, max_regression, siblings, medians_only)
    return (REGRESSED if regressions else verdict), change, "; ".join(filter(None, [why, *regressions, *notes]))


def reference_shift(row: pd.Series, siblings: pd.DataFrame) -> float | None:
    """NEW ÷ BASE latency of the case's reference in the same configuration (the case itself when it is the
    reference): how differently the machine ran the two runs; None without the reference in both."""
    reference = row["reference_backend_new"]
    if row["backend"] == reference:
        return row["latency_ratio"] if is_known(row["latency_ratio"]) else None
    found = siblings[siblings["backend"] == reference]["latency_ratio"].dropna()
    return float(found.iloc[0]) if len(found) else None


def _latency_change(ratio: float, max_regression: float) -> str:
    if is_known(ratio) and ratio > 1 + max_regression:
        return SLOWER
    return FASTER if is_known(ratio) and ratio < 1 / (1 + max_regression) else UNCHANGED


def _judge_latency(row: pd.Series, max_regression: float, siblings: pd.DataFrame,
                   medians_only: str | None = None) -> tuple[str, str, str]:
    """(verdict, change, reason) from the two runs' median latencies and their intervals; from the medians
    alone when ``medians_only`` says why the intervals do not compare."""
    ratio = row["latency_ratio"]
    base, new = latency_interval(row, "base"), latency_interval(row, "new")
    noisy = [side for side, status in (("BASE", row["status_base"]), ("NEW", row["status_new"])) if status == "noisy"]
    rounds = min(row["rounds_base"] if is_known(row["rounds_base"]) else 0,
                 row["rounds_new"] if is_known(row["rounds_new"]) else 0)
    if not is_known(ratio) or (medians_only is None and (base is None or new is None)):
        return INCONCLUSIVE, UNMEASURED, "no latency interval recorded"
    if rounds < MIN_ROUNDS:
        return INCONCLUSIVE, TOO_FEW_ROUNDS, f"{int(rounds)} timed rounds: at least {MIN_ROUNDS} are needed to judge"
    limit_up = 1 + max_regression
    if medians_only is not None:
        stated = f"latency {ratio_text(ratio)}, {medians_only}: medians only"
        change = _latency_change(ratio, max_regression)
        if noisy:
            return INCONCLUSIVE, change, f"{stated}; noisy in {' and '.join(noisy)}"
        if ratio > limit_up:
            return INCONCLUSIVE, change, (f"{stated}; beyond {percent_text(max_regression)}, but only intervals apart "
                                          f"show a regression")
        return OK, change, stated
    ratio_low, ratio_high = new.low / base.high, new.high / base.low
    stated = (f"latency {ratio_text(ratio)} (interval of the ratio {ratio_low:.2f}–{ratio_high:.2f}"
              f"{', from p20-p80 spreads' if 'p20-p80' in (base.source, new.source) else ''})")
    if ratio > limit_up and new.low > base.high:
        code, how = _machine_check(row, siblings)
        if code:
            return REGRESSED, SLOWER, f"{stated}, intervals apart{' despite the noise' if noisy else ''}, {how}"
        return INCONCLUSIVE, SLOWER, f"{stated}, intervals apart, {how}"
    change = _latency_change(ratio, max_regression)
    if change == FASTER and new.high >= base.low:
        change = UNCHANGED
    if ratio_high <= limit_up:
        return OK, change, stated if change != UNCHANGED else ""
    if noisy:
        return INCONCLUSIVE, change, f"{stated}: noisy in {' and '.join(noisy)}"
    if ratio > limit_up:
        return INCONCLUSIVE, change, f"{stated}: beyond {percent_text(max_regression)} but the intervals overlap"
    return OK, change, stated if change != UNCHANGED else ""


def _siblings(table: pd.DataFrame) -> list[pd.DataFrame]:
    """Per aligned case, the other cases of its configuration (all but the backend)."""
    if table.empty:
        return []
    keys = table[[c for c in IDENTITY if c != "backend"]].astype(str).agg("|".join, axis=1)
    return [table[(keys == key) & (table.index != index)] for index, key in keys.items()]


def judge_table(table: pd.DataFrame, max_regression: float, medians_only: str | None = None) -> pd.DataFrame:
    """The aligned table with ``verdict``, ``change`` and ``reason`` of every case (``medians_only``: see
    ``judge``)."""
    judged = [judge(row, max_regression, siblings, medians_only)
              for (_, row), siblings in zip(table.iterrows(), _siblings(table))]
    table["verdict"] = [v for v, _, _ in judged]
    table["change"] = [c for _, c, _ in judged]
    table["reason"] = [r for _, _, r in judged]
    return table


def interval_methods_differ(quantity: str, base: dict[str, Any] | None, new: dict[str, Any] | None) -> str | None:
    """Why the two runs' intervals of ``quantity`` ('latency' or 'speedup') do not compare: the methods their
    metadata name (``methods.<quantity>_interval``) differ, or one is unrecorded (a run from before it was
    recorded, or without metadata) while the other is recorded. None when they are the same."""
    key = f"{quantity}_interval"
    base_method, new_method = ((metadata or {}).get("methods", {}).get(key) for metadata in (base, new))
    if base_method == new_method:
        return None
    return (f"{quantity} intervals made by different methods (BASE {base_method or 'unrecorded'}, "
            f"NEW {new_method or 'unrecorded'})")
