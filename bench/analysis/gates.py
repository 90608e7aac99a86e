"""Ratio gates on one run: ``mybra/triton <= 0.8 * bra/torch``, judged on the rows of one results file.

Within one run, rows timed side by side compare well where absolute times from two runs do not (a CI runner is
another machine each time). A gate bounds a measure of some rows, alone or as a ratio to other rows of the same
run at the same shape, and passes only if the whole 95 % interval of that ratio clears the bound.

The language (docs/plugins.md#ratio-gates)::

    gate     := side OP bound
    bound    := NUMBER | NUMBER '*' side | side
    side     := selector [measure]                  (the right side's measure: the left's unless it names one)
    selector := FAMILY ['/' BACKEND] ['[' KEY '=' VALUE {',' KEY '=' VALUE} ']']     (BACKEND: a label)
    measure  := latency | peak_mem | gmacs | rel_err | throughput        (default: latency)
    OP       := '<=' | '<' | '>=' | '>'

A backend is named by its label (``bench.schema.labels.backend_label``): ``torch`` is the eager backend,
``torch+compile`` and ``torch+compile:max-autotune`` the backend under torch.compile's modes. A selector without a
backend takes the family's (eager) reference backend. ``KEY`` is a shape column (resolution, batch,
dim, heads, dtype, phase) or one of the family's options (topk=4). The two sides are paired row by row at the same
shape (and, within one family, the same options); a side that holds two rows of one shape (topk 1 and 4) must say
which with ``[...]``.

The interval of a latency ratio: the paired interval of the run's speedup column where the two rows were timed in
one comparison group (one family, one shape, one side the other's reference backend, or its compiled reference:
``speedup_vs_compiled_ref``); otherwise the two rows' median intervals taken at their far ends (conservative: wider
than a paired interval). Other measures are exact.
A row that is not ``ok`` (noisy, mismatch, error, unsupported) fails the gate with its status: a gate never passes
on rows it cannot trust.
"""

from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import pandas as pd

from bench.analysis.variants import effective_options
from bench.analysis.verdicts import latency_interval
from bench.schema.labels import backend_labels

MEASURES = {  # name -> the row's column
    "latency": "latency_ms_median",
    "peak_mem": "peak_mem_mb",
    "gmacs": "gmacs",
    "rel_err": "rel_err",
    "throughput": "throughput",
}
OPERATORS: dict[str, Callable[[float, float], bool]] = {"<=": operator.le, "<": operator.lt, ">=": operator.ge,
                                                        ">": operator.gt}
SHAPE_KEYS = ("resolution", "batch", "dim", "heads", "dtype", "phase")
PAIRING = [*SHAPE_KEYS, "device_name"]  # what two paired rows share

TOKEN = re.compile(r"\s*(?:(?P<op><=|>=|<|>)|(?P<star>\*)|(?P<number>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+)"
                   r"|(?P<selector>[A-Za-z_][\w.-]*(?:/[\w.+:-]+)?(?:\[[^\]]*\])?))")


class GateError(ValueError):
    """A gate that does not parse, or names no row of the run: exit status 2, the message naming the token."""


@dataclass(frozen=True)
class Side:
    """Rows of a run (family, backend, filters) and the measure taken of them."""

    family: str
    backend: str | None
    filters: tuple[tuple[str, str], ...]
    measure: str
    text: str

    @property
    def column(self) -> str:
        return MEASURES[self.measure]


@dataclass(frozen=True)
class Gate:
    """``left OP factor * right`` (``right`` None: ``left OP factor``)."""

    text: str
    left: Side
    op: str
    factor: float
    right: Side | None


@dataclass(frozen=True)
class Check:
    """One shape's verdict of a gate."""

    shape: str
    passed: bool
    value: float  # the ratio (or the measure itself, for an absolute bound)
    low: float
    high: float
    method: str  # 'paired', 'unpaired (the rows' median intervals)', 'exact'
    reason: str = ""


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)


def _selector(text: str, gate: str) -> tuple[str, str | None, tuple[tuple[str, str], ...]]:
    name, _, rest = text.partition("[")
    family, _, backend = name.partition("/")
    filters = []
    if rest:
        for item in rest.rstrip("]").split(","):
            key, equals, value = (part.strip() for part in item.partition("="))
            if not equals or not key or not value:
                raise GateError(f"gate {gate!r}: {item.strip()!r} in {text!r} is not KEY=VALUE")
            filters.append((key, value))
    return family, backend or None, tuple(filters)


def parse_gate(text: str) -> Gate:
    """The gate ``text`` parsed (see the module docstring); GateError naming the token it cannot take."""
    tokens, position = [], 0
    while position < len(text.rstrip()):
        found = TOKEN.match(text, position)
        if not found or found.end() == position:
            raise GateError(f"gate {text!r}: cannot read {text[position:].strip()!r} (expected a selector such as "
                            f"bra/torch, a measure, a number, '*' or one of {', '.join(OPERATORS)})")
        kind = found.lastgroup
        tokens.append((kind, found.group(kind)))
        position = found.end()

    def side(at: int, measure: str) -> tuple[Side, int]:
        """The side at token ``at`` (its measure ``measure`` unless it names one), and the token after it."""
        if at >= len(tokens) or tokens[at][0] != "selector":
            got = repr(tokens[at][1]) if at < len(tokens) else "the end"
            raise GateError(f"gate {text!r}: expected a selector (FAMILY[/BACKEND][KEY=VALUE,...]), got {got}")
        selector = tokens[at][1]
        family, backend, filters = _selector(selector, text)
        if at + 1 < len(tokens) and tokens[at + 1][0] == "selector" and tokens[at + 1][1] in MEASURES:
            measure, at = tokens[at + 1][1], at + 1
        elif at + 1 < len(tokens) and tokens[at + 1][0] == "selector":
            raise GateError(f"gate {text!r}: unknown measure {tokens[at + 1][1]!r}; one of {', '.join(MEASURES)}")
        return Side(family, backend, filters, measure, selector), at + 1

    left, at = side(0, "latency")
    if at >= len(tokens) or tokens[at][0] != "op":
        got = repr(tokens[at][1]) if at < len(tokens) else "the end"
        raise GateError(f"gate {text!r}: expected one of {', '.join(OPERATORS)} after {left.text!r}, got {got}")
    op, at = tokens[at][1], at + 1
    factor, right = 1.0, None
    if at < len(tokens) and tokens[at][0] == "number":
        factor, at = float(tokens[at][1]), at + 1
        if at < len(tokens) and tokens[at][0] == "star":
            right, at = side(at + 1, left.measure)
    else:
        right, at = side(at, left.measure)
    if at < len(tokens):
        raise GateError(f"gate {text!r}: unexpected {tokens[at][1]!r} after the bound")
    if not factor > 0 or not math.isfinite(factor):
        raise GateError(f"gate {text!r}: the bound's factor must be a positive number, got {factor:g}")
    if right is not None and right.measure != left.measure:
        raise GateError(f"gate {text!r}: both sides must take one measure, not {left.measure} and {right.measure}")
    return Gate(text, left, op, factor, right)


def _rows(frame: pd.DataFrame, side: Side, defaults: Mapping[str, Mapping[str, Any]], gate: Gate) -> pd.DataFrame:
    family_rows = frame[frame["family"] == side.family]
    if family_rows.empty:
        raise GateError(f"gate {gate.text!r}: {side.text!r} names no row: no family {side.family!r} in the run "
                        f"(families: {', '.join(dict.fromkeys(frame['family']))})")
    backend = side.backend or family_rows["reference_backend"].dropna().iloc[0]
    rows = family_rows[family_rows["backend"] == backend]
    if rows.empty:
        raise GateError(f"gate {gate.text!r}: {side.text!r} names no row: no backend {backend!r} of {side.family!r} "
                        f"in the run (backends: {', '.join(dict.fromkeys(family_rows['backend']))})")
    options = effective_options(rows, defaults)
    keep = pd.Series(True, index=rows.index)
    for key, value in side.filters:
        if key in SHAPE_KEYS:
            keep &= rows[key].astype(str) == value
        else:
            keep &= options.apply(lambda opts: key in opts and str(opts[key]) == value)
    if not keep.any():
        raise GateError(f"gate {gate.text!r}: {side.text!r} names no row: none of {side.family}/{backend}'s "
                        f"{len(rows)} rows has {', '.join(f'{k}={v}' for k, v in side.filters)}")
    return rows[keep]


def _shape_text(row: pd.Series) -> str:
    options = json.loads(row["options"])
    variant = " " + ",".join(f"{key}={value}" for key, value in sorted(options.items())) if options else ""
    return (f"{row['resolution']}² C{row['dim']} h{row['heads']} b{row['batch']} {row['dtype']} {row['phase']}"
            f"{variant}")


def _untrusted(row: pd.Series, side: Side) -> str | None:
    if row["status"] != "ok":
        detail = str(row.get("status_detail") or "").strip()
        return f"{side.text} is {row['status']}" + (f" ({detail[:120]})" if detail else "")
    if not (isinstance(row[side.column], (int, float)) and math.isfinite(row[side.column])):
        return f"{side.text} has no {side.measure}"
    return None


def _interval(row: pd.Series, side: Side) -> tuple[float, float, float]:
    """The row's measure and its interval (latency: the recorded median interval; throughput its image)."""
    value = float(row[side.column])
    if side.measure not in ("latency", "throughput"):
        return value, value, value
    interval = latency_interval(row)  # a run from before the intervals: its p20-p80, wider
    if interval is None:
        return value, math.nan, math.nan
    if side.measure == "throughput":
        return value, float(row["batch"]) * 1e3 / interval.high, float(row["batch"]) * 1e3 / interval.low
    return value, interval.low, interval.high


# (the column naming a row's reference, its speedup over it, the speedup interval's low and high ends)
PAIRED_SPEEDUPS = (("reference_backend", "speedup_vs_ref", "speedup_ci_low", "speedup_ci_high"),
                   ("compiled_ref", "speedup_vs_compiled_ref", "compiled_speedup_ci_low", "compiled_speedup_ci_high"))


def _paired_ratio(left: pd.Series, right: pd.Series) -> tuple[float, float, float] | None:
    """left / right latency from the run's paired speedup interval, where the rows were timed as one group: one
    side the other's reference, or its compiled reference (backends are labels)."""
    if left["family"] != right["family"] or left["options"] != right["options"]:
        return None
    for reference, speedup, low, high in PAIRED_SPEEDUPS:
        if right["backend"] == left.get(reference) and math.isfinite(left.get(speedup, math.nan)):
            return 1 / left[speedup], 1 / left[high], 1 / left[low]
        if left["backend"] == right.get(reference) and math.isfinite(right.get(speedup, math.nan)):
            return right[speedup], right[low], right[high]
    return None


def _check(gate: Gate, left: pd.Series, right: pd.Series | None) -> Check:
    shape, compare = _shape_text(left), OPERATORS[gate.op]
    why = _untrusted(left, gate.left) or (right is not None and _untrusted(right, gate.right))
    if why:
        return Check(shape, False, math.nan, math.nan, math.nan, "", why)
    value, low, high = _interval(left, gate.left)
    method = "exact" if low == high else "the row's median interval"
    if right is not None:
        paired = _paired_ratio(left, right) if gate.left.measure == "latency" else None
        if paired is not None:
            (value, low, high), method = paired, "paired"
        else:
            right_value, right_low, right_high = _interval(right, gate.right)
            value, low, high = value / right_value, low / right_high, high / right_low
            method = "exact" if low == high else "unpaired (the rows' median intervals)"
    end = high if gate.op in ("<", "<=") else low  # the whole interval must clear the bound
    passed = bool(compare(end, gate.factor))
    check = Check(shape, passed, value, low, high, method)
    if passed:
        return check
    what = "the ratio" if right is not None else gate.left.measure
    return replace(check, reason=f"{what} {_value_text(check)} does not clear {gate.op} {gate.factor:g}")


def evaluate(gate: Gate, frame: pd.DataFrame, defaults: Mapping[str, Mapping[str, Any]]) -> GateResult:
    """The gate on the run's rows (their backends as labels: 'torch+compile'): one check per shape the two sides
    share. GateError when a side names no row, when one side holds two rows at one shape, or when the sides share no
    shape."""
    frame = frame.assign(backend=backend_labels(frame))
    left = _rows(frame, gate.left, defaults, gate)
    if gate.right is None:
        return GateResult(gate, tuple(_check(gate, row, None) for _, row in left.iterrows()))
    right = _rows(frame, gate.right, defaults, gate)
    # one family's rows pair option by option, unless a side picks its options (topk=1 against topk=4)
    picks_options = any(key not in SHAPE_KEYS for side in (gate.left, gate.right) for key, _ in side.filters)
    keys = PAIRING + (["options"] if gate.left.family == gate.right.family and not picks_options else [])
    for side, rows in ((gate.left, left), (gate.right, right)):
        doubled = rows[rows.duplicated(keys, keep=False)]
        if not doubled.empty:
            row = doubled.iloc[0]
            same = doubled[(doubled[keys] == row[keys]).all(axis=1)]
            variants = sorted(json.dumps(json.loads(options), sort_keys=True) for options in same["options"])
            raise GateError(f"gate {gate.text!r}: {side.text!r} names {len(same)} rows at {_shape_text(row)} "
                            f"(options {'; '.join(variants)}): say which with [KEY=VALUE]")
    pairs = left.reset_index().merge(right.reset_index(), on=keys, suffixes=("", "_right"))
    if pairs.empty:
        raise GateError(f"gate {gate.text!r}: {gate.left.text!r} and {gate.right.text!r} share no shape in the run")
    checks = []
    for _, pair in pairs.iterrows():
        checks.append(_check(gate, left.loc[pair["index"]], right.loc[pair["index_right"]]))
    return GateResult(gate, tuple(checks))


def format_results(results: list[GateResult], style: str = "text") -> str:
    """The verdicts as text, markdown (a CI summary) or JSON."""
    if style == "json":
        return json.dumps([{"gate": result.gate.text, "passed": result.passed,
                            "checks": [{"shape": c.shape, "passed": bool(c.passed), "value": _json_number(c.value),
                                        "low": _json_number(c.low), "high": _json_number(c.high),
                                        "method": c.method, "reason": c.reason} for c in result.checks]}
                           for result in results], indent=2)
    lines = []
    if style == "markdown":
        lines += ["| gate | shape | value [95% interval] | how | verdict |", "|---|---|---|---|---|"]
        for result in results:
            for c in result.checks:
                lines.append(f"| `{result.gate.text}` | {c.shape} | {_value_text(c)} | {c.method or '—'} | "
                             f"{'pass' if c.passed else '**fail**: ' + c.reason} |")
    else:
        for result in results:
            lines.append(f"{'PASS' if result.passed else 'FAIL'}  {result.gate.text}")
            lines += [f"  {'ok  ' if c.passed else 'FAIL'}  {c.shape}: {_value_text(c)} ({c.method or '—'})"
                      + (f": {c.reason}" if c.reason else "") for c in result.checks]
    failed = sum(not result.passed for result in results)
    lines.append(f"{len(results) - failed} of {len(results)} gates passed")
    return "\n".join(lines)


def _value_text(check: Check) -> str:
    if math.isnan(check.value):
        return "—"
    if check.low == check.high:
        return f"{check.value:.3g}"
    return f"{check.value:.3g} [{check.low:.3g}, {check.high:.3g}]"


def _json_number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)
