"""The row schema, declared once: every column of both suites' results files, with its kind, unit, suites,
value rule and history. Every table the readers and writers use (``COLUMNS``, ``MODEL_COLUMNS``,
``TEXT_COLUMNS``, ``LATE_COLUMNS``, ``VALUE_RULES`` ...) is derived from the declaration ``DECLARED``.

Also declared here: the schema's version, and the measurement methods a run's metadata names (``METHODS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import pandas as pd

# The version of the files this code writes; readers migrate older ones (bench.schema.migrations).
SCHEMA_VERSION = 3

ATTENTIONS, MODELS = "attentions", "models"
SUITE_NAMES = (ATTENTIONS, MODELS)
BOTH = SUITE_NAMES

# metadata["methods"]: what each identifier names (the values: bench.core.methods.measurement_methods()).
# None in a file means unrecorded: a run from before the method was recorded.
METHODS = {
    "timing": "how latencies are timed: the rounds and the warm-up before them",
    "latency_interval": "how the 95% interval of a median latency is made (latency_ms_ci_low/high)",
    "speedup_interval": "how the 95% interval of a paired speedup is made (speedup_ci_low/high)",
    "flops": "how multiply-adds and hardware FLOPs are counted (gmacs*, hw_gflops, tflops_achieved)",
}

STATUSES = ("ok", "noisy", "mismatch", "unsupported", "oom", "timeout", "error")
# The compile column's values and --compile's: eager (the module as it is) or a torch.compile mode.
EAGER = "eager"
COMPILE_MODES = (EAGER, "default", "reduce-overhead", "max-autotune")
MEASURED_STATUSES = ("ok", "noisy", "mismatch")  # rows with a latency: noisy and mismatch rows are never ranked


@dataclass(frozen=True)
class ValueRule:
    """The values a numeric column may hold: ``holds`` is True where a (non-empty) value is allowed;
    ``what`` completes the error message "<column> <value> is not ...". """

    what: str
    holds: Callable[[pd.Series], pd.Series]


def _whole(values: pd.Series) -> pd.Series:
    return np.isfinite(values) & (values == np.floor(values))


SIZE = ValueRule("a whole number ≥ 1", lambda v: _whole(v) & (v >= 1))
COUNT = ValueRule("a whole number ≥ 0", lambda v: _whole(v) & (v >= 0))
COUNT_MEDIAN = ValueRule("a median of counts (a whole or half number ≥ 0)", lambda v: _whole(2 * v) & (v >= 0))
WHOLE = ValueRule("a whole number", _whole)
POSITIVE = ValueRule("a finite number > 0", lambda v: np.isfinite(v) & (v > 0))
NON_NEGATIVE = ValueRule("a finite number ≥ 0", lambda v: np.isfinite(v) & (v >= 0))
ERROR = ValueRule("a number ≥ 0 (or inf)", lambda v: v >= 0)  # inf: bench.core.accuracy's error of non-finite values
FRACTION = ValueRule("a fraction in (0, 1]", lambda v: (v > 0) & (v <= 1))

Kind = Literal["text", "number"]


@dataclass(frozen=True)
class Column:
    """One column of the results files: a number column has a value rule (an empty cell is always allowed),
    a text column none. ``identifies``: the suites in which no row may leave it empty (it names the case).
    ``late``: added while files of schema 1 were being written, so a file may lack it (it loads empty).
    ``model_after``: the column the model suite's files put it after, where that differs from the attention
    suite's order (the declaration's order). ``earlier``: what every row written before the column existed
    holds in it (a migration or a resume fills it in); None: nothing, the cell stays empty."""

    name: str
    kind: Kind
    suites: tuple[str, ...]
    doc: str
    unit: str = ""
    rule: ValueRule | None = None
    identifies: tuple[str, ...] = ()
    late: bool = False
    since: int = 1  # the schema version that introduced it
    contract: bool = False  # one of issue #3's contract columns, the first block of the attention suite's files
    placement: bool = False  # where the row's case ran, in both suites
    model_after: str | None = None
    earlier: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("text", "number"):
            raise ValueError(f"column {self.name!r}: kind {self.kind!r} is not 'text' or 'number'")
        if (self.kind == "number") != (self.rule is not None):
            raise ValueError(f"column {self.name!r}: a number column needs a value rule, a text column has none "
                             f"(kind {self.kind!r}, rule {self.rule!r})")
        unknown = sorted(set(self.suites + self.identifies) - set(SUITE_NAMES))
        if unknown or not self.suites:
            raise ValueError(f"column {self.name!r}: suites {list(self.suites)!r} must be some of "
                             f"{', '.join(SUITE_NAMES)}")
        if not set(self.identifies) <= set(self.suites):
            raise ValueError(f"column {self.name!r} identifies cases of {list(self.identifies)!r} but is only in "
                             f"{list(self.suites)!r}")
        if not 1 <= self.since <= SCHEMA_VERSION:
            raise ValueError(f"column {self.name!r}: since {self.since!r} is not a schema version (1 to "
                             f"{SCHEMA_VERSION})")


def text(name: str, suites: tuple[str, ...], doc: str, **facts) -> Column:
    return Column(name, "text", suites, doc, **facts)


def number(name: str, suites: tuple[str, ...], rule: ValueRule, unit: str, doc: str, **facts) -> Column:
    return Column(name, "number", suites, doc, unit, rule, **facts)


ATTN_ONLY, MODEL_ONLY = (ATTENTIONS,), (MODELS,)
MS, MIB, GMACS = "ms", "MiB", "G multiply-adds"
DECLARED: tuple[Column, ...] = (
    text("model", MODEL_ONLY, "the backbone (a model of attentions.models)", identifies=MODEL_ONLY),
    text("attention", MODEL_ONLY, "the attention the backbone is built with", identifies=MODEL_ONLY),
    text("family", ATTN_ONLY, "the attention family (attentions registry)", identifies=ATTN_ONLY, contract=True),
    text("backend", BOTH, "the implementation of the family, or of the backbone's attention", identifies=BOTH,
         contract=True),
    number("resolution", BOTH, SIZE, "", "H = W of the input: tokens (attentions), pixels (models)",
           identifies=BOTH, contract=True),
    number("batch", BOTH, SIZE, "", "inputs per pass", identifies=BOTH, contract=True),
    number("dim", ATTN_ONLY, SIZE, "channels", "the model dimension C", identifies=ATTN_ONLY, contract=True),
    number("heads", ATTN_ONLY, SIZE, "", "attention heads", identifies=ATTN_ONLY, contract=True),
    text("dtype", BOTH, "the floating-point type of the pass", identifies=BOTH, contract=True),
    text("phase", BOTH, "fwd, or fwd+bwd", identifies=BOTH, contract=True),
    number("n_win", ATTN_ONLY, SIZE, "", "windows per side (a family option, where it has one)", contract=True),
    number("topk", ATTN_ONLY, SIZE, "", "routed windows per query window (a family option, where it has one)",
           contract=True),
    text("kv_downsample_mode", ATTN_ONLY, "how keys and values are downsampled (a family option, where it has one)",
         contract=True),
    text("status", BOTH, f"the case's outcome: {', '.join(STATUSES)}", contract=True),
    number("params_m", MODEL_ONLY, NON_NEGATIVE, "M parameters", "parameters, millions"),
    number("gmacs_per_image", MODEL_ONLY, NON_NEGATIVE, GMACS, "fvcore's count of one image's forward (batch 1, eval "
           "mode): the papers' GFLOPs, padding included"),
    number("latency_ms_median", BOTH, POSITIVE, MS, "median latency of the timed rounds", contract=True),
    number("latency_ms_p20", BOTH, POSITIVE, MS, "20th percentile of the rounds' latencies", contract=True),
    number("latency_ms_p80", BOTH, POSITIVE, MS, "80th percentile of the rounds' latencies", contract=True),
    number("peak_mem_mb", BOTH, NON_NEGATIVE, MIB, "peak memory of one pass above what was allocated before it",
           contract=True),
    number("gmacs", ATTN_ONLY, NON_NEGATIVE, GMACS, "fvcore's count of the pass's forward (the papers' GFLOPs)",
           contract=True),
    number("tflops_achieved", BOTH, NON_NEGATIVE, "TFLOP/s", "hardware FLOPs of the unpadded work ÷ median "
           "latency", contract=True),
    number("pct_of_peak", BOTH, NON_NEGATIVE, "%", "tflops_achieved against the GPU profile's peak",
           contract=True),
    number("throughput", BOTH, POSITIVE, "inputs/s", "batch ÷ median latency", contract=True,
           model_after="gmacs_per_image"),
    number("max_abs_err", ATTN_ONLY, ERROR, "", "largest absolute error against float64 math", contract=True),
    text("device_name", BOTH, "the device the case ran on, as its worker names it", contract=True),
    text("gpu_profile", BOTH, "the GPU profile of the run (bench.core.profiles)", contract=True),
    text("options", BOTH, "JSON of the case's family options (models: the build_model options, attention choice "
         "and auto_pad)", identifies=ATTN_ONLY),
    text("device", BOTH, "cpu or cuda", identifies=BOTH),
    text("status_detail", BOTH, "reason for unsupported / error / oom / mismatch, or notes"),
    number("rounds", BOTH, COUNT, "", "timed rounds behind the latency statistics"),
    number("param_mb", BOTH, NON_NEGATIVE, MIB, "bytes of parameters"),
    number("input_mb", BOTH, NON_NEGATIVE, MIB, "bytes of the input"),
    number("gmacs_analytic", ATTN_ONLY, NON_NEGATIVE, GMACS, "the family's macs(); compared with fvcore's gmacs"),
    text("macs_parts", ATTN_ONLY, "JSON of the analytic parts (projections, routing/offsets, attention, positional)"),
    text("flops_check", ATTN_ONLY, "empty when fvcore and macs() agree within 1%, else the disagreement"),
    number("hw_gflops", BOTH, NON_NEGATIVE, "GFLOP", "hardware FLOPs of the measured pass (its whole batch): "
           "2 × MACs, × 3 for fwd+bwd", model_after="pct_of_peak"),
    number("rel_err", ATTN_ONLY, ERROR, "", "‖got − exact‖ / ‖exact‖ against float64 math (bench.core.accuracy), "
           "of err_tensor; inf on NaN/inf"),
    number("err_tolerance", ATTN_ONLY, ERROR, "", "the bound on rel_err: max(2 × ref_rel_err, the dtype's floor)"),
    text("reference_backend", ATTN_ONLY, "the family's reference backend, run in float64 for the exact values"),
    number("seed", BOTH, WHOLE, "", "the seed of the case's weights and inputs"),
    text("run_id", BOTH, "the run that wrote the row"),
    text("case_key", BOTH, "the case's identity in one string: what runs are aligned on", identifies=BOTH),
    text("timestamp", BOTH, "when the row was written (ISO 8601, UTC)"),
    number("tile_efficiency", ATTN_ONLY, FRACTION, "", "useful ÷ issued matrix multiply-adds of the backend's kernels "
           "(backends that declare it)", late=True),
    number("speedup_vs_ref", BOTH, POSITIVE, "×", "reference latency ÷ latency: the median of per-round ratios of "
           "paired rounds", late=True, model_after="warmup_calls"),
    number("speedup_ci_low", BOTH, POSITIVE, "×", "low end of speedup_vs_ref's 95% batch-means confidence "
           "interval", late=True, model_after="speedup_vs_ref"),
    number("speedup_ci_high", BOTH, POSITIVE, "×", "high end of speedup_vs_ref's 95% batch-means confidence "
           "interval", late=True, model_after="speedup_ci_low"),
    number("timing_spread", BOTH, POSITIVE, "×", "p80 / p20 of the latency; beyond the device's noise limit the "
           "row is noisy", late=True),
    number("load_before", ATTN_ONLY, NON_NEGATIVE, "", "the machine's 1-minute load average before the case's timing",
           late=True),
    number("load_after", ATTN_ONLY, NON_NEGATIVE, "", "the machine's 1-minute load average after the case's timing",
           late=True),
    text("gpu_state", ATTN_ONLY, "JSON: SM clock, temperature and power before, during (range, throttle reasons) and "
         "after", late=True),
    text("node", BOTH, "the hostname of the machine the case ran on", late=True, placement=True),
    text("worker", BOTH, "the process: \"pid 1234\" (the sweep's own process, or a Ray worker's)", late=True,
         placement=True),
    text("gpu_index", BOTH, "the GPU as its node numbers it (CUDA_VISIBLE_DEVICES' entry); empty on the CPU",
         late=True, placement=True),
    number("page_faults", BOTH, COUNT_MEDIAN, "", "CPU: the process's minor page faults during one pass, median "
           "over the timed rounds", late=True),
    number("ref_rel_err", ATTN_ONLY, ERROR, "", "the reference backend's own rel_err (in the case's dtype) on "
           "err_tensor", late=True),
    text("err_tensor", ATTN_ONLY, "the tensor closest to its bound (output, input gradient, gradient of <parameter>)",
         late=True),
    number("timed_s", BOTH, NON_NEGATIVE, "s", "seconds of timed calls behind the latency statistics (all "
           "sittings)", late=True),
    number("warmup_calls", BOTH, COUNT, "", "warm-up calls before the timed rounds (until stable, capped)",
           late=True),
    number("gmacs_unpadded", ATTN_ONLY, NON_NEGATIVE, GMACS, "gmacs less what padding costs (BRA's auto_pad): what "
           "tflops_achieved and pct_of_peak count", late=True),
    number("gmacs_per_image_unpadded", MODEL_ONLY, NON_NEGATIVE, GMACS, "gmacs_per_image less what padding costs: what "
           "tflops_achieved counts", late=True),
    number("latency_ms_ci_low", BOTH, POSITIVE, MS, "low end of the 95% batch-means interval of "
           "latency_ms_median (compare's test)", late=True),
    number("latency_ms_ci_high", BOTH, POSITIVE, MS, "high end of the 95% batch-means interval of "
           "latency_ms_median (compare's test)", late=True),
    text("compile", BOTH, f"torch.compile mode of the case: {', '.join(COMPILE_MODES)} (eager: not compiled)",
         identifies=BOTH, since=3, earlier=EAGER),
    number("compile_s", BOTH, NON_NEGATIVE, "s", "cold compile time: the first compiled pass with Inductor's caches "
           "empty and dynamo reset", since=3),
    number("graphs", BOTH, COUNT, "", "graphs dynamo compiled for the pass (1 without a graph break)", since=3),
    number("graph_breaks", BOTH, COUNT, "", "graph breaks dynamo met tracing the pass", since=3),
    number("recompiles", BOTH, COUNT, "", "graphs compiled during the timed rounds (more than 0 makes the row "
           "an error)", since=3),
    text("compiled_ref", BOTH, "the compiled reference speedup_vs_compiled_ref is over: the fastest compiled mode "
         "of the reference backend measured in the run's group, e.g. torch+compile", since=3),
    number("speedup_vs_compiled_ref", BOTH, POSITIVE, "×", "compiled reference latency ÷ latency, paired like "
           "speedup_vs_ref", since=3),
    number("compiled_speedup_ci_low", BOTH, POSITIVE, "×", "low end of speedup_vs_compiled_ref's 95% interval",
           since=3),
    number("compiled_speedup_ci_high", BOTH, POSITIVE, "×", "high end of speedup_vs_compiled_ref's 95% interval",
           since=3),
)


def suite_columns(declared: tuple[Column, ...], suite: str) -> list[Column]:
    """The columns of ``suite`` in its files' order: the declaration's, where a model-suite column with
    ``model_after`` follows that column instead. ValueError when a name is declared twice or an anchor is
    not a column of the suite."""
    names = [c.name for c in declared]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"column {twice[0]!r} is declared more than once")
    members = [c for c in declared if suite in c.suites]
    moved = [c for c in members if suite == MODELS and c.model_after is not None]
    ordered = [c for c in members if c not in moved]
    for column in moved:
        anchors = [i for i, c in enumerate(ordered) if c.name == column.model_after]
        if not anchors:
            raise ValueError(f"column {column.name!r} follows {column.model_after!r} in the {suite} suite, which "
                             f"has no such column (before it in the declaration)")
        ordered.insert(anchors[0] + 1, column)
    return ordered


_SUITE_DECLARATIONS = {suite: suite_columns(DECLARED, suite) for suite in SUITE_NAMES}

# Columns of each suite's files, in file order.
COLUMNS = [c.name for c in _SUITE_DECLARATIONS[ATTENTIONS]]
MODEL_COLUMNS = [c.name for c in _SUITE_DECLARATIONS[MODELS]]
SUITES = {ATTENTIONS: COLUMNS, MODELS: MODEL_COLUMNS}  # suite -> its row schema
# The contract of issue #3: the first block of the attention suite's columns.
REQUIRED_COLUMNS = [c.name for c in _SUITE_DECLARATIONS[ATTENTIONS] if c.contract]
# Where a row's case ran, in both suites (its device_name is that worker's device too).
PLACEMENT_COLUMNS = tuple(c.name for c in DECLARED if c.placement)
# Columns an older file may lack (late ones, added while schema 1 was written, and those of later versions): it loads
# with them migrated, and a resumed run's file gets them added.
LATE_COLUMNS = {suite: tuple(c.name for c in columns if c.late or c.since > 1)
                for suite, columns in _SUITE_DECLARATIONS.items()}
# What rows written before a column existed hold in it, where they hold something (compile: eager).
EARLIER_VALUES = {c.name: c.earlier for c in DECLARED if c.earlier is not None}
# The schema version from which files hold each column (a late column: from version 2 on).
HELD_SINCE = {c.name: 2 if c.late else c.since for c in DECLARED}
# Every other column of a suite holds numbers (or nothing).
TEXT_COLUMNS = {suite: {c.name for c in columns if c.kind == "text"} for suite, columns in _SUITE_DECLARATIONS.items()}
# Columns no row may leave empty: what identifies its case.
IDENTITY_COLUMNS = {suite: tuple(c.name for c in columns if suite in c.identifies)
                    for suite, columns in _SUITE_DECLARATIONS.items()}
# Value rules of the numeric columns: what a number of each may be (an empty cell is always allowed).
VALUE_RULES: dict[str, ValueRule] = {c.name: c.rule for c in DECLARED if c.rule is not None}

# (low, high) columns of one row that are ordered, low ≤ high (where both are present). The latency interval
# is one of the median of the log latencies (bench.core.statistics.median_interval), which need not hold the
# arithmetic median of latency_ms_median (two middle rounds of 1 and 6 ms: 3.5 against an interval at 2.45):
# only its ends are ordered.
ORDERED_COLUMNS = (("latency_ms_p20", "latency_ms_median"), ("latency_ms_median", "latency_ms_p80"),
                   ("latency_ms_ci_low", "latency_ms_ci_high"),
                   ("speedup_ci_low", "speedup_vs_ref"), ("speedup_vs_ref", "speedup_ci_high"),
                   ("compiled_speedup_ci_low", "speedup_vs_compiled_ref"),
                   ("speedup_vs_compiled_ref", "compiled_speedup_ci_high"))
# Relative slack between ordered values, for the runner's rounding (quintiles of equal rounds come out an ulp
# below their median).
ORDER_TOLERANCE = 1e-9


def results_suite(columns) -> str:
    """The suite whose schema a results header (or DataFrame) follows: a model column marks the model suite."""
    return MODELS if "model" in list(columns) else ATTENTIONS
